"""`Table.merge` on real date-partitioned Delta tables on disk (delta-rs engine): matched rows get the
update columns, nothing else changes, one commit or none, and the partitions it may touch."""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import pytest

from pipelines.storage import TableNotFoundError

D1, D2, D3 = date(2013, 1, 1), date(2013, 1, 2), date(2013, 1, 3)
FLIGHTS_SCHEMA = "flight_id long, date date, carrier string, dep_delay double, arr_delay double"
LATE_SCHEMA = "flight_id long, date date, arr_delay double"
FLIGHTS = [
    (1, D1, "UA", 2.0, None), (2, D1, "AA", -3.0, None),
    (3, D2, "B6", 10.0, None), (4, D2, "DL", 0.0, None), (5, D2, "UA", 7.0, None),
    (6, D3, "EV", 1.0, None),
]


@pytest.fixture
def flights(lakehouse, spark):
    """silver.flights partitioned by date, written in one commit per date (version 2), arrivals unknown."""
    table = lakehouse.table("silver.flights")
    for day in (D1, D2, D3):
        rows = [r for r in FLIGHTS if r[1] == day]
        table.write(spark.createDataFrame(rows, FLIGHTS_SCHEMA), partition_by=["date"])
    return table


def rows_of(table, version: int | None = None) -> dict[int, tuple]:
    return {r["flight_id"]: tuple(r) for r in table.read(version=version).collect()}


def files_of(table, day: date) -> set[str]:
    return {f for f in table.files() if f"/date={day.isoformat()}/" in f}


def test_matched_rows_get_the_update_columns_and_nothing_else_changes(flights, spark):
    before = rows_of(flights)
    d1_files, d3_files = files_of(flights, D1), files_of(flights, D3)
    late = spark.createDataFrame([(3, D2, 25.0), (5, D2, -4.0)], LATE_SCHEMA)

    result = flights.merge(late, on=["flight_id", "date"], update=["arr_delay"])

    assert result == {"version": 3, "updated": 2, "source_rows": 2}
    # delta-rs engine: a copy-on-write of the partitions with a matched row, one WRITE commit.
    assert flights.version() == 3 and flights.history(1)[0]["operation"] == "WRITE"
    assert flights.history(1)[0]["description"] == "merge on flight_id, date setting arr_delay"
    after = rows_of(flights)
    assert after[3] == (3, D2, "B6", 10.0, 25.0) and after[5] == (5, D2, "UA", 7.0, -4.0)
    unmatched = set(before) - {3, 5}
    assert {k: after[k] for k in unmatched} == {k: before[k] for k in unmatched}
    # Only files holding a matched row are rewritten, even without `partitions`.
    assert files_of(flights, D1) == d1_files and files_of(flights, D3) == d3_files
    assert flights.schema() == flights.schema(version=2)


def test_source_rows_without_a_target_row_are_ignored_and_not_counted(flights, spark):
    late = spark.createDataFrame([(4, D2, 1.0), (99, D2, 5.0), (1, D3, 6.0), (6, D3, 8.0)], LATE_SCHEMA)

    result = flights.merge(late, on=["flight_id", "date"], update=["arr_delay"])

    assert result == {"version": 3, "updated": 2, "source_rows": 4}
    after = rows_of(flights)
    assert flights.count() == len(after) == len(FLIGHTS)   # no inserts, no deletes
    assert after[4][-1] == 1.0 and after[6][-1] == 8.0 and after[1][-1] is None


def test_a_source_that_matches_nothing_commits_nothing(flights, spark):
    late = spark.createDataFrame([(99, D2, 5.0)], LATE_SCHEMA)

    result = flights.merge(late, on=["flight_id"], update=["arr_delay"])

    assert result == {"version": 2, "updated": 0, "source_rows": 1}
    assert flights.version() == 2


def test_the_previous_version_still_reads_the_old_values(flights, spark):
    flights.merge(spark.createDataFrame([(3, D2, 25.0)], LATE_SCHEMA), on=["flight_id"], update=["arr_delay"])

    assert rows_of(flights)[3][-1] == 25.0
    assert rows_of(flights, version=2)[3][-1] is None
    assert rows_of(flights, version=2) == {r[0]: r for r in FLIGHTS}


