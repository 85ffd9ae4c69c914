"""Bronze: raw landing files → `bronze.<source>`, typed by the declared schema, with lineage.

Every record of a raw file ends up either in `bronze.<source>` or, as its raw text with the
reason, in `bronze.<source>_rejected`; the run checks that against the files' own line counts and
fails loudly where it does not hold. `ops.ingest_log` remembers each file's checksum, so a file
already ingested is skipped and a changed one replaces the rows of its date.

    >>> results = ingest(cfg, spark, dates=[date(2013, 1, 1)])
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Iterator

from pipelines.datasets import PARTITION_COLUMN, Dataset, Source, dataset_for
from pipelines.landing import LandingFile, find_files

INGEST_LOG = "ops.ingest_log"
INGEST_LOG_SCHEMA = ("source string, path string, sha256 string, size long, rows long, rejected long, "
                     "run_id string, ingested_at timestamp")
REJECTED_SCHEMA = ("_source_file string, line_number long, raw_line string, reason string, "
                   "_run_id string, _ingest_time timestamp")
LINEAGE_COLUMNS = ["_source_file", "_ingest_time", "_run_id"]


class AccountingError(RuntimeError):
    """Rows went missing or appeared between two stages; the message says where and how many."""


def new_run_id(stage: str) -> str:
    """A run id that sorts by time: `ingest-20240105T031500-1a2b3c`."""
    return f"{stage}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


# --------------------------------------------------------------------------------------------
# Parsing one raw file (pure Python: runs inside Spark tasks, and in tests without Spark)


@dataclass
class ParsedFile:
    """The records of one raw file: typed rows, and the rejected ones with their reasons."""
    records: int                        # records the file holds by its own structure
    good: Any                           # pyarrow.Table of the rows that parsed, declared columns
    good_lines: list[int]               # the line (or row) number of each of them
    rejected: list[tuple[int, str, str]] = field(default_factory=list)     # (line number, raw, reason)
    warning: str | None = None                                             # a problem of the whole file

    def rows(self) -> list[dict]:
        """The parsed rows as dicts (for tests and notebooks)."""
        return self.good.to_pylist()


_INT = re.compile(r"[+-]?\d+")
_DOUBLE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_BOUNDS = {"int": (-2**31, 2**31 - 1), "long": (-2**63, 2**63 - 1)}
_TRUE = {"true", "t", "1", "yes"}
_FALSE = {"false", "f", "0", "no"}


def _shown(value: Any, limit: int = 60) -> str:
    """A value as a reason quotes it: cut short, since the raw line already keeps all of it."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(str(value)):,} characters)"


def _from_text(text: str, typ: str) -> Any:
    """The value of one field's text as `typ`; raises ValueError with a short reason."""
    if typ == "string":
        return text
    if typ in ("int", "long"):
        if not _INT.fullmatch(text):
            raise ValueError(f"{_shown(text)} is not an integer")
        value = int(text)
        lo, hi = _BOUNDS[typ]
        if not lo <= value <= hi:
            raise ValueError(f"{_shown(text)} does not fit in {typ}")
        return value
    if typ == "double":
        if not _DOUBLE.fullmatch(text):
            raise ValueError(f"{_shown(text)} is not a number")
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{_shown(text)} is not a finite number")
        return value
    if typ == "boolean":
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"{_shown(text)} is not true or false")
    if typ == "date":
        try:
            return date.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{_shown(text)} is not a date (YYYY-MM-DD)") from None
    if typ == "timestamp":
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{_shown(text)} is not an ISO timestamp") from None
        # A timestamp without an offset is taken as UTC, the lakehouse's one time zone.
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    raise ValueError(f"unknown type {typ}")


