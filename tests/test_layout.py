"""Table layouts: daily tables partitioned by month with the date a data column, predicate
overwrites of a day, unpartitioned bookkeeping tables, files sized in bytes."""
from __future__ import annotations

from datetime import date, timedelta

import pytest

from pipelines.storage import Lakehouse
from pipelines.storage.errors import LayoutMismatchError
from pipelines.storage.layout import partition_columns

SCHEMA = "id long, date date, value double"
MONTH = "partition.date_month"


def _days(start: date, n: int) -> list[date]:
    return [start + timedelta(days=i) for i in range(n)]


def _rows(days, per_day=3, value=1.0, first_id=0):
    return [(first_id + i * per_day + j, d, value) for i, d in enumerate(days) for j in range(per_day)]


def _table(values):
    return sorted((r["id"], r["date"], r["value"]) for r in values)


def test_a_month_partitioned_table_holds_one_file_per_month_and_reads_without_the_month(lakehouse, spark):
    table = lakehouse.table("silver.events")
    days = _days(date(2013, 1, 1), 59)        # January and February
    table.write(spark.createDataFrame(_rows(days), SCHEMA), mode="overwrite",
                partition_by=partition_columns("month"), partitions={"date": days})
    assert table.partition_by() == ["date_month"]
    assert table.read().columns == ["id", "date", "value"]
    assert table.schema().fieldNames() == ["id", "date", "value"]
    assert sorted(a[MONTH] for a in table.add_actions()) == ["2013-01", "2013-02"]
    assert table.rows_per_partition("date") == {d: 3 for d in days}
    assert table.rows_per_partition() == {"2013-01": 93, "2013-02": 84}
    stats = {a[MONTH]: (a["min.date"], a["max.date"]) for a in table.add_actions()}
    assert str(stats["2013-02"][0])[:10] == "2013-02-01" and str(stats["2013-02"][1])[:10] == "2013-02-28"


def test_a_redelivered_day_replaces_exactly_that_days_rows_in_one_commit(lakehouse, spark):
    table = lakehouse.table("silver.events")
    days = _days(date(2013, 1, 1), 40)
    table.write(spark.createDataFrame(_rows(days), SCHEMA), mode="overwrite",
                partition_by=partition_columns("month"), partitions={"date": days})
    before = table.version()
    again = [date(2013, 1, 15)]
    table.write(spark.createDataFrame([(10_000, again[0], 2.0)], SCHEMA), mode="overwrite",
                partition_by=partition_columns("month"), partitions={"date": again})
    assert table.version() == before + 1
    rows = _table(table.read().collect())
    assert [r for r in rows if r[1] == again[0]] == [(10_000, again[0], 2.0)]
    assert len(rows) == 39 * 3 + 1
    # Only January was rewritten: February's file is the same one.
    feb = [a["path"] for a in table.add_actions(before) if a[MONTH] == "2013-02"]
    assert feb == [a["path"] for a in table.add_actions() if a[MONTH] == "2013-02"]
    # One file per month still, and the same write again changes nothing but the version.
    assert sorted(a[MONTH] for a in table.add_actions()) == ["2013-01", "2013-02"]
    table.write(spark.createDataFrame([(10_000, again[0], 2.0)], SCHEMA), mode="overwrite",
                partition_by=partition_columns("month"), partitions={"date": again})
    assert _table(table.read().collect()) == rows


def test_a_new_day_is_an_append_that_rewrites_no_file(lakehouse, spark):
    table = lakehouse.table("silver.events")
    table.write(spark.createDataFrame(_rows(_days(date(2013, 1, 1), 5)), SCHEMA), mode="overwrite",
                partition_by=partition_columns("month"), partitions={"date": _days(date(2013, 1, 1), 5)})
    files = {a["path"] for a in table.add_actions()}
    new_day = [date(2013, 1, 6)]
    table.write(spark.createDataFrame(_rows(new_day, first_id=100), SCHEMA), mode="overwrite",
                partition_by=partition_columns("month"), partitions={"date": new_day})
    assert files < {a["path"] for a in table.add_actions()}
    assert table.count() == 18