def test_duplicate_source_keys_raise_and_commit_nothing(flights, spark):
    late = spark.createDataFrame([(3, D2, 25.0), (3, D2, 30.0), (4, D2, 1.0)], LATE_SCHEMA)

    duplicated = (r"1 keys \['flight_id', 'date'\] on more than one row, "
                  r"for example \[\(3, datetime.date\(2013, 1, 2\)\)\]")
    with pytest.raises(ValueError, match=duplicated):
        flights.merge(late, on=["flight_id", "date"], update=["arr_delay"])

    assert flights.version() == 2 and rows_of(flights)[4][-1] is None


def test_an_empty_source_commits_nothing(flights, spark):
    result = flights.merge(spark.createDataFrame([], LATE_SCHEMA), on=["flight_id"], update=["arr_delay"],
                           description="nothing late today")

    assert result == {"version": 2, "updated": 0, "source_rows": 0}
    assert len(flights.history()) == 3


def test_the_description_is_recorded_in_the_history(flights, spark):
    flights.merge(spark.createDataFrame([(6, D3, 3.0)], LATE_SCHEMA), on=["flight_id"], update=["arr_delay"],
                  description="late arrivals of 2013-01-03")

    last = flights.history(1)[0]
    assert last["description"] == "late arrivals of 2013-01-03"
    assert last["engine"] == "lakehouse-dl/delta-rs"


def test_a_null_key_never_matches(lakehouse, spark):
    table = lakehouse.table("silver.flights")
    table.write(spark.createDataFrame([(None, D1, "UA", 1.0, None), (7, D1, "AA", 2.0, None)], FLIGHTS_SCHEMA),
                partition_by=["date"])
    # Two rows with a null key are not duplicates: neither matches anything.
    late = spark.createDataFrame([(None, D1, 50.0), (None, D1, 60.0), (7, D1, 9.0)], LATE_SCHEMA)

    result = table.merge(late, on=["flight_id", "date"], update=["arr_delay"])

    assert result == {"version": 1, "updated": 1, "source_rows": 3}
    assert sorted(table.read().select("flight_id", "arr_delay").collect(), key=lambda r: r[0] or 0) == [
        (None, None), (7, 9.0)]


def test_partitions_restrict_the_merge_and_other_partitions_files_are_not_rewritten(flights, spark):
    d1_files = files_of(flights, D1)
    # Keyed on flight_id alone, flight 1 (2013-01-01) and flight 3 (2013-01-02) both match.
    late = spark.createDataFrame([(1, D1, 40.0), (3, D2, 25.0)], LATE_SCHEMA)

    result = flights.merge(late, on=["flight_id"], update=["arr_delay"], partitions={"date": [D2]},
                           description="late arrivals of 2013-01-02")

    assert result == {"version": 3, "updated": 1, "source_rows": 2}
    after = rows_of(flights)
    assert after[3][-1] == 25.0 and after[1][-1] is None   # outside the named partition: untouched
    assert files_of(flights, D1) == d1_files
    assert files_of(flights, D2) != []


def test_source_columns_are_cast_to_the_table_types(lakehouse, spark):
    table = lakehouse.table("results.outcomes")
    schema = "id long, date date, label int, amount decimal(10,2), seen_at timestamp, note string"
    table.write(spark.createDataFrame([(1, D1, 0, Decimal("1.00"), None, None),
                                       (2, D1, 0, Decimal("2.00"), None, "kept")], schema), partition_by=["date"])
    seen = datetime(2013, 1, 1, 23, 59, 59, 123456)
    # Narrower or wider types than the table's: int key, long label, double amount.
    late = spark.createDataFrame([(1, 1, 12.5, seen, "late")],
                                 "id int, label long, amount double, seen_at timestamp, note string")

    result = table.merge(late, on=["id"], update=["label", "amount", "seen_at", "note"])

    assert result["updated"] == 1
    assert table.schema() == table.schema(version=0)
    rows = {r["id"]: r for r in table.read().collect()}
    assert [rows[1][c] for c in ("label", "amount", "seen_at", "note")] == [1, Decimal("12.50"), seen, "late"]
    assert rows[2]["note"] == "kept" and rows[2]["seen_at"] is None

    with pytest.raises(ValueError, match="column label of the merge source does not cast"):
        table.merge(spark.createDataFrame([(1, "soon")], "id long, label string"), on=["id"], update=["label"])
    assert table.version() == 1


