"""The Delta table layer on real tables on disk: types, statistics, modes, time travel, schema
enforcement, racing writers, failed jobs, compaction, vacuum, file sizing and JVM-written tables."""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from pipelines.storage import ConcurrentWriteError, Lakehouse, SchemaMismatchError, TableNotFoundError
from pipelines.storage.jvm import JvmDeltaEngine, choose_engine, jvm_delta_available

D1, D2, D3 = date(2013, 1, 1), date(2013, 1, 2), date(2013, 1, 3)


# ------------------------------------------------------------------------------------------------
# Helpers


def log_actions(table_path: str, kind: str = "add") -> list[dict]:
    """Every action of one kind in the JSON commits of a table's log, oldest first."""
    out = []
    for commit in sorted(Path(table_path, "_delta_log").glob("*.json")):
        for line in commit.read_text().splitlines():
            action = json.loads(line)
            if kind in action:
                out.append(action[kind])
    return out


def live_adds(table) -> list[dict]:
    """The add actions of the table's current version (added and not removed since)."""
    removed = {r["path"] for r in log_actions(table.path, "remove")}
    return [a for a in log_actions(table.path, "add") if a["path"] not in removed]


def data_files(table_path: str) -> set[str]:
    """Every file under a table's folder outside its log, relative to the folder."""
    root = Path(table_path)
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "_delta_log" not in p.parts}


def sorted_rows(df, *cols) -> list[tuple]:
    return sorted(tuple(r) for r in df.select(*cols).collect())


def flights_df(spark, rows: list[tuple]):
    """A small partitioned frame: (flight_id long, date date, carrier string, delay double)."""
    return spark.createDataFrame(rows, "flight_id long, date date, carrier string, delay double")


ALL_TYPES_SCHEMA = ("i32 int, i64 long, f32 float, f64 double, s string, b boolean, ts timestamp, "
                    "d date, amount decimal(10,2), vec array<float>")
ALL_TYPES_ROWS = [
    (1, 10_000_000_000, 1.5, 2.25, "JFK", True, datetime(2013, 1, 1, 5, 15, 0, 250_000),
     D1, Decimal("12.34"), [0.5, 1.0, -2.0]),
    (2, -3, -0.5, -1e9, "LGA", False, datetime(2013, 12, 31, 23, 59, 59, 999_999),
     date(2013, 12, 31), Decimal("-0.01"), []),
    (None, None, None, None, None, None, None, None, None, None),
    (4, 4, 4.0, 4.0, "", None, datetime(2013, 6, 1), date(2013, 6, 1), Decimal("99999999.99"), [None, 3.0]),
]


# ------------------------------------------------------------------------------------------------
# Types and statistics


def test_round_trip_of_every_type_the_pipeline_uses(lakehouse, spark):
    df = spark.createDataFrame(ALL_TYPES_ROWS, ALL_TYPES_SCHEMA)
    table = lakehouse.table("silver.types")
    assert table.write(df, mode="overwrite") == 0

    back = table.read()
    assert back.schema == df.schema
    assert sorted(back.collect(), key=lambda r: r.i32 or 0) == sorted(df.collect(), key=lambda r: r.i32 or 0)
    assert table.count() == 4
    # The files are real Delta: delta-rs's own SQL engine reads the same rows without Spark.
    from deltalake import DeltaTable, QueryBuilder
    import pyarrow as pa
    result = pa.table(QueryBuilder().register("t", DeltaTable(table.path)).execute(
        "select count(*) as n, sum(i64) as s from t").read_all())
    assert result.to_pylist() == [{"n": 4, "s": 10_000_000_000 - 3 + 4}]


def test_per_file_statistics_are_in_the_log_and_correct(lakehouse, spark):
    df = spark.createDataFrame(ALL_TYPES_ROWS, ALL_TYPES_SCHEMA).coalesce(1)
    table = lakehouse.table("silver.types")
    table.write(df, mode="overwrite")

    adds = log_actions(table.path)
    assert len(adds) == 1
    stats = json.loads(adds[0]["stats"])
    assert stats["numRecords"] == 4
    assert stats["nullCount"] == {"i32": 1, "i64": 1, "f32": 1, "f64": 1, "s": 1, "b": 2, "ts": 1,
                                  "d": 1, "amount": 1}
    lo, hi = stats["minValues"], stats["maxValues"]
    assert (lo["i32"], hi["i32"]) == (1, 4)
    assert (lo["i64"], hi["i64"]) == (-3, 10_000_000_000)
    assert (lo["f32"], hi["f32"]) == (-0.5, 4.0)
    assert (lo["f64"], hi["f64"]) == (-1e9, 4.0)
    assert (lo["s"], hi["s"]) == ("", "LGA")
    assert (lo["d"], hi["d"]) == ("2013-01-01", "2013-12-31")
    assert (lo["amount"], hi["amount"]) == (-0.01, 99999999.99)
    # Delta keeps timestamps to the millisecond: the minimum rounds down and the maximum up, so a
    # reader that skips files by these bounds never skips a file holding a matching row.
    assert lo["ts"] == "2013-01-01T05:15:00.250Z"
    assert hi["ts"] == "2014-01-01T00:00:00.000Z"
    assert "vec" not in lo and "b" not in lo
    # delta-rs parses the same statistics, so its readers can skip files by them.
    import pyarrow as pa
    flat = pa.table(table.delta().get_add_actions(flatten=True)).to_pylist()[0]
    assert flat["num_records"] == 4 and flat["null_count.b"] == 2 and flat["min.i64"] == -3