def test_a_row_outside_the_replaced_days_fails_the_write_and_leaves_the_table(lakehouse, spark):
    table = lakehouse.table("silver.events")
    days = _days(date(2013, 1, 1), 3)
    table.write(spark.createDataFrame(_rows(days), SCHEMA), mode="overwrite", partition_by=partition_columns("month"),
                partitions={"date": days})
    version = table.version()
    with pytest.raises(ValueError, match="got a row outside them"):
        table.write(spark.createDataFrame([(1, date(2013, 1, 9), 0.0)], SCHEMA), mode="overwrite",
                    partition_by=partition_columns("month"), partitions={"date": [date(2013, 1, 2)]})
    assert table.version() == version and table.count() == 9


def test_an_unpartitioned_bookkeeping_table_replaces_the_rows_of_a_table_and_day(lakehouse, spark):
    schema = "table string, date date, rule string, failed long"
    book = lakehouse.table("ops.data_quality")
    first = [("flights", date(2013, 1, 1), "r", 1), ("weather", date(2013, 1, 1), "r", 2)]
    book.write(spark.createDataFrame(first, schema), mode="overwrite", partition_by=[],
               partitions={"table": ["flights", "weather"], "date": [date(2013, 1, 1)]})
    book.write(spark.createDataFrame([("flights", date(2013, 1, 2), "r", 3)], schema), mode="overwrite",
               partition_by=[], partitions={"table": ["flights"], "date": [date(2013, 1, 2)]})
    assert book.size()[0] == 2        # the new day was an append
    book.write(spark.createDataFrame([("flights", date(2013, 1, 1), "r", 7)], schema), mode="overwrite",
               partition_by=[], partitions={"table": ["flights"], "date": [date(2013, 1, 1)]})
    rows = sorted(tuple(r) for r in book.read().collect())
    assert rows == [("flights", date(2013, 1, 1), "r", 7), ("flights", date(2013, 1, 2), "r", 3),
                    ("weather", date(2013, 1, 1), "r", 2)]
    assert book.size()[0] == 1        # the rewrite of a small table is one file
    assert book.rows_per_partition(("table", "date")) == {("flights", date(2013, 1, 1)): 1,
                                                          ("flights", date(2013, 1, 2)): 1,
                                                          ("weather", date(2013, 1, 1)): 1}


def test_a_merge_restricted_to_days_of_a_month_partitioned_table(lakehouse, spark):
    table = lakehouse.table("silver.events")
    days = _days(date(2013, 1, 30), 4)
    table.write(spark.createDataFrame(_rows(days), SCHEMA), mode="overwrite", partition_by=partition_columns("month"),
                partitions={"date": days})
    late = spark.createDataFrame([(0, date(2013, 1, 30), 5.0), (9, date(2013, 2, 2), 6.0)], SCHEMA)
    result = table.merge(late, on=["id", "date"], update=["value"], partitions={"date": [date(2013, 1, 30)]})
    assert result["updated"] == 1
    values = {r["id"]: r["value"] for r in table.read().collect()}
    assert values[0] == 5.0 and values[9] == 1.0 and len(values) == 12


def test_a_table_laid_out_otherwise_asks_for_a_relayout(lakehouse, spark):
    table = lakehouse.table("silver.events")
    day = [date(2013, 1, 1)]
    table.write(spark.createDataFrame(_rows(day), SCHEMA), mode="overwrite", partition_by=["date"],
                partitions={"date": day})
    with pytest.raises(LayoutMismatchError, match="a layout is fixed when a table is created"):
        table.write(spark.createDataFrame(_rows(day), SCHEMA), mode="overwrite", partition_by=partition_columns("month"),
                    partitions={"date": day})


def test_files_roll_over_at_the_target_size_in_bytes(cfg, spark):
    lh = Lakehouse(cfg.lakehouse.root, spark, "delta-rs", target_file_bytes=200_000, row_group_rows=1000)
    table = lh.table("silver.events")
    rows = spark.range(60_000).selectExpr("id", "date'2013-01-01' as date", "cast(id as double) as value")
    table.write(rows.repartition(1), mode="overwrite", partition_by=partition_columns("month"))
    files, _ = table.size()
    # 60,000 rows of 2 eight-byte values and a four-byte date: about 1.2 MB of Arrow data.
    assert 4 <= files <= 8
    assert table.count() == 60_000
