"""`lakehouse-dl maintain`: compaction and vacuum on real Delta tables, the registry's pinned versions
kept, nothing changed on a rerun, and the nightly lock respected."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, datetime, timezone

import pytest
from pathlib import Path

from log_lines import log_lines

from pipelines.ml import registry
from pipelines.ops.maintenance import maintain
from pipelines.storage import LakehouseLock

PROJECT = Path(__file__).resolve().parents[1]


def on_disk(table) -> set[str]:
    return {p.name for p in Path(table.path).glob("**/*.parquet")}


def live_files(table) -> int:
    return table.size()[0]


def rows(table, *cols) -> list[tuple]:
    return sorted(tuple(r[c] for c in cols) for r in table.read().collect())


def build(lakehouse, spark):
    """Appends (one small file each), a partition overwritten twice, model_input at two versions
    with the older one pinned by a registered model."""
    log = lakehouse.table("ops.stage_log")
    for i in range(5):
        log.write(spark.createDataFrame([(f"run{i}", "ingest", i)], "run_id string, stage string, rows long"),
                  mode="append")
    flights = lakehouse.table("silver.flights")
    for delay in (1.0, 2.0, 3.0):
        flights.write(spark.createDataFrame([(1, date(2013, 1, 1), delay), (2, date(2013, 1, 2), delay)],
                                            "flight_id long, date date, delay double"),
                      mode="overwrite", partition_by=["date"])
    model_input = lakehouse.table("gold.model_input")
    for n in (3, 4):
        model_input.write(spark.createDataFrame([(i, float(i)) for i in range(n)], "row_id long, x double"),
                          mode="overwrite")
    entry = registry.ModelEntry("m1", datetime(2026, 1, 1, tzinfo=timezone.utc), "run0", date(2013, 1, 2),
                                "/models/m1", "gold.model_input", 0, None, "hash", "code", "{}", "blessed", "first")
    registry.register(lakehouse, entry)
    return log, flights, model_input


def test_maintenance_compacts_appends_vacuums_stale_files_and_keeps_pinned_versions(lakehouse, spark):
    log, flights, model_input = build(lakehouse, spark)
    log_rows, flight_rows = rows(log, "run_id", "rows"), rows(flights, "flight_id", "delay")
    assert live_files(log) == 5 and len(on_disk(flights)) == 6
    model_input_files = on_disk(model_input)
    assert len(model_input_files) > live_files(model_input)   # version 0's files are unreferenced now

    with log_lines() as said:
        done = {m.table: m for m in maintain(lakehouse, retention_hours=0, row_group_rows=1000)}

    # The appended table: five files into one, the same rows, one OPTIMIZE commit, old files gone.
    assert (done["ops.stage_log"].files_before, done["ops.stage_log"].files_after) == (5, 1)
    assert live_files(log) == 1 and len(on_disk(log)) == 1 and rows(log, "run_id", "rows") == log_rows
    assert "OPTIMIZE" in [h["operation"] for h in log.history()]
    # The overwritten partitions: nothing to compact, the files of the older versions deleted.
    assert done["silver.flights"].compacted == 0 and len(done["silver.flights"].vacuumed) == 4
    assert len(on_disk(flights)) == 2 and rows(flights, "flight_id", "delay") == flight_rows
    # gold.model_input is never compacted, and the version the registry pins survives vacuum.
    assert done["gold.model_input"].kept_versions == [0] and done["gold.model_input"].vacuumed == []
    assert on_disk(model_input) == model_input_files
    assert model_input.read(version=0).count() == 3 and model_input.read().count() == 4
    assert any(s.startswith("[maintain] 4 tables: 9 → 5 live files, deleted 9 unreferenced") for s in said), said

    # A rerun finds nothing to do and commits nothing.
    versions = {name: lakehouse.table(name).version() for name in done}
    again = maintain(lakehouse, retention_hours=0, row_group_rows=1000)
    assert all(m.compacted == 0 and m.vacuumed == [] for m in again)
    assert {name: lakehouse.table(name).version() for name in done} == versions


def test_the_default_retention_keeps_recent_files_and_a_dry_run_changes_nothing(lakehouse, spark):
    log, flights, _ = build(lakehouse, spark)
    before = {name: (lakehouse.table(name).version(), on_disk(lakehouse.table(name)))
              for name in ("ops.stage_log", "silver.flights", "gold.model_input")}
    dry = {m.table: m for m in maintain(lakehouse, retention_hours=0, row_group_rows=1000, dry_run=True)}
    assert dry["ops.stage_log"].compacted == 5 and len(dry["silver.flights"].vacuumed) == 4
    assert {name: (lakehouse.table(name).version(), on_disk(lakehouse.table(name))) for name in before} == before

    # A week's retention: compaction happens, but every replaced file is too young to delete.
    done = {m.table: m for m in maintain(lakehouse, retention_hours=168, row_group_rows=1000)}
    assert done["ops.stage_log"].files_after == 1 and all(m.vacuumed == [] for m in done.values())
    assert len(on_disk(log)) == 6 and len(on_disk(flights)) == 6


def test_the_command_refuses_while_a_nightly_run_holds_the_lakehouse(cfg, lakehouse, spark):
    build(lakehouse, spark)
    command = [sys.executable, "-m", "pipelines.cli", "maintain", "--set", f"lakehouse.root={Path(cfg.lakehouse.root).parent}",
               "--retention-hours", "0"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    with LakehouseLock(cfg.lakehouse.root, "nightly", "nightly-2013-01-02-test"):
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "refused: the lakehouse is held by run nightly-2013-01-02-test" in proc.stderr
    assert live_files(lakehouse.table("ops.stage_log")) == 5

    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "[maintain] ops.stage_log: 5 → 1 live files (5 compacted), deleted 5 unreferenced" in proc.stdout
    assert live_files(lakehouse.table("ops.stage_log")) == 1
    bad = subprocess.run([*command[:-1], "-1"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "--retention-hours must be at least 0" in bad.stderr


def test_vacuum_keeps_the_feature_spec_a_registered_model_scores_with(lakehouse, spark):
    """A model scores with the spec version it was trained with: after the spec was refitted twice,
    vacuum with no retention still keeps that version's files while the model is registered."""
    spec = lakehouse.table("gold.feature_spec")
    for mean in (1.0, 2.0, 3.0):
        spec.write(spark.createDataFrame([("num_distance", mean)], "name string, mean double"), mode="overwrite")
    entry = registry.ModelEntry("m1", datetime(2026, 1, 1, tzinfo=timezone.utc), "run0", date(2013, 1, 2),
                                "/models/m1", "gold.model_input", 0, 0, "hash", "code", "{}", "blessed", "first")
    registry.register(lakehouse, entry)

    done = {m.table: m for m in maintain(lakehouse, retention_hours=0, row_group_rows=1000)}

    assert done["gold.feature_spec"].kept_versions == [0]
    assert spec.to_arrow(version=0).to_pylist() == [{"name": "num_distance", "mean": 1.0}]
    assert spec.to_arrow().to_pylist() == [{"name": "num_distance", "mean": 3.0}]
    assert len(done["gold.feature_spec"].vacuumed) == 1          # version 1's file: no model needs it


