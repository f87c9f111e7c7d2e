"""Batch conversion on Apache Spark: an IMS record dataset -> FHIR NDJSON, partitioned by type.

The same conversion as ``ims-fhir convert`` (NDJSON output): every record goes through the
same :class:`~ims_fhir.pipeline.RecordPipeline` (validation, duplicate check, mappers), run
inside ``mapPartitions`` on the executors. The output holds the same resources and the same rejects, as a dataset
partitioned by resource type instead of one file per type (compare sorted lines).

Terms:

- *record dataset*: NDJSON files of ``ims-record/1`` records (plain or gzip; every line
  carries ``record_type``), or a DataFrame with the record columns (``record_type``,
  ``id``, ``patient_id``, ... nested as in the JSON form, e.g. ``spark.read.json`` of such
  files). One source (clinic id, system base) per run, as with ``--clinic-id`` and
  ``--system-base``.
- *origin*: ``file:line`` as in ``rejects.ndjson`` of ``convert`` (line numbers come from
  ``zipWithIndex`` over each file); for a DataFrame ``{name}:{row}``, the row's 1-based
  position in the DataFrame's order. In a DataFrame a missing field and a null are the same
  thing: nulls are dropped before validation.
- *session series*: every session of a series emits the same EpisodeOfCare / ServiceRequest;
  they travel as one row per resource and are made distinct (a shuffle of those rows
  only), so the output holds each once, as ``convert`` writes it.
- *duplicates*: a first, light pass reads only record types and ids and finds the ids used
  more than once (a small map, broadcast); the conversion pass then rejects every occurrence
  after the first (in input order) with ``duplicate_id``, naming the first, as ``convert``.
- *diagnoses*: a session's Procedure names its assessment's Conditions (as ``convert``, see
  :mod:`ims_fhir.diagnoses`). A light pass finds the assessments with diagnoses (their count,
  the first in input order winning) and the sessions naming an assessment; the two are
  joined on the assessment id, and the result, (session position, count), is joined onto
  the records, so each session reaches the conversion with its assessment's count (nothing
  unbounded is collected on the driver). Without any such session the records go as they are.
- *output* (:meth:`SparkConversion.write`): ``OUT/dataset=<ResourceType>/part-*.txt``, FHIR
  NDJSON, and ``OUT/dataset=rejects/part-*.txt``, the lines of ``rejects.ndjson``; written
  in one job (the conversion runs once). The ``resources`` and ``rejects`` DataFrames give
  the same for further processing.

Not supported here: ``--strict-refs``, Bundles, JSON documents and CSV folders (convert them
to NDJSON first, or run ``ims-fhir convert --jobs N``).

Run on a cluster (the package and its dependencies must be importable on the executors)::

    pip wheel --no-deps -w dist . && spark-submit --master yarn \\
        --py-files dist/ims_fhir-0.1.0-py3-none-any.whl \\
        -m ims_fhir.spark ...   # or: spark-submit [...] path/to/ims_fhir/spark.py INPUT... --out DIR ...

(see the README for a complete example).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from .convert import SERIES_TYPES
from .diagnoses import count_of
from .errors import ImsFhirError, UsageError
from .mapping import MappingContext, MappingOptions, map_organization
from .pipeline import RecordPipeline
from .records.models import Source
from .records.readers import MAX_DEPTH, RawRecord, parse_ndjson_line, too_deep
from .records.validation import record_id_of
from .records.vocabulary import RECORD_TYPES
from .rejects import Rejected
from .terminology import default_terminology

if TYPE_CHECKING:
    from pyspark import RDD
    from pyspark.sql import DataFrame, SparkSession

REJECTS = "rejects"
#: (file index, line index) or (0, row index): the order of records in the dataset
Position = tuple[int, int]


@dataclass(frozen=True)
class SparkOptions:
    """What ``convert`` takes on its command line, for one source."""

    clinic_id: str
    system_base: str
    clinic_name: str | None = None
    lenient: bool = False
    validate: bool = False
    default_tz: str | None = None
    #: CPT on treatments as ``convert --cpt/--no-cpt``: True always, False never, None (default)
    #: only for a source with ``country: US``
    cpt: bool | None = None
    #: ISO 3166-1 alpha-2 country and ISO 3166-2 subdivision of the clinic (``--country``, ``--jurisdiction``)
    country: str | None = None
    jurisdiction: str | None = None

    def source(self) -> Source:
        data = {"clinic_id": self.clinic_id, "system_base": self.system_base, "clinic_name": self.clinic_name,
                "country": self.country, "jurisdiction": self.jurisdiction}
        return Source.model_validate({k: val for k, val in data.items() if val is not None})

    def context(self) -> MappingContext:
        return MappingContext(self.source(), default_terminology(), MappingOptions(cpt=self.cpt))

    def pipeline(self, seen: Any) -> RecordPipeline:
        return RecordPipeline(lenient=self.lenient, default_tz=self.default_tz, seen=seen, validate_fhir=self.validate)


# ------------------------------------------------------------------------- executors' side


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(val) for k, val in value.items() if val is not None}
    if isinstance(value, list):
        return [_drop_nulls(item) for item in value]
    return value


def _raw(item: tuple[Position, str, Any]) -> RawRecord:
    """A line (str) or a DataFrame row (dict) -> the RawRecord the file readers would give."""
    _, origin, body = item
    if isinstance(body, str):
        # Hadoop's reader drops the line's end; the file reader keeps it (so "at character N" of a
        # malformed line counts it): put it back
        return parse_ndjson_line(body.encode() + b"\n", origin)
    return parse_ndjson_line(orjson.dumps(_drop_nulls(body)), origin)  # as a record object of POST /records


def _is_record(item: tuple[Position, str, Any]) -> bool:
    body = item[2]
    return not isinstance(body, str) or bool(body.strip())  # convert skips blank lines


def _key(item: tuple[Position, str, Any]) -> list[tuple[tuple[str, str], tuple[Position, int]]]:
    """(record type, id) of a record that takes part in the duplicate check, as RecordPipeline.one.

    For a line, only what decides that is computed (not the full reading of :func:`_raw`): a
    record takes part when its line is a JSON object, not nested too deep, whose ``record_type``
    is a known one and whose ``id`` is readable (a repeated key does not change that).
    """
    body = item[2]
    if not isinstance(body, str):
        raw = _raw(item)
        record_id = record_id_of(raw.data)
        if raw.record_type is None or raw.data is None or record_id is None \
                or any(p.rule == "unknown_record_type" for p in raw.problems):
            return []
        return [((raw.record_type, record_id), (item[0], 1))]
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(obj, dict):
        return []
    record_type = obj.get("record_type")
    record_id = record_id_of(obj)
    if not isinstance(record_type, str) or record_type not in RECORD_TYPES or record_id is None:
        return []
    if body.count("{") + body.count("[") > MAX_DEPTH and too_deep(obj):  # fewer brackets cannot nest deeper
        return []
    return [((record_type, record_id), (item[0], 1))]


#: (assessment id, count) of a session's assessment with diagnoses, carried to the conversion with the session
Reason = tuple[str, int] | None


def _links(item: tuple[Position, str, Any]) -> list[tuple[str, tuple[str, Position, int]]]:
    """``(assessment id, ("n", position, count))`` for an assessment with diagnoses (counted as
    :func:`ims_fhir.diagnoses.count_of`), ``(assessment id, ("t", position, 0))`` for a session
    naming an assessment; a line that names neither is not parsed."""
    body = item[2]
    marked = True  # as convert's first pass: a line without the text "diagnoses" counts none
    if isinstance(body, str):
        marked = '"diagnoses"' in body
        if not marked and '"assessment_id"' not in body:
            return []
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return []
    else:
        obj = _drop_nulls(body)
    if not isinstance(obj, dict):
        return []
    record_type = obj.get("record_type")
    found = count_of(record_type, obj) if marked else None
    if found is not None:
        return [(found[0], ("n", item[0], found[1]))]
    assessment_id = obj.get("assessment_id")
    if record_type == "treatment" and isinstance(assessment_id, str) and assessment_id:
        return [(assessment_id, ("t", item[0], 0))]
    return []


def _with_reasons(items: RDD[tuple[Position, str, Any]]) -> RDD[tuple[tuple[Position, str, Any], Reason]]:
    """Each record with the diagnosis count of its assessment, for a session whose assessment has diagnoses."""
    links = items.flatMap(_links)
    counts = links.filter(lambda kv: kv[1][0] == "n").mapValues(lambda v: (v[1], v[2])).reduceByKey(min)
    sessions = links.filter(lambda kv: kv[1][0] == "t").mapValues(lambda v: v[1])
    reasons = sessions.join(counts).map(lambda kv: (kv[1][0], (kv[0], kv[1][1][1])))
    if reasons.isEmpty():
        return items.map(lambda item: (item, None))
    return items.keyBy(lambda item: item[0]).leftOuterJoin(reasons).values()


def _first(a: tuple[Position, int], b: tuple[Position, int]) -> tuple[Position, int]:
    return min(a[0], b[0]), a[1] + b[1]


class _Duplicates:
    """The pipeline's FirstSeen store here: the ids used more than once, known from the first pass."""

    def __init__(self, first_origins: dict[tuple[str, str], str]) -> None:
        self.first_origins = first_origins

    def first_seen(self, scope: str, record_type: str, record_id: str, origin: str) -> str | None:
        first = self.first_origins.get((record_type, record_id))
        return first if first is not None and first != origin else None


