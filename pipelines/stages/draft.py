"""A first declaration of a new dataset, drafted from a sample of its delivered files
(`lakehouse-dl dataset init`).

The sources come from the folder layout: files whose path holds a date (`sales/2024/01/05.csv`,
`sales/2024-01-05.csv`) are a daily feed (`path: sales/{yyyy}/{mm}/{dd}.csv`); any other file is a
reference table. A few files of each source are read with bronze's own parser and value readers
(`pipelines.stages.bronze.parse`, so a type proposed here is one bronze accepts), and each column
gets the narrowest declared type that reads its values; the key is the smallest set of columns
unique in the sample; never-null columns and the observed ranges become rules. The text, with
its comments and the TODOs left to the user, is `pipelines.datasets.draft`'s to write.

    >>> draft = draft_dataset("shop", Path("lakehouse/landing/shop"))
    >>> write_draft(draft, Path("conf/base/datasets/shop.yaml"), landing="lakehouse/landing/shop")
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import defaultdict
from datetime import date
from itertools import combinations
from pathlib import Path

from pipelines.datasets import Column, CsvOptions, Source
from pipelines.datasets.draft import ColumnDraft, DatasetDraft, SourceDraft
from pipelines.stages.bronze.parse import _from_value, parse_file, split_lines

# Files read per source: the first, the last and evenly between (a source's days look alike).
FILES_SAMPLED = 5
# Bytes read per file: enough lines to see the values, whatever the file's size.
BYTES_SAMPLED = 2_000_000
# The share of a column's sampled values that may fail its proposed type (a bad line or two in
# a delivery): `dataset check` then shows them as rejected records instead of the column
# becoming a string.
TOLERATED = 0.05
FORMATS = {"csv": "csv", "tsv": "csv", "txt": "csv", "json": "jsonl", "jsonl": "jsonl", "ndjson": "jsonl",
           "parquet": "parquet", "pq": "parquet"}
# Types tried in this order; a type is not proposed when a value it fails is read by a wider one.
TYPE_ORDER = ("int", "long", "double", "date", "timestamp", "boolean")
WIDER = {"int": ("long", "double"), "long": ("double",), "date": ("timestamp",)}
# Texts that mean "no value" in many exports, taken as null when the sample holds them.
NULL_TEXTS = ("NA", "", "NULL", "null", "N/A", "None")
_DATED = re.compile(r"^(?P<prefix>(?:.*/)?[^/]*?)(?P<y>\d{4})(?P<sep>[/_-]?)(?P<m>\d{2})(?P=sep)(?P<d>\d{2})"
                    r"(?P<suffix>[^/\d][^/]*|)$")


def draft_dataset(name: str, landing: Path) -> DatasetDraft:
    """Propose the declaration of dataset `name` from the files under `landing`.

    Raises ValueError when the folder holds no file a source can be made of.
    """
    landing = Path(landing)
    if not landing.is_dir():
        raise ValueError(f"{landing} is not a folder: give the folder that holds the dataset's files (--landing)")
    feeds, skipped = find_sources(landing)
    if not feeds:
        raise ValueError(f"no CSV, JSON lines or Parquet file under {landing}" +
                         (f" (left out: {', '.join(skipped[:5])})" if skipped else ""))
    sources = [draft_source(source, path, fmt, files, landing) for source, (path, fmt, files) in feeds.items()]
    suggest_updates(sources)
    return DatasetDraft(name=name, sources=sources, read_from=str(landing), skipped=skipped)


def find_sources(landing: Path) -> tuple[dict[str, tuple[str, str, list[tuple[str, date | None]]]], list[str]]:
    """{source: (path, format, [(relative file, its date or None)])} of the files under `landing`,
    and the files no source is made of (unknown formats)."""
    groups: dict[tuple[str, str], list[tuple[str, date | None]]] = defaultdict(list)
    skipped = []
    for p in sorted(landing.rglob("*")):
        rel = p.relative_to(landing).as_posix()
        if not p.is_file() or any(part.startswith(".") for part in rel.split("/")):
            continue
        ext = p.suffix.lstrip(".").lower()
        if ext not in FORMATS:
            skipped.append(rel)
            continue
        template, day = _dated(rel)
        if template is not None:
            groups[(template, ext)].append((rel, day))
            continue
        folder = rel.rpartition("/")[0]
        groups[(f"{folder}/*.{ext}" if folder else rel, ext)].append((rel, None))
    out: dict[str, tuple[str, str, list]] = {}
    for (template, ext), files in groups.items():
        if template.endswith(f"/*.{ext}") and len(files) == 1:
            template = files[0][0]           # one file in its folder: its own path
        name = _source_name(template)
        while name in out:
            name += "_2"
        out[name] = (template, FORMATS[ext], files)
    return out, skipped


def _dated(rel: str) -> tuple[str | None, date | None]:
    """(the path template, the date) of a file whose path names a real date, else (None, None)."""
    m = _DATED.match(rel)
    if not m:
        return None, None
    try:
        day = date(int(m["y"]), int(m["m"]), int(m["d"]))
    except ValueError:
        return None, None
    sep = m["sep"]
    return f"{m['prefix']}{{yyyy}}{sep}{{mm}}{sep}{{dd}}{m['suffix']}", day


def _source_name(template: str) -> str:
    """A source's name from its path: the first folder, else the file's name without date or extension."""
    first = template.split("/", 1)[0] if "/" in template else template.split("{", 1)[0].rsplit(".", 1)[0]
    name = re.sub(r"[^a-z0-9_]+", "_", first.lower()).strip("_") or "feed"
    return name if name[0].isalpha() else f"s_{name}"


def draft_source(name: str, path: str, fmt: str, files: list[tuple[str, date | None]], landing: Path) -> SourceDraft:
    """One source's proposal from a sample of `files`."""
    daily = files[0][1] is not None
    files = sorted(files, key=lambda f: (f[1] or date.min, f[0]))
    picked = _spread(files, FILES_SAMPLED)
    csv_options, names, rows, unread = None, [], [], []
    for rel, day in picked:
        content = _head((landing / rel).read_bytes(), fmt)
        if fmt == "csv" and csv_options is None:
            csv_options = _csv_options(content, Path(rel).suffix.lower() == ".tsv")
        got, problems = read_records(content, fmt, csv_options)
        unread += [f"{rel}: {p}" for p in problems]
        for record in got:
            names += [k for k in record if k not in names]
            rows.append((day, record))
    columns = [infer_column(n, [r.get(n) for _, r in rows], daily) for n in names]
    out = SourceDraft(name=name, path=path, format=fmt, csv=csv_options, columns=columns, daily=daily,
                      files=len(files), files_read=len(picked), rows_read=len(rows),
                      days=sorted({d for _, d in files if d}), unread=unread)
    if daily:
        out.calendar = calendar_of(out.days)
    out.primary_key = propose_key(columns, rows, daily)
    out.date_columns = [c.name for c in columns if c.type == "date" and rows and
                        all(r.get(c.file_name) is None or str(r.get(c.file_name)) == str(d) for d, r in rows)]
    return out


