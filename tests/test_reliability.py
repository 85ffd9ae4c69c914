"""Reliability: bad raw files through the real ingest and clean with exact accounting, bad configuration
refused before any work, two nightly runs at once (the kill suite is scripts/reliability.py)."""
from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import pytest
from log_lines import log_lines

from pipelines.stages import bronze, landing, silver
from pipelines.storage import Lakehouse

PROJECT = Path(__file__).resolve().parents[1]
# The schedule feed (the outcomes of a day are the flight_outcomes feed).
HEADER = "year,month,day,sched_dep_time,sched_arr_time,carrier,flight,tailnum,origin,dest,distance,hour,minute,time_hour"
GOOD_DAYS = [date(2013, 1, 1), date(2013, 1, 2)]
TEN_MB = 10 * 1024 * 1024
BINARY = bytes(b for b in range(256) if b != 0x0A)


def day(n: int) -> date:
    return date(2013, 1, n)


def line(d: date, flight: int, *, distance: str = "1400", tailnum: str = "N14228", origin: str = "EWR",
         carrier: str = "UA", hour: str = "5") -> str:
    """One flights line for `d` that passes every silver rule unless a value says otherwise."""
    return (f"{d.year},{d.month},{d.day},515,819,{carrier},{flight},{tailnum},{origin},IAH,"
            f"{distance},{hour},15,{d.isoformat()}T10:00:00Z")


def csv_text(*lines: str, header: str = HEADER) -> str:
    return "\n".join([header, *lines]) + "\n"


def feed_path(landing_root: Path, d: date, suffix: str = ".csv") -> Path:
    return landing_root / "flights" / f"{d.year:04d}" / f"{d.month:02d}" / f"{d.day:02d}{suffix}"


def data_lines(content: bytes) -> int:
    """Raw data lines of a delivered CSV, counted here independently of the pipeline: lines split
    on LF (a final LF ends the last line), less the header line."""
    lines = content.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return max(0, len(lines) - 1)


# ------------------------------------------------------------------------------------------------
# The corpus: one bad delivery per day after two good days seeded from the package.


def corpus() -> dict[date, bytes]:
    """Flights files by day, each a kind of bad input (see CORPUS_EXPECTED for what becomes of it)."""
    d3, d4, d5, d6, d7, d8, d9, d10, d11, d13, d14 = (day(n) for n in (3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14))
    truncated = csv_text(line(d11, 1), line(d11, 2), line(d11, 3)).encode()
    return {
        # Malformed lines among good ones: an unclosed quote, too few and too many fields, a blank line.
        d3: csv_text(line(d3, 1), line(d3, 2).replace(",UA,", ',"UA,'), "2013,1,3,517,515",
                     line(d3, 3) + ",extra", "", line(d3, 4)).encode(),
        # Values of the wrong type (rejected in bronze), values that break silver's rules
        # (quarantined), and a line delivered twice (a duplicate key removed by silver).
        d4: csv_text(line(d4, 1), line(d4, 2, distance="late"), line(d4, 3).replace(",3,N14228", ",3.5,N14228"),
                     line(d4, 4, origin="XXX"), line(d4, 5, hour="25"), line(d4, 6, carrier="ZZ"),
                     line(d4, 7), line(d4, 7)).encode(),
        # An extra column, then a missing one: the whole file is refused, every line rejected.
        d5: csv_text(line(d5, 1) + ",A12", line(d5, 2) + ",B7", header=HEADER + ",gate").encode(),
        d6: csv_text(line(d6, 1).rsplit(",", 1)[0], header=HEADER.rsplit(",", 1)[0]).encode(),
        # Another encoding: latin-1 (the lines with a non-ASCII byte are rejected, the others are
        # valid UTF-8 too) and UTF-16 (its header does not decode: the whole file is refused).
        d7: csv_text(line(d7, 1, tailnum="N\xe9"), line(d7, 2), line(d7, 3, tailnum="N\xfc\xdf")).encode("latin-1"),
        d8: csv_text(line(d8, 1), line(d8, 2)).encode("utf-16"),
        # A 10 MB field: in a string column it is a value like any other, in a numeric one a wrong type.
        d9: csv_text(line(d9, 1), line(d9, 2, tailnum="N" * TEN_MB), line(d9, 3, distance="9" * TEN_MB)).encode(),
        d10: b"",
        # Cut in the middle of its last line (a transfer that stopped).
        d11: truncated[:truncated.rindex(b"EWR,IAH") + 3],
        # Binary garbage under the feed's name, with two line breaks inside: two records.
        d13: BINARY * 8 + b"\n" + BINARY[::-1] * 4 + b"\n\x00\xff\n",
        # A gzip stream under the feed's `.csv` name (nycflights13 declares no compressed source);
        # 19 lines compress to bytes without a line break, as short streams often do.
        d14: gzip.compress(csv_text(*(line(d14, i) for i in range(1, 20))).encode(), mtime=0),
    }