def test_file_skipping_by_the_statistics_keeps_rows_near_the_millisecond(lakehouse, spark):
    table = lakehouse.table("silver.events")
    ts = datetime(2013, 1, 1, 12, 0, 0, 999)  # 12:00:00.000999, above the millisecond the log keeps
    table.write(spark.createDataFrame([(1, ts)], "id int, ts timestamp"), mode="overwrite")
    pruned = table.delta().file_uris(file_pruning_predicate="ts >= '2013-01-01T12:00:00.000500Z'")
    assert len(pruned) == 1


# ------------------------------------------------------------------------------------------------
# Write modes


def test_append_adds_rows_in_a_new_version(lakehouse, spark):
    table = lakehouse.table("bronze.flights")
    assert table.write(flights_df(spark, [(1, D1, "AA", 1.0)]), partition_by=["date"]) == 0
    assert table.write(flights_df(spark, [(2, D1, "B6", 2.0), (3, D2, "UA", None)])) == 1
    assert table.version() == 1
    assert sorted_rows(table.read(), "flight_id") == [(1,), (2,), (3,)]
    assert table.partition_by() == ["date"]
    assert [h["operation"] for h in table.history()] == ["WRITE", "CREATE TABLE"]


def test_full_overwrite_replaces_every_row(lakehouse, spark):
    table = lakehouse.table("bronze.flights")
    table.write(flights_df(spark, [(1, D1, "AA", 1.0), (2, D2, "AA", 1.0)]), partition_by=["date"])
    assert table.write(flights_df(spark, [(9, D3, "DL", 9.0)]), mode="overwrite") == 1
    assert sorted_rows(table.read(), "flight_id", "date") == [(9, D3)]
    assert table.count() == 1
    assert table.count(version=0) == 2


def test_partition_overwrite_replaces_only_the_named_dates(lakehouse, spark):
    table = lakehouse.table("bronze.flights")
    table.write(flights_df(spark, [(1, D1, "AA", 1.0), (2, D2, "AA", 2.0), (3, D2, "B6", 3.0),
                                   (4, D3, "UA", 4.0)]), partition_by=["date"])
    untouched = {a["path"] for a in live_adds(table) if a["partitionValues"]["date"] != "2013-01-02"}

    version = table.write(flights_df(spark, [(20, D2, "DL", 20.0)]), mode="overwrite",
                          partitions={"date": ["2013-01-02"]})
    assert version == 1
    assert sorted_rows(table.read(), "flight_id", "date") == [(1, D1), (4, D3), (20, D2)]
    # The other dates' files are the very same files, not rewritten copies.
    assert untouched <= {a["path"] for a in live_adds(table)}
    # Running the same date again is idempotent: same rows, one more version.
    table.write(flights_df(spark, [(20, D2, "DL", 20.0)]), mode="overwrite", partitions={"date": [D2]})
    assert sorted_rows(table.read(), "flight_id") == [(1,), (4,), (20,)]
    assert table.version() == 2


def test_partition_counts_and_small_reads_come_from_the_log_and_the_files_without_spark(lakehouse, spark):
    table = lakehouse.table("bronze.flights")
    table.write(flights_df(spark, [(1, D1, "AA", 1.0), (2, D2, "AA", 2.0), (3, D2, "B6", None)]),
                partition_by=["date"])
    table.write(flights_df(spark, [(4, D2, "UA", 4.0)]), mode="append")
    # Keys are typed by the schema: a date column gives dates.
    assert table.rows_per_partition() == {D1: 1, D2: 3}
    assert table.rows_per_partition("date", version=0) == {D1: 1, D2: 2}
    assert table.size()[0] == len(table.files()) == len(table.add_actions())
    assert all(a["path"].startswith("file://") and a["partition.date"] for a in table.add_actions())
    # A partitioned table read on the driver (pyarrow 14 cannot, through delta-rs's own reader).
    frame = table.to_pandas(["flight_id", "date", "delay"]).sort_values("flight_id")
    assert list(frame["flight_id"]) == [1, 2, 3, 4] and list(frame["date"]) == [D1, D2, D2, D2]
    assert frame["delay"].isna().tolist() == [False, False, True, False]
    assert table.to_arrow(version=0).num_rows == 3 and table.to_arrow().schema.names == table.schema().fieldNames()


def test_replace_rows_keeps_other_keys_and_replaces_the_given_ones_in_one_commit(lakehouse, spark):
    table = lakehouse.table("ops.bookkeeping")
    schema = "job string, day int, status string"
    table.replace_rows([{"job": "a", "day": 1, "status": "failed"}, {"job": "b", "day": 1, "status": "ok"}],
                       schema, key=("job", "day"))
    version = table.replace_rows([{"job": "a", "day": 1, "status": "ok"}], schema, key=("job", "day"))
    assert version == 1
    assert sorted(map(tuple, table.read().collect())) == [("a", 1, "ok"), ("b", 1, "ok")]
    table.replace_rows([], schema, key=("job", "day"), drop=lambda r: r["job"] == "b")
    assert [tuple(r) for r in table.read().collect()] == [("a", 1, "ok")]


