"""`lakehouse-dl dataset init` and `dataset check` on a dataset the project has never seen: a shop's
daily sales and the returns of each day's sales, delivered the day after, and a stores table."""
from __future__ import annotations

import json
import random
import shutil
from datetime import date, timedelta

import pytest

from pipelines.cli import main
from pipelines.config import PROJECT_ROOT
from pipelines.datasets import load_dataset

FIRST = date(2024, 3, 1)
DAYS = 20
ROWS_A_DAY = 8
MISSING = date(2024, 3, 10)          # the returns of this day never arrived
BAD_LINE = 4                         # of the first sales file: an amount that is not a number


def deliver(landing) -> None:
    """Write the shop's files as its systems would drop them."""
    rnd = random.Random(7)
    sale_id = 1000
    for i in range(DAYS):
        day = FIRST + timedelta(days=i)
        sales = ["sale_id,store,product,quantity,amount,sold_on"]
        returns = ["sale_id,returned,refund"]
        for _ in range(ROWS_A_DAY):
            sale_id += 1
            quantity = rnd.randint(1, 9)
            amount = round(quantity * rnd.uniform(2, 30), 2)
            shown = "abc" if i == 0 and len(sales) == BAD_LINE - 1 else str(amount)
            sales.append(f"{sale_id},{rnd.choice(['north', 'south', 'east'])},P{rnd.randint(1, 20):02d},"
                         f"{quantity},{shown},{day}")
            returned = rnd.random() < 0.25
            returns.append(f"{sale_id},{str(returned).lower()},{amount if returned else 'NA'}")
        for name, lines in (("sales", sales), ("returns", returns)):
            if name == "returns" and day == MISSING:
                continue
            path = landing / name / f"{day:%Y}" / f"{day:%m}" / f"{day:%d}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(lines) + "\n")
    (landing / "stores.csv").write_text("store,region\nnorth,N\nsouth,S\neast,E\n")


@pytest.fixture
def shop(tmp_path, monkeypatch):
    """A copy of conf/ to declare the dataset in, and the shop's files in its landing folder."""
    conf = tmp_path / "conf"
    shutil.copytree(PROJECT_ROOT / "conf", conf)
    monkeypatch.setenv("LAKEHOUSE_DL_CONF", str(conf))
    root = tmp_path / "lakehouse"
    landing = root / "landing" / "shop"
    deliver(landing)
    return {"declaration": conf / "base" / "datasets" / "shop.yaml", "landing": landing,
            "args": ["--set", f"lakehouse.root={root}"]}


def init(shop, *more) -> int:
    return main(["dataset", "init", "shop", "--landing", str(shop["landing"]), *shop["args"], *more])


def test_init_drafts_a_declaration_the_loader_accepts_with_sources_types_keys_and_rules(shop, capsys):
    assert init(shop) == 0
    out = capsys.readouterr().out
    assert f"wrote {shop['declaration']}" in out

    dataset = load_dataset(shop["declaration"])
    assert list(dataset.sources) == ["returns", "sales", "stores"]
    sales, returns, stores = (dataset.source(n) for n in ("sales", "returns", "stores"))
    assert sales.path == "sales/{yyyy}/{mm}/{dd}.csv" and sales.daily and sales.calendar == "daily"
    assert returns.path == "returns/{yyyy}/{mm}/{dd}.csv" and returns.daily
    assert stores.path == "stores.csv" and not stores.daily
    # Types in file order, read as bronze reads them; the one bad amount does not make it a string.
    assert [(c.name, c.type) for c in sales.columns] == [
        ("sale_id", "int"), ("store", "string"), ("product", "string"), ("quantity", "int"),
        ("amount", "double"), ("sold_on", "date")]
    assert [(c.name, c.type) for c in returns.columns] == [("sale_id", "int"), ("returned", "boolean"),
                                                           ("refund", "double")]
    assert sales.primary_key == ("sale_id",) and returns.primary_key == ("sale_id",)
    assert stores.primary_key == ("store",)
    assert sales.id_column == "sales_id" and returns.id_column is None
    rules = {r.name: r for r in sales.rules}
    assert rules["key_not_null"].columns == ("sale_id",) and rules["key_not_null"].blocking
    assert set(rules["always_present"].columns) == {"store", "product", "quantity", "amount", "sold_on"}
    assert rules["quantity_range"].min == 0 and rules["quantity_range"].max >= 9
    assert rules["amount_range"].min == 0 and rules["amount_range"].max > 200
    assert rules["sold_on_is_file_date"].expr == "`sold_on` = date"
    assert {r.name for r in returns.rules} >= {"key_not_null", "refund_range"}
    # The prediction, features and the returns' `updates` are the user's, left as TODOs.
    assert dataset.prediction_source is None and dataset.features == {}
    text = shop["declaration"].read_text()
    assert "# TODO: what the model predicts" in text and "# TODO: the features" in text
    assert "#   source: sales" in text and "# updates: sales" in text
    assert f"#   {shop['landing']}/<each source's path>" in text
    assert "'abc'" in text       # the sampled value the proposed type does not read