def test_bad_columns_partitions_or_a_missing_table_raise_before_anything_runs(flights, lakehouse, spark):
    late = spark.createDataFrame([(3, D2, 25.0)], LATE_SCHEMA)
    with pytest.raises(ValueError, match=r"columns \['cancelled'\] .* are not in the merge source"):
        flights.merge(late, on=["flight_id"], update=["cancelled"])
    with pytest.raises(ValueError, match=r"columns \['extra'\] .* are not in table silver.flights"):
        flights.merge(late.withColumnRenamed("arr_delay", "extra"), on=["flight_id"], update=["extra"])
    with pytest.raises(ValueError, match="matches on `on` columns and sets other"):
        flights.merge(late, on=["flight_id"], update=["flight_id"])
    with pytest.raises(ValueError, match="must list values of columns"):
        flights.merge(late, on=["flight_id"], update=["arr_delay"], partitions={"airline": ["UA"]})
    with pytest.raises(TableNotFoundError, match="silver.weather does not exist"):
        lakehouse.table("silver.weather").merge(late, on=["flight_id"], update=["arr_delay"])
    assert flights.version() == 2


def test_to_arrow_reads_the_files_a_merge_rewrote(flights, spark):
    flights.merge(spark.createDataFrame([(3, D2, 25.0)], LATE_SCHEMA), on=["flight_id"], update=["arr_delay"])

    assert sorted(flights.to_arrow(["flight_id", "arr_delay"]).to_pylist(), key=lambda r: r["flight_id"])[2] == {
        "flight_id": 3, "arr_delay": 25.0}


def test_derive_sets_a_function_of_the_matched_rows_own_value(flights, spark):
    from pyspark.sql import functions as F

    late = spark.createDataFrame([(3, D2, 25.0)], LATE_SCHEMA)

    flights.merge(late, on=["flight_id", "date"], update=["arr_delay"],
                  derive={"carrier": lambda carrier: F.concat(carrier, F.lit("*"))})

    after = rows_of(flights)
    assert after[3][2] == "B6*" and after[4][2] == "DL" and after[5][2] == "UA"
    with pytest.raises(ValueError, match="derives columns it neither matches on nor sets"):
        flights.merge(late, on=["flight_id", "date"], update=["arr_delay"], derive={"arr_delay": lambda c: c})


def test_a_merge_over_many_partitions_writes_one_file_per_partition_value(lakehouse, spark):
    # The target is partitioned by one of the keys: the join keeps that partitioning and the write
    # takes it without another exchange (DeltaRsEngine.merge); a date spread over tasks would
    # leave several files in its folder.
    table = lakehouse.table("silver.flights")
    days = [date(2013, 1, d) for d in range(1, 29)]
    rows = [(i, days[i % len(days)], "UA", float(i), None) for i in range(2000)]
    table.write(spark.createDataFrame(rows, FLIGHTS_SCHEMA).repartition(7), partition_by=["date"])
    late = spark.createDataFrame([(i, days[i % len(days)], float(-i)) for i in range(0, 2000, 3)], LATE_SCHEMA)

    result = table.merge(late.repartition(5), on=["flight_id", "date"], update=["arr_delay"],
                         partitions={"date": days})

    assert result["updated"] == len(range(0, 2000, 3))
    assert all(len(files_of(table, day)) == 1 for day in days)
    got = {r["flight_id"]: r["arr_delay"] for r in table.read().collect()}
    assert got == {i: (float(-i) if i % 3 == 0 else None) for i in range(2000)}