def test_append_rows_adds_a_commit_without_reading_the_table_or_a_spark_job(lakehouse, spark):
    table = lakehouse.table("ops.appended")
    schema = "run_date date, stage string, seconds double"
    tracker = spark.sparkContext.statusTracker()
    before = set(tracker.getJobIdsForGroup())
    for day in (1, 2, 3):
        table.append_rows([{"run_date": date(2013, 1, day), "stage": "ingest", "seconds": 0.5 * day}], schema)
    # The first call creates the table, the others append; the driver wrote every file itself.
    assert set(tracker.getJobIdsForGroup()) == before and table.version() == 2
    assert sorted(tuple(r) for r in table.read().collect()) == [
        (date(2013, 1, d), "ingest", 0.5 * d) for d in (1, 2, 3)]


def test_partition_overwrite_refuses_a_row_outside_the_named_partitions(lakehouse, spark):
    table = lakehouse.table("bronze.flights")
    table.write(flights_df(spark, [(1, D1, "AA", 1.0), (2, D2, "AA", 2.0)]), partition_by=["date"])
    before = data_files(table.path)
    with pytest.raises(ValueError, match=r"outside.*flight_id.: 3"):
        table.write(flights_df(spark, [(20, D2, "DL", 20.0), (3, D3, "UA", 3.0)]), mode="overwrite",
                    partitions={"date": ["2013-01-02"]})
    assert table.version() == 0
    assert data_files(table.path) == before
    with pytest.raises(ValueError, match="no such column"):
        table.write(flights_df(spark, [(20, D2, "DL", 20.0)]), mode="overwrite", partitions={"airline": ["DL"]})
    with pytest.raises(ValueError, match="mode='overwrite'"):
        table.write(flights_df(spark, [(20, D2, "DL", 20.0)]), partitions={"date": [D2]})


# ------------------------------------------------------------------------------------------------
# Time travel


def test_time_travel_by_version_and_by_timestamp(lakehouse, spark):
    table = lakehouse.table("silver.flights")
    table.write(flights_df(spark, [(1, D1, "AA", 1.0)]), partition_by=["date"])
    time.sleep(0.05)
    table.write(flights_df(spark, [(2, D2, "AA", 2.0)]))
    time.sleep(0.05)
    table.write(flights_df(spark, [(3, D3, "AA", 3.0)]), mode="overwrite")

    assert sorted_rows(table.read(version=0), "flight_id") == [(1,)]
    assert sorted_rows(table.read(version=1), "flight_id") == [(1,), (2,)]
    assert sorted_rows(table.read(), "flight_id") == [(3,)]
    assert len(table.files(version=1)) == 2 and all(f.startswith("file://") for f in table.files(1))

    stamps = {h["version"]: h["timestamp"] for h in table.history()}
    as_of_v1 = datetime.fromtimestamp(stamps[1] / 1000, tz=timezone.utc)
    assert sorted_rows(table.read(timestamp=as_of_v1), "flight_id") == [(1,), (2,)]
    # A naive datetime and an ISO string are read as UTC.
    assert sorted_rows(table.read(timestamp=as_of_v1.replace(tzinfo=None)), "flight_id") == [(1,), (2,)]
    just_after_v0 = datetime.fromtimestamp(stamps[0] / 1000, tz=timezone.utc) + timedelta(milliseconds=1)
    assert sorted_rows(table.read(timestamp=just_after_v0.isoformat()), "flight_id") == [(1,)]
    before_v0 = datetime.fromtimestamp(stamps[0] / 1000, tz=timezone.utc) - timedelta(milliseconds=1)
    with pytest.raises(ValueError, match="before the table's first commit"):
        table.read(timestamp=before_v0)


def test_reading_a_table_that_does_not_exist_says_so(lakehouse):
    with pytest.raises(TableNotFoundError, match="silver.nothing"):
        lakehouse.table("silver.nothing").read()
    with pytest.raises(ValueError, match="layer"):
        lakehouse.table("nolayer")


# ------------------------------------------------------------------------------------------------
# Schema enforcement and evolution


def test_schema_mismatch_names_missing_extra_and_retyped_columns(lakehouse, spark):
    table = lakehouse.table("silver.planes")
    table.write(spark.createDataFrame([(1, "N10156", 2004.0)], "id int, tailnum string, seats double"))
    bad = spark.createDataFrame([(1, "N10156", 3)], "id long, tailnum string, engines int")
    with pytest.raises(SchemaMismatchError) as err:
        table.write(bad)
    message = str(err.value)
    assert "missing columns: seats" in message
    assert "columns not in the table: engines" in message
    assert "id (int in the table, bigint written)" in message
    assert "schema_mode='merge'" in message and table.path in message
    assert table.version() == 0


def test_schema_mode_merge_adds_a_column(lakehouse, spark):
    table = lakehouse.table("silver.planes")
    table.write(spark.createDataFrame([(1, "N10156")], "id int, tailnum string"))
    version = table.write(spark.createDataFrame([(2, "N102UW", 4)], "id int, tailnum string, engines int"),
                          schema_mode="merge")
    assert table.schema().fieldNames() == ["id", "tailnum", "engines"]
    assert sorted_rows(table.read(), "id", "tailnum", "engines") == [(1, "N10156", None), (2, "N102UW", 4)]
    # delta-rs commits the new column first and then the rows (its write transactions cannot change
    # the schema): the version between them holds the nullable column and only the old rows.
    assert version == 2 == table.version()
    assert [h["operation"] for h in table.history(2)] == ["WRITE", "ADD COLUMN"]
    assert sorted_rows(table.read(version=1), "id", "engines") == [(1, None)]
    # A later write without the new column fills it with nulls only under merge.
    with pytest.raises(SchemaMismatchError, match="missing columns: engines"):
        table.write(spark.createDataFrame([(3, "N103US")], "id int, tailnum string"))
    table.write(spark.createDataFrame([(3, "N103US")], "id int, tailnum string"), schema_mode="merge")
    assert table.count() == 3


