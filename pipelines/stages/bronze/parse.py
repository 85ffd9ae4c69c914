"""Parsing one raw file into typed rows and rejected records, in pure Python: it runs inside
Spark tasks (`pipelines.stages.bronze.task`) and in tests without Spark.

A record is a row of the declared columns or a rejection with its line number, raw text and the
reason; nothing is dropped. Clean UTF-8 CSV takes Arrow's fast reader; anything off falls back to
the line parser, which names each bad line.

    >>> parsed = parse_file(b"a,b\n1,x\n", source)
    >>> parsed.records, parsed.rows(), parsed.rejected
"""
from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

from pipelines.datasets import Source


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


def _header_problem(found: list[str], expected: list[str],
                    schema: str | None = None) -> tuple[str | None, list[int] | None]:
    """(reason, None) when a file's columns differ from the declared ones (those of `schema`, the
    file's date's, where the columns change over time), else (None, positions)."""
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
    of = f" of files dated {schema}" if schema else ""
    return f"header does not match the declared columns{of}: {'; '.join(parts)}", None


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
    return _header_problem([f.strip() for f in fields], source.file_column_names, source.schema)


def header_reason(content: bytes, source: Source) -> str | None:
    """Why a raw file's header (a CSV's first line, a Parquet file's columns) is refused, or None.

    Read on the driver for every delivered file, so that a file with a bad header and no records
    after it (a binary blob without a line break, say) is refused by name, not reported empty.
    A daily file is judged by `source.on(its date)`, the schema of its date.
    """
    if not content:
        return None
    if source.format == "parquet":
        import io

        import pyarrow.parquet as pq

        return _header_problem(pq.ParquetFile(io.BytesIO(content)).schema_arrow.names, source.file_column_names,
                               source.schema)[0]
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
    names = source.file_column_names
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
    try:
        content.split(b"\n", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        return None   # a header Arrow would take but not name: the line parser refuses it by name
    schema = _arrow_schema(source)
    # Read under the files' names (a renamed column has another one there), then name as the tables do.
    file_schema = pa.schema([pa.field(c.in_file, _arrow_type(c.type)) for c in source.columns])
    try:
        table = pcsv.read_csv(
            io.BytesIO(content),
            read_options=pcsv.ReadOptions(use_threads=False),
            parse_options=pcsv.ParseOptions(delimiter=opts.delimiter, quote_char=opts.quote,
                                            newlines_in_values=False, ignore_empty_lines=True),
            convert_options=pcsv.ConvertOptions(column_types=file_schema, null_values=list(opts.null_values),
                                                strings_can_be_null=True, quoted_strings_can_be_null=True,
                                                true_values=sorted(_TRUE), false_values=sorted(_FALSE)))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, UnicodeDecodeError):
        return None
    if table.column_names != file_schema.names or table.num_rows != records:
        return None
    table = table.rename_columns(schema.names)
    for c in source.columns:
        column = table.column(c.name)
        if c.type == "double" and column.null_count < len(column):
            if not pc.all(pc.is_finite(column.drop_null())).as_py():
                return None
    # Arrow reads some numbers the line parser refuses (`0x10`, ` 9 `): the texts of the numeric
    # columns must be what the line parser accepts, or the file takes the line path, which names them.
    numeric = {c.in_file: (_INT if c.type in ("int", "long") else _DOUBLE) for c in source.columns
               if c.type in ("int", "long", "double")}
    if numeric:
        texts = pcsv.read_csv(
            io.BytesIO(content), read_options=pcsv.ReadOptions(use_threads=False),
            parse_options=pcsv.ParseOptions(delimiter=opts.delimiter, quote_char=opts.quote,
                                            newlines_in_values=False, ignore_empty_lines=True),
            convert_options=pcsv.ConvertOptions(column_types={n: pa.string() for n in numeric},
                                                include_columns=list(numeric), null_values=list(opts.null_values),
                                                strings_can_be_null=True, quoted_strings_can_be_null=True))
        for name, pattern in numeric.items():
            values = texts.column(name).drop_null()
            if len(values) and not pc.all(pc.match_substring_regex(values, f"^(?:{pattern.pattern})$")).as_py():
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
    names = source.file_column_names
    types = [c.type for c in source.columns]
    reason, _ = _header_problem(table.column_names, names, source.schema)
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


def _arrow_type(typ: str):
    import pyarrow as pa

    return {"string": pa.string(), "int": pa.int32(), "long": pa.int64(), "double": pa.float64(),
            "boolean": pa.bool_(), "date": pa.date32(), "timestamp": pa.timestamp("us", tz="UTC")}[typ]