#: lines per row handed to the JVM: one row per line would cost more than the conversion itself
CHUNK = 500


def _convert_partition(options: SparkOptions, duplicates: Any) -> Any:
    def run(rows: Iterable[tuple[tuple[Position, str, Any], Reason]]) -> Iterator[tuple[str, str]]:
        current: list[Reason] = [None]  # the diagnosis count of the assessment of the record being mapped

        def diagnoses(assessment_id: str) -> int | None:
            reason = current[0]
            return reason[1] if reason is not None and reason[0] == assessment_id else None

        ctx = options.context().with_diagnoses(diagnoses)
        pipeline = options.pipeline(_Duplicates(duplicates.value))
        pending: dict[str, list[bytes]] = {}
        series: set[str] = set()
        for item, reason in rows:
            current[0] = reason
            outcome = pipeline.one(_raw(item), ctx)
            if isinstance(outcome, Rejected):
                lines = pending.setdefault(REJECTS, [])
                lines.append(orjson.dumps(outcome.as_dict()))
                if len(lines) >= CHUNK:
                    yield REJECTS, b"\n".join(lines).decode()
                    lines.clear()
            else:
                for res in outcome.group.resources:
                    rtype = res["resourceType"]
                    if rtype in SERIES_TYPES:  # one row each, made distinct across partitions by the driver
                        if res["id"] not in series:
                            series.add(res["id"])
                            yield rtype, orjson.dumps(res).decode()
                        continue
                    lines = pending.setdefault(rtype, [])
                    lines.append(orjson.dumps(res))
                    if len(lines) >= CHUNK:
                        yield rtype, b"\n".join(lines).decode()
                        lines.clear()
        for kind, lines in pending.items():
            if lines:
                yield kind, b"\n".join(lines).decode()

    return run