# Per bad day: (bronze rows, rejected rows, a reason every rejected line of the file carries or None).
CORPUS_EXPECTED = {
    day(3): (2, 4, None),
    day(4): (6, 2, "wrong type"),
    day(5): (0, 2, "header does not match the declared columns: extra column gate"),
    day(6): (0, 1, "header does not match the declared columns: missing column time_hour"),
    day(7): (1, 2, "not valid utf-8: byte 0x"),
    day(8): (0, 3, "header is not valid utf-8"),
    day(9): (2, 1, "wrong type: distance"),
    day(10): (0, 0, None),
    day(11): (2, 1, "expected 14 fields, found 9"),
    day(13): (0, 2, "not valid utf-8: byte 0x"),
    day(14): (0, 0, None),
}


@pytest.fixture(scope="module")
def corpus_lakehouse(spark, tmp_path_factory):
    """Two good days seeded from the package and the whole corpus, ingested and cleaned at once."""
    from pipelines.config import load_config

    root = tmp_path_factory.mktemp("corpus") / "lakehouse"
    cfg = load_config("local", [f"lakehouse.root={root}", "spark.master=local[2]"])
    landing.seed(cfg, dates=GOOD_DAYS)
    delivered = corpus()
    land = Path(cfg.lakehouse.landing)
    for d, content in delivered.items():
        path = feed_path(land, d)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    # A real gzip named `.csv.gz`: not the declared `.csv` path, so not a delivery of its day.
    feed_path(land, day(12), ".csv.gz").write_bytes(gzip.compress(csv_text(line(day(12), 1)).encode()))
    for d in GOOD_DAYS:
        delivered[d] = feed_path(land, d).read_bytes()
    with log_lines() as messages:
        ingested = {r.table: r for r in bronze.ingest(cfg, spark, dates=None)}
        cleaned = {r.table: r for r in silver.clean(cfg, spark, dates=None)}
    return cfg, Lakehouse.from_config(cfg, spark), delivered, ingested, cleaned, messages


def per_file(lh, table: str) -> dict[str, int]:
    rows = lh.table(table).read().groupBy("_source_file").count().collect()
    return {r["_source_file"]: r["count"] for r in rows}


def rel(d: date) -> str:
    return f"flights/{d.year:04d}/{d.month:02d}/{d.day:02d}.csv"


def rejected_reasons(lh) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in lh.table("bronze.flights_rejected").read().select("_source_file", "line_number", "reason").collect():
        out.setdefault(r["_source_file"], []).append(r["reason"])
    return out


def silver_books(lh) -> dict[date, tuple[int, int, int, int]]:
    """Per date of flights: (bronze, silver, quarantined, duplicates removed) from the committed tables."""
    from pyspark.sql import functions as F

    def by_date(df) -> dict:
        return {r["date"]: r["count"] for r in df.groupBy("date").count().collect()}

    b = by_date(lh.table("bronze.flights").read())
    s = by_date(lh.table("silver.flights").read())
    q = by_date(lh.table("silver.quarantine").read().filter(F.col("table") == "flights"))
    dq = lh.table("ops.data_quality").read().filter((F.col("table") == "flights") & (F.col("rule") == "duplicate_key"))
    dup = {r["date"]: r["rows_failed"] for r in dq.collect()}
    return {d: (b[d], s.get(d, 0), q.get(d, 0), dup.get(d, 0)) for d in b}