def test_init_never_overwrites_a_declaration_without_force(shop, capsys):
    assert init(shop) == 0
    shop["declaration"].write_text(shop["declaration"].read_text() + "# my edits\n")
    assert init(shop) == 1
    assert "already exists; give --force" in capsys.readouterr().err
    assert shop["declaration"].read_text().endswith("# my edits\n")
    assert init(shop, "--force") == 0
    assert "# my edits" not in shop["declaration"].read_text()
    other = shop["declaration"].parent / "elsewhere.yaml"
    assert init(shop, "--out", str(other)) == 0 and load_dataset(other).name == "shop"


def test_check_counts_what_ingest_and_clean_would_do_and_writes_no_table(shop, spark, capsys):
    assert init(shop) == 0
    # The user's edits: returns deliver the outcomes of each day's sales, and the prediction.
    text = shop["declaration"].read_text()
    text = (text.replace("    # updates: sales", "    updates: sales")
            .replace('    # known: {at: day_after, time: "06:00"}', '    known: {at: day_after, time: "06:00"}')
            .replace("# prediction:", "prediction:").replace("#   source: sales", "  source: sales")
            .replace('#   time: {at: day_before, time: "23:00"}', '  time: {at: day_before, time: "23:00"}')
            .replace("#   target: refund", "  target: refund").replace('#   label: "refund > 0"', '  label: "refund > 0"'))
    shop["declaration"].write_text(text)
    assert load_dataset(shop["declaration"]).source("returns").updates == "sales"
    capsys.readouterr()

    assert main(["dataset", "check", "shop", "--json", *shop["args"]]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["problems"] == []
    by = {s["source"]: s for s in report["sources"]}
    sales, returns, stores = by["sales"], by["returns"], by["stores"]
    assert (sales["files"], sales["records"], sales["parsed"], sales["rejected"]) == (DAYS, DAYS * ROWS_A_DAY,
                                                                                     DAYS * ROWS_A_DAY - 1, 1)
    assert sales["rejected_reasons"] == {"wrong type: amount: … is not a number": 1}
    [bad] = sales["rejected_examples"]
    assert (bad["file"], bad["line"]) == ("sales/2024/03/01.csv", BAD_LINE)
    assert bad["reason"] == "wrong type: amount: 'abc' is not a number"
    assert (returns["files"], returns["parsed"], returns["rejected"]) == (DAYS - 1, (DAYS - 1) * ROWS_A_DAY, 0)
    assert (stores["files"], stores["parsed"]) == (1, 3)
    assert sales["gaps"] == [] and returns["gaps"] == [str(MISSING)]
    assert sales["quarantined"] == sales["duplicates"] == returns["duplicates"] == 0
    # The return of the sale whose line was rejected names a sale silver would not hold: the rule
    # updates get would quarantine it.
    rules = {r["rule"]: r for r in returns["rules"]}
    assert rules["sales_row_exists"] == {"rule": "sales_row_exists", "check": "reference", "blocking": True,
                                         "failed": 1}
    [orphan] = returns["quarantine_examples"]
    assert (orphan["file"], orphan["line"]) == ("returns/2024/03/01.csv", BAD_LINE)
    assert orphan["reason"].startswith("sales_row_exists: sales_id=")
    assert returns["quarantined"] == 1
    assert {r["rule"]: r["failed"] for r in sales["rules"]}["always_present"] == 0
    assert not (shop["landing"].parent.parent / "shop" / "bronze").exists()

    assert main(["dataset", "check", "shop", "--from", "2024-03-09", "--to", "2024-03-11", *shop["args"]]) == 0
    out = capsys.readouterr().out
    assert "ok: every file parses (0 records rejected, 0 rows would be quarantined)" in out, out
    assert "  gaps         1: 2024-03-10" in out and "  files        3, 2024-03-09..2024-03-11" in out


def test_check_fails_on_a_file_refused_whole_and_on_a_declaration_that_does_not_load(shop, spark, capsys):
    assert init(shop) == 0
    day = shop["landing"] / "sales" / "2024" / "03" / "05.csv"
    day.write_text(day.read_text().replace("sale_id,", "id,", 1))
    assert main(["dataset", "check", "shop", "--date", "2024-03-05", *shop["args"]]) == 1
    out = capsys.readouterr().out
    assert "failed:" in out
    assert ("sales: sales/2024/03/05.csv is refused whole: header does not match the declared columns: "
            "extra column id; missing column sale_id") in out

    shop["declaration"].write_text(shop["declaration"].read_text().replace("sale_id: int", "sale_id: integer", 1))
    assert main(["dataset", "check", "shop", *shop["args"]]) == 1
    assert "the declaration does not load" in capsys.readouterr().err


@pytest.mark.slow
def test_a_new_users_first_hour_init_two_features_check_and_the_nightly(shop, spark, capsys):
    """The whole first hour on the shop: draft, add only the prediction block and two features,
    dry-run, and the nightly, which scores the next day's sales and registers a model."""
    from pipelines.config import load_config
    from pipelines.flows.nightly import run_nightly
    from pipelines.ml import registry
    from pipelines.storage import Lakehouse

    assert init(shop) == 0
    text = shop["declaration"].read_text()
    text = (text.replace("    # updates: sales", "    updates: sales")
            .replace('    # known: {at: day_after, time: "06:00"}', '    known: {at: day_after, time: "06:00"}')
            .replace("# prediction:", "prediction:").replace("#   source: sales", "  source: sales")
            .replace('#   time: {at: day_before, time: "23:00"}', '  time: {at: day_before, time: "23:00"}')
            # The outcome of every sale with a return row: refunded or not (a refund is NA when not).
            .replace("#   target: refund", '  target: "coalesce(refund, 0)"')
            .replace('#   label: "refund > 0"', '  label: "coalesce(refund, 0) > 0"'))
    text += "features:\n  columns:\n    store: categorical\n    product: categorical\n"
    shop["declaration"].write_text(text)
    assert main(["dataset", "check", "shop", *shop["args"]]) == 0
    assert "ok: every file parses (1 record rejected, 1 row would be quarantined)" in capsys.readouterr().out

    root = shop["args"][1].split("=", 1)[1]
    cfg = load_config("local", [f"lakehouse.root={root}", "pipeline.dataset=shop", "training.epochs=2",
                                "training.batch_size=8", "training.num_proc=2", "backtest.folds=0",
                                "nightly.baselines=[logreg]", "training.importance_rows=50",
                                "spark.master=local[2]", "spark.shuffle_partitions=2"])
    run_date = FIRST + timedelta(days=DAYS - 2)
    record = run_nightly(cfg, spark, run_date)
    assert record.status == "succeeded", record
    lh = Lakehouse.from_config(cfg, spark)
    tomorrow = lh.table("results.predictions").read().filter(f"date = '{run_date + timedelta(days=1)}'").collect()
    assert len(tomorrow) == ROWS_A_DAY and {r["predicted_label"] for r in tomorrow} <= {0, 1}
    model = registry.latest(lh)
    assert model is not None and set(registry.decision_of(model).to_dict()) >= {"threshold", "calibration"}
    # Every delivered sales line is in silver, or rejected by bronze with its reason.
    assert lh.table("silver.sales").read().count() + lh.table("bronze.sales_rejected").read().count() == DAYS * ROWS_A_DAY
