"""Row lineage on the shop dataset of tests/test_silver.py: every silver row names its landing file,
checksum and line, duplicates name the row kept in their place, a corrected file is traced to its
new checksum, and `trace` walks a row down to the raw line. (A prediction traced end to end, and
the registry's pins, are tested on the nightly slice: tests/test_nightly.py.)"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pipelines.lineage.columns import built_from, merge_built_from, parse_built_from
from pipelines.lineage.trace import LineageError, trace
from test_silver import DAY, ORDERS, run, shop  # noqa: F401  (the shop fixture)

ORDERS_FILE = "orders/2024/03/01.csv"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_built_from_round_trips_and_merges_in_spark(spark):
    from pyspark.sql import functions as F

    assert parse_built_from(built_from({"silver.b": 2, "silver.a": 1})) == {"silver.a": 1, "silver.b": 2}
    assert parse_built_from(None) == {}
    df = spark.createDataFrame([(built_from({"bronze.flights": 3}),), (None,)], "b string")
    merged = [parse_built_from(r[0]) for r in
              df.select(merge_built_from(F.col("b"), {"bronze.flight_outcomes": 7})).collect()]
    assert merged == [{"bronze.flights": 3, "bronze.flight_outcomes": 7}, {"bronze.flight_outcomes": 7}]


def test_every_silver_row_names_its_file_checksum_line_and_bronze_version(cfg, spark, lakehouse, shop):
    run(cfg, spark, shop)
    bronze_version = lakehouse.table("bronze.orders").version()
    rows = {r["order_id"]: r.asDict() for r in lakehouse.table("silver.orders").read().collect()}
    lines = ORDERS.splitlines()
    for order_id, row in rows.items():
        assert row["_source_file"] == ORDERS_FILE and row["_source_sha256"] == sha(ORDERS)
        # The line holds the row: the first field of the raw line is its order id.
        assert lines[row["_line_number"] - 1].split(",")[0] == str(order_id)
        assert parse_built_from(row["_built_from"]) == {"bronze.orders": bronze_version}
    # Order 1 is on lines 2 and 8: the later line is kept, the other named in silver.duplicates.
    assert rows[1]["_line_number"] == 8
    duplicates = {r["table"]: r.asDict() for r in lakehouse.table("silver.duplicates").read().collect()}
    assert (duplicates["orders"]["_line_number"], duplicates["orders"]["kept_line"]) == (2, 8)
    assert duplicates["orders"]["_source_file"] == duplicates["orders"]["kept_file"] == ORDERS_FILE
    assert json.loads(duplicates["orders"]["key"]) == {"date": "2024-03-01", "order_id": 1}
    # Stores: S1 on lines 1 and 4 of the JSON-lines file.
    assert (duplicates["stores"]["_line_number"], duplicates["stores"]["kept_line"]) == (1, 4)
    # Bronze keeps the line and checksum of every good record; the rejected ones keep theirs too.
    bronze = lakehouse.table("bronze.orders").read().collect()
    assert sorted(r["_line_number"] for r in bronze) == list(range(2, len(lines) + 1))
    assert {r["_source_sha256"] for r in bronze} == {sha(ORDERS)}


def test_trace_walks_a_silver_row_down_to_its_raw_line(cfg, spark, lakehouse, shop):
    run(cfg, spark, shop)
    [chain] = trace(cfg, lakehouse, "silver.orders", where="order_id = 6", dataset=shop)
    [record] = chain.records
    assert (record.file, record.line, record.checksum) == (ORDERS_FILE, 10, sha(ORDERS))
    assert record.path == str(Path(cfg.lakehouse.landing) / ORDERS_FILE)
    assert record.raw == "6,2024-03-01, S2 ,600" and record.on_disk == "same checksum"
    assert record.in_bronze and record.bronze == f"bronze.orders v{lakehouse.table('bronze.orders').version()}"
    assert record.ingest_run.startswith("ingest-")
    assert [s.table for s in chain.steps] == ["silver.orders"]
    text = "\n".join(chain.lines())
    assert f"{record.path} line 10" in text and "| 6,2024-03-01, S2 ,600" in text
    with pytest.raises(LineageError, match="lineage follows rows of"):
        trace(cfg, lakehouse, "ops.data_quality", dataset=shop)


def test_a_corrected_file_is_traced_to_its_new_checksum(cfg, spark, lakehouse, shop):
    run(cfg, spark, shop, dates=[DAY])
    corrected = ORDERS.replace("6,2024-03-01, S2 ,600", "6,2024-03-01,S2,60")
    (Path(cfg.lakehouse.landing) / ORDERS_FILE).write_text(corrected)
    run(cfg, spark, shop, dates=[DAY])
    [chain] = trace(cfg, lakehouse, "silver.orders", where="order_id = 6", dataset=shop)
    [record] = chain.records
    assert record.checksum == sha(corrected) != sha(ORDERS)
    assert record.raw == "6,2024-03-01,S2,60" and record.on_disk == "same checksum"
    logged = {r["sha256"] for r in lakehouse.table("ops.ingest_log").read().collect() if r["path"] == ORDERS_FILE}
    assert logged == {sha(ORDERS), sha(corrected)}
    # The file changes again on disk: the trace says so and shows no line it cannot vouch for.
    (Path(cfg.lakehouse.landing) / ORDERS_FILE).write_text(ORDERS)
    [record] = trace(cfg, lakehouse, "silver.orders", where="order_id = 6", dataset=shop)[0].records
    assert record.on_disk == f"changed since (sha256 now {sha(ORDERS)})" and record.raw is None
