"""``ims-fhir convert --jobs N``: the same conversion, sharded across N processes.

A layer around :class:`~ims_fhir.convert.Converter`; the per-record work (validation,
duplicate check, mapping) is the converter's own. The output is byte-identical to
``--jobs 1``: the same files, the same lines in the same order, the same Bundles.

Terms:

- *task*: one contiguous part (*shard*) of one input, converted by one worker process into
  its own partial outputs (resource files, rejects, or in bundle mode the mapped record
  groups), with its own :class:`~ims_fhir.workstore.WorkStore` on disk. Every input is cut
  into N shards; tasks run in a pool of N processes and are numbered in input order.
- *shard*: for NDJSON (plain or gzip) a range of byte offsets of the (uncompressed) text,
  a line belonging to the shard its first byte falls in; a plain file is entered with a
  seek, and the line numbers of origins are counted from the start. For a JSON document or
  a CSV folder a range of record positions in the reader's order (each worker reads the
  input and skips what is not its own). The last shard of an input is open-ended, so a
  size estimate can only unbalance the work, never lose or repeat a record.
- *merge*: the parent appends each task's partial files to the output in task order (the
  first task writes straight into the output folder); the summary is the sum of the
  tasks'. In bundle mode the workers validate and map, and the parent packs the groups
  in order with the same packer as ``--jobs 1``, which keeps Bundle boundaries, shared
  entries and held-back groups (a record whose patient comes later) exactly as they were.
- *duplicates across shards*: a task only knows the ids of its own shard. After the run the
  parent compares the ids each task met with those of every earlier task; a task holding
  an id already used before it is converted again, seeded with the earlier tasks' ids, so
  its records carry the same ``duplicate_id`` problems (naming the first occurrence) as
  with one process. Duplicates are rare, so this costs nothing in the usual case.
- *first pass*: the diagnosis counts of the assessments (:mod:`ims_fhir.diagnoses`) and, with
  ``--strict-refs``, which records are valid, found per shard; every conversion task is
  seeded with what all of them found (in task order: the first record of an id wins).

Memory per process stays flat: each worker streams its shard as ``--jobs 1`` streams the
whole input (a JSON document is held in memory by every worker, as it is by one).
"""

from __future__ import annotations

import functools
import gzip
import multiprocessing
import os
import shutil
import sqlite3
import struct
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import orjson

from .convert import SERIES_TYPES, Converter, ConvertOptions, FileSink, Summary, _prepare_out_dir
from .diagnoses import MARKER, csv_diagnosis_rows, line_count, record_counts
from .errors import InputError, UsageError
from .fhir.bundles import BundlePacker, group_from_bytes, group_to_bytes
from .mapping import MappedRecord, map_organization
from .pipeline import RecordPipeline
from .records.models import Source
from .records.readers import RawRecord, open_input, parse_ndjson_line
from .rejects import Rejected
from .terminology import Terminology
from .workstore import WorkStore

_PARENT_TABLES = ("patients.csv", "practitioners.csv", "assessments.csv", "treatments.csv")
_GROUPS = "groups.ndjson"


@dataclass(frozen=True)
class _Shard:
    #: "bytes" (NDJSON: offsets of the uncompressed text) or "records" (positions in reading order)
    unit: str
    start: int
    stop: int | None  # None: to the end of the input


@dataclass(frozen=True)
class _Task:
    seq: int
    path: Path
    form: str
    source: Source
    shard: _Shard
    options: ConvertOptions  # out_dir: where this task writes its partial outputs
    work_dir: Path  # its WorkStore (kept for the parent's comparison) and scratch files
    terminology: Terminology | None = None
    organization: bool = False  # write the source's Organization first (first task of a new source, NDJSON)
    phase: str = "convert"  # or "first": the first pass (diagnosis counts; the valid ids of --strict-refs)
    seeds: tuple[str, ...] = ()  # stores whose ids this task knows before it starts