def _from_value(value: Any, typ: str) -> Any:
    """A typed value (JSON or Parquet) checked and converted to `typ`."""
    if isinstance(value, str):
        return _from_text(value, typ)
    if typ in ("int", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{_shown(value)} is not an integer")
        lo, hi = _BOUNDS[typ]
        if not lo <= value <= hi:
            raise ValueError(f"{_shown(value)} does not fit in {typ}")
        return value
    if typ == "double":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{_shown(value)} is not a finite number")
        return float(value)
    if typ == "boolean":
        if not isinstance(value, bool):
            raise ValueError(f"{_shown(value)} is not true or false")
        return value
    if typ == "date":
        if isinstance(value, datetime) or not isinstance(value, date):
            raise ValueError(f"{_shown(value)} is not a date")
        return value
    if typ == "timestamp":
        if not isinstance(value, datetime):
            raise ValueError(f"{_shown(value)} is not a timestamp")
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    raise ValueError(f"{_shown(value)} is not a {typ}")


def split_lines(content: bytes) -> list[bytes]:
    """The lines of a file, without their line ends; a final line end does not start a new line."""
    lines = content.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def count_records(content: bytes, source: Source) -> int:
    """How many records a raw file holds by its own structure: lines, less the header; Parquet rows."""
    if source.format == "parquet":
        if not content:
            return 0
        import io

        import pyarrow.parquet as pq

        return pq.ParquetFile(io.BytesIO(content)).metadata.num_rows
    lines = split_lines(content)
    if source.format == "csv" and source.csv.header:
        return max(0, len(lines) - 1)
    return len(lines)


def _header_problem(found: list[str], expected: list[str]) -> tuple[str | None, list[int] | None]:
    """(reason, None) when a file's columns differ from the declared ones, else (None, positions)."""
    if found == expected:
        return None, None
    extra = [c for c in found if c not in expected]
    missing = [c for c in expected if c not in found]
    dupes = sorted({c for c in found if found.count(c) > 1})
    if not extra and not missing and not dupes:
        # Same columns in another order: read each by name.
        return None, [found.index(c) for c in expected]
    parts = []
    if extra:
        parts.append(f"extra column{'s' if len(extra) > 1 else ''} {', '.join(extra)}")
    if missing:
        parts.append(f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    if dupes:
        parts.append(f"repeated column{'s' if len(dupes) > 1 else ''} {', '.join(dupes)}")
    return f"header does not match the declared columns: {'; '.join(parts)}", None


def _csv_header(first_line: bytes, source: Source) -> tuple[str | None, list[int] | None]:
    """(reason, None) when a CSV header is unreadable or names other columns, else (None, order)."""
    encoding = source.csv.encoding
    try:
        header = first_line.decode(encoding)
    except UnicodeDecodeError as exc:
        return f"header is not valid {encoding}: {exc.reason} at byte {exc.start}", None
    fields, problem = _split_csv(header.lstrip("\ufeff"), source)
    if problem:
        return f"header: {problem}", None
    return _header_problem([f.strip() for f in fields], source.column_names)


def header_reason(content: bytes, source: Source) -> str | None:
    """Why a raw file's header (a CSV's first line, a Parquet file's columns) is refused, or None.

    Read on the driver for every delivered file, so that a file with a bad header and no records
    after it (a binary blob without a line break, say) is refused by name, not reported empty.
    """
    if not content:
        return None
    if source.format == "parquet":
        import io

        import pyarrow.parquet as pq

        return _header_problem(pq.ParquetFile(io.BytesIO(content)).schema_arrow.names, source.column_names)[0]
    if source.format == "csv" and source.csv.header:
        return _csv_header(split_lines(content)[0], source)[0]
    return None


def parse_file(content: bytes, source: Source) -> ParsedFile:
    """Parse one raw file of `source` into typed rows and rejected records.

    A record is rejected, with its raw text and a reason, when it is not valid in the file's
    encoding, is malformed CSV or JSON, has the wrong number of fields, or holds a value that does
    not parse as its column's declared type. A CSV whose header lacks a declared column or has one
    the schema does not declare rejects all its records (the reason names the columns); one with
    the same columns in another order is read by name. An empty file has no records.
    """
    if source.format == "parquet":
        return _parse_parquet(content, source)
    lines = split_lines(content)
    if source.format == "csv":
        fast = _parse_csv_arrow(content, source, len(lines) - (1 if source.csv.header else 0))
        if fast is not None:
            return fast
    out = _Collector(source)
    if not lines:
        return out.done()
    names = source.column_names
    types = [c.type for c in source.columns]
    encoding = source.csv.encoding
    start, header_reason, order = 0, None, None
    if source.format == "csv" and source.csv.header:
        start = 1
        header_reason, order = _csv_header(lines[0], source)
        if header_reason:
            out.warning = header_reason
    out.records = len(lines) - start
    for i in range(start, len(lines)):
        raw = lines[i]
        number = i + 1
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as exc:
            out.rejected.append((number, raw.decode(encoding, errors="backslashreplace"),
                                 f"not valid {encoding}: byte 0x{raw[exc.start]:02x} at position {exc.start} ({exc.reason})"))
            continue
        if header_reason:
            out.rejected.append((number, text, header_reason))
            continue
        if not text.strip():
            out.rejected.append((number, text, "blank line"))
            continue
        if source.format == "csv":
            values, reason = _csv_values(text, source, names, types, order)
        else:
            values, reason = _json_values(text, names, types, source.csv.null_values)
        if reason:
            out.rejected.append((number, text, reason))
        else:
            out.rows.append((number, values))
    return out.done()


class _Collector:
    """Rows and rejections gathered line by line, turned into a ParsedFile at the end."""

    def __init__(self, source: Source):
        self.source = source
        self.records = 0
        self.rows: list[tuple[int, tuple]] = []
        self.rejected: list[tuple[int, str, str]] = []
        self.warning: str | None = None

    def done(self) -> ParsedFile:
        import pyarrow as pa

        columns = list(zip(*[v for _, v in self.rows])) if self.rows else [()] * len(self.source.columns)
        good = pa.table([pa.array(list(col), type=_arrow_type(c.type)) for col, c in zip(columns, self.source.columns)],
                        schema=_arrow_schema(self.source))
        return ParsedFile(self.records, good, [n for n, _ in self.rows], self.rejected, self.warning)


def _parse_csv_arrow(content: bytes, source: Source, records: int) -> ParsedFile | None:
    """The fast path: Arrow's CSV reader over a whole file that is clean. None where anything
    is off (a bad line, another header, a value Arrow reads more loosely than the line parser):
    the file is then parsed line by line, which names the lines and reasons."""
    import io

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    opts = source.csv
    if records <= 0 or opts.encoding.lower().replace("_", "-") not in ("utf-8", "utf8") or not opts.header:
        return None
    schema = _arrow_schema(source)
    try:
        table = pcsv.read_csv(
            io.BytesIO(content),
            read_options=pcsv.ReadOptions(use_threads=False),
            parse_options=pcsv.ParseOptions(delimiter=opts.delimiter, quote_char=opts.quote,
                                            newlines_in_values=False, ignore_empty_lines=True),
            convert_options=pcsv.ConvertOptions(column_types=schema, null_values=list(opts.null_values),
                                                strings_can_be_null=True, quoted_strings_can_be_null=True,
                                                true_values=sorted(_TRUE), false_values=sorted(_FALSE)))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, UnicodeDecodeError):
        return None
    if table.column_names != schema.names or table.num_rows != records:
        return None
    for c in source.columns:
        column = table.column(c.name)
        if c.type == "double" and column.null_count < len(column):
            if not pc.all(pc.is_finite(column.drop_null())).as_py():
                return None
    return ParsedFile(records, table.cast(schema), list(range(2, records + 2)))


def _arrow_schema(source: Source):
    import pyarrow as pa

    return pa.schema([pa.field(c.name, _arrow_type(c.type)) for c in source.columns])


def _split_csv(text: str, source: Source) -> tuple[list[str], str | None]:
    opts = source.csv
    if opts.quote not in text:
        return text.split(opts.delimiter), None
    try:
        parsed = list(csv.reader([text], delimiter=opts.delimiter, quotechar=opts.quote, strict=True))
    except csv.Error as exc:
        return [], f"malformed CSV: {exc}"
    if len(parsed) != 1:
        return [], "malformed CSV: the line holds more than one record"
    return parsed[0], None


def _csv_values(text: str, source: Source, names: list[str], types: list[str],
                order: list[int] | None) -> tuple[tuple | None, str | None]:
    fields, problem = _split_csv(text, source)
    if problem:
        return None, problem
    if len(fields) != len(names):
        return None, f"expected {len(names)} fields, found {len(fields)}"
    if order is not None:
        fields = [fields[j] for j in order]
    nulls = source.csv.null_values
    return _typed(zip(names, types, fields), _from_text, lambda v: v in nulls)


def _typed(fields, convert, is_null) -> tuple[tuple | None, str | None]:
    """Convert (name, type, raw) triples; every field of the wrong type is named in one reason."""
    values, errors = [], []
    for name, typ, raw in fields:
        if is_null(raw):
            values.append(None)
            continue
        try:
            values.append(convert(raw, typ))
        except ValueError as exc:
            values.append(None)
            errors.append(f"{name}: {exc}")
    if errors:
        return None, "wrong type: " + "; ".join(errors)
    return tuple(values), None


def _json_values(text: str, names: list[str], types: list[str],
                 nulls: tuple[str, ...]) -> tuple[tuple | None, str | None]:
    try:
        record = json.loads(text)
    except ValueError as exc:
        return None, f"malformed JSON: {exc}"
    if not isinstance(record, dict):
        return None, f"malformed JSON: expected an object, got {type(record).__name__}"
    return _record_values(record, names, types, nulls)


def _record_values(record: dict, names: list[str], types: list[str],
                   nulls: tuple[str, ...]) -> tuple[tuple | None, str | None]:
    # A JSON record may leave out a null field; a field the schema does not declare is an error.
    extra = [k for k in record if k not in names]
    if extra:
        return None, f"fields not in the declared columns: {', '.join(map(str, extra))}"
    return _typed(((name, typ, record.get(name)) for name, typ in zip(names, types)), _from_value,
                  lambda v: v is None or (isinstance(v, str) and v in nulls))


def _parse_parquet(content: bytes, source: Source) -> ParsedFile:
    import io

    import pyarrow.parquet as pq

    out = _Collector(source)
    if not content:
        return out.done()
    table = pq.read_table(io.BytesIO(content))
    out.records = table.num_rows
    names = source.column_names
    types = [c.type for c in source.columns]
    reason, _ = _header_problem(table.column_names, names)
    if reason:
        out.warning = reason
    for i, record in enumerate(table.to_pylist()):
        raw = json.dumps(record, default=str)
        values, problem = (None, reason) if reason else _record_values(record, names, types, ())
        if problem:
            out.rejected.append((i + 1, raw, problem))
        else:
            out.rows.append((i + 1, values))
    return out.done()


# --------------------------------------------------------------------------------------------
# Parsing files with Spark

# The parsed frame: declared columns, then what bronze and the rejected table need.
PARSE_EXTRA = [("_source_file", "string"), ("_line_number", "bigint"), ("_raw_line", "string"),
               ("_reason", "string")]


def parsed_schema(source: Source) -> str:
    cols = [f"`{c.name}` {c.spark_type}" for c in source.columns]
    if source.daily:
        cols.append(f"`{PARTITION_COLUMN}` date")
    return ", ".join(cols + [f"`{n}` {t}" for n, t in PARSE_EXTRA])


def _arrow_type(typ: str):
    import pyarrow as pa

    return {"string": pa.string(), "int": pa.int32(), "long": pa.int64(), "double": pa.float64(),
            "boolean": pa.bool_(), "date": pa.date32(), "timestamp": pa.timestamp("us", tz="UTC")}[typ]


def _local_path(spark_path: str) -> str:
    """A binaryFile `path` value (`file:/a/b.csv`) as a normalised local path."""
    path = spark_path
    for prefix in ("file://", "file:"):
        if path.startswith(prefix):
            path = path[len(prefix):]
            break
    return os.path.normpath(path)


def make_parser(source: Source, files: list[LandingFile]):
    """The function Spark tasks run (through `mapInArrow`) over `binaryFile` rows of `files`."""
    by_path = {os.path.normpath(os.path.realpath(f.absolute)): (f.path, f.date) for f in files}

    def parse_task(batches: Iterator) -> Iterator:
        import urllib.parse

        import pyarrow as pa

        types = [c.type for c in source.columns]
        fields = list(_arrow_schema(source))
        if source.daily:
            fields.append(pa.field(PARTITION_COLUMN, pa.date32()))
        fields += [pa.field("_source_file", pa.string()), pa.field("_line_number", pa.int64()),
                   pa.field("_raw_line", pa.string()), pa.field("_reason", pa.string())]
        schema = pa.schema(fields)
        for batch in batches:
            for spark_path, content in zip(batch.column("path").to_pylist(), batch.column("content").to_pylist()):
                local = _local_path(spark_path)
                key = by_path.get(local) or by_path.get(os.path.normpath(urllib.parse.unquote(local)))
                if key is None:
                    raise RuntimeError(f"bronze read {spark_path}, which is not among the files of this run")
                rel, day = key
                parsed = parse_file(content or b"", source)
                n_good, n_bad = parsed.good.num_rows, len(parsed.rejected)
                n = n_good + n_bad
                if n == 0:
                    continue
                arrays = [pa.concat_arrays([*parsed.good.column(i).chunks, pa.nulls(n_bad, _arrow_type(t))])
                          for i, t in enumerate(types)]
                if source.daily:
                    arrays.append(pa.array([day] * n, type=pa.date32()))
                arrays += [
                    pa.array([rel] * n, type=pa.string()),
                    pa.array(parsed.good_lines + [ln for ln, _, _ in parsed.rejected], type=pa.int64()),
                    pa.array([None] * n_good + [raw for _, raw, _ in parsed.rejected], type=pa.string()),
                    pa.array([None] * n_good + [why for _, _, why in parsed.rejected], type=pa.string()),
                ]
                yield pa.RecordBatch.from_arrays(arrays, schema=schema)

    return parse_task


def _static_root(landing_file: LandingFile, pattern: str) -> str:
    """The folder above every file of a source: the glob's leading parts without wildcards."""
    parts = pattern.split("/")
    fixed = []
    for part in parts[:-1]:
        if any(ch in part for ch in "*?[{"):
            break
        fixed.append(part)
    depth = len(landing_file.path.split("/"))
    root = landing_file.absolute
    for _ in range(depth):
        root = os.path.dirname(root)
    return os.path.join(root, *fixed) if fixed else root


def parse_files(spark, source: Source, files: list[LandingFile]):
    """One DataFrame of every record of `files`: declared columns (+ `date` for a daily feed),
    `_source_file`, `_line_number`, and `_raw_line` + `_reason` where the record was rejected."""
    from pyspark.sql import functions as F

    if not files:
        return spark.createDataFrame([], parsed_schema(source))
    # Spark lists more than 32 paths with a job of one task per path; the source's folder lists in
    # a blink, and the filter on `path` keeps binaryFile from reading other days' contents.
    root = _static_root(files[0], source.path)
    wanted = sorted({"file:" + os.path.realpath(f.absolute) for f in files})
    raw = (spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(root)
           .filter(F.col("path").isin(wanted)).select("path", "content"))
    return raw.mapInArrow(make_parser(source, files), parsed_schema(source))


def bronze_rows(parsed, source: Source, run_id: str, ingest_time: datetime):
    """The parsed records that parsed: declared columns, `date`, and the lineage columns."""
    from pyspark.sql import functions as F

    cols = source.column_names + ([PARTITION_COLUMN] if source.daily else [])
    return (parsed.filter(F.col("_reason").isNull())
            .select(*cols, "_source_file",
                    F.lit(ingest_time).cast("timestamp").alias("_ingest_time"),
                    F.lit(run_id).alias("_run_id")))


def rejected_rows(parsed, run_id: str, ingest_time: datetime):
    """The records that did not parse, as `bronze.<source>_rejected` holds them."""
    from pyspark.sql import functions as F

    return (parsed.filter(F.col("_reason").isNotNull())
            .select("_source_file", F.col("_line_number").alias("line_number"),
                    F.col("_raw_line").alias("raw_line"), F.col("_reason").alias("reason"),
                    F.lit(run_id).alias("_run_id"),
                    F.lit(ingest_time).cast("timestamp").alias("_ingest_time")))


# --------------------------------------------------------------------------------------------
# The ingest run


@dataclass
class IngestResult:
    """What one ingest run did to one source."""
    table: str
    files_found: int = 0
    files_ingested: int = 0          # new or changed files, parsed and committed
    files_skipped: int = 0           # already ingested with the same checksum
    files_reread: int = 0            # unchanged files read again because their date had a new file
    rows: int = 0                    # rows committed to bronze by this run
    rejected: int = 0                # records committed to the rejected table by this run
    dates: list[date] = field(default_factory=list)           # partitions rewritten
    missing_dates: list[date] = field(default_factory=list)   # asked for (or in a gap) but no file
    empty_files: list[str] = field(default_factory=list)
    refused_files: list[str] = field(default_factory=list)    # whose header did not match: all rows rejected
    seconds: float = 0.0

    def line(self) -> str:
        files = self.files_ingested + self.files_reread
        text = (f"[ingest] {self.table}: {self.rows:,} rows from {files:,} file{'s' if files != 1 else ''} "
                f"({self.rejected:,} rejected, {self.files_skipped:,} skipped as already ingested")
        if self.empty_files:
            text += f", {len(self.empty_files)} empty"
        if self.refused_files:
            text += f", {len(self.refused_files)} with a header that does not match"
        if self.missing_dates:
            text += f", no file for {len(self.missing_dates)} day{'s' if len(self.missing_dates) > 1 else ''}"
        return text + f") in {self.seconds:.1f}s"


@dataclass(frozen=True)
class _Delivery:
    file: LandingFile
    sha256: str
    size: int
    records: int
    header_reason: str | None = None


def ingest(cfg, spark, dates: Iterable[date] | None = None, dataset: Dataset | None = None,
           sources: Iterable[str] | None = None, run_id: str | None = None,
           log: Callable[[str], None] | None = print) -> list[IngestResult]:
    """Ingest the landing files of every source (or of `sources`) into bronze; one result each.

    Daily feeds: only files of `dates` when given, every file in the landing folder otherwise.
    Reference tables are ingested whenever their file changed. A file already ingested with the
    same checksum is skipped; a new or changed file rewrites the bronze partition of its date (with
    the other files of that date), so running a date twice changes nothing.

        >>> ingest(cfg, spark, dates=[date(2013, 1, 1)])
    """
    from pipelines.lakehouse import Lakehouse

    dataset = dataset or dataset_for(cfg)
    run_id = run_id or new_run_id("ingest")
    lh = Lakehouse.from_config(cfg, spark)
    dates = sorted(set(dates)) if dates is not None else None
    names = list(sources) if sources is not None else list(dataset.sources)
    for name in names:
        dataset.source(name)
    results = []
    ingested = ingested_files(lh)
    # Without asked-for dates, a day is expected when any daily feed delivered a file for it.
    delivered = None if dates is not None else sorted(
        {f.date for s in dataset.daily_sources for f in find_files(cfg.lakehouse.landing, s)})
    for name in names:
        result = ingest_source(lh, cfg.lakehouse.landing, dataset.source(name), dates, run_id, log, ingested,
                               delivered)
        if log:
            log(result.line())
        results.append(result)
    return results


def ingest_source(lh, landing: str, source: Source, dates: list[date] | None, run_id: str,
                  log: Callable[[str], None] | None = print,
                  ingested: dict[str, dict[str, tuple[str, int]]] | None = None,
                  delivered: list[date] | None = None) -> IngestResult:
    """Ingest one source's new and changed landing files (see `ingest`). A day of `dates` (or,
    without dates, of `delivered`: the days other feeds have) with no file is reported missing."""
    started = time.time()
    ingest_time = datetime.now(timezone.utc).replace(microsecond=0)
    table = lh.table(f"bronze.{source.name}")
    result = IngestResult(table.name)
    files = find_files(landing, source, dates if source.daily else None)
    result.files_found = len(files)
    if source.daily:
        result.missing_dates = _missing_dates(files, dates, delivered)
        for day in result.missing_dates:
            if log:
                log(f"[ingest] {table.name}: no file for {day} in {os.path.join(landing, source.path_for(day))}; "
                    f"nothing ingested for that day")
    elif not files and log:
        log(f"[ingest] {table.name}: no file matches {os.path.join(landing, source.path)}; nothing ingested")

    known = (ingested if ingested is not None else ingested_files(lh)).get(source.name, {}) if table.exists() else {}
    deliveries = []
    for f in files:
        content = f.read_bytes()
        deliveries.append(_Delivery(f, hashlib.sha256(content).hexdigest(), len(content), count_records(content, source),
                                    header_reason(content, source)))
    changed = [d for d in deliveries if d.file.path not in known or known[d.file.path][0] != d.sha256]
    if not changed:
        result.files_skipped = len(deliveries)
        result.seconds = time.time() - started
        return result
    # A partition is rewritten whole, so every file of a date with a new file is read again.
    if source.daily:
        result.dates = sorted({d.file.date for d in changed})
        read = [d for d in deliveries if d.file.date in set(result.dates)]
    else:
        read = deliveries
    changed_paths = {d.file.path for d in changed}
    result.files_ingested = len(changed)
    result.files_reread = len(read) - len(changed)
    result.files_skipped = len(deliveries) - len(read)
    result.empty_files = [d.file.path for d in changed if d.records == 0 and not d.header_reason]

    parsed = parse_files(lh.spark, source, [d.file for d in read]).persist()
    try:
        per_file = _counts_per_file(parsed)
        _check_parsed(table.name, read, per_file)
        for d in sorted(read, key=lambda d: d.file.path):
            if d.header_reason:
                result.refused_files.append(d.file.path)
                if log:
                    what = (f"all its {d.records} records are rejected" if d.records
                            else "it holds no record after it")
                    log(f"[ingest] {table.name}: {d.file.path}: {d.header_reason}; {what}")
        good = bronze_rows(parsed, source, run_id, ingest_time)
        if source.daily:
            table.write(good, mode="overwrite", partition_by=[PARTITION_COLUMN],
                        partitions={PARTITION_COLUMN: result.dates}, description=f"ingest {run_id}")
        else:
            table.write(good, mode="overwrite", description=f"ingest {run_id}")
        # Rejected records of the files read again are replaced; a file ingested before without
        # any (the log says how many) has none to replace.
        had_rejected = any(known.get(d.file.path, (None, 0))[1] for d in read)
        fresh = sum(per_file.get(d.file.path, _NONE)[1] for d in read)
        _replace_rejected(lh, source, rejected_rows(parsed, run_id, ingest_time), {d.file.path for d in read},
                          run_id, needed=had_rejected or fresh > 0)
        log_rows = [(source.name, d.file.path, d.sha256, d.size, per_file.get(d.file.path, _NONE)[0],
                     per_file.get(d.file.path, _NONE)[1], run_id, ingest_time)
                    for d in read if d.file.path in changed_paths]
        lh.table(INGEST_LOG).write(lh.spark.createDataFrame(log_rows, INGEST_LOG_SCHEMA), mode="append",
                                   description=f"ingest {run_id}")
    finally:
        parsed.unpersist()
    result.rows = sum(per_file.get(d.file.path, _NONE)[0] for d in read)
    result.rejected = sum(per_file.get(d.file.path, _NONE)[1] for d in read)
    verify_committed(lh, source, read_files=[(d.file, d.records) for d in read], dates=result.dates)
    result.seconds = time.time() - started
    return result


_NONE = (0, 0)


def _missing_dates(files: list[LandingFile], dates: list[date] | None,
                   delivered: list[date] | None) -> list[date]:
    have = {f.date for f in files}
    expected = set(dates if dates is not None else (delivered or []))
    if have and dates is None:
        # A gap between the first and last delivered day is missing too.
        first, last = min(have), max(have)
        expected |= {first + timedelta(days=i) for i in range((last - first).days + 1)}
    return sorted(expected - have)


def ingested_files(lh) -> dict[str, dict[str, tuple[str, int]]]:
    """{source: {path: (sha256, rejected records)}} of each file as it was last ingested."""
    log_table = lh.table(INGEST_LOG)
    if not log_table.exists():
        return {}
    out: dict[str, dict[str, tuple[str, int]]] = {}
    rows = small_table(log_table, ["source", "path", "sha256", "rejected", "ingested_at", "run_id"]).to_pylist()
    # Oldest first, so each file's latest ingest wins.
    for r in sorted(rows, key=lambda r: (r["ingested_at"], r["run_id"])):
        out.setdefault(r["source"], {})[r["path"]] = (r["sha256"], int(r["rejected"] or 0))
    return out


def small_table(table, columns: list[str]):
    """An unpartitioned bookkeeping table (ingest log, rejected records) as a pyarrow Table, read
    by delta-rs on the driver: no Spark job for a few thousand rows."""
    return table.delta().to_pyarrow_table(columns=columns)


def _counts_per_file(parsed) -> dict[str, tuple[int, int]]:
    """{file: (rows, rejected records)} in one Spark job."""
    from pyspark.sql import functions as F

    reason = F.col("_reason")
    rows = (parsed.groupBy("_source_file")
            .agg(F.sum(reason.isNull().cast("long")).alias("good"),
                 F.sum(reason.isNotNull().cast("long")).alias("bad"))
            .collect())
    return {r["_source_file"]: (int(r["good"]), int(r["bad"])) for r in rows}


def _check_parsed(table: str, read: list[_Delivery], per_file: dict[str, tuple[int, int]]) -> None:
    """Every record the driver counted in a file came out of the parse, as a row or a rejection."""
    def parsed_records(path: str) -> int:
        good, bad = per_file.get(path, _NONE)
        return good + bad

    wrong = [f"{d.file.path}: {d.records} records, parsed {parsed_records(d.file.path)}"
             for d in read if parsed_records(d.file.path) != d.records]
    if wrong:
        raise AccountingError(f"{table}: parsing lost or invented records: {'; '.join(wrong[:10])}")


def _replace_rejected(lh, source: Source, new_rejected, paths: set[str], run_id: str, needed: bool) -> None:
    """Replace the rejected records of the files read again by this run's ones (a small table,
    rewritten whole); `needed` is False when there is nothing to remove and nothing to add."""
    from pyspark.sql import functions as F

    table = lh.table(f"bronze.{source.name}_rejected")
    if not table.exists():
        table.write(new_rejected, mode="overwrite", description=f"ingest {run_id}")
        return
    if not needed:
        return
    kept = table.read().filter(~F.col("_source_file").isin(sorted(paths)))
    table.write(kept.unionByName(new_rejected), mode="overwrite", description=f"ingest {run_id}")


def verify_committed(lh, source: Source, read_files: list[tuple[LandingFile, int]], dates: list[date]) -> None:
    """Check the committed tables: the records counted in the raw files equal bronze rows plus
    rejected records, per date for a daily feed and for the whole table otherwise."""
    bronze = lh.table(f"bronze.{source.name}")
    paths = {f.path for f, _ in read_files}
    rejected_by_file: dict[str, int] = {}
    for path in small_table(lh.table(f"bronze.{source.name}_rejected"), ["_source_file"]).column(0).to_pylist():
        if path in paths:
            rejected_by_file[path] = rejected_by_file.get(path, 0) + 1
    if source.daily:
        bronze_by_date = rows_per_partition(bronze)
        problems = []
        for day in dates:
            of_day = [(f, n) for f, n in read_files if f.date == day]
            lines = sum(n for _, n in of_day)
            rej = sum(rejected_by_file.get(f.path, 0) for f, _ in of_day)
            got = bronze_by_date.get(day, 0)
            if lines != got + rej:
                problems.append(f"{day}: {lines} records in the files, {got} in bronze + {rej} rejected")
    else:
        lines = sum(n for _, n in read_files)
        rej = sum(rejected_by_file.values())
        got = bronze.count()
        problems = [] if lines == got + rej else [f"{lines} records in the files, {got} in bronze + {rej} rejected"]
    if problems:
        raise AccountingError(f"bronze.{source.name}: the committed tables do not account for every raw record: "
                              + "; ".join(problems[:10]))


def rows_per_partition(table, columns: tuple[str, ...] = (PARTITION_COLUMN,)) -> dict:
    """Rows per partition of a committed table, from the Delta log's file statistics (no data is
    read): keyed by the partition value, or by a tuple of values for several columns. Dates come
    back as `date`, a null partition as None."""
    import pyarrow as pa

    actions = pa.table(table.delta().get_add_actions(flatten=True))
    out: dict = {}
    if actions.num_rows == 0:
        return out
    values = [actions.column(f"partition.{c}").to_pylist() for c in columns]
    for *key, n in zip(*values, actions.column("num_records").to_pylist()):
        key = tuple(_partition_value(v, c) for v, c in zip(key, columns))
        key = key[0] if len(columns) == 1 else key
        out[key] = out.get(key, 0) + int(n or 0)
    return out


def _partition_value(value: Any, column: str) -> Any:
    if column == PARTITION_COLUMN and isinstance(value, str):
        return date.fromisoformat(value)
    return value