def test_every_delivered_line_is_in_bronze_or_rejected_and_every_bronze_row_in_silver_quarantine_or_duplicates(
        corpus_lakehouse):
    """The combined test: the whole corpus at once, accounting per file and per date, and the logs agree."""
    cfg, lh, delivered, ingested, cleaned, _ = corpus_lakehouse
    good, bad = per_file(lh, "bronze.flights"), per_file(lh, "bronze.flights_rejected")
    log = {r["path"]: r for r in lh.table("ops.ingest_log").read().collect()}
    for d, content in sorted(delivered.items()):
        path = rel(d)
        assert data_lines(content) == good.get(path, 0) + bad.get(path, 0), path
        assert (log[path]["rows"], log[path]["rejected"]) == (good.get(path, 0), bad.get(path, 0)), path
    assert ingested["bronze.flights"].rows == sum(good.values())
    assert ingested["bronze.flights"].rejected == sum(bad.values())

    books = silver_books(lh)
    for d, (b, s, q, dup) in books.items():
        assert b == s + q + dup, f"{d}: bronze {b} != silver {s} + quarantine {q} + duplicates {dup}"
    result = cleaned["silver.flights"]
    assert result.bronze_rows == sum(b for b, _, _, _ in books.values()) == lh.table("bronze.flights").count()
    assert result.silver_rows == lh.table("silver.flights").count()
    # The good days went through untouched: every seeded line is in bronze, none rejected.
    for d in GOOD_DAYS:
        assert bad.get(rel(d), 0) == 0 and good[rel(d)] == data_lines(delivered[d]) > 800


@pytest.mark.parametrize("d", sorted(CORPUS_EXPECTED), ids=lambda d: f"jan{d.day:02d}")
def test_each_bad_file_is_rejected_line_by_line_with_its_reason(corpus_lakehouse, d):
    _, lh, _, _, _, _ = corpus_lakehouse
    rows, rejected, reason = CORPUS_EXPECTED[d]
    assert per_file(lh, "bronze.flights").get(rel(d), 0) == rows
    reasons = rejected_reasons(lh).get(rel(d), [])
    assert len(reasons) == rejected
    if reason:
        assert all(reason in r for r in reasons), reasons


def test_malformed_lines_each_get_their_own_reason(corpus_lakehouse):
    _, lh, _, _, _, _ = corpus_lakehouse
    rows = lh.table("bronze.flights_rejected").read().filter(f"_source_file = '{rel(day(3))}'").collect()
    reasons = {r["line_number"]: r["reason"] for r in rows}
    assert reasons[3].startswith("malformed CSV")
    assert reasons[4] == "expected 14 fields, found 5"
    assert reasons[5] == "expected 14 fields, found 15"
    assert reasons[6] == "blank line"


def test_rule_breakers_are_quarantined_with_the_rule_and_a_repeated_line_is_a_duplicate(corpus_lakehouse):
    _, lh, _, _, _, _ = corpus_lakehouse
    quarantined = lh.table("silver.quarantine").read().filter(f"table = 'flights' AND date = '{day(4)}'").collect()
    assert sorted(r["rule"] for r in quarantined) == ["carrier_known", "hour_range", "origin_is_nyc"]
    assert all(r["reason"].startswith(r["rule"] + ":") and r["row"] for r in quarantined)
    assert silver_books(lh)[day(4)] == (6, 2, 3, 1)
    assert sorted(r["flight"] for r in lh.table("silver.flights").read().filter(f"date = '{day(4)}'").collect()) == [1, 7]