# ------------------------------------------------------------------------- driver's side


@dataclass
class SparkConversion:
    """The converted dataset: ``dataset`` (resource type or ``rejects``) and ``value``, up to
    :data:`CHUNK` NDJSON lines of that dataset (written as they are, they are NDJSON files)."""

    lines: DataFrame

    @property
    def resources(self) -> DataFrame:
        """``resourceType``, ``resource`` (the NDJSON line)."""
        from pyspark.sql import functions as F

        return self.lines.where(F.col("dataset") != REJECTS).select(
            F.col("dataset").alias("resourceType"), F.explode(F.split("value", "\n")).alias("resource"))

    @property
    def rejects(self) -> DataFrame:
        """``reject``: the line of ``rejects.ndjson`` (record_type, id, origin, problems)."""
        from pyspark.sql import functions as F

        return self.lines.where(F.col("dataset") == REJECTS).select(F.explode(F.split("value", "\n")).alias("reject"))

    def write(self, out: str, *, mode: str = "error") -> None:
        """``out/dataset=<ResourceType>/part-*.txt`` and ``out/dataset=rejects/part-*.txt``, in one job.

        Each task keeps a file open per resource type (``spark.sql.maxConcurrentOutputFileWriters``,
        set for this write only) instead of sorting its rows by type first.
        """
        conf = self.lines.sparkSession.conf
        key = "spark.sql.maxConcurrentOutputFileWriters"
        before = conf.get(key, None)
        conf.set(key, "16")
        try:
            self.lines.write.mode(mode).partitionBy("dataset").text(out)
        finally:
            if before is None:
                conf.unset(key)
            else:
                conf.set(key, before)