def test_vacuum_keeps_every_table_version_a_registered_model_pins(lakehouse, spark):
    """A model pins every table version it depends on (`pins`), bronze to gold: after each table was
    rewritten twice, vacuum with no retention keeps each of those versions readable, and deletes the
    files of the versions no model pins."""
    names = ("bronze.flights", "silver.flights", "gold.features", "gold.feature_spec", "gold.model_input")
    for n in (1, 2, 3):
        for name in names:
            rows = spark.createDataFrame([(i, float(n)) for i in range(n)], "id long, x double").coalesce(1)
            lakehouse.table(name).write(rows, mode="overwrite")
    pins = {name: [0] for name in names}
    entry = registry.ModelEntry("m1", datetime(2026, 1, 1, tzinfo=timezone.utc), "run0", date(2013, 1, 2),
                                "/models/m1", "gold.model_input", 0, 0, "hash", "code", "{}", "blessed", "first",
                                pins=json.dumps(pins), num_proc=2)
    registry.register(lakehouse, entry)

    done = {m.table: m for m in maintain(lakehouse, retention_hours=0, row_group_rows=1000)}

    for name in names:
        table = lakehouse.table(name)
        assert done[name].kept_versions == [0], name
        assert len(done[name].vacuumed) == 1, name              # version 1's file: nothing pins it
        assert table.to_arrow(version=0).to_pylist() == [{"id": 0, "x": 1.0}], name
        assert table.count() == 3