def test_full_overwrite_with_schema_mode_overwrite_replaces_the_schema(lakehouse, spark):
    table = lakehouse.table("gold.feature_spec")
    table.write(spark.createDataFrame([("dep_delay", 1.0)], "name string, mean double"))
    table.write(spark.createDataFrame([("dep_delay", ["a"])], "name string, vocabulary array<string>"),
                mode="overwrite", schema_mode="overwrite")
    assert table.schema().fieldNames() == ["name", "vocabulary"]
    assert table.read().collect()[0].vocabulary == ["a"]


# ------------------------------------------------------------------------------------------------
# Concurrency


@pytest.fixture
def commit_barrier(monkeypatch):
    """Makes two writers reach the commit together, both from the snapshot they read before it."""
    from deltalake import DeltaTable

    barrier = threading.Barrier(2, timeout=120)
    original = DeltaTable.create_write_transaction

    def both_at_once(self, *args, **kwargs):
        barrier.wait()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DeltaTable, "create_write_transaction", both_at_once)
    return barrier


def race(*writes):
    """Run the write callables in threads at once; return each one's result or exception."""
    results: list = [None] * len(writes)

    def run(i, fn):
        try:
            results[i] = fn()
        except Exception as exc:  # the outcome under test, kept for the assertions
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(writes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results


def test_two_appends_racing_both_land(lakehouse, spark, commit_barrier):
    table = lakehouse.table("ops.ingest_log")
    table.write(spark.createDataFrame([(0, "seed")], "id long, source string"))
    a = spark.createDataFrame([(i, "a") for i in range(1, 101)], "id long, source string")
    b = spark.createDataFrame([(i, "b") for i in range(101, 151)], "id long, source string")

    results = race(lambda: table.write(a), lambda: table.write(b))
    failures = [r for r in results if isinstance(r, Exception)]
    assert all(isinstance(f, ConcurrentWriteError) for f in failures), failures
    landed = {"a": 100, "b": 50}
    expected = 1 + sum(n for r, n in zip(results, landed.values()) if not isinstance(r, Exception))
    # Blind appends do not conflict: both land, each in its own version.
    assert not failures and sorted(results) == [1, 2]
    assert table.count() == expected == table.read().count() == 151


def test_two_appends_racing_to_create_a_table_both_land(lakehouse, spark):
    table = lakehouse.table("ops.ingest_log")
    a = spark.createDataFrame([(i, "a") for i in range(40)], "id long, source string")
    b = spark.createDataFrame([(i, "b") for i in range(40, 100)], "id long, source string")
    results = race(lambda: table.write(a), lambda: table.write(b))
    assert sorted(results) == [0, 1], results
    assert table.count() == 100 == table.read().count()


def test_two_overwrites_of_one_partition_racing_one_wins_cleanly(lakehouse, spark, commit_barrier):
    table = lakehouse.table("bronze.flights")
    table.write(flights_df(spark, [(1, D1, "AA", 1.0), (2, D2, "AA", 2.0)]), partition_by=["date"])
    mine = flights_df(spark, [(10 + i, D2, "MINE", 0.0) for i in range(30)])
    theirs = flights_df(spark, [(100 + i, D2, "THEIRS", 0.0) for i in range(50)])

    results = race(lambda: table.write(mine, mode="overwrite", partitions={"date": [D2]}),
                   lambda: table.write(theirs, mode="overwrite", partitions={"date": [D2]}))
    failures = [r for r in results if isinstance(r, Exception)]
    assert len(failures) == 1 and isinstance(failures[0], ConcurrentWriteError), results
    assert "run it again" in str(failures[0])
    winner = "MINE" if isinstance(results[1], Exception) else "THEIRS"
    carriers = {r.carrier for r in table.read().where("date = '2013-01-02'").collect()}
    assert carriers == {winner}
    assert table.count() == 1 + (30 if winner == "MINE" else 50) == table.read().count()
    assert table.version() == 1
    # The loser's files are gone: every data file on disk is in some version of the log.
    assert data_files(table.path) == {a["path"] for a in log_actions(table.path)}


def test_two_full_overwrites_racing_never_leave_a_mixed_table(lakehouse, spark):
    table = lakehouse.table("gold.features")
    table.write(spark.createDataFrame([(0, "seed")], "id long, who string"))
    a = spark.createDataFrame([(i, "a") for i in range(60)], "id long, who string")
    b = spark.createDataFrame([(i, "b") for i in range(80)], "id long, who string")
    for _ in range(2):
        results = race(lambda: table.write(a, mode="overwrite"), lambda: table.write(b, mode="overwrite"))
        assert all(isinstance(r, (int, ConcurrentWriteError)) for r in results), results
        who = {r.who for r in table.read().collect()}
        assert who in ({"a"}, {"b"})
        assert table.count() == (60 if who == {"a"} else 80)


# ------------------------------------------------------------------------------------------------
# A job that fails halfway


def test_a_job_failing_mid_write_leaves_the_previous_version_and_no_files(cfg, spark):
    from pyspark.sql import functions as F

    # Small files and small Arrow batches, so the healthy task is still writing files when the
    # failing one raises, and Spark has to cancel it.
    lh = Lakehouse(cfg.lakehouse.root, spark, "delta-rs", target_file_rows=300, row_group_rows=100)
    table = lh.table("bronze.flights")
    table.write(flights_df(spark, [(1, D1, "AA", 1.0)]), partition_by=["date"])
    before = data_files(table.path)

    @F.udf("double")
    def delay_or_fail(flight_id):
        if flight_id == 3_100:
            raise ValueError("malformed row 3100")
        if flight_id < 3_000:
            time.sleep(0.001)  # the healthy task: slow, writing a file every 300 rows
        return float(flight_id)

    rows = (spark.range(0, 6_000, numPartitions=2)
            .select(F.col("id").alias("flight_id"), F.lit(D2).alias("date"), F.lit("B6").alias("carrier"))
            .withColumn("delay", delay_or_fail("flight_id")))
    batch_key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    spark.conf.set(batch_key, "100")
    try:
        with pytest.raises(Exception, match="malformed row 3100"):
            table.write(rows)
    finally:
        spark.conf.unset(batch_key)
    assert table.version() == 0
    assert sorted_rows(table.read(), "flight_id") == [(1,)]
    assert data_files(table.path) == before
    # Nothing appears later either, from tasks that were still being cancelled.
    time.sleep(3)
    assert data_files(table.path) == before


# Each step between the executors' files and the commit, made to fail in turn, on both paths.
COMMON_STEPS = ["deltalake.transaction.AddAction", "deltalake.Schema", "deltalake.transaction.CommitProperties"]
WRITE_STEPS = ([("new table", s) for s in COMMON_STEPS + ["deltalake.transaction.create_table_with_add_actions"]]
               + [("existing table", s) for s in COMMON_STEPS + ["pipelines.storage.delta_rs._partition_filters",
                                                                 "deltalake.DeltaTable.create_write_transaction"]])


@pytest.mark.parametrize("case, step", WRITE_STEPS, ids=[f"{c}: {s.rsplit('.', 1)[1]}" for c, s in WRITE_STEPS])
def test_a_failure_at_any_step_of_the_commit_leaves_no_file_and_the_last_version(lakehouse, spark, monkeypatch,
                                                                               case, step):
    import importlib
    import types

    table = lakehouse.table("bronze.flights")
    existing = case == "existing table"
    if existing:
        table.write(flights_df(spark, [(1, D1, "AA", 1.0)]), partition_by=["date"])
    before = data_files(table.path) if existing else set()

    def broken(*args, **kwargs):
        raise OSError(f"injected failure in {step}")

    owner, _, name = step.rpartition(".")
    if name == "Schema":   # a Rust class: stand in an object whose from_json fails
        monkeypatch.setattr(importlib.import_module(owner), name, types.SimpleNamespace(from_json=broken))
    elif name == "create_write_transaction":
        monkeypatch.setattr(importlib.import_module("deltalake").DeltaTable, name, broken)
    else:
        monkeypatch.setattr(importlib.import_module(owner), name, broken)
    how = {"mode": "overwrite", "partitions": {"date": [D2]}} if existing else {"partition_by": ["date"]}
    with pytest.raises(OSError, match="injected failure"):
        table.write(flights_df(spark, [(2, D2, "DL", 2.0), (3, D2, "UA", 3.0)]), **how)
    assert data_files(table.path) == before
    if existing:
        assert table.version() == 0 and sorted_rows(table.read(), "flight_id") == [(1,)]
    else:
        assert not table.exists()


# ------------------------------------------------------------------------------------------------
# Layout: compaction, vacuum, file sizes


def test_compaction_makes_fewer_files_with_the_same_rows(lakehouse, spark):
    table = lakehouse.table("ops.data_quality")
    for i in range(8):
        table.write(spark.createDataFrame([(i * 10 + j, f"rule{j}") for j in range(10)], "id long, rule string"))
    before_files, before_version = len(table.files()), table.version()
    before_rows = sorted_rows(table.read(), "id", "rule")
    assert before_files >= 8

    metrics = table.compact()
    assert metrics["numFilesRemoved"] == before_files
    assert len(table.files()) < before_files
    assert table.version() == before_version + 1
    assert sorted_rows(table.read(), "id", "rule") == before_rows
    assert table.count() == 80
    assert table.history(1)[0]["operation"] == "OPTIMIZE"


def test_compaction_of_named_partitions_only(lakehouse, spark):
    table = lakehouse.table("bronze.flights")
    for i in range(3):
        table.write(flights_df(spark, [(i, D1, "AA", 0.0), (10 + i, D2, "AA", 0.0)]), partition_by=["date"])
    table.compact(partitions={"date": ["2013-01-02"]})
    per_date: dict[str, int] = {}
    for a in live_adds(table):
        per_date[a["partitionValues"]["date"]] = per_date.get(a["partitionValues"]["date"], 0) + 1
    assert per_date == {"2013-01-01": 3, "2013-01-02": 1}
    assert table.count() == 6


def test_vacuum_deletes_only_files_no_kept_version_needs(lakehouse, spark):
    table = lakehouse.table("silver.airlines")
    table.write(spark.createDataFrame([("AA", "American")], "carrier string, name string"))
    old = data_files(table.path)
    table.write(spark.createDataFrame([("B6", "JetBlue")], "carrier string, name string"), mode="overwrite")
    current = {a["path"] for a in live_adds(table)}

    assert table.vacuum(retention_hours=168) == []  # the old files are younger than a week
    listed = table.vacuum(retention_hours=0, dry_run=True)
    assert len(listed) == len(old) and data_files(table.path) == old | current
    deleted = table.vacuum(retention_hours=0)
    assert sorted(Path(p).name for p in deleted) == sorted(Path(p).name for p in old)
    assert data_files(table.path) == current
    assert [r.carrier for r in table.read().collect()] == ["B6"]


def test_vacuum_deletes_files_a_checkpoint_left_without_tombstone_and_old_unreferenced_ones(lakehouse, spark):
    """A checkpoint drops the tombstones older than the table's `delta.deletedFileRetentionDuration`
    (a week; a second here): a file removed that long before has no tombstone left, and delta-rs's
    default vacuum would never delete it. Ours deletes it, and a stopped write's file older than the
    retention, and keeps one younger (a write in flight) and the live files."""
    from pipelines.storage.delta_rs import DeltaRsEngine

    table = lakehouse.table("silver.airlines")
    table.write(spark.createDataFrame([("AA", "American")], "carrier string, name string"))
    DeltaRsEngine.open(table.path).alter.set_table_properties(
        {"delta.deletedFileRetentionDuration": "interval 1 second"})
    removed = data_files(table.path)
    table.write(spark.createDataFrame([("B6", "JetBlue")], "carrier string, name string"), mode="overwrite")
    live = data_files(table.path) - removed
    time.sleep(1.5)
    DeltaRsEngine.open(table.path).create_checkpoint()
    dt = DeltaRsEngine.open(table.path)
    assert dt.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=True) == []  # no tombstone left
    two_hours_ago = time.time() - 7200
    stopped_long_ago = Path(table.path, "part-0ld5t0pped0ld-00000-0-0000.snappy.parquet")
    in_flight = Path(table.path, "part-1nfl1ght1nfl-00000-0-0000.snappy.parquet")
    for orphan in (stopped_long_ago, in_flight):
        orphan.write_bytes(Path(table.path, next(iter(live))).read_bytes())
    for old in [*removed, stopped_long_ago.name]:
        os.utime(Path(table.path, old), (two_hours_ago, two_hours_ago))

    deleted = table.vacuum(retention_hours=1)

    assert sorted(Path(p).name for p in deleted) == sorted([*removed, stopped_long_ago.name])
    assert data_files(table.path) == live | {in_flight.name}
    assert [r.carrier for r in table.read().collect()] == ["B6"]
    assert table.vacuum(retention_hours=1) == []