def test_a_refused_file_is_named_in_the_ingest_messages(corpus_lakehouse):
    _, _, _, ingested, _, messages = corpus_lakehouse
    result = ingested["bronze.flights"]
    # Extra and missing columns, UTF-16, binary garbage and a gzip stream: each header is refused.
    assert result.refused_files == [rel(day(d)) for d in (5, 6, 8, 13, 14)]
    for d in (5, 6, 8, 13, 14):
        assert any(m.startswith(f"[ingest] bronze.flights: {rel(day(d))}: header ") for m in messages), d
    assert result.empty_files == [rel(day(10))] and "1 empty" in result.line()


def test_a_10mb_field_is_quarantined_where_it_is_a_string_and_rejected_where_it_is_a_number(corpus_lakehouse):
    _, lh, _, _, _, _ = corpus_lakehouse
    from pyspark.sql import functions as F

    # Bronze keeps it whole (a value of the declared type); silver holds strings up to the dataset's
    # max_string_length (1,000) and quarantines the row, with the length, not the value, as the reason.
    [big] = (lh.table("bronze.flights").read().filter(F.col("date") == day(9)).filter(F.col("flight") == 2)
             .select(F.length("tailnum").alias("n")).collect())
    assert big["n"] == TEN_MB
    assert lh.table("silver.flights").read().filter(F.col("date") == day(9)).filter(F.col("flight") == 2).count() == 0
    [held] = (lh.table("silver.quarantine").read().filter((F.col("table") == "flights") & (F.col("date") == day(9)))
              .filter(F.col("rule") == "tailnum_max_length").collect())
    assert held["reason"] == f"tailnum_max_length: tailnum has {TEN_MB} characters, more than 1000"
    assert len(held["row"]) > TEN_MB   # the row itself is kept whole in the quarantine
    [rejected] = lh.table("bronze.flights_rejected").read().filter(f"_source_file = '{rel(day(9))}'").collect()
    assert rejected["line_number"] == 4 and len(rejected["raw_line"]) == len(line(day(9), 3, distance="9" * TEN_MB))


def test_the_reason_for_a_huge_value_is_short(corpus_lakehouse):
    _, lh, _, _, _, _ = corpus_lakehouse
    [rejected] = lh.table("bronze.flights_rejected").read().filter(f"_source_file = '{rel(day(9))}'").collect()
    assert len(rejected["reason"]) < 1000


def test_a_truncated_file_keeps_its_whole_lines_and_rejects_the_cut_one(corpus_lakehouse):
    _, lh, delivered, _, _, _ = corpus_lakehouse
    assert not delivered[day(11)].endswith(b"\n")
    [cut] = lh.table("bronze.flights_rejected").read().filter(f"_source_file = '{rel(day(11))}'").collect()
    assert cut["line_number"] == 4 and cut["raw_line"].endswith(",UA,3,N14228,EWR")
    assert silver_books(lh)[day(11)] == (2, 2, 0, 0)


def test_a_gzip_named_csv_gz_is_not_a_delivery_and_its_day_is_reported_missing(corpus_lakehouse):
    _, lh, _, ingested, _, messages = corpus_lakehouse
    paths = {r["path"] for r in lh.table("ops.ingest_log").read().collect()}
    assert not any(p.endswith(".gz") for p in paths)
    assert day(12) in ingested["bronze.flights"].missing_dates
    assert any(m.startswith("[ingest] bronze.flights: no file for 2013-01-12") for m in messages)
    # The file that lies there under another name is named, so the sender can be told.
    [said] = [m for m in messages if "no file for 2013-01-12" in m]
    assert "flights/2013/01/12.csv.gz lies there under another name" in said, said


def test_a_gzip_stream_under_the_csv_name_is_refused_not_reported_empty(corpus_lakehouse):
    """Its bytes hold no line break, so its one 'line' is the header and no record follows it:
    the header is read on the driver, so the file is refused by name all the same."""
    _, _, delivered, ingested, _, messages = corpus_lakehouse
    assert b"\n" not in delivered[day(14)]
    result = ingested["bronze.flights"]
    assert rel(day(14)) in result.refused_files and rel(day(14)) not in result.empty_files
    [said] = [m for m in messages if rel(day(14)) in m]
    assert "header is not valid utf-8" in said and said.endswith("it holds no record after it")


