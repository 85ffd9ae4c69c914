"""A full disk under the lakehouse (pipelines/storage/space.py and the nightly's handling of it):
told apart from other failures however the libraries wrap it, the files a stopped write left
removed, and a nightly that fills a real small filesystem during clean, and during features."""
from __future__ import annotations

import errno
import os
import re
import shutil
import time
from datetime import date
from pathlib import Path

import pytest

from pipelines.storage import Lakehouse
from pipelines.storage.space import disk_full, is_disk_full, remove_orphans


# ------------------------------------------------------------------------------------------------
# Telling a full disk apart, and the one line that says so


def _chained(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


@pytest.mark.parametrize("exc", [
    OSError(errno.ENOSPC, "No space left on device"),
    _chained(RuntimeError("the write of gold.features failed"), OSError(errno.ENOSPC, "No space left on device")),
    # A Spark task's Python traceback, as the Py4J error on the driver carries it.
    RuntimeError("Job aborted due to stage failure: ... OSError: [Errno 28] Error writing bytes to file. "
                 "Detail: [errno 28] No space left on device"),
    # delta-rs's commit (Rust's io::Error) and MLflow's SQLite store.
    Exception("Generic LocalFileSystem error: Unable to copy data to file: No space left on device (os error 28)"),
    Exception("(sqlite3.OperationalError) database or disk is full"),
], ids=["oserror", "cause", "spark-task", "delta-rs", "sqlite"])
def test_a_full_disk_is_told_apart_however_it_is_wrapped(exc):
    assert is_disk_full(exc)


@pytest.mark.parametrize("exc", [OSError(errno.ENOENT, "No such file or directory"), ValueError("bad row"),
                                 Exception("I/O error: (os error 2)")], ids=["missing-file", "value", "rust-other"])
def test_other_failures_are_not_a_full_disk(exc):
    assert not is_disk_full(exc) and disk_full(exc, "/") is None


def test_the_message_is_one_line_naming_the_path_its_filesystem_and_the_free_space(tmp_path):
    message = str(disk_full(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "lakehouse" / "flights"))
    free_mib = shutil.disk_usage(tmp_path).free / 2**20
    assert "\n" not in message
    assert message.startswith(f"no space left on device under {tmp_path}/lakehouse/flights (filesystem /")
    assert message.endswith(" MiB free; free space and run again")
    said = float(message.rsplit(": ", 1)[1].split(" MiB")[0].replace(",", ""))
    assert said == pytest.approx(free_mib, rel=0.05, abs=1)


# ------------------------------------------------------------------------------------------------
# The files a stopped write left


def test_files_no_version_references_written_since_the_run_started_are_removed_and_nothing_else(lakehouse, spark):
    table = lakehouse.table("ops.ingest_log")
    table.write(spark.createDataFrame([(1, "a")], "n int, s string"), mode="append")
    old_orphan = Path(table.path, "part-0ld0ld0ld0ld-00000-0-0000.snappy.parquet")
    shutil.copy(next(Path(table.path).glob("part-*.parquet")), old_orphan)
    os.utime(old_orphan, (time.time() - 3600, time.time() - 3600))
    started = time.time()
    table.write(spark.createDataFrame([(2, "b")], "n int, s string"), mode="append")
    committed = {Path(f.removeprefix("file://")) for v in (0, 1) for f in table.files(v)}
    # What a write cut short would leave: a data file no commit adds, a commit never renamed into place.
    stopped = Path(table.path, "part-5t0pped5t0p-00000-0-0000.snappy.parquet")
    shutil.copy(next(iter(committed)), stopped)
    half_commit = Path(table.path, "_delta_log", "_commit_1a2b3c.json.tmp")
    half_commit.write_text('{"add": ')

    removed = remove_orphans(lakehouse.root, since=started)

    assert sorted(removed) == sorted([str(stopped), str(half_commit)])
    assert all(f.exists() for f in committed) and old_orphan.exists()   # older files are vacuum's
    assert sorted(r["n"] for r in table.read().collect()) == [1, 2] and table.version() == 1


# ------------------------------------------------------------------------------------------------
# A nightly that fills a small filesystem during clean or features

DAY = date(2013, 1, 4)
SLICE = [
    "pipeline.splits.train=[2013-01-01,2013-01-02]", "pipeline.splits.validation=[2013-01-03,2013-01-03]",
    "pipeline.splits.test=[2013-01-04,2013-01-04]", "spark.master=local[2]", "spark.shuffle_partitions=2",
    # A lease of seconds, so the holder's heartbeat meets the full disk too.
    "lakehouse.lock_lease_seconds=3",
]


def data_files(root: str) -> set[Path]:
    return {p for p in Path(root).rglob("*.parquet") if "landing" not in p.relative_to(root).parts}


def referenced(lh: Lakehouse) -> set[Path]:
    """Every data file some version of some table of `lh` holds."""
    out = set()
    for name in lh.table_names():
        table = lh.table(name)
        out |= {Path(f.removeprefix("file://")) for v in range(table.version() + 1) for f in table.files(v)}
    return out


def rows(lh: Lakehouse, name: str) -> list[tuple]:
    """The table's rows, sorted, without the run id. The names of data files hold each write's random id: the
    fingerprint of the files a feature spec was fitted on differs between any two runs."""
    df = lh.table(name).read()
    df = df.drop(*[c for c in df.columns if c == "run_id"])      # each run's own id
    return sorted((tuple(re.sub(r" files [0-9a-f]{16}", " files <fingerprint>", v) if isinstance(v, str) else v
                         for v in r) for r in df.select(*sorted(df.columns)).collect()), key=repr)


@pytest.mark.slow
@pytest.mark.parametrize("stage, layer", [("clean", "silver."), ("features", "gold.")])
def test_a_full_disk_during_a_stage_fails_in_one_line_keeps_every_table_and_the_rerun_matches(
        stage, layer, small_disk, tmp_path, spark, monkeypatch, capsys):
    from pipelines.cli.nightly import _guarded
    from pipelines.config import load_config
    from pipelines.flows import nightly

    cfg = load_config("local", [f"lakehouse.root={small_disk / 'lakehouse'}", *SLICE])
    reference_cfg = load_config("local", [f"lakehouse.root={tmp_path / 'reference'}", *SLICE])
    lh = Lakehouse.from_config(cfg, spark)
    ballast = small_disk / "ballast"
    before: dict[str, int] = {}

    def fill_then_run(ctx):
        # The lakehouse as the stage finds it, copied aside: the reference run's stage runs on
        # the same tables with room to spare.
        shutil.copytree(cfg.lakehouse.root, reference_cfg.lakehouse.root, ignore=shutil.ignore_patterns("_locks"))
        before.update({name: lh.table(name).version() for name in lh.table_names()})
        with open(ballast, "wb") as fh:
            fh.write(b"\0" * shutil.disk_usage(small_disk).free)
        time.sleep(2)         # a heartbeat of the lock's lease on the full disk
        return getattr(nightly, f"stage_{stage}")(ctx)

    names = ("landing", "ingest", "clean", "features")
    earlier = {name: getattr(nightly, f"stage_{name}") for name in names[:names.index(stage)]}
    monkeypatch.setattr(nightly, "STAGES", {**earlier, stage: fill_then_run})
    capsys.readouterr()
    assert _guarded(lambda: nightly.run_nightly(cfg, spark, DAY), cfg) == 1
    said = capsys.readouterr().err.strip().splitlines()

    # One line, naming the space; no traceback, not even from the lock's heartbeat thread.
    assert len(said) == 1, said
    assert said[0].startswith(f"FAILED: stage '{stage}' of the nightly run for {DAY} failed: no space left on "
                              f"device under {cfg.lakehouse.root} (filesystem {small_disk}): "), said
    assert said[0].endswith(" MiB free; free space and run the same command again (it resumes from this stage)")
    # Every table at its last version, the stage's layer never begun, and no data file that no version holds.
    assert {name: lh.table(name).version() for name in lh.table_names()} == before
    assert not any(name.startswith(layer) for name in lh.table_names())
    assert data_files(cfg.lakehouse.root) == referenced(lh)
    assert not list(Path(cfg.lakehouse.root).rglob("_delta_log/_commit_*"))

    # Space freed, the same command resumes at the stage; the reference runs it untroubled.
    ballast.unlink()
    monkeypatch.setattr(nightly, "STAGES", {**earlier, stage: getattr(nightly, f"stage_{stage}")})
    record = nightly.run_nightly(cfg, spark, DAY)
    assert record.status == "succeeded" and record.skipped == list(earlier)
    reference = Lakehouse.from_config(reference_cfg, spark)
    assert nightly.run_nightly(reference_cfg, spark, DAY).skipped == list(earlier)

    names = lh.table_names()
    assert names == reference.table_names() and any(name.startswith(layer) for name in names)
    for name in names:
        if name not in ("ops.stage_log", "results.runs"):      # run ids and times
            assert rows(lh, name) == rows(reference, name), name
    assert data_files(cfg.lakehouse.root) == referenced(lh)