@dataclass
class _Result:
    seq: int
    store: str
    summary: Summary
    out_dir: Path
    groups: Path | None = None
    files: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# shards


def _gzip_size(path: Path) -> int:
    """Uncompressed size from the gzip trailer (modulo 4 GiB; only an estimate for balance)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            return int(struct.unpack("<I", fh.read(4))[0])
    except OSError:
        return 0


def _count_csv_rows(folder: Path) -> int:
    """Estimated records of a CSV folder: the lines of its four record tables."""
    total = 0
    for name in _PARENT_TABLES:
        path = folder / name
        if path.exists():
            with open(path, "rb") as fh:
                total += max(0, sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 22), b"")) - 1)
    return total


def _shards(path: Path, form: str, jobs: int, records: Iterator[RawRecord] | None) -> list[_Shard]:
    if form == "ndjson":
        unit = "bytes"
        size = _gzip_size(path) if path.name.lower().endswith(".gz") else path.stat().st_size
    elif form == "json":
        unit = "records"
        size = sum(1 for _ in records) if records is not None else 0  # the parent has the document already
    else:
        unit = "records"
        size = _count_csv_rows(path)
    bounds = [size * k // jobs for k in range(jobs)]
    return [_Shard(unit, bounds[k], bounds[k + 1] if k + 1 < jobs else None) for k in range(jobs)]


def _count_newlines(fh: Any, upto: int) -> int:
    count = 0
    left = upto
    while left > 0:
        block = fh.read(min(left, 1 << 22))
        if not block:
            break
        count += block.count(b"\n")
        left -= len(block)
    return count


def _ndjson_shard(path: Path, shard: _Shard) -> Iterator[RawRecord]:
    """The records of an NDJSON shard, exactly as the whole-file reader gives them."""
    name = path.name
    for lineno, line in _ndjson_lines(path, shard):
        yield parse_ndjson_line(line, f"{name}:{lineno}")


def _ndjson_lines(path: Path, shard: _Shard) -> Iterator[tuple[int, bytes]]:
    """The non-blank lines of an NDJSON shard and their line numbers."""
    gz = path.name.lower().endswith(".gz")
    start, stop = shard.start, shard.stop
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
            pos = lineno = 0
            if start > 0 and not gz:
                fh.seek(start - 1)
                pos = start - 1 + len(fh.readline())  # the first line that starts at or after `start`
                fh.seek(0)
                lineno = _count_newlines(fh, pos)
                fh.seek(pos)
            for line in fh:
                lineno += 1
                here = pos
                pos += len(line)
                if here < start:
                    continue
                if stop is not None and here >= stop:
                    break
                if not line.strip():
                    continue
                yield lineno, line
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})", source=str(path)) from exc


def _records(task: _Task) -> Iterator[RawRecord]:
    shard = task.shard
    if task.form == "ndjson":
        yield from _ndjson_shard(task.path, shard)
        return
    records = open_input(task.path, lenient=task.options.lenient, temp_dir=str(task.work_dir)).records
    try:
        for index, raw in enumerate(records):
            if shard.stop is not None and index >= shard.stop:
                break
            if index >= shard.start:
                yield raw
    finally:
        close = getattr(records, "close", None)
        if close is not None:
            close()  # a CSV reader removes its child index now, not at garbage collection


# --------------------------------------------------------------------------------------------
# the worker


class _KeptStore(WorkStore):
    """A WorkStore whose file outlives the task: the parent compares the ids of the tasks."""

    @property
    def path(self) -> str:
        return self._path

    def seed(self, stores: tuple[str, ...]) -> None:
        """Know the ids of earlier tasks (their first origin wins: stores come in task order)."""
        for other in stores:
            self.db.execute("COMMIT")
            self.db.execute("ATTACH DATABASE ? AS other", (other,))
            self.db.execute("INSERT OR IGNORE INTO seen SELECT scope, type, id, origin FROM other.seen")
            self.db.execute("INSERT OR IGNORE INTO dx SELECT scope, id, n FROM other.dx")
            self.db.execute("DETACH DATABASE other")
            self.db.execute("BEGIN")

    def close(self) -> None:
        self.db.execute("COMMIT")
        self.db.close()


_COUNTER: Any = None  # shared (read, rejected) counts for the parent's progress line


def _init_worker(counter: Any) -> None:
    global _COUNTER
    _COUNTER = counter


def _progress_reporter() -> Callable[[int, int], None] | None:
    counter = _COUNTER
    if counter is None:
        return None
    last = [0, 0]

    def report(read: int, rejected: int) -> None:
        with counter.get_lock():
            counter[0] += read - last[0]
            counter[1] += rejected - last[1]
        last[0], last[1] = read, rejected

    return report


def _run_task(task: _Task) -> _Result:
    task.work_dir.mkdir(parents=True, exist_ok=True)
    store = _KeptStore(str(task.work_dir))
    try:
        store.seed(task.seeds)
        if task.phase == "first":
            _diagnosis_counts(task, store)
            if task.options.strict_refs:
                _valid_ids(task, store)
            return _Result(task.seq, store.path, Summary(), task.options.out_dir)
        return _convert_task(task, store)
    finally:
        store.close()


def _diagnosis_counts(task: _Task, store: _KeptStore) -> None:
    """First pass over one shard: the assessments' diagnosis counts, as Converter._collect_diagnoses.

    A CSV folder's counts come from its findings table, whatever the shard: counted by the
    input's first shard only."""
    scope = task.source.system_base
    if task.form == "ndjson":
        store.add_diagnoses(scope, (c for c in (line_count(line) for _, line in _ndjson_lines(task.path, task.shard))
                                    if c is not None))
    elif task.form == "csv":
        if task.shard.start == 0:
            store.add_diagnosis_rows(scope, csv_diagnosis_rows(task.path))
    elif MARKER in task.path.read_bytes():
        store.add_diagnoses(scope, record_counts((raw.record_type, raw.data) for raw in _records(task)))


