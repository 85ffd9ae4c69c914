"""Bronze: raw landing files → `bronze.<source>`, typed by the declared schema, with lineage.

Every record of a raw file ends up either in `bronze.<source>` or, as its raw text with the
reason, in `bronze.<source>_rejected`; the run checks that against the files' own line counts and
fails loudly where it does not hold (`pipelines.stages.accounting`). `ops.ingest_log` remembers
each file's checksum, so a file already ingested is skipped and a changed one replaces the rows of
its date.

    >>> results = ingest(cfg, spark, dates=[date(2013, 1, 1)])
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Iterable

from pipelines import catalog
from pipelines.datasets import PARTITION_COLUMN, Dataset, Source, dataset_for
from pipelines.lineage.columns import LINE_NUMBER, SOURCE_FILE
from pipelines.ops.runs import new_run_id
from pipelines.stages.accounting import check_parsed, verify_bronze
from pipelines.stages.bronze.parse import count_records, header_reason
from pipelines.stages.bronze.task import bronze_rows, parse_files, rejected_rows
from pipelines.stages.landing import LandingFile, due, find_files
from pipelines.storage import Lakehouse

log = logging.getLogger(__name__)

INGEST_LOG_SCHEMA = ("source string, path string, sha256 string, size long, rows long, rejected long, "
                     "run_id string, ingested_at timestamp")
REJECTED_SCHEMA = ("_source_file string, line_number long, _source_sha256 string, raw_line string, reason string, "
                   "_run_id string, _ingest_time timestamp")


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
            shown = ", ".join(self.empty_files[:3]) + (", ..." if len(self.empty_files) > 3 else "")
            text += f", {len(self.empty_files)} empty ({shown})"
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
           sources: Iterable[str] | None = None, run_id: str | None = None) -> list[IngestResult]:
    """Ingest the landing files of every source (or of `sources`) into bronze; one result each.

    Daily feeds: only files of `dates` when given, every file in the landing folder otherwise.
    Reference tables are ingested whenever their file changed. A file already ingested with the
    same checksum is skipped; a new or changed file rewrites the bronze partition of its date (with
    the other files of that date), so running a date twice changes nothing.

        >>> ingest(cfg, spark, dates=[date(2013, 1, 1)])
    """
    dataset = dataset or dataset_for(cfg)
    run_id = run_id or new_run_id("ingest")
    lh = Lakehouse.from_config(cfg, spark)
    dates = sorted(set(dates)) if dates is not None else None
    names = dataset.source_names(sources)
    results = []
    ingested = ingested_files(lh)
    # Without asked-for dates, a day is expected when any daily feed delivered a file for it; a
    # feed known later than the others (outcomes, after the day) only up to the latest time the
    # delivered files show the landing has reached.
    found = [(s, f.date) for s in dataset.daily_sources for f in find_files(cfg.lakehouse.landing, s, dates)]
    delivered = None if dates is not None else sorted({d for _, d in found})
    as_of = max((due(s, d) for s, d in found), default=None)
    for name in names:
        result = ingest_source(lh, cfg.lakehouse.landing, dataset.source(name), dates, run_id, ingested,
                               delivered, as_of)
        log.info(result.line())
        results.append(result)
    return results


def ingest_source(lh, landing: str, source: Source, dates: list[date] | None, run_id: str,
                  ingested: dict[str, dict[str, tuple[str, int]]] | None = None,
                  delivered: list[date] | None = None, as_of: int | None = None) -> IngestResult:
    """Ingest one source's new and changed landing files (see `ingest`). A day of `dates` (or,
    without dates, of `delivered`: the days other feeds have) with no file is reported missing,
    unless its file is not due by `as_of` (local minutes) yet."""
    started = time.time()
    # To the microsecond: `silver.days_ingested_since_cleaned` orders it against silver's commits,
    # and a clean that commits within the second before an ingest starts must still come first.
    ingest_time = datetime.now(timezone.utc)
    table = lh.table(catalog.bronze(source.name))
    result = IngestResult(table.name)
    files = find_files(landing, source, dates if source.daily else None)
    result.files_found = len(files)
    if source.daily:
        result.missing_dates = [d for d in _missing_dates(files, dates, delivered, source)
                                if as_of is None or due(source, d) <= as_of]
        # A few gaps get a line each; many (a sparse feed declared daily) one line, all in the table.
        say = log.info if len(result.missing_dates) <= GAPS_SHOWN else log.debug
        for day in result.missing_dates:
            say(f"[ingest] {table.name}: no file for {day} in {os.path.join(landing, source.path_for(day))}"
                f"{_other_names(landing, source.path_for(day))}; nothing ingested for that day")
        if len(result.missing_dates) > GAPS_SHOWN:
            log.info(f"[ingest] {table.name}: no file for {len(result.missing_dates):,} days its calendar "
                     f"({source.calendar}) expects, {result.missing_dates[0]}..{result.missing_dates[-1]}; "
                     f"each is a row of {catalog.FEED_GAPS}")
        record_gaps(lh, source, dates, result.missing_dates, landing, run_id)
    elif not files:
        log.info(f"[ingest] {table.name}: no file matches {os.path.join(landing, source.path)}; nothing ingested")

    known = (ingested if ingested is not None else ingested_files(lh)).get(source.name, {}) if table.exists() else {}
    deliveries = []
    for f in files:
        content = f.read_bytes()
        # A file's header is judged by the schema of its own date (the columns change over time).
        deliveries.append(_Delivery(f, hashlib.sha256(content).hexdigest(), len(content), count_records(content, source),
                                    header_reason(content, source.on(f.date))))
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
    for path in result.empty_files:
        log.info(f"[ingest] {table.name}: {path} is empty: no record to ingest")

    parsed = parse_files(lh.spark, source, [d.file for d in read]).persist()
    try:
        per_file = _counts_per_file(parsed)
        check_parsed(table.name, [(d.file.path, d.records) for d in read], per_file)
        for d in sorted(read, key=lambda d: d.file.path):
            if d.header_reason:
                result.refused_files.append(d.file.path)
                what = f"all its {d.records} records are rejected" if d.records else "it holds no record after it"
                log.info(f"[ingest] {table.name}: {d.file.path}: {d.header_reason}; {what}")
        good = bronze_rows(parsed, source, run_id, ingest_time)
        if source.daily:
            # schema_mode="merge": a lakehouse ingested before rows kept their checksum and line gains
            # those columns (null on the partitions not rewritten).
            table.write(good, mode="overwrite", partition_by=lh.daily_partition_by(source.layout), schema_mode="merge",
                        partitions={PARTITION_COLUMN: result.dates}, description=f"ingest {run_id}",
                        order_by=[PARTITION_COLUMN, SOURCE_FILE, LINE_NUMBER])
        else:
            table.write(good, mode="overwrite", schema_mode="overwrite", description=f"ingest {run_id}")
        # Rejected records of the files read again are replaced; a file ingested before without
        # any (the log says how many) has none to replace.
        had_rejected = any(known.get(d.file.path, (None, 0))[1] for d in read)
        fresh = sum(per_file.get(d.file.path, _NONE)[1] for d in read)
        _replace_rejected(lh, source, rejected_rows(parsed, run_id, ingest_time), {d.file.path for d in read},
                          run_id, needed=had_rejected or fresh > 0)
        log_rows = [(source.name, d.file.path, d.sha256, d.size, per_file.get(d.file.path, _NONE)[0],
                     per_file.get(d.file.path, _NONE)[1], run_id, ingest_time)
                    for d in read if d.file.path in changed_paths]
        lh.table(catalog.INGEST_LOG).write(lh.spark.createDataFrame(log_rows, INGEST_LOG_SCHEMA), mode="append",
                                   description=f"ingest {run_id}")
    finally:
        parsed.unpersist()
    result.rows = sum(per_file.get(d.file.path, _NONE)[0] for d in read)
    result.rejected = sum(per_file.get(d.file.path, _NONE)[1] for d in read)
    verify_bronze(lh, source, read_files=[(d.file, d.records) for d in read], dates=result.dates)
    result.seconds = time.time() - started
    return result


_NONE = (0, 0)


def _other_names(landing: str, expected: str) -> str:
    """What lies where a day's file was expected under another name (`02.csv.gz` beside a missing
    `02.csv`), said so the sender can be told; empty when nothing does."""
    folder, name = os.path.split(os.path.join(landing, expected))
    stem = name.split(".", 1)[0]
    try:
        others = sorted(n for n in os.listdir(folder) if n != name and n.split(".", 1)[0] == stem)
    except OSError:
        return ""
    rel = os.path.dirname(expected)
    return "".join(f" ({'/'.join(filter(None, [rel, n]))} lies there under another name)" for n in others)


# Up to this many missing days of one source get a line each; more, one summary line.
GAPS_SHOWN = 5
FEED_GAPS_SCHEMA = "source string, date date, expected_path string, run_id string, noted_at timestamp"


def _missing_dates(files: list[LandingFile], dates: list[date] | None,
                   delivered: list[date] | None, source: Source) -> list[date]:
    """The days the source's calendar expects with no file: of `dates`, or without dates, of the
    days other feeds delivered and of every day between this feed's first and last file."""
    have = {f.date for f in files}
    expected = set(dates if dates is not None else (delivered or []))
    if have and dates is None:
        first, last = min(have), max(have)
        expected |= {first + timedelta(days=i) for i in range((last - first).days + 1)}
    return sorted(d for d in expected - have if source.expects(d))