def test_the_same_file_name_with_other_content_replaces_its_day_in_bronze_silver_and_quarantine(
        corpus_lakehouse, spark, tmp_path):
    from pipelines.config import load_config

    cfg, _, _, _, _, _ = corpus_lakehouse
    root = tmp_path / "lakehouse"
    # The whole lakehouse: the dataset's folder and its landing folder.
    shutil.copytree(Path(cfg.lakehouse.root).parent, root)
    cfg = load_config("local", [f"lakehouse.root={root}", "spark.master=local[2]"])
    lh = Lakehouse.from_config(cfg, spark)
    others_before = {d: v for d, v in silver_books(lh).items() if d != day(4)}
    d4 = day(4)
    # Day 4 again, corrected: the bad types fixed, the rule breakers gone, one new bad line.
    feed_path(Path(cfg.lakehouse.landing), d4).write_text(
        csv_text(line(d4, 1), line(d4, 2), line(d4, 8), line(d4, 9, carrier="ZZ"), "2013,1,4"))
    [result] = bronze.ingest(cfg, spark, dates=None, sources=["flights"])
    silver.clean(cfg, spark, dates=result.dates)
    assert (result.files_ingested, result.dates) == (1, [d4])
    assert silver_books(lh)[d4] == (4, 3, 1, 0)
    assert rejected_reasons(lh)[rel(d4)] == ["expected 14 fields, found 3"]
    assert {d: v for d, v in silver_books(lh).items() if d != d4} == others_before
    log = [r for r in lh.table("ops.ingest_log").read().collect() if r["path"] == rel(d4)]
    assert sorted((r["rows"], r["rejected"]) for r in log) == [(4, 1), (6, 2)] and len({r["sha256"] for r in log}) == 2


# ------------------------------------------------------------------------------------------------
# Configuration and command-line input refused before any work starts


@pytest.mark.parametrize("args, message", [
    (["--date", "2013-02-30"], "argument --date: not a date: '2013-02-30'"),
    (["--date", "2013-01-05", "--set", "pipeline.splits.test=[2013-02-30,2013-03-31]"],
     "key 'pipeline.splits.test' holds a date that does not exist"),
    (["--date", "2013-01-05", "--set", "training.epoch=1"], "unknown key 'training.epoch'"),
    (["--date", "2013-01-05", "--set", "training.num_proc=-1"], "key 'training.num_proc' must be at least 1, got -1"),
    (["--date", "2013-01-05", "--set", "lakehouse.landing={outside}"],
     "key 'lakehouse.landing' must lie inside the lakehouse root {root}"),
], ids=["impossible-date", "impossible-split-date", "unknown-key", "negative-num-proc", "landing-outside-root"])
def test_bad_input_is_refused_with_exit_2_before_anything_starts(tmp_path, args, message):
    root, outside, cwd = tmp_path / "lakehouse", tmp_path / "elsewhere", tmp_path / "cwd"
    cwd.mkdir()
    args = [a.format(outside=outside) for a in args]
    # -X importtime lists every module the process imported: proof that Spark (and TensorFlow) never loaded.
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipelines.cli", "nightly", *args,
                           "--set", f"lakehouse.root={root}"],
                          capture_output=True, text=True, cwd=cwd, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(PROJECT)})
    said = [ln for ln in proc.stderr.splitlines() if not ln.startswith("import time:")]
    imported = {ln.split("|")[-1].strip().split(".")[0] for ln in proc.stderr.splitlines()
                if ln.startswith("import time:")}
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert any(message.format(root=root) in ln for ln in said), said
    assert proc.stdout == ""
    assert not root.exists() and not outside.exists() and list(cwd.iterdir()) == []
    # Refused before any work: neither Spark nor TensorFlow was imported (no stopwatch, which a
    # busy machine would make flaky).
    assert "pipelines" in imported and not {"pyspark", "py4j", "tensorflow", "horovod"} & imported