def test_files_are_sized_by_target_file_rows_not_by_arrow_batch(cfg, spark):
    import pyarrow.parquet as pq

    rows = 120_000  # 12 Arrow batches of 10,000 rows
    df = spark.range(0, rows, numPartitions=2).selectExpr("id as flight_id", "cast(id % 97 as double) as delay")

    # An unpartitioned write is one file up to the target size, however many tasks computed it.
    one = Lakehouse(cfg.lakehouse.root, spark, "delta-rs").table("gold.one")
    one.write(df)
    assert len(one.files()) == 1

    lh = Lakehouse(cfg.lakehouse.root, spark, "delta-rs", target_file_rows=50_000, row_group_rows=8_192)
    sized = lh.table("gold.sized")
    sized.write(df)
    counts = sorted(json.loads(a["stats"])["numRecords"] for a in live_adds(sized))
    assert counts == [20_000, 50_000, 50_000]
    assert sized.count() == rows
    meta = pq.ParquetFile(sized.files()[0][len("file://"):]).metadata
    assert max(meta.row_group(i).num_rows for i in range(meta.num_row_groups)) <= 8_192


def test_a_partitioned_write_makes_one_file_per_partition_value(lakehouse, spark):
    from pyspark.sql import functions as F

    df = (spark.range(0, 30_000, numPartitions=4)
          .select(F.col("id").alias("flight_id"), F.date_add(F.lit(D1), (F.col("id") % 3).cast("int")).alias("date"),
                  F.lit("AA").alias("carrier"), F.lit(1.0).alias("delay")))
    table = lakehouse.table("silver.flights")
    table.write(df, partition_by=["date"])
    adds = live_adds(table)
    assert sorted(a["partitionValues"]["date"] for a in adds) == ["2013-01-01", "2013-01-02", "2013-01-03"]
    assert all(a["path"].startswith(f"date={a['partitionValues']['date']}/") for a in adds)
    assert table.count() == 30_000


