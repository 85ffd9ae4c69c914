"""The registry's pins from the commits' lineage records: the same closure as the `_built_from`
column walk on a lakehouse the stages built, no data file opened (the data files may even be
gone), the walk taken file by file where a commit recorded nothing, and `maintain` keeping the
pins of the serving, previous and challenger models and the last K registered, and no more."""
from __future__ import annotations

import copy
import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from pipelines.datasets import load_dataset
from pipelines.lineage.columns import built_from
from pipelines.lineage.pins import upstream, upstream_by_column
from pipelines.ml import registry
from pipelines.ops.maintenance import kept_models, maintain
from pipelines.storage import Lakehouse
from test_silver import ORDERS, SHOP, STORES

DAY2 = date(2024, 3, 2)
ORDERS2 = "order_id,day,store,amount\n11,2024-03-02,S1,12\n12,2024-03-02,S2,30\n13,2024-03-02,S7,40\n"
SILVER = ("silver.orders", "silver.stores", "silver.quarantine", "silver.duplicates")


@pytest.fixture(scope="module")
def built(spark, tmp_path_factory):
    """The shop dataset through bronze and silver: day 1, day 2, then day 1 again with a corrected
    file. Orders are partitioned by month: day 2 adds a file to March; the rerun rewrites March,
    keeping day 2's rows, which still name the bronze version they were built from."""
    from pipelines.config import load_config
    from test_silver import run

    tmp = tmp_path_factory.mktemp("pins")
    cfg = load_config("local", [f"lakehouse.root={tmp / 'lakehouse'}", "spark.master=local[2]"])
    shop = copy.deepcopy(SHOP)
    shop["sources"]["orders"]["partition_by"] = "month"
    (tmp / "shop.yaml").write_text(yaml.safe_dump(shop, sort_keys=False))
    land = Path(cfg.lakehouse.landing)
    (land / "orders" / "2024" / "03").mkdir(parents=True)
    (land / "orders" / "2024" / "03" / "01.csv").write_text(ORDERS)
    (land / "orders" / "2024" / "03" / "02.csv").write_text(ORDERS2)
    (land / "stores").mkdir(parents=True)
    (land / "stores" / "stores.jsonl").write_text("\n".join(json.dumps(s) for s in STORES) + "\n")
    dataset = load_dataset(tmp / "shop.yaml")
    run(cfg, spark, dataset, dates=[date(2024, 3, 1)])
    run(cfg, spark, dataset, dates=[DAY2])
    (land / "orders" / "2024" / "03" / "01.csv").write_text(ORDERS.replace("S2 ,600", "S2,60"))
    run(cfg, spark, dataset, dates=[date(2024, 3, 1)])
    return Lakehouse.from_config(cfg, spark)


def every_version(lakehouse) -> dict[str, list[int]]:
    return {name: list(range(lakehouse.table(name).version() + 1)) for name in SILVER}


def test_the_closure_from_commit_records_equals_the_column_walk_and_opens_no_data_file(built):
    for name, versions in every_version(built).items():
        log = built.table(name).lineage_log()
        for version in versions:
            walked = upstream_by_column(built, {name: version})
            assert upstream(built, {name: version}) == walked, (name, version)
            log.built_from(version)
        assert log.files_read == 0, name
    # March was rewritten with both days' rows: its latest version was built from two bronze
    # versions (day 2's and the rerun's), which the record of the one rewritten file names.
    orders = built.table("silver.orders")
    assert len(orders.files()) == 1
    assert upstream(built, {"silver.orders": orders.version()})["bronze.orders"] == [1, 2]
    assert upstream(built, every_version(built)) == upstream_by_column(built, every_version(built))


def test_pins_need_no_data_file_of_any_table(built, tmp_path):
    import shutil

    copied = tmp_path / "lakehouse"
    shutil.copytree(built.root, copied)
    lakehouse = Lakehouse(copied, built.spark)
    walked = upstream_by_column(lakehouse, every_version(lakehouse))
    for data_file in copied.glob("**/*.parquet"):
        if "_delta_log" not in data_file.parts:
            data_file.unlink()
    assert upstream(lakehouse, every_version(lakehouse)) == walked


def test_commits_without_a_record_fall_back_to_reading_their_files(built, tmp_path):
    """A table written before commits recorded lineage: the record taken out of every commit."""
    import shutil

    copied = tmp_path / "lakehouse"
    shutil.copytree(built.root, copied)
    lakehouse = Lakehouse(copied, built.spark)
    orders = lakehouse.table("silver.orders")
    for commit in Path(orders.path, "_delta_log").glob("*.json"):
        lines = [json.loads(line) for line in commit.read_text().splitlines()]
        for action in lines:
            action.get("commitInfo", {}).pop("lakehouse.builtFrom", None)
        commit.write_text("".join(json.dumps(a) + "\n" for a in lines))
    log = orders.lineage_log()
    for version in range(orders.version() + 1):
        assert upstream(lakehouse, {"silver.orders": version}) == upstream_by_column(built, {"silver.orders": version})
    assert {log.built_from(v) == set() for v in range(orders.version() + 1)} == {False}
    assert log.files_read > 0


def entry(n: int, status: str, pins: dict) -> registry.ModelEntry:
    created = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(days=n)
    return registry.ModelEntry(f"m{n}", created, f"run{n}", date(2013, 1, 1) + timedelta(days=n), f"/models/m{n}",
                               "gold.model_input", pins["gold.model_input"][0], None, "hash", "code", "{}", status,
                               "test", pins=json.dumps(pins))


def test_maintain_keeps_the_serving_previous_challenger_and_last_k_models_pins_and_no_more(lakehouse, spark):
    """Six versions of gold.model_input, each built from its own silver version; six models, model
    n pinning version n. With K=2: serving m1, previous m0, challenger m5, the last two m4, m5."""
    from pyspark.sql import functions as F

    silver, model_input = lakehouse.table("silver.flights"), lakehouse.table("gold.model_input")
    for n in range(6):
        rows = spark.createDataFrame([(n, float(i)) for i in range(3)], "day long, x double").coalesce(1)
        v = silver.write(rows, mode="overwrite")
        model_input.write(rows.withColumn("_built_from", F.lit(built_from({"silver.flights": v}))), mode="overwrite")
    files_of = {v: {Path(f).name for f in model_input.files(v)} for v in range(6)}
    for n, status in enumerate(["retired", "blessed", "rejected", "rejected", "rejected", "candidate"]):
        pins = upstream(lakehouse, {"gold.model_input": n})
        assert pins == {"gold.model_input": [n], "silver.flights": [n]}
        registry.register(lakehouse, entry(n, status, pins))

    assert kept_models(lakehouse, keep_registered=2) == {"serving": "m1", "previous": "m0", "challenger": "m5",
                                                         "last 2 registered": ["m4", "m5"]}
    done = {m.table: m for m in maintain(lakehouse, retention_hours=0, row_group_rows=1000, keep_registered=2)}

    kept = [0, 1, 4, 5]
    assert done["gold.model_input"].kept_versions == done["silver.flights"].kept_versions == [0, 1, 4]  # 5: latest
    on_disk = {p.name for p in Path(model_input.path).glob("*.parquet")}
    assert on_disk == set().union(*(files_of[v] for v in kept))
    assert {Path(f).name for f in done["gold.model_input"].vacuumed} == files_of[2] | files_of[3]
    for v in kept:
        assert model_input.to_arrow(["day"], version=v).column(0).to_pylist() == [v] * 3
