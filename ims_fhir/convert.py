"""The batch conversion pipeline behind ``ims-fhir convert``.

read (any form; a first pass counts the assessments' diagnoses, :mod:`ims_fhir.diagnoses`)
-> :class:`~ims_fhir.pipeline.RecordPipeline` (validate, check duplicates
and, with ``strict_refs``, references, map) -> ``Converted | Rejected`` -> a sink:
:class:`FileSink` writes NDJSON per resource type or transaction Bundles, ``rejects.ndjson``
and ``summary.json``; ``push`` sends the Bundles of :meth:`Converter.outputs` as they come.
Every record read ends up counted as converted or listed as rejected with every reason;
one bad record never stops the batch. Memory stays flat: records
stream through, and what must be remembered lives in a :class:`WorkStore` on disk.

Output is deterministic: the same input gives byte-identical files (no clock, ids
derived from business identifiers, fixed key order).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from .diagnoses import input_counts
from .errors import Problem, UsageError
from .fhir.bundles import BundlePacker, group_from_bytes, group_to_bytes
from .mapping import MappingContext, MappingOptions, map_organization
from .pipeline import Converted, RecordPipeline
from .records.models import Source
from .records.readers import Input, open_input
from .records.validation import problems_from_validation_error
from .rejects import Rejected
from .terminology import Terminology, default_terminology
from .workstore import WorkStore

OUTPUT_FORMATS = ("ndjson", "bundle")
#: resources every session of a series emits alike (mapping/treatment.py): written once per output
SERIES_TYPES = ("EpisodeOfCare", "ServiceRequest")
_OUR_FILES = re.compile(r"^([A-Z][A-Za-z]+\.ndjson|bundle-\d{4,}\.json|rejects\.ndjson|summary\.json)$")


@dataclass(frozen=True)
class ConvertOptions:
    out_dir: Path
    output_format: str = "ndjson"
    bundle_size: int = 200
    #: source given on the command line / in configuration (clinic_id, system_base, clinic_name)
    source: dict[str, Any] | None = None
    lenient: bool = False
    strict_refs: bool = False
    validate: bool = False
    default_tz: str | None = None
    #: CPT on treatments: True always, False never, None only for a source with country US
    cpt: bool | None = None
    temp_dir: str | None = None


@dataclass
class Summary:
    inputs: list[str] = field(default_factory=list)
    output_format: str = "ndjson"
    read: int = 0
    converted: int = 0
    rejected: int = 0
    records: dict[str, int] = field(default_factory=dict)
    rejected_by_rule: dict[str, int] = field(default_factory=dict)
    resources: dict[str, int] = field(default_factory=dict)
    bundles: int = 0
    files: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.rejected else 0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "inputs": self.inputs,
            "output_format": self.output_format,
            "read": self.read,
            "converted": self.converted,
            "rejected": self.rejected,
            "records_converted": dict(sorted(self.records.items())),
            "rejected_by_rule": dict(sorted(self.rejected_by_rule.items())),
            "resources": dict(sorted(self.resources.items())),
        }
        if self.output_format == "bundle":
            out["bundles"] = self.bundles
        out["files"] = sorted(self.files)
        return out


def resolve_source(declared: dict[str, Any] | None, given: dict[str, Any] | None, where: str,
                   *, context: dict[str, Any] | None = None) -> Source:
    """The source of one input: what the input declares, or what the command line gives.

    Both given and different is an error: a wrong system base would give every record
    wrong identifiers.
    """
    if declared and given:
        for key in ("clinic_id", "system_base"):
            if given.get(key) is not None and declared.get(key) is not None and given[key] != declared[key]:
                raise UsageError(f"{where}: the input declares {key}={declared[key]!r} but {given[key]!r} was given; "
                                 "remove one of them")
    data = {**(given or {}), **(declared or {})}
    data = {k: v for k, v in data.items() if v is not None}
    if not data:
        raise UsageError(f"{where}: no source: give --clinic-id and --system-base (this form does not carry them)")
    try:
        return Source.model_validate(data, context=context)
    except ValidationError as exc:
        detail = "; ".join(f"{p.path}: {p.message}" for p in problems_from_validation_error(exc, "source"))
        raise UsageError(f"{where}: bad source ({detail})") from exc


class FileSink:
    """The output files of ``convert`` (opened lazily, one per resource type, or one per Bundle)."""

    def __init__(self, out_dir: Path, summary: Summary) -> None:
        self.out_dir = out_dir
        self.summary = summary
        self._files: dict[str, Any] = {}
        self.rejects = self._open("rejects.ndjson")

    def _open(self, name: str) -> Any:
        fh = open(self.out_dir / name, "wb", buffering=1 << 20)
        self.summary.files.append(name)
        return fh

    def resource(self, resource: dict[str, Any]) -> None:
        rtype = resource["resourceType"]
        fh = self._files.get(rtype)
        if fh is None:
            fh = self._files[rtype] = self._open(f"{rtype}.ndjson")
        fh.write(orjson.dumps(resource, option=orjson.OPT_APPEND_NEWLINE))

    def bundle(self, body: bytes) -> None:
        self.summary.bundles += 1
        with self._open(f"bundle-{self.summary.bundles:04d}.json") as fh:
            fh.write(body + b"\n")

    def reject(self, rejected: Rejected) -> None:
        self.rejects.write(orjson.dumps(rejected.as_dict()) + b"\n")

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self.rejects.close()


def _prepare_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for child in out_dir.iterdir():
            if child.is_file() and _OUR_FILES.match(child.name):
                child.unlink()
    except OSError as exc:
        raise UsageError(f"{out_dir}: cannot use as output folder ({exc.strerror or exc})") from exc


#: what :meth:`Converter.outputs` yields: a resource (NDJSON), a Bundle's bytes, or a rejected record
Output = tuple[str, Any]


class Converter:
    """One conversion run: :meth:`outputs` streams, :meth:`run` writes ``convert``'s files."""

    def __init__(self, options: ConvertOptions, *, terminology: Terminology | None = None,
                 progress: Callable[[int, int], None] | None = None) -> None:
        if options.output_format not in OUTPUT_FORMATS:
            raise UsageError(f"unknown output format {options.output_format!r} (expected ndjson or bundle)")
        if options.bundle_size < 2:
            raise UsageError("--bundle-size must be at least 2")
        self.options = options
        self.term = terminology or default_terminology()
        self.progress = progress
        self.context = {"default_tz": options.default_tz} if options.default_tz else None
        self.summary = Summary(output_format=options.output_format)
        self._repeated: set[str] = set()
        self._contexts: dict[tuple[str, str], MappingContext] = {}

    def _mapping_context(self, source: Source) -> tuple[MappingContext, bool]:
        key = (source.clinic_id, source.system_base)
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = self._contexts[key] = MappingContext(source, self.term, MappingOptions(cpt=self.options.cpt))
            return ctx, True
        return ctx, False

    def open_all(self, paths: Iterable[Path]) -> list[tuple[Input, Source]]:
        """Open every input and resolve its source: an unreadable input or a bad source stops here."""
        opened = []
        for path in paths:
            inp = open_input(path, lenient=self.options.lenient, temp_dir=self.options.temp_dir)
            opened.append((inp, resolve_source(inp.source, self.options.source, str(path), context=self.context)))
        return opened

    def run(self, paths: list[Path]) -> Summary:
        """``ims-fhir convert``: the outputs written to ``options.out_dir`` (see the README)."""
        opts = self.options
        if not paths:
            raise UsageError("no input given")
        opened = self.open_all(paths)  # before any output
        _prepare_out_dir(opts.out_dir)
        sink = FileSink(opts.out_dir, self.summary)
        try:
            # NDJSON: resources go straight to the files (no generator hop per resource)
            direct = sink if opts.output_format == "ndjson" else None
            for kind, item in self.outputs(paths, opened, direct=direct):
                if kind == "resource":
                    sink.resource(item)
                elif kind == "bundle":
                    sink.bundle(item)
                else:
                    sink.reject(item)
        finally:
            sink.close()
        (opts.out_dir / "summary.json").write_bytes(
            orjson.dumps(self.summary.as_dict() | {"files": sorted(self.summary.files + ["summary.json"])},
                         option=orjson.OPT_INDENT_2) + b"\n")
        return self.summary

    def outputs(self, paths: list[Path], opened: list[tuple[Input, Source]] | None = None, *,
                direct: FileSink | None = None) -> Iterator[Output]:
        """Every output of the run, in order: ``("resource", dict)`` (format ndjson) or
        ``("bundle", bytes)`` (format bundle), and ``("rejected", Rejected)``; counted in
        :attr:`summary`. Memory stays flat (what must be remembered is in a WorkStore on disk).
        With ``direct`` (format ndjson), resources are written to that sink instead of yielded."""
        if not paths:
            raise UsageError("no input given")
        self.summary.inputs = [str(p) for p in paths]
        if opened is None:
            opened = self.open_all(paths)
        with WorkStore(self.options.temp_dir) as store:
            if self.options.strict_refs:
                self._collect_valid_ids(paths, store)
            self._collect_diagnoses(opened, store)
            yield from self._convert_all(opened, store, direct)

    def _collect_valid_ids(self, paths: list[Path], store: WorkStore) -> None:
        """First pass for --strict-refs: which records of each type are valid (by scope)."""
        pipeline = RecordPipeline(lenient=self.options.lenient, default_tz=self.options.default_tz)
        for inp, source in self.open_all(paths):
            for raw in inp.records:
                if raw.problems or raw.record_type is None:
                    continue
                model, _ = pipeline.validate(raw)
                if model is not None:
                    store.first_seen("valid:" + source.system_base, raw.record_type, model.id, raw.origin)

    def _collect_diagnoses(self, opened: list[tuple[Input, Source]], store: WorkStore) -> None:
        """First pass: how many diagnoses each assessment has (by scope), so that a treatment
        names its assessment's Conditions even when it comes first (:mod:`ims_fhir.diagnoses`)."""
        for inp, source in opened:
            counts, rows = input_counts(inp.path, inp.form, lenient=self.options.lenient, temp_dir=self.options.temp_dir)
            store.add_diagnoses(source.system_base, counts)
            store.add_diagnosis_rows(source.system_base, rows)

    def _convert_all(self, opened: list[tuple[Input, Source]], store: WorkStore,
                     direct: FileSink | None = None) -> Iterator[Output]:
        opts = self.options
        summary = self.summary
        pipeline = RecordPipeline(lenient=opts.lenient, default_tz=opts.default_tz, seen=store,
                                  check_refs=(lambda t, m, scope: self._unresolved(t, m, scope, store))
                                  if opts.strict_refs else None, validate_fhir=opts.validate)
        packers: dict[tuple[str, str], BundlePacker] = {}
        ready: list[bytes] = []

        def emit(body: bytes, entries: int) -> None:
            ready.append(body)

        diagnoses = store.has_diagnoses()
        for inp, source in opened:
            ctx, new = self._mapping_context(source)
            scope = source.system_base
            if diagnoses:
                ctx = ctx.with_diagnoses(functools.partial(store.diagnoses, scope))
            if new:
                org = map_organization(ctx)
                summary.resources["Organization"] = summary.resources.get("Organization", 0) + 1
                if direct is not None:
                    direct.resource(org)
                elif opts.output_format == "ndjson":
                    yield "resource", org
                else:
                    packers[(source.clinic_id, scope)] = BundlePacker(
                        max_entries=opts.bundle_size, organization=org, lookup=store.get_dep, remember=store.put_dep,
                        defer=lambda g: store.defer(group_to_bytes(g)), emit=emit)
            packer = packers.get((source.clinic_id, scope))
            for raw in inp.records:
                summary.read += 1
                outcome = pipeline.one(raw, ctx)
                if isinstance(outcome, Rejected):
                    self._count_rejected(outcome)
                    yield "rejected", outcome
                else:
                    self._count_converted(outcome, store, scope)
                    if packer is not None:
                        packer.add(outcome.group)
                        for body in ready:
                            yield "bundle", body
                        ready.clear()
                    elif direct is not None:
                        repeated = self._repeated
                        for res in outcome.group.resources:
                            if not repeated or res["id"] not in repeated:
                                direct.resource(res)
                        repeated.clear()
                    else:
                        for res in outcome.group.resources:
                            if res["id"] not in self._repeated:
                                yield "resource", res
                        self._repeated.clear()
                if self.progress is not None and summary.read % 1000 == 0:
                    self.progress(summary.read, summary.rejected)
        for packer in packers.values():
            for body in store.deferred():
                packer.add(group_from_bytes(body), final=True)
            packer.flush()
            for body in ready:
                yield "bundle", body
            ready.clear()
        if self.progress is not None:
            self.progress(summary.read, summary.rejected)

    def _count_rejected(self, rejected: Rejected) -> None:
        summary = self.summary
        summary.rejected += 1
        for rule in rejected.rules:
            summary.rejected_by_rule[rule] = summary.rejected_by_rule.get(rule, 0) + 1

    def _count_converted(self, converted: Converted, store: WorkStore | None = None, scope: str = "") -> None:
        summary = self.summary
        summary.converted += 1
        summary.records[converted.record_type] = summary.records.get(converted.record_type, 0) + 1
        for res in converted.group.resources:
            rtype = res["resourceType"]
            # a session series is emitted by every session of it: written and counted once
            if rtype in SERIES_TYPES and store is not None \
                    and store.first_seen("series:" + scope, rtype, res["id"], "") is not None:
                self._repeated.add(res["id"])
                continue
            summary.resources[rtype] = summary.resources.get(rtype, 0) + 1

    @staticmethod
    def _unresolved(record_type: str, model: Any, scope: str, store: WorkStore) -> list[Problem]:
        problems = []
        refs = (("patient_id", "patient"), ("practitioner_id", "practitioner"), ("assessment_id", "assessment"))
        for field_name, target in refs:
            ref = getattr(model, field_name, None)
            if ref is not None and not store.is_seen("valid:" + scope, target, ref):
                problems.append(Problem(field_name, "unresolved_reference",
                                        f"no valid {target} {ref!r} in the input (--strict-refs)"))
        return problems


def convert(paths: list[Path], options: ConvertOptions, *, terminology: Terminology | None = None,
            progress: Callable[[int, int], None] | None = None, jobs: int = 1) -> Summary:
    """Convert inputs to FHIR files in ``options.out_dir``; returns the run's summary.

    ``jobs`` > 1 shards the inputs across that many processes (:mod:`ims_fhir.parallel`);
    the output is byte-identical to ``jobs=1``.
    """
    if jobs < 1:
        raise UsageError("--jobs must be at least 1")
    if jobs > 1:
        from .parallel import convert_parallel

        return convert_parallel(paths, options, jobs=jobs, terminology=terminology, progress=progress)
    return Converter(options, terminology=terminology, progress=progress).run(paths)


__all__ = ["ConvertOptions", "Converter", "FileSink", "Output", "Summary", "convert", "resolve_source"]