def _valid_ids(task: _Task, store: _KeptStore) -> None:
    """First pass of --strict-refs over one shard, as Converter._collect_valid_ids."""
    pipeline = RecordPipeline(lenient=task.options.lenient, default_tz=task.options.default_tz)
    for raw in _records(task):
        if raw.problems or raw.record_type is None:
            continue
        model, _ = pipeline.validate(raw)
        if model is not None:
            store.first_seen("valid:" + task.source.system_base, raw.record_type, model.id, raw.origin)


def _convert_task(task: _Task, store: _KeptStore) -> _Result:
    """One shard through the converter's pipeline, as Converter._convert_all does for a whole input."""
    opts = task.options
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    conv = Converter(opts, terminology=task.terminology, progress=_progress_reporter())
    summary = conv.summary
    pipeline = RecordPipeline(lenient=opts.lenient, default_tz=opts.default_tz, seen=store,
                              check_refs=(lambda t, m, scope: conv._unresolved(t, m, scope, store))
                              if opts.strict_refs else None, validate_fhir=opts.validate)
    ctx, _ = conv._mapping_context(task.source)
    if store.has_diagnoses():
        ctx = ctx.with_diagnoses(functools.partial(store.diagnoses, task.source.system_base))
    sink = FileSink(opts.out_dir, summary)
    ndjson = opts.output_format == "ndjson"
    groups_path = None if ndjson else task.work_dir / _GROUPS
    groups = open(groups_path, "wb", buffering=1 << 20) if groups_path is not None else None  # noqa: SIM115
    try:
        if ndjson and task.organization:
            summary.resources["Organization"] = summary.resources.get("Organization", 0) + 1
            sink.resource(map_organization(ctx))
        for raw in _records(task):
            summary.read += 1
            outcome = pipeline.one(raw, ctx)
            if isinstance(outcome, Rejected):
                conv._count_rejected(outcome)
                sink.reject(outcome)
            else:
                conv._count_converted(outcome)
                if groups is not None:
                    groups.write(group_to_bytes(outcome.group) + b"\n")
                else:
                    for res in outcome.group.resources:
                        sink.resource(res)
            if conv.progress is not None and summary.read % 1000 == 0:
                conv.progress(summary.read, summary.rejected)
        if conv.progress is not None:
            conv.progress(summary.read, summary.rejected)
    finally:
        sink.close()
        if groups is not None:
            groups.close()
    return _Result(task.seq, store.path, summary, opts.out_dir, groups_path, list(summary.files))