def test_a_pinned_version_older_than_the_log_retention_still_reads_after_checkpoints(lakehouse, spark):
    """delta-rs deletes commits older than 30 days at each checkpoint unless the table says not
    to: every table is created saying so, and `maintain` says so for a table created before."""
    import time

    from deltalake import DeltaTable

    def age_the_log(table, days: int) -> None:
        old = time.time() - days * 86400
        for f in Path(table.path, "_delta_log").iterdir():
            os.utime(f, (old, old))

    def write(table, n: int) -> None:
        table.write(spark.createDataFrame([(n,)], "n long"), mode="append")

    kept, before = lakehouse.table("ops.kept"), lakehouse.table("ops.created_before")
    for table in (kept, before):
        write(table, 0)
        DeltaTable(table.path).alter.set_table_properties({"delta.checkpointInterval": "2"})
    assert DeltaTable(kept.path).metadata().configuration["delta.enableExpiredLogCleanup"] == "false"
    # A table as one created before this setting: the property back to delta-rs's default.
    DeltaTable(before.path).alter.set_table_properties({"delta.enableExpiredLogCleanup": "true"})
    for table in (kept, before):
        age_the_log(table, 40)
        for n in range(1, 5):
            write(table, n)
    assert kept.read(version=0).count() == 1
    with pytest.raises(Exception):
        before.read(version=0).count()      # what every table did: version 0's commit is gone

    # maintain keeps the log of a table created before, from then on.
    again = lakehouse.table("ops.created_later")
    write(again, 0)
    DeltaTable(again.path).alter.set_table_properties({"delta.checkpointInterval": "2",
                                                       "delta.enableExpiredLogCleanup": "true"})
    maintain(lakehouse, retention_hours=10_000, row_group_rows=1000)
    # maintain also set the checkpoint interval back to every table's (10): 2 again, to checkpoint.
    DeltaTable(again.path).alter.set_table_properties({"delta.checkpointInterval": "2"})
    pinned = again.version()
    age_the_log(again, 40)
    for n in range(1, 5):
        write(again, n)
    assert again.read(version=pinned).count() == 1


def test_every_table_checkpoints_every_ten_commits_and_is_found_by_its_first_commit(lakehouse, spark, tmp_path):
    """Opening a table replays the commits since its last checkpoint: a checkpoint every 10
    commits (delta-rs's default is 100) keeps a nightly's ~170 opens from growing with the nights."""
    table = lakehouse.table("ops.checkpointed")
    assert not table.exists()
    for n in range(12):
        table.write(spark.createDataFrame([(n,)], "n long"), mode="append")
    log_dir = Path(table.path, "_delta_log")
    # delta-rs checkpoints after the tenth commit (version 9).
    assert [f.name for f in log_dir.glob("*.checkpoint.parquet")] == [f"{9:020d}.checkpoint.parquet"]
    assert table.exists() and table.version() == 11
    # A version reads its own rows, from before and after the checkpoint.
    assert table.read(version=3).count() == 4 and table.read(version=11).count() == 12
    # A folder that only looks like a table (an empty log) is none.
    (tmp_path / "fake" / "_delta_log").mkdir(parents=True)
    from pipelines.storage.delta_rs import DeltaRsEngine
    assert not DeltaRsEngine.exists(str(tmp_path / "fake")) and DeltaRsEngine.exists(f"file://{table.path}")