def record_gaps(lh, source: Source, dates: list[date] | None, gaps: list[date], landing: str, run_id: str) -> None:
    """Keep `ops.feed_gaps` to the gaps this run sees for the days it looked at (every day of the
    source when `dates` is None): a day whose file arrived leaves the table. Commits nothing when
    the table already says so, so a rerun that changes nothing writes nothing."""
    table = lh.table(catalog.FEED_GAPS)
    held = table.to_arrow(["source", "date"]).to_pylist() if table.exists() else []
    looked = None if dates is None else set(dates)
    before = {r["date"] for r in held if r["source"] == source.name and (looked is None or r["date"] in looked)}
    if before == set(gaps):
        return
    now = datetime.now(timezone.utc)
    rows = [{"source": source.name, "date": d, "expected_path": source.path_for(d), "run_id": run_id,
             "noted_at": now} for d in gaps]
    table.replace_rows(rows, FEED_GAPS_SCHEMA, key=("source", "date"),
                       drop=lambda r: r["source"] == source.name and (looked is None or r["date"] in looked))


def ingested_files(lh) -> dict[str, dict[str, tuple[str, int]]]:
    """{source: {path: (sha256, rejected records)}} of each file as it was last ingested."""
    log_table = lh.table(catalog.INGEST_LOG)
    if not log_table.exists():
        return {}
    out: dict[str, dict[str, tuple[str, int]]] = {}
    rows = log_table.to_arrow(["source", "path", "sha256", "rejected", "ingested_at", "run_id"]).to_pylist()
    # Oldest first, so each file's latest ingest wins.
    for r in sorted(rows, key=lambda r: (r["ingested_at"], r["run_id"])):
        out.setdefault(r["source"], {})[r["path"]] = (r["sha256"], int(r["rejected"] or 0))
    return out


def _counts_per_file(parsed) -> dict[str, tuple[int, int]]:
    """{file: (rows, rejected records)} in one Spark job."""
    from pyspark.sql import functions as F

    reason = F.col("_reason")
    rows = (parsed.groupBy("_source_file")
            .agg(F.sum(reason.isNull().cast("long")).alias("good"),
                 F.sum(reason.isNotNull().cast("long")).alias("bad"))
            .collect())
    return {r["_source_file"]: (int(r["good"]), int(r["bad"])) for r in rows}


def _replace_rejected(lh, source: Source, new_rejected, paths: set[str], run_id: str, needed: bool) -> None:
    """Replace the rejected records of the files read again by this run's ones (a small table,
    rewritten whole); `needed` is False when there is nothing to remove and nothing to add."""
    from pyspark.sql import functions as F

    table = lh.table(catalog.rejected(source.name))
    if not table.exists():
        table.write(new_rejected, mode="overwrite", description=f"ingest {run_id}")
        return
    if not needed:
        return
    kept = table.read().filter(~F.col("_source_file").isin(sorted(paths)))
    table.write(kept.unionByName(new_rejected, allowMissingColumns=True), mode="overwrite", schema_mode="merge",
                description=f"ingest {run_id}")