# --------------------------------------------------------------------------------------------
# the parent


def _shares_ids(later: str, earlier: str) -> bool:
    """Does the task with store ``later`` hold an id that an earlier task already used?"""
    db = sqlite3.connect(later)
    try:
        db.execute("ATTACH DATABASE ? AS earlier", (earlier,))
        row = db.execute(
            "SELECT 1 FROM seen s WHERE s.scope NOT LIKE 'valid:%' AND EXISTS "
            "(SELECT 1 FROM earlier.seen e WHERE e.scope = s.scope AND e.type = s.type AND e.id = s.id) LIMIT 1"
        ).fetchone()
        return row is not None
    finally:
        db.close()


def _mp_context() -> multiprocessing.context.BaseContext:
    # fork when the caller runs no other thread (the CLI): the workers start at once with what the
    # parent has loaded (modules, the code tables), nothing imported twice. Otherwise forkserver:
    # workers start from a clean process (no threads or state of the caller copied), with the
    # converter imported once; spawn where there is neither.
    methods = multiprocessing.get_all_start_methods()
    if sys.platform != "win32" and "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    if sys.platform != "win32" and "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["ims_fhir.parallel"])
        return ctx
    return multiprocessing.get_context("spawn")


class _Pool:
    """The worker processes of one run; results come back in task order."""

    def __init__(self, jobs: int, progress: Callable[[int, int], None] | None) -> None:
        ctx = _mp_context()
        self.counter = ctx.Array("q", 2) if progress is not None else None
        self.progress = progress
        self.executor = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                                            initargs=(self.counter,))

    def run(self, tasks: list[_Task]) -> list[_Result]:
        futures: list[Future[_Result]] = [self.executor.submit(_run_task, t) for t in tasks]
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_EXCEPTION)
            for fut in done:
                if fut.exception() is not None:
                    self.stop()
                    raise fut.exception()  # type: ignore[misc]
            if self.progress is not None and self.counter is not None:
                self.progress(self.counter[0], self.counter[1])
        return [f.result() for f in futures]

    def map(self, fn: Callable[..., Any], *args: list[Any]) -> list[Any]:
        return list(self.executor.map(fn, *args))

    def stop(self) -> None:
        """A task failed: the run is over, stop the others now rather than at the end of their shards."""
        processes = getattr(self.executor, "_processes", None) or {}
        for process in list(processes.values()):
            process.terminate()
        self.executor.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def _append(dst: IO[bytes], src: Path) -> None:
    """Append a partial file to an output file (in the kernel where it can)."""
    offset = dst.seek(0, os.SEEK_END)  # flushes what is buffered
    with open(src, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        done = 0
        if hasattr(os, "copy_file_range"):
            try:
                while done < size:
                    n = os.copy_file_range(fh.fileno(), dst.fileno(), size - done, done, offset + done)
                    if n == 0:
                        break
                    done += n
            except OSError:
                pass  # not between these files: copy the rest below
        fh.seek(done)
        dst.seek(offset + done)
        shutil.copyfileobj(fh, dst, 1 << 20)


def _add(summary: Summary, part: Summary) -> None:
    summary.read += part.read
    summary.converted += part.converted
    summary.rejected += part.rejected
    for mine, theirs in ((summary.records, part.records), (summary.rejected_by_rule, part.rejected_by_rule),
                         (summary.resources, part.resources)):
        for key, n in theirs.items():
            mine[key] = mine.get(key, 0) + n


def _read_groups(path: Path) -> Iterator[MappedRecord]:
    with open(path, "rb") as fh:
        for line in fh:
            yield group_from_bytes(line)


def convert_parallel(paths: list[Path], options: ConvertOptions, *, jobs: int, terminology: Terminology | None = None,
                     progress: Callable[[int, int], None] | None = None) -> Summary:
    """:func:`ims_fhir.convert.convert` with ``jobs`` worker processes (see the module docstring)."""
    conv = Converter(options, terminology=terminology, progress=progress)  # checks the options
    if not paths:
        raise UsageError("no input given")
    summary = conv.summary
    summary.inputs = [str(p) for p in paths]
    # open every input first: an unreadable input or a bad source stops the run before any output
    plans = [(inp.path, inp.form, source, _shards(inp.path, inp.form, jobs, inp.records if inp.form == "json" else None))
             for inp, source in conv.open_all(paths)]
    out = options.out_dir
    _prepare_out_dir(out)
    work = Path(tempfile.mkdtemp(prefix=".ims-fhir-jobs-", dir=options.temp_dir or out))
    pool = _Pool(jobs, progress)
    try:
        results = _run_all(pool, plans, options, terminology, work)
        pool.close()
        if options.output_format == "ndjson":
            _merge_ndjson(out, results, summary)
        else:
            _pack_bundles(conv, plans, results, work)
    finally:
        pool.close()
        shutil.rmtree(work, ignore_errors=True)
    (out / "summary.json").write_bytes(  # as Converter.run
        orjson.dumps(summary.as_dict() | {"files": sorted(set(summary.files) | {"summary.json"})},
                     option=orjson.OPT_INDENT_2) + b"\n")
    if progress is not None:
        progress(summary.read, summary.rejected)
    return summary


def _run_all(pool: _Pool, plans: list[tuple[Path, str, Source, list[_Shard]]], options: ConvertOptions,
             terminology: Terminology | None, work: Path) -> list[_Result]:
    ndjson = options.output_format == "ndjson"
    # the first pass (diagnosis counts; with --strict-refs, the valid records): every conversion task is
    # seeded with what all of its tasks found, in task order (so the first record of an id wins, as with one process)
    first = [_Task(i, path, form, source, shard, replace(options, out_dir=work / f"first-{i}"), work / f"first-{i}",
                   terminology, phase="first")
             for i, (path, form, source, shard) in enumerate(_flat(plans))]
    seeds = tuple(r.store for r in pool.run(first))
    tasks: list[_Task] = []
    known: set[tuple[str, str]] = set()
    for path, form, source, shards in plans:
        key = (source.clinic_id, source.system_base)
        for k, shard in enumerate(shards):
            seq = len(tasks)
            # the first task writes straight into the output folder (NDJSON); the others beside it
            task_out = options.out_dir if seq == 0 and ndjson else work / f"task-{seq}"
            tasks.append(_Task(seq, path, form, source, shard, replace(options, out_dir=task_out), work / f"task-{seq}",
                               terminology, organization=ndjson and k == 0 and key not in known, seeds=seeds))
        known.add(key)
    results = pool.run(tasks)
    # duplicates across shards: a task holding an id an earlier task used is converted again
    pairs = [(t, e) for t in range(1, len(tasks)) for e in range(t)]
    shared = pool.map(_shares_ids, [results[t].store for t, _ in pairs], [results[e].store for _, e in pairs])
    again = sorted({t for (t, _), hit in zip(pairs, shared, strict=True) if hit})
    if again:
        redo = [replace(tasks[t], options=replace(tasks[t].options, out_dir=work / f"redo-{t}"), work_dir=work / f"redo-{t}",
                        seeds=seeds + tuple(results[e].store for e in range(t)))
                for t in again]
        for t, result in zip(again, pool.run(redo), strict=True):
            results[t] = result
    return results


def _flat(plans: list[tuple[Path, str, Source, list[_Shard]]]) -> Iterator[tuple[Path, str, Source, _Shard]]:
    for path, form, source, shards in plans:
        for shard in shards:
            yield path, form, source, shard


def _top_id(line: bytes) -> bytes:
    """The resource id of one NDJSON line (the writer puts it right after resourceType)."""
    start = line.find(b'"id":"', 0, 120)
    if start < 0 or line.find(b'"resourceType":"', 0, 40) < 0:
        return str(orjson.loads(line).get("id", "")).encode()
    start += 6
    return line[start:line.index(b'"', start)]


def _merge_series(out: Path, results: list[_Result], name: str) -> int:
    """A session series file: every session of a series emits its resources, so tasks repeat
    lines; the first of each id is kept, in task order (what one process writes).

    Streamed: only the ids met are held, so memory grows with the number of series, not
    with the output."""
    target = out / name
    moved = target.with_name(name + ".first-task")
    if target.exists():  # the first task wrote straight into the output folder
        target.rename(moved)
    seen: set[bytes] = set()
    count = 0
    with open(target, "wb") as dst:
        for result in results:
            path = result.out_dir / name
            if path == target:
                path = moved
            if name not in result.files or not path.exists():
                continue
            with open(path, "rb") as src:
                for line in src:
                    rid = _top_id(line)
                    if rid not in seen:
                        seen.add(rid)
                        count += 1
                        dst.write(line)
    moved.unlink(missing_ok=True)
    return count


def _merge_ndjson(out: Path, results: list[_Result], summary: Summary) -> None:
    names: list[str] = []
    for result in results:
        _add(summary, result.summary)
        names.extend(n for n in result.files if n not in names)
    summary.files = names
    first = results[0].out_dir
    for name in names:
        if name.removesuffix(".ndjson") in SERIES_TYPES:
            summary.resources[name.removesuffix(".ndjson")] = _merge_series(out, results, name)
            continue
        with open(out / name, "r+b" if (out / name).exists() else "wb") as dst:
            if first != out and (first / name).exists():
                _append(dst, first / name)
            for result in results[1:]:
                if name in result.files:
                    _append(dst, result.out_dir / name)


def _pack_bundles(conv: Converter, plans: list[tuple[Path, str, Source, list[_Shard]]], results: list[_Result],
                  work: Path) -> None:
    """The parent's part in bundle mode: the packing of Converter._convert_all over the tasks' groups in order."""
    summary = conv.summary
    opts = conv.options
    with WorkStore(str(work)) as store:
        sink = FileSink(opts.out_dir, summary)
        try:
            packers: dict[tuple[str, str], BundlePacker] = {}
            series: set[tuple[str, str]] = set()
            seq = 0
            for _path, _form, source, shards in plans:
                ctx, new = conv._mapping_context(source)
                key = (source.clinic_id, source.system_base)
                if new:
                    org = map_organization(ctx)
                    summary.resources["Organization"] = summary.resources.get("Organization", 0) + 1
                    packers[key] = BundlePacker(
                        max_entries=opts.bundle_size, organization=org, lookup=store.get_dep, remember=store.put_dep,
                        defer=lambda g: store.defer(group_to_bytes(g)), emit=lambda body, entries: sink.bundle(body))
                packer = packers[key]
                for _shard in shards:
                    result = results[seq]
                    seq += 1
                    for group in _read_groups(result.groups or work / "missing"):
                        series.update((r["resourceType"], r["id"]) for r in group.resources
                                      if r["resourceType"] in SERIES_TYPES)
                        packer.add(group)
            for packer in packers.values():
                for body in store.deferred():
                    packer.add(group_from_bytes(body), final=True)
                packer.flush()
            for result in results:
                _add(summary, result.summary)
                _append(sink.rejects, result.out_dir / "rejects.ndjson")
            for rtype in SERIES_TYPES:  # counted once, as one process counts them
                if rtype in summary.resources:
                    summary.resources[rtype] = sum(1 for t, _ in series if t == rtype)
        finally:
            sink.close()


__all__ = ["convert_parallel"]