# ------------------------------------------------------------------------------------------------
# Tables written by the JVM engine


def write_jvm_style_table(path: Path) -> None:
    """A table as Spark + Delta writes it: hive folders, relative paths, INT96 timestamps, two commits."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("flight_id", pa.int64()), ("carrier", pa.string()), ("time_hour", pa.timestamp("us"))])
    files = {
        ("2013-01-01", "a"): pa.table({"flight_id": [1, 2], "carrier": ["AA", "B6"],
                                       "time_hour": [datetime(2013, 1, 1, 5), datetime(2013, 1, 1, 6)]}, schema=schema),
        ("2013-01-02", "b"): pa.table({"flight_id": [3], "carrier": ["UA"],
                                       "time_hour": [datetime(2013, 1, 2, 5)]}, schema=schema),
        (None, "c"): pa.table({"flight_id": [4], "carrier": [None], "time_hour": [None]}, schema=schema),
        ("2013-01-02", "d"): pa.table({"flight_id": [30, 31], "carrier": ["DL", "DL"],
                                       "time_hour": [datetime(2013, 1, 2, 7)] * 2}, schema=schema),
    }
    adds = {}
    for (day, tag), data in files.items():
        folder = f"date={day or '__HIVE_DEFAULT_PARTITION__'}"
        name = f"part-0000{ord(tag) - 97}-{uuid.uuid4()}.c000.snappy.parquet"
        (path / folder).mkdir(parents=True, exist_ok=True)
        pq.write_table(data, path / folder / name, use_deprecated_int96_timestamps=True)
        adds[tag] = {"path": f"{folder}/{name}", "partitionValues": {"date": day},
                     "size": (path / folder / name).stat().st_size, "modificationTime": 1_700_000_000_000,
                     "dataChange": True, "stats": json.dumps({"numRecords": data.num_rows})}
    spark_schema = {"type": "struct", "fields": [
        {"name": "flight_id", "type": "long", "nullable": True, "metadata": {}},
        {"name": "carrier", "type": "string", "nullable": True, "metadata": {}},
        {"name": "time_hour", "type": "timestamp", "nullable": True, "metadata": {}},
        {"name": "date", "type": "date", "nullable": True, "metadata": {}}]}
    v0 = [
        {"commitInfo": {"timestamp": 1_700_000_000_000, "operation": "WRITE",
                        "operationParameters": {"mode": "Overwrite", "partitionBy": "[\"date\"]"},
                        "engineInfo": "Apache-Spark/3.5.7 Delta-Lake/3.3.2"}},
        {"protocol": {"minReaderVersion": 1, "minWriterVersion": 2}},
        {"metaData": {"id": str(uuid.uuid4()), "format": {"provider": "parquet", "options": {}},
                      "schemaString": json.dumps(spark_schema), "partitionColumns": ["date"],
                      "configuration": {}, "createdTime": 1_700_000_000_000}},
        {"add": adds["a"]}, {"add": adds["b"]}, {"add": adds["c"]},
    ]
    # Version 1 replaces 2013-01-02 the way replaceWhere does: remove the old file, add the new one.
    v1 = [
        {"commitInfo": {"timestamp": 1_700_000_100_000, "operation": "WRITE",
                        "operationParameters": {"mode": "Overwrite", "predicate": "[\"(date = '2013-01-02')\"]"}}},
        {"remove": {"path": adds["b"]["path"], "deletionTimestamp": 1_700_000_100_000, "dataChange": True,
                    "partitionValues": {"date": "2013-01-02"}}},
        {"add": adds["d"]},
    ]
    log = path / "_delta_log"
    log.mkdir(parents=True)
    (log / "00000000000000000000.json").write_text("\n".join(json.dumps(a) for a in v0) + "\n")
    (log / "00000000000000000001.json").write_text("\n".join(json.dumps(a) for a in v1) + "\n")


def test_a_table_laid_out_by_the_jvm_engine_reads_back(lakehouse, spark):
    path = Path(lakehouse.path("silver.flights"))
    write_jvm_style_table(path)
    table = lakehouse.table("silver.flights")

    assert table.version() == 1 and table.partition_by() == ["date"]
    assert table.schema().simpleString() == "struct<flight_id:bigint,carrier:string,time_hour:timestamp,date:date>"
    assert sorted(table.read(version=0).collect()) == sorted([
        (1, "AA", datetime(2013, 1, 1, 5), D1), (2, "B6", datetime(2013, 1, 1, 6), D1),
        (3, "UA", datetime(2013, 1, 2, 5), D2), (4, None, None, None)], key=lambda r: r[0])
    latest = table.read()
    assert sorted_rows(latest, "flight_id", "date") == [(1, D1), (2, D1), (4, None), (30, D2), (31, D2)]
    assert latest.where("date = '2013-01-02'").count() == 2
    assert table.count() == 5 and len(table.files()) == 3
    assert all(Path(f[len("file://"):]).exists() for f in table.files())

    # This layer appends to it like to its own tables, into the same kind of folders.
    table.write(flights_df(spark, [(5, D3, "WN", 0.0)]).selectExpr(
        "flight_id", "carrier", "cast(null as timestamp) as time_hour", "date"))
    assert table.count() == 6 and (path / "date=2013-01-03").is_dir()


def test_lakehouse_tables_lists_every_table_with_its_info(lakehouse, spark):
    assert lakehouse.tables() == []
    lakehouse.table("bronze.flights").write(flights_df(spark, [(1, D1, "AA", 1.0), (2, D2, "AA", 1.0)]),
                                            partition_by=["date"])
    lakehouse.table("ops.ingest_log").write(spark.createDataFrame([(1, "x")], "id long, path string"))
    lakehouse.table("ops.ingest_log").write(spark.createDataFrame([(2, "y")], "id long, path string"))
    os.makedirs(os.path.join(lakehouse.root, "silver", "not_a_table"))  # a folder without a log is skipped

    infos = {i.name: i for i in lakehouse.tables()}
    assert list(infos) == ["bronze.flights", "ops.ingest_log"]
    flights, log = infos["bronze.flights"], infos["ops.ingest_log"]
    assert (flights.layer, flights.version, flights.rows, flights.files) == ("bronze", 0, 2, 2)
    assert flights.partition_by == ["date"] and flights.last_operation == "CREATE TABLE"
    assert (log.layer, log.version, log.rows, log.files, log.last_operation) == ("ops", 1, 2, 2, "WRITE")
    assert log.size_bytes == sum(os.path.getsize(os.path.join(log.path, f)) for f in data_files(log.path))
    assert datetime.fromisoformat(log.last_modified.rstrip("Z")) <= datetime.utcnow()
    # Metadata needs no Spark: the CLI lists tables without starting it.
    assert [i.name for i in Lakehouse(lakehouse.root).tables()] == ["bronze.flights", "ops.ingest_log"]


# ------------------------------------------------------------------------------------------------
# Engine choice and the JVM engine


def test_auto_takes_delta_rs_when_the_delta_jars_are_absent(spark):
    if jvm_delta_available(spark):
        pytest.skip("the Delta jars are on this Spark's classpath, so auto takes the JVM engine")
    assert choose_engine(spark, "auto", 1000, 100).name == "delta-rs"
    with pytest.raises(RuntimeError, match="--packages io.delta:delta-spark_2.12:3.3.2"):
        choose_engine(spark, "jvm", 1000, 100)


@pytest.fixture
def jvm_lakehouse(spark, cfg):
    """A lakehouse on the JVM Delta engine; skips, saying why, where the Delta jars do not load."""
    if not jvm_delta_available(spark):
        pytest.skip("JVM Delta engine not tested: io.delta.tables.DeltaTable does not load in this Spark "
                    "(the delta-spark jars come from Maven Central, which this machine cannot reach; "
                    "run where Spark starts with --packages io.delta:delta-spark_2.12:3.3.2)")
    return Lakehouse(cfg.lakehouse.root, spark, "jvm")


@pytest.mark.jvm_delta
def test_jvm_engine_writes_partitions_that_delta_rs_reads(jvm_lakehouse, spark):
    table = jvm_lakehouse.table("bronze.flights")
    assert isinstance(jvm_lakehouse.engine, JvmDeltaEngine)
    table.write(flights_df(spark, [(1, D1, "AA", 1.0), (2, D2, "AA", 2.0)]), partition_by=["date"])
    table.write(flights_df(spark, [(20, D2, "DL", 20.0)]), mode="overwrite", partitions={"date": ["2013-01-02"]})
    assert sorted_rows(table.read(), "flight_id") == [(1,), (20,)]
    assert sorted_rows(table.read(version=0), "flight_id") == [(1,), (2,)]
    assert table.version() == 1 and table.count() == 2  # delta-rs reads the JVM engine's log


@pytest.mark.jvm_delta
def test_jvm_engine_enforces_and_merges_schemas(jvm_lakehouse, spark):
    table = jvm_lakehouse.table("silver.planes")
    table.write(spark.createDataFrame([(1, "N1")], "id int, tailnum string"))
    with pytest.raises(Exception, match="(?i)schema"):
        table.write(spark.createDataFrame([(2, "N2", 4)], "id int, tailnum string, engines int"))
    table.write(spark.createDataFrame([(2, "N2", 4)], "id int, tailnum string, engines int"), schema_mode="merge")
    assert table.schema().fieldNames() == ["id", "tailnum", "engines"]


def test_the_latest_snapshot_is_reused_until_any_writer_commits_and_a_recreated_table_is_read_anew(spark, tmp_path):
    """`Table.delta()` keeps the latest snapshot (pipelines/storage/snapshots.py): the same object
    while nothing changed, a new one after a commit by this process's engine or by another writer
    (delta-rs directly), after the table is deleted and written again at the same version, and in
    another thread."""
    import shutil

    import pyarrow as pa
    from deltalake import write_deltalake

    lh = Lakehouse(tmp_path / "lh", spark, "delta-rs")
    table = lh.table("results.cache_probe")
    table.append_rows([{"x": 1}], "x long")
    first = table.delta()
    assert table.delta() is first and table.version() == 0
    table.append_rows([{"x": 2}], "x long")                                  # this engine
    assert table.delta() is not first and table.version() == 1
    write_deltalake(table.path, pa.table({"x": pa.array([3], pa.int64())}), mode="append")   # another writer
    assert table.version() == 2 and sorted(r["x"] for r in table.to_arrow().to_pylist()) == [1, 2, 3]
    shutil.rmtree(table.path)                                                # deleted, written again as v0..v2
    for x in (7, 8, 9):
        write_deltalake(table.path, pa.table({"x": pa.array([x], pa.int64())}), mode="append")
    assert sorted(r["x"] for r in table.to_arrow().to_pylist()) == [7, 8, 9]
    seen = []
    worker = threading.Thread(target=lambda: seen.append(table.delta()))
    worker.start()
    worker.join()
    assert seen[0] is not table.delta() and seen[0].version() == table.version() == 2
    # Maintenance commits through a table of its own: the kept snapshot is not moved under a reader.
    kept = table.delta()
    table.compact()
    assert kept.version() == 2 and table.version() == 3