def _expand(spark: SparkSession, paths: Sequence[str]) -> list[str]:
    """Files behind paths, globs and folders (any Hadoop file system), in order: line numbers are per file."""
    sc = spark.sparkContext
    jvm: Any = sc._jvm
    conf = sc._jsc.hadoopConfiguration()
    files: list[str] = []
    for path in paths:
        hpath = jvm.org.apache.hadoop.fs.Path(path)
        fs = hpath.getFileSystem(conf)
        matches = fs.globStatus(hpath)
        if not matches:
            raise UsageError(f"{path}: no such file or folder")
        for status in sorted(matches, key=lambda st: st.getPath().toString()):
            if status.isDirectory():
                inside = [st.getPath().toString() for st in fs.listStatus(status.getPath())
                          if st.isFile() and not st.getPath().getName().startswith(("_", "."))]
                files.extend(sorted(inside))
            else:
                files.append(status.getPath().toString())
    return files


def _numbered_lines(spark: SparkSession, paths: Sequence[str],
                    partitions: int | None) -> tuple[RDD[tuple[Position, str, Any]], list[str]]:
    """The records of the files, numbered, and the files' names (by file index)."""
    sc = spark.sparkContext
    parts = []
    names = []
    for index, path in enumerate(_expand(spark, paths)):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        names.append(name)
        lines = sc.textFile(path, minPartitions=partitions)

        def number(pair: tuple[str, int], index: int = index, name: str = name) -> tuple[Position, str, Any]:
            line, i = pair
            return (index, i), f"{name}:{i + 1}", line

        parts.append(lines.zipWithIndex().map(number))
    rdd = sc.union(parts) if len(parts) > 1 else parts[0]
    if partitions and rdd.getNumPartitions() < partitions:
        rdd = rdd.repartition(partitions)  # a gzip file is read in one partition
    return rdd, names


def _numbered_rows(frame: DataFrame, name: str) -> RDD[tuple[Position, str, Any]]:
    def number(pair: tuple[Any, int]) -> tuple[Position, str, Any]:
        row, i = pair
        return (0, i), f"{name}:{i + 1}", row.asDict(recursive=True)

    return frame.rdd.zipWithIndex().map(number)


