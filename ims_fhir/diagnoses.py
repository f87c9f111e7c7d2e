"""The first pass that lets a treatment name its assessment's diagnoses as its reason.

A treatment's Procedure names, after the assessment panel, each Condition of its
assessment's diagnoses (``{system_base}/diagnosis`` = ``{assessment id}/{i}``, see
:mod:`ims_fhir.mapping.treatment`). Its mapper sees one record, so the caller that sees the
whole input counts the diagnoses of every assessment first, whatever the order of the
records (a treatment may come before its assessment), and answers the mapper from that
count (:meth:`~ims_fhir.mapping.MappingContext.with_diagnoses`).

Terms:

- *diagnosis count*: ``len(diagnoses)`` of an assessment record with a non-empty
  ``diagnoses`` list, keyed by scope (the source's system base, as the Conditions'
  identifiers are) and assessment id. Cheap on purpose: the record is not validated, an
  NDJSON line without the text ``"diagnoses"`` is not even parsed, and a CSV folder is read
  from its ``assessment_findings.csv`` only (its ``diagnosis`` rows, by ``assessment_id``).
  An assessment that turns out invalid (rejected) leaves the references of its treatments
  dangling, as the panel reference to a rejected assessment does.
- *first wins*: for an assessment id used twice, the count of the first record in input
  order that has diagnoses (a later record with the same id is a duplicate, rejected). If the
  first one has none and the later duplicate has some, the treatment names Conditions that
  were never made (the duplicate is rejected), as it would name a rejected panel.

The counts live in the run's :class:`~ims_fhir.workstore.WorkStore` (on disk, memory flat);
``--jobs N`` runs this pass per shard and seeds every conversion task with all counts.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from .errors import InputError
from .records.readers import open_input
from .records.validation import record_id_of

#: what an NDJSON line must contain to be worth parsing
MARKER = b'"diagnoses"'
FINDINGS = "assessment_findings.csv"


def count_of(record_type: Any, data: Any) -> tuple[str, int] | None:
    """(assessment id, number of diagnoses) of an assessment record with a non-empty ``diagnoses`` list."""
    if record_type != "assessment" or not isinstance(data, dict):
        return None
    diagnoses = data.get("diagnoses")
    record_id = record_id_of(data)
    if record_id is None or not isinstance(diagnoses, list) or not diagnoses:
        return None
    return record_id, len(diagnoses)


def line_count(line: bytes) -> tuple[str, int] | None:
    """:func:`count_of` of one NDJSON line; a line without ``"diagnoses"`` is not parsed."""
    if MARKER not in line:
        return None
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return count_of(obj.get("record_type"), obj) if isinstance(obj, dict) else None


def ndjson_lines(path: Path) -> Iterator[bytes]:
    opener: Any = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            yield from fh
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})", source=str(path)) from exc


def csv_diagnosis_rows(folder: Path) -> Iterator[str]:
    """The assessment id of each ``diagnosis`` row of a CSV folder's findings table."""
    path = folder / FINDINGS
    if not path.exists():
        return
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            if "kind" not in header or "assessment_id" not in header:
                return
            kind, parent = header.index("kind"), header.index("assessment_id")
            for row in reader:
                if len(row) > max(kind, parent) and row[kind].strip() == "diagnosis" and row[parent].strip():
                    yield row[parent].strip()
    except (OSError, UnicodeDecodeError, csv.Error):
        return  # the conversion pass reports what is wrong with the table


def record_counts(records: Iterable[tuple[Any, Any]]) -> Iterator[tuple[str, int]]:
    """The counts of (record type, data) pairs (a JSON document's records)."""
    for record_type, data in records:
        found = count_of(record_type, data)
        if found is not None:
            yield found


def input_counts(path: Path, form: str, *, lenient: bool = False,
                 temp_dir: str | None = None) -> tuple[Iterator[tuple[str, int]], Iterator[str]]:
    """The counts of one whole input: (per-record counts, CSV diagnosis rows by assessment id)."""
    if form == "ndjson":
        return (c for c in map(line_count, ndjson_lines(path)) if c is not None), iter(())
    if form == "csv":
        return iter(()), csv_diagnosis_rows(path)
    try:
        if MARKER not in path.read_bytes():
            return iter(()), iter(())
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})", source=str(path)) from exc
    records = open_input(path, lenient=lenient, temp_dir=temp_dir).records
    return record_counts((raw.record_type, raw.data) for raw in records), iter(())


__all__ = ["count_of", "csv_diagnosis_rows", "input_counts", "line_count", "ndjson_lines", "record_counts"]