def test_maintain_keeps_the_newest_reports_and_the_model_plots_they_show(lakehouse):
    """Reports are not tables: `maintain` deletes the run reports but the newest
    `keep_reports` (by the time their page was written), and the model sections no kept report
    copied its plots from; a dry run deletes nothing."""
    from pipelines.ops.maintenance import prune_reports
    from pipelines.report.page import SECTION_FILE

    folder = Path(lakehouse.root) / "reports"
    for name in ("old", "shown"):
        (folder / "models" / name).mkdir(parents=True)
        (folder / "models" / name / "section.json").write_text("{}")
    runs = [f"nightly-2013-03-{10 + i}-run" for i in range(5)]
    for i, run in enumerate(runs):
        (folder / run).mkdir()
        (folder / run / "drift.png").write_bytes(b"png")
        (folder / run / SECTION_FILE).write_text("old" if i < 3 else "shown")
        (folder / run / "index.html").write_text("<html>")
        os.utime(folder / run / "index.html", (1_000_000 + i, 1_000_000 + i))

    would = prune_reports(folder, keep=2, dry_run=True)
    assert [p.name for p in would] == [*runs[:3], "old"]
    assert all(p.exists() for p in would)
    maintain(lakehouse, retention_hours=0, row_group_rows=1000, keep_reports=2)
    assert sorted(p.name for p in folder.iterdir()) == ["models", *runs[3:]]
    assert [p.name for p in (folder / "models").iterdir()] == ["shown"]
    # Without a setting, maintain leaves the reports alone.
    maintain(lakehouse, retention_hours=0, row_group_rows=1000)
    assert sorted(p.name for p in folder.iterdir()) == ["models", *runs[3:]]


def test_the_pinned_versions_files_come_from_the_log_and_vacuum_deletes_what_delta_rs_would(tmp_path):
    """`pipelines.storage.vacuum` reads the pinned versions' files from one snapshot and the commits
    after it (delta-rs's `keep_versions` loads a snapshot per version): on a partitioned table of
    appends, overwrites and compactions, it lists what delta-rs lists for every set of kept
    versions, deletes only that, and every kept version reads after it."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import DeltaTable, write_deltalake

    from pipelines.storage.delta_rs import DeltaRsEngine
    from pipelines.storage.vacuum import files_at_versions, vacuum

    path = str(tmp_path / "table")
    for i in range(30):
        data = pa.table({"month": [f"2013-0{1 + i % 3}"], "n": [i]})
        if i % 7 == 6:       # a month rewritten: its older files are removed
            write_deltalake(path, data, mode="overwrite", partition_by=["month"],
                            predicate=f"month = '2013-0{1 + i % 3}'")
        else:
            write_deltalake(path, data, mode="append", partition_by=["month"])
        if i % 10 == 9:
            DeltaTable(path).optimize.compact()
    latest = DeltaTable(path).version()

    def by_delta_rs(keep):
        return sorted(DeltaTable(path).vacuum(retention_hours=0, dry_run=True, enforce_retention_duration=False,
                                              full=True, keep_versions=keep or None))

    for keep in ([], [0], [4, 5, 6], list(range(0, latest, 3)), list(range(latest))):
        assert sorted(vacuum(DeltaTable(path), 0, True, keep, DeltaRsEngine.open)) == by_delta_rs(keep), keep
    assert files_at_versions(path, [latest], DeltaRsEngine.open) == {
        p for p in DeltaTable(path).get_add_actions(flatten=True).column("path").to_pylist()}

    keep = [2, 11, 20]
    expected = by_delta_rs(keep)
    # A checkpoint every (latest + 2) commits: the one of VACUUM START is due.
    DeltaTable(path).alter.set_table_properties({"delta.checkpointInterval": str(latest + 2)})
    assert expected and sorted(vacuum(DeltaTable(path), 0, False, keep, DeltaRsEngine.open)) == expected
    assert not any((tmp_path / "table" / f).exists() for f in expected)
    # The history shows the vacuum as Delta's does: two commits without an action.
    start, end = sorted(DeltaTable(path).history(2), key=lambda c: c["version"])
    assert (start["version"], start["operation"], start["operationMetrics"]["numFilesToDelete"]) == (
        latest + 2, "VACUUM START", len(expected))
    assert (end["version"], end["operation"], end["operationMetrics"]["numDeletedFiles"]) == (
        latest + 3, "VACUUM END", len(expected))
    assert json.loads((tmp_path / "table" / "_delta_log" / "_last_checkpoint").read_text())["version"] == latest + 2
    assert DeltaTable(path, version=latest + 3).get_add_actions().num_rows == DeltaTable(path, version=latest).get_add_actions().num_rows
    for version in [*keep, latest]:       # every file of a kept version is still there, and reads
        files = [u.removeprefix("file://") for u in DeltaTable(path, version=version).file_uris()]
        assert files and sum(pq.read_metadata(f).num_rows for f in files) > 0
    assert vacuum(DeltaTable(path), 0, False, keep, DeltaRsEngine.open) == []     # nothing left to delete
    assert DeltaTable(path).version() == latest + 3                                  # and nothing committed