# ------------------------------------------------------------------------------------------------
# Two nightly runs started at once

RACE_DATE = "2013-01-12"
RACE_SLICE = [
    "pipeline.splits.train=[2013-01-01,2013-01-07]",
    "pipeline.splits.validation=[2013-01-08,2013-01-10]",
    "pipeline.splits.test=[2013-01-11,2013-01-12]",
    "training.epochs=1", "training.batch_size=256", "training.num_proc=2", "nightly.baselines=[logreg]",
    "spark.master=local[2]", "spark.shuffle_partitions=2", "spark.conf.spark.ui.enabled=false",
]


class Nightly:
    """A `lakehouse-dl nightly` subprocess in its own process group, its output collected as it comes."""

    def __init__(self, root: Path, day: str = RACE_DATE):
        cmd = [sys.executable, "-u", "-m", "pipelines.cli", "nightly", "--date", day,
               *sum((["--set", o] for o in [f"lakehouse.root={root}", *RACE_SLICE]), [])]
        self.proc = subprocess.Popen(cmd, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._drain, args=(s, b), daemon=True)
                         for s, b in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self._readers:
            t.start()

    @staticmethod
    def _drain(stream, into: list[str]) -> None:
        for text in stream:
            into.append(text)

    def wait_for(self, needle: str, timeout: float) -> bool:
        """True once a stdout line starts with `needle`; False when the process ends or time runs out first."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(ln.startswith(needle) for ln in list(self.out)):
                return True
            if self.proc.poll() is not None:
                time.sleep(0.5)   # let the reader catch the last lines
                return any(ln.startswith(needle) for ln in list(self.out))
            time.sleep(0.2)
        return False

    def kill_group(self) -> None:
        """SIGKILL the driver's whole group: the JVM and the Python workers die with it, like a lost node."""
        import psutil

        try:
            family = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=60)
        # A descendant that started its own session would outlive the group: no stray JVM after a test.
        for child in family:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        for t in self._readers:
            t.join(timeout=10)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        for t in self._readers:
            t.join(timeout=10)
        return code

    @property
    def stderr(self) -> str:
        return "".join(self.err)


@pytest.mark.slow
def test_two_nightly_runs_started_at_once_one_proceeds_the_other_is_refused(tmp_path):
    root = tmp_path / "lakehouse"
    runs = [Nightly(root), Nightly(root)]
    try:
        # The loser builds its Spark session, then finds the lock taken: it exits 3 within a minute or two.
        deadline = time.time() + 240
        while time.time() < deadline and all(r.proc.poll() is None for r in runs):
            time.sleep(0.5)
        finished = [r for r in runs if r.proc.poll() is not None]
        assert len(finished) == 1, "neither run finished: " + " | ".join(r.stderr[-1500:] for r in runs)
        [loser] = finished
        [winner] = [r for r in runs if r is not loser]
        assert loser.wait(10) == 3, loser.stderr[-3000:]
        assert "refused: the lakehouse is held by run " in loser.stderr
        # The holder is named, unless the loser read the lock file in the instant before the winner wrote it.
        assert f"(pid {winner.proc.pid} on " in loser.stderr or "held by run ? (pid ?" in loser.stderr
        assert not any(ln.startswith("[nightly] landing") for ln in loser.out)
        # The winner really works: it gets through landing into ingest while the loser is gone.
        assert winner.wait_for("[nightly] ingest ...", timeout=240), winner.stderr[-3000:]
        assert "held by run" not in winner.stderr and winner.proc.poll() is None
    finally:
        for r in runs:
            r.kill_group()
    # The winner was killed holding the lock: the next run takes the stale lock over and proceeds.
    after = Nightly(root)
    try:
        assert after.wait_for("[nightly] ", timeout=240), after.stderr[-3000:]
        # A warning: the run goes on, and a person should know a dead run held the lakehouse.
        assert any(ln.startswith("warning: [lock] taking over a stale lock of run nightly-2013-01-12-") for ln in after.out)
    finally:
        after.kill_group()