def convert_dataset(spark: SparkSession, options: SparkOptions, *, paths: Sequence[str] | None = None,
                    frame: DataFrame | None = None, name: str = "dataframe",
                    partitions: int | None = None) -> SparkConversion:
    """Convert NDJSON files (``paths``) or a DataFrame of records (``frame``); lazy until written."""
    from pyspark import StorageLevel

    if (paths is None) == (frame is None):
        raise UsageError("give either NDJSON paths or a DataFrame of records")
    options.source()  # a bad source fails here, on the driver
    if paths is not None:
        if not paths:
            raise UsageError("no input given")
        items, names = _numbered_lines(spark, list(paths), partitions)
    elif frame is not None:
        items, names = _numbered_rows(frame, name), [name]
    items = items.filter(_is_record)
    # pass 1: ids used more than once, with the position where they were first used (a light
    # read of each record; what is shuffled is the id and a position, the origin is named here)
    repeated = items.flatMap(_key).reduceByKey(_first).filter(lambda kv: kv[1][1] > 1).collectAsMap()
    duplicates = spark.sparkContext.broadcast(
        {key: f"{names[file]}:{index + 1}" for key, ((file, index), _) in repeated.items()})
    # pass 2: the conversion, with the converter's own per-record code
    # kept on local disk (a partition of output would not fit the heap: 1M records with MEMORY_AND_DISK
    # ran out of a 1 GB heap) so that taking the session series apart does not convert twice
    converted = _with_reasons(items).mapPartitions(_convert_partition(options, duplicates)).persist(StorageLevel.DISK_ONLY)
    org = map_organization(options.context())
    organization = spark.sparkContext.parallelize([("Organization", orjson.dumps(org).decode())], 1)
    # every session of a series emits its EpisodeOfCare / ServiceRequest alike: one line each, as convert writes
    series = converted.filter(lambda kv: kv[0] in SERIES_TYPES).distinct()
    rows = organization.union(converted.filter(lambda kv: kv[0] not in SERIES_TYPES)).union(series)
    return SparkConversion(spark.createDataFrame(rows, "dataset string, value string"))


def main(argv: Sequence[str] | None = None) -> int:
    """``spark-submit ... -m ims_fhir.spark INPUT... --out DIR --clinic-id ID --system-base URI``."""
    ap = argparse.ArgumentParser(prog="ims_fhir.spark", description="Convert IMS NDJSON records to FHIR NDJSON on Spark.")
    ap.add_argument("inputs", nargs="+", help="NDJSON files or folders (any Hadoop path: file:, hdfs:, s3a:)")
    ap.add_argument("--out", required=True, help="output folder (must not exist, unless --overwrite)")
    ap.add_argument("--clinic-id", required=True)
    ap.add_argument("--system-base", required=True)
    ap.add_argument("--clinic-name")
    ap.add_argument("--lenient", action="store_true")
    ap.add_argument("--validate", action="store_true")
    ap.add_argument("--default-tz")
    ap.add_argument("--country", metavar="CC", help="ISO 3166-1 alpha-2 country of the clinic, e.g. CA")
    ap.add_argument("--jurisdiction", metavar="CC-XX", help="ISO 3166-2 subdivision, e.g. CA-BC")
    ap.add_argument("--cpt", action=argparse.BooleanOptionalAction, default=None,
                    help="add (or leave out) CPT 20560/20561 on treatments; default: only for country US")
    ap.add_argument("--partitions", type=int, help="input partitions (default: Spark's)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    from pyspark.errors import AnalysisException
    from pyspark.sql import SparkSession

    options = SparkOptions(args.clinic_id, args.system_base, args.clinic_name, args.lenient, args.validate,
                           args.default_tz, args.cpt, args.country, args.jurisdiction)
    running = SparkSession.getActiveSession()
    spark = running or SparkSession.builder.appName("ims-fhir convert").getOrCreate()
    try:
        result = convert_dataset(spark, options, paths=args.inputs, partitions=args.partitions)
        result.write(args.out, mode="overwrite" if args.overwrite else "error")
    except ImsFhirError as exc:
        print(f"ims-fhir: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValueError as exc:  # a bad source (pydantic)
        print(f"ims-fhir: bad source: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    except AnalysisException as exc:  # e.g. the output folder exists
        print(f"ims-fhir: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    finally:
        if running is None:
            spark.stop()
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