def _spread(items: list, n: int) -> list:
    if len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def _head(content: bytes, fmt: str) -> bytes:
    """The first BYTES_SAMPLED bytes of a text file, cut after its last whole line."""
    if fmt == "parquet" or len(content) <= BYTES_SAMPLED:
        return content
    return content[:content.rfind(b"\n", 0, BYTES_SAMPLED) + 1]


def _csv_options(content: bytes, tab: bool) -> CsvOptions:
    """The header's delimiter (the one it holds most of) and the null texts the sample uses."""
    text = content.decode("utf-8", errors="replace")
    first = text.split("\n", 1)[0]
    delimiter = "\t" if tab else max((",", ";", "\t", "|"), key=first.count)
    fields = set(re.split(re.escape(delimiter) + r"|\r?\n", text))
    nulls = tuple(t for t in NULL_TEXTS if t in ("NA", "") or t in fields)
    encoding = "utf-8"
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        encoding = "latin-1"
    return CsvOptions(header=True, delimiter=delimiter, quote='"', null_values=nulls, encoding=encoding)


def read_records(content: bytes, fmt: str, options: CsvOptions | None) -> tuple[list[dict], list[str]]:
    """The records of a sampled file as {column as in the file: value} (CSV fields as text, read by
    bronze's parser with every column a string; JSON and Parquet values as they are), and the
    records bronze's parser refused, with the reasons."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(content)).slice(0, 20_000).to_pylist(), []
    if fmt == "jsonl":
        records, problems = [], []
        for number, line in enumerate(split_lines(content), start=1):
            try:
                record = json.loads(line)
            except ValueError as exc:
                problems.append(f"line {number}: malformed JSON: {exc}")
                continue
            if isinstance(record, dict):
                records.append(record)
        return records, problems
    lines = split_lines(content)
    if not lines:
        return [], []
    header = next(csv.reader([lines[0].decode(options.encoding, errors="replace").lstrip("\ufeff")],
                             delimiter=options.delimiter, quotechar=options.quote))
    names = [h.strip() for h in header]
    trial = Source(name="draft", path="draft.csv", format="csv", csv=options, primary_key=(),
                   columns=tuple(Column(n, "string") for n in names))
    parsed = parse_file(content, trial)
    return parsed.rows(), [f"line {n}: {why}" for n, _, why in parsed.rejected]


def reads_as(value, typ: str) -> bool:
    """True when bronze reads `value` (a field's text, or a JSON/Parquet value) as `typ`."""
    try:
        _from_value(value, typ)
        return True
    except ValueError:
        return False


def infer_column(name: str, values: list, daily: bool) -> ColumnDraft:
    """A column's proposal: the narrowest type that reads all its sampled values but a tolerated
    few (which are kept to be shown), whether it was ever null, and its range when numeric."""
    present = [v for v in values if v is not None]
    typ, odd = "string", []
    leading_zero = any(isinstance(v, str) and re.fullmatch(r"0\d+", v.strip()) for v in present)
    for candidate in TYPE_ORDER if present else ():
        if candidate in ("int", "long") and leading_zero:
            continue       # codes such as "00123" keep their zeros as strings
        bad = [v for v in present if not reads_as(v, candidate)]
        if len(bad) > TOLERATED * len(present) or len(bad) == len(present):
            continue
        if any(reads_as(v, wider) for v in bad for wider in WIDER.get(candidate, ())):
            continue
        typ, odd = candidate, bad
        break
    out = ColumnDraft(name=_column_name(name, daily), type=typ, file_name=name,
                      never_null=bool(values) and not [v for v in values if v is None],
                      distinct=len({str(v) for v in present}), odd=[str(v) for v in odd[:3]], odd_count=len(odd))
    if typ in ("int", "long", "double"):
        numbers = [float(_from_value(v, typ)) for v in present if v not in odd]
        if numbers:
            out.low, out.high = min(numbers), max(numbers)
    return out


def _column_name(name: str, daily: bool) -> str:
    """The name the tables give a file's column: itself unless the lakehouse needs another."""
    clean = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_")
    if not clean or not clean[0].isalpha():
        clean = f"c_{clean}"
    if daily and clean.lower() in ("date", "date_month"):
        clean = f"{clean}_in_file"     # the lakehouse adds `date` (the file's) to a daily feed's rows
    return clean


def calendar_of(days: list[date]) -> str:
    """daily when the files cover most days between the first and the last, weekdays when no file
    falls on a weekend, sparse otherwise."""
    if len(days) < 2:
        return "daily"
    span = (days[-1] - days[0]).days + 1
    if span >= 7 and not [d for d in days if d.weekday() >= 5]:
        return "weekdays"
    return "daily" if len(days) >= 0.8 * span else "sparse"


def propose_key(columns: list[ColumnDraft], rows: list[tuple[date | None, dict]], daily: bool) -> list[str]:
    """The smallest set of never-null columns (numbers with decimals and booleans left out) unique
    in the sample: unique over every sampled day it is the key as it is; unique only within a day,
    it is keyed with `date` as well (silver keeps one row per key and date). Every column with the
    date when none is unique."""
    if not rows:
        return ["date"] if daily else [columns[0].name] if columns else []
    candidates = [c for c in columns if c.never_null and c.type not in ("double", "boolean")][:10]
    for size in (1, 2, 3):
        per_day = None
        for combo in combinations(candidates, size):
            values = [tuple(str(r.get(c.file_name)) for c in combo) for _, r in rows]
            if len(set(values)) == len(values):
                return [c.name for c in combo]
            if daily and per_day is None:
                dated = [(d, *v) for (d, _), v in zip(rows, values)]
                if len(set(dated)) == len(dated):
                    per_day = ["date", *[c.name for c in combo]]
        if per_day:
            return per_day
    return (["date"] if daily else []) + [c.name for c in columns]


def suggest_updates(sources: list[SourceDraft]) -> None:
    """Note, on a daily feed with another's key and fewer columns, some of which that one lacks,
    that it may deliver that feed's outcomes later (`updates:`): the user decides, the draft only
    says so."""
    for late in sources:
        for target in sources:
            if target is not late and late.daily and target.daily and not target.updates_candidate and \
                    late.primary_key == target.primary_key and set(late.primary_key) - {"date"} and \
                    len(late.columns) < len(target.columns) and \
                    [c for c in late.columns if c.name not in target.column_names]:
                late.updates_candidate = target.name
                break
