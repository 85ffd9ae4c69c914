"""The nightly job end to end on a small slice of 2013: every results table, idempotence, resume, lock,
the notebooks, and spark-submit on a real standalone cluster.

One lakehouse is built once for the module (a nightly run for 2013-03-20 that trains on January and
February) and the tests read it; tests that change it work on a copy. The cluster test submits the
nightly of the next day on a copy, with shorter epochs, so that its two submits on two one-core
workers stay cheap.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RUN_DATE = date(2013, 3, 20)
SLICE = [
    "pipeline.splits.train=[2013-01-01,2013-02-28]",
    "pipeline.splits.validation=[2013-03-01,2013-03-14]",
    "pipeline.splits.test=[2013-03-15,2013-03-31]",
    # The hyper-parameters this slice was checked with (two months of rows train fast and overfit
    # fast): the model beats the logistic regression on its validation fortnight, so it is blessed.
    "training.epochs=6", "training.batch_size=256", "training.num_proc=2", "training.learning_rate=0.001",
    "training.dropout=0.1", "training.l2=0.00001", "training.embedding_dim=8", "training.warmup_epochs=1",
    "training.early_stopping_patience=2",
    # The logistic regression only (the bless rule's bar): tests/test_baselines.py fits the trees.
    "nightly.baselines=[logreg]",
    # Two rolling-origin folds fit the slice: train on January, validate on February; train on
    # January and February, validate on March's first fortnight.
    "backtest.folds=2", "backtest.epochs=2",
    "spark.master=local[2]", "spark.shuffle_partitions=2",
    # A week of validation rows must still give each of the 2 Horovod ranks its own row groups.
    "lakehouse.model_input_row_group_rows=1024",
    # Permutation importance on 3,000 of the fortnight's validation rows (conf/base: 20,000).
    "training.importance_rows=3000",
]
PROJECT = Path(__file__).resolve().parents[1]


def overrides(root: Path) -> list[str]:
    return [f"lakehouse.root={root}", *SLICE]


def counts(lakehouse) -> dict[str, int]:
    return {t.name: t.rows for t in lakehouse.tables()}


@pytest.fixture(scope="module")
def nightly_lakehouse(tmp_path_factory, spark):
    from pipelines.config import load_config
    from pipelines.storage import Lakehouse
    from pipelines.flows.nightly import run_nightly

    root = tmp_path_factory.mktemp("nightly") / "lakehouse"
    cfg = load_config("local", overrides(root))
    record = run_nightly(cfg, spark, RUN_DATE)
    return cfg, Lakehouse.from_config(cfg, spark), record


def test_nightly_writes_every_results_table_and_the_report(nightly_lakehouse):
    from pipelines.ml import registry

    cfg, lh, record = nightly_lakehouse
    assert record.status == "succeeded" and record.skipped == []
    tables = counts(lh)
    for name in ("bronze.flights", "silver.flights", "gold.model_input", "results.predictions",
                 "results.metrics", "results.training_history", "results.models", "results.runs"):
        assert tables.get(name, 0) > 0, f"{name} is missing or empty: {tables}"
    # Every raw flight line of the delivered days is in bronze: Jan 1 .. the day after the run date.
    landing = Path(cfg.lakehouse.landing)
    raw_lines = sum(max(0, len(p.read_bytes().splitlines()) - 1) for p in landing.rglob("*.csv")
                    if "flights" in p.parts)
    rejected = tables.get("bronze.flights_rejected", 0)
    assert tables["bronze.flights"] + rejected == raw_lines

    model = registry.blessed(lh)
    assert model is not None and Path(model.path).exists()
    # Beside model.keras, the SavedModel with the feature spec inside (tests/test_export.py checks its scores).
    assert (Path(model.path).parent / "saved_model" / "saved_model.pb").exists()
    # MLflow, embedded under the lakehouse: the model's run with its Delta inputs, the champion alias.
    import mlflow
    from mlflow import MlflowClient

    from pipelines.ml.tracking import CHAMPION, open_tracking

    assert (cfg.root / "mlflow" / "mlflow.db").exists() and model.mlflow_run_id and model.mlflow_model_version
    open_tracking(cfg)
    run = mlflow.get_run(model.mlflow_run_id)
    inputs = {i.dataset.name for i in run.inputs.dataset_inputs}
    assert f"gold.model_input@v{model.training_version}" in inputs and any(n.startswith("bronze.") for n in inputs)
    assert "validation_dnn_auc" in run.data.metrics and run.data.params["model_version"] == model.model_version
    champion = MlflowClient().get_model_version_by_alias(cfg.pipeline.dataset, CHAMPION)
    assert str(champion.version) == model.mlflow_model_version and champion.run_id == model.mlflow_run_id
    artifacts = {a.path for a in MlflowClient().list_artifacts(model.mlflow_run_id)}
    assert {"saved_model", "report"} <= artifacts
    metrics = lh.table("results.metrics").read().toPandas()
    # The baselines nightly.baselines names, and the stack of the network and them (no stack
    # without the network: a stack of the logistic regression alone is that model).
    assert set(metrics["model"]) == {"dnn", "logreg", "stack"}
    assert {"train", "validation", "test"} <= set(metrics["split"])
    assert set(metrics[metrics["split"] == "train"]["model"]) == {"dnn", "logreg"}
    # The backtest: every model on each fold, and its mean and spread; the blessing compared them.
    assert {"fold_1", "fold_2", "backtest_mean", "backtest_std"} <= set(metrics["split"])
    for name in ("dnn", "logreg", "stack"):
        mine = metrics[metrics["model"] == name].set_index("split")["auc"]
        assert mine["backtest_mean"] == pytest.approx((mine["fold_1"] + mine["fold_2"]) / 2)
        assert 0.5 < mine["backtest_mean"] < 1 and mine["backtest_std"] >= 0
    february = (lh.table("gold.model_input").read(version=model.training_version)
                .filter("split != 'test' AND day BETWEEN 20130201 AND 20130228").count())
    assert (metrics[metrics["split"] == "fold_1"]["rows"] == february).all()
    assert "backtest" in model.reason and "backtest_mean_dnn_auc" in model.metric
    # The stack, fitted on both folds' out-of-fold scores (each fold's month scored by the models
    # of that fold), saved beside the model; the entry says what it serves.
    from pipelines.ml import stacking

    stackers = stacking.load(str(Path(model.path).parent / stacking.STACK_FILE))
    assert set(stackers) == {"stack"} and stackers["stack"].members == ("dnn", "logreg")
    fold_rows = metrics[(metrics["model"] == "dnn") & metrics["split"].str.startswith("fold_")]["rows"].sum()
    assert stackers["stack"].rows == fold_rows
    assert lh.table("results.backtest_scores").count() == 2 * fold_rows
    assert model.serves in ("dnn", "stack") and "stack" in model.reason and "test_stack_auc" in model.metric
    history = lh.table("results.training_history").read().orderBy("epoch").toPandas()
    assert 1 <= len(history) <= 6 and list(history["epoch"]) == list(range(1, len(history) + 1))
    assert (history["samples_per_second"] > 0).all() and (history["learning_rate"] > 0).all()

    preds = lh.table("results.predictions").read()
    days = {r["date"] for r in preds.select("date").distinct().collect()}
    assert date(2013, 3, 21) in days  # tomorrow's flights were scored
    assert preds.filter("score < 0 OR score > 1").count() == 0
    # Predictions carry the served model's decision: the threshold recorded with it in the registry.
    decision = registry.decision_of(model)
    assert decision.calibration == "platt" and decision.objective == "f1"
    served = preds.filter(f"model_version = '{model.model_version}'").toPandas()
    assert ((served["score"] >= decision.threshold).astype(int) == served["predicted_label"]).all()
    check_the_review(lh, model.model_version, metrics)
    page = Path(record.report)
    assert page.exists() and len(list(page.parent.glob("*.png"))) >= 8
    assert "AUC by slice" in page.read_text() and "Permutation importance" in page.read_text()


def check_the_review(lh, model_version, metrics):
    """results.confusion, calibration, slices and importance: every model, the whole test split."""
    test_rows = {r["model"]: r["rows"] for r in metrics[(metrics["split"] == "test")
                                                        & (metrics["model_version"] == model_version)].to_dict("records")}
    def read(name):
        return lh.table(name).read().filter(f"model_version = '{model_version}'").toPandas()

    confusion = read("results.confusion")
    assert set(zip(confusion["model"], confusion["rule"])) == {
        (m, r) for m in ("dnn", "logreg", "stack") for r in ("decision", "f1", "fixed")}
    chosen_on = {"fixed": "configuration", "f1": "validation", "decision": "f1"}   # the dataset's objective
    for r in confusion.to_dict("records"):
        assert r["tp"] + r["fp"] + r["fn"] + r["tn"] == r["rows"] == test_rows[r["model"]]
        assert 0 < r["threshold"] < 1 and r["chosen_on"] == chosen_on[r["rule"]]
    assert (confusion[confusion["rule"] == "fixed"]["threshold"] == 0.5).all()
    # The decision's threshold is the one the model's metrics and its predicted_label use: it
    # calls some test rows late (a fixed 0.5 on the network's raw scores called none).
    decided = confusion[confusion["rule"] == "decision"].set_index("model")
    at = metrics[(metrics["split"] == "test") & (metrics["model_version"] == model_version)].set_index("model")
    for model in ("dnn", "logreg", "stack"):
        assert decided.loc[model, "threshold"] == pytest.approx(at.loc[model, "threshold"])
        assert decided.loc[model, "tp"] + decided.loc[model, "fp"] > 0 and at.loc[model, "f1"] > 0
    calibration = read("results.calibration")
    for model, c in calibration.groupby("model"):
        assert c["rows"].sum() == test_rows[model] and c["brier"].nunique() == 1 and 0 < c["brier"].iloc[0] < 0.3
        assert c["ece"].nunique() == 1 and 0 <= c["ece"].iloc[0] < 0.2
    assert set(calibration["model"]) == {"dnn", "logreg", "stack"}
    slices = read("results.slices")
    assert set(slices["slice"]) == {"origin", "carrier", "hour_band"}   # nycflights13.yaml's evaluation.slices
    for (model, _), s in slices.groupby(["model", "slice"]):
        assert s["rows"].sum() == test_rows[model]
    assert set(slices[slices["slice"] == "origin"]["value"]) == {"EWR", "JFK", "LGA"}
    importance = read("results.importance")
    assert set(importance["model"]) == {"dnn"}   # no trees in this slice (nightly.baselines)
    assert {"carrier", "origin", "temp"} <= set(importance["feature"]) and (importance["rows"] == 3000).all()
    assert importance["base_auc"].nunique() == 1 and importance["auc_drop"].max() > 0.005


def test_a_prediction_is_traced_to_its_model_every_table_version_and_the_exact_landing_lines(nightly_lakehouse, capsys):
    import csv
    import hashlib

    from pipelines.cli.main import main
    from pipelines.ml import registry

    cfg, lh, _ = nightly_lakehouse
    args = ["lineage", "results.predictions", "--where", "date = '2013-03-21'", "--limit", "1", "--json"]
    for item in overrides(Path(cfg.lakehouse.root).parent):
        args += ["--set", item]
    assert main(args) == 0
    [chain] = json.loads(capsys.readouterr().out)
    assert chain["model"]["model_version"] == registry.blessed(lh).model_version
    # The registry pins every table version the model depends on, down to bronze.
    assert {"gold.model_input", "gold.feature_spec", "gold.features", "silver.flights", "silver.weather",
            "silver.planes", "bronze.flights", "bronze.flight_outcomes", "bronze.weather"} <= set(chain["model"]["pins"])
    assert [s["table"] for s in chain["steps"]] == [
        "results.predictions", "gold.serving_input", "gold.features", "silver.flights"]
    assert all(isinstance(s["version"], int) for s in chain["steps"])
    assert set(chain["steps"][2]["built_from"]) == {"silver.flights", "silver.weather", "silver.planes"}
    records = {r["role"]: r for r in chain["records"]}
    assert set(records) == {"row", "update", "lookup planes", "lookup weather"}

    flight = records["row"]
    path = Path(flight["path"])
    assert flight["file"] == "flights/2013/03/21.csv" and path == Path(cfg.lakehouse.landing) / flight["file"]
    assert flight["checksum"] == hashlib.sha256(path.read_bytes()).hexdigest() and flight["in_bronze"]
    lines = path.read_text().splitlines()
    raw = dict(zip(next(csv.reader([lines[0]])), next(csv.reader([lines[flight["line"] - 1]]))))
    assert flight["raw"] == lines[flight["line"] - 1]
    key = chain["row"]["flight_id"]
    [silver_row] = lh.table("silver.flights").read().filter(f"flight_id = {key}").collect()
    assert (raw["carrier"], int(raw["flight"]), raw["origin"], raw["dest"]) == (
        silver_row["carrier"], silver_row["flight"], silver_row["origin"], silver_row["dest"])
    # Tomorrow's flight has no outcome yet; its weather is the origin's, from the evening before.
    assert records["update"]["file"] is None
    weather = records["lookup weather"]
    assert weather["file"] == "weather/2013/03/20.csv" and weather["in_bronze"]
    weather_lines = Path(weather["path"]).read_text().splitlines()
    assert weather["raw"] == weather_lines[weather["line"] - 1]
    assert dict(zip(weather_lines[0].split(","), weather["raw"].split(",")))["origin"] == raw["origin"]


def test_until_a_network_is_blessed_the_logistic_regression_beside_the_candidate_scores(
        nightly_lakehouse, tmp_path, spark):
    from dataclasses import replace

    from pipelines.flows.stages import NightlyContext, stage_score
    from pipelines.lineage.trace import trace
    from pipelines.ml import registry
    from pipelines.storage import Lakehouse

    cfg = copy_of(nightly_lakehouse, tmp_path)
    lh = Lakehouse.from_config(cfg, spark)
    candidate = registry.blessed(lh)
    registry.register(lh, replace(candidate, status="rejected", reason="validation AUC does not beat ..."))
    assert registry.blessed(lh) is None
    rows = stage_score(NightlyContext(cfg, spark, lh, RUN_DATE, "test-fallback"))
    predictions = lh.table("results.predictions").read().filter("date = '2013-03-21'").collect()
    assert rows == len(predictions) == scheduled(lh, date(2013, 3, 21))
    assert {p["model_version"] for p in predictions} == {f"{candidate.model_version}/logreg"}
    assert all(0 < p["score"] < 1 for p in predictions)
    [chain] = trace(cfg, lh, "results.predictions", limit=1)
    assert chain.model["status"].startswith(f"logreg fitted beside candidate {candidate.model_version}")


def test_running_the_same_date_again_changes_nothing(nightly_lakehouse, spark):
    from pipelines.flows.nightly import run_nightly

    cfg, lh, _ = nightly_lakehouse
    before = {t.name: (t.rows, t.version) for t in lh.tables()}
    files = file_digests(Path(cfg.lakehouse.root).parent)
    again = run_nightly(cfg, spark, RUN_DATE)
    assert again.status == "succeeded" and set(again.skipped) == {
        "landing", "ingest", "clean", "features", "train", "score", "evaluate", "report"}
    # Same tables, same row counts, same versions (no commit at all).
    assert {t.name: (t.rows, t.version) for t in lh.tables()} == before
    # Same rows: not a byte of any file of the lakehouse (tables, landing, models, MLflow, reports)
    # was written, added or removed.
    after = file_digests(Path(cfg.lakehouse.root).parent)
    assert after.keys() == files.keys()
    assert [path for path in files if after[path] != files[path]] == []


def file_digests(root: Path) -> dict[str, str]:
    """Every file under `root` but the lakehouse lock's own folder: its path and its bytes' digest."""
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "_locks" not in p.parts}


def copy_of(nightly_lakehouse, tmp_path):
    from pipelines.config import load_config

    cfg, _, _ = nightly_lakehouse
    root = tmp_path / "lakehouse"
    # The whole lakehouse: the dataset's folder and its landing folder.
    shutil.copytree(Path(cfg.lakehouse.root).parent, root)
    return load_config("local", overrides(root))


# The missed night: the nightly of 2013-03-21 never ran, and that of 03-22 fails in its score stage.
MISSED, NIGHT = date(2013, 3, 21), date(2013, 3, 22)


@pytest.fixture(scope="module")
def missed_night(nightly_lakehouse, tmp_path_factory, spark):
    """A copy of the slice on which the nightly of 03-21 never ran; the nightly of 03-22 fails in
    its score stage (the disk is full) and, run again, resumes from there. One scenario, run once,
    for the two tests that follow: the resume, and what the caught-up night wrote."""
    from types import SimpleNamespace

    from pipelines.flows import nightly
    from pipelines.ops.runs import last_run
    from pipelines.storage import Lakehouse

    cfg = copy_of(nightly_lakehouse, tmp_path_factory.mktemp("missed_night"))
    lh = Lakehouse.from_config(cfg, spark)
    predicted = {r["flight_id"]: (r["score"], r["scored_at"]) for r in
                 lh.table("results.predictions").read().filter(f"date = '{MISSED}'").collect()}
    calls = []

    def broken_score(ctx):
        calls.append(ctx.run_date)
        raise OSError("disk full while scoring")

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(nightly.STAGES, "score", broken_score)
        with pytest.raises(nightly.StageError) as failure:
            nightly.run_nightly(cfg, spark, NIGHT)
    failed = last_run(lh, "nightly", NIGHT)
    resumed = nightly.run_nightly(cfg, spark, NIGHT)
    return SimpleNamespace(cfg=cfg, lh=lh, predicted=predicted, calls=calls, failure=str(failure.value),
                           failed=failed, resumed=resumed)


def test_a_failed_stage_resumes_from_there_and_ends_like_a_clean_run(missed_night):
    """The failed stage is named with what to do; the run is recorded as failed; run again, the
    nightly skips the stages that finished and ends as a clean run does (the missed-night test
    below checks every table it wrote)."""
    import re

    from pipelines.ml import registry
    from pipelines.ops.runs import last_run

    night = missed_night
    assert re.search("stage 'score'.*disk full.*Run the same command again", night.failure), night.failure
    assert night.calls == [NIGHT]
    assert night.failed["status"] == "failed" and "disk full" in night.failed["error"]
    assert night.resumed.status == "succeeded"
    assert set(night.resumed.skipped) == {"landing", "ingest", "clean", "features", "train"}
    assert last_run(night.lh, "nightly", NIGHT)["status"] == "succeeded"
    # The model trained for 03-20 is reused (retrain_every_days), nothing new registered.
    assert len(registry.entries(night.lh)) == 1
    assert night.lh.table("results.predictions").read().filter("date = '2013-03-23'").count() > 0


def scheduled(lh, day: date) -> int:
    return lh.table("silver.flights").read().filter(f"date = '{day}'").count()


def test_tomorrow_is_scored_for_every_scheduled_flight_before_its_outcome_exists(nightly_lakehouse):
    """The nightly of 2013-03-20 landed tomorrow's schedule without outcomes and scored every
    scheduled flight of it, cancelled ones included, from the serving input."""
    from pipelines.ml import registry

    cfg, lh, _ = nightly_lakehouse
    tomorrow = date(2013, 3, 21)
    landing = Path(cfg.lakehouse.landing)
    # Schedules up to tomorrow; outcomes up to the day before the run date (they arrive the
    # morning after their day); weather up to the run date's evening.
    assert (landing / "flights/2013/03/21.csv").exists()
    assert (landing / "flight_outcomes/2013/03/19.csv").exists()
    assert not (landing / "flight_outcomes/2013/03/20.csv").exists()
    assert "arr_delay" not in (landing / "flights/2013/03/21.csv").read_text().splitlines()[0]
    silver = lh.table("silver.flights").read().filter(f"date = '{tomorrow}'")
    assert silver.filter("arr_delay IS NOT NULL").count() == 0

    preds = lh.table("results.predictions").read().filter(f"date = '{tomorrow}'")
    assert preds.count() == scheduled(lh, tomorrow) > 500
    assert preds.select("flight_id").distinct().count() == preds.count()
    model = registry.blessed(lh)
    assert model.feature_spec_version is not None
    rows = preds.select("model_version", "feature_spec_version", "serving_input_version").distinct().collect()
    assert [(r["model_version"], r["feature_spec_version"]) for r in rows] == [
        (model.model_version, model.feature_spec_version)]
    serving = lh.table("gold.serving_input").read(version=rows[0]["serving_input_version"])
    assert serving.filter(f"date = '{tomorrow}'").count() == preds.count()
    # Only tomorrow: the days before are not scored again unless asked (nightly.rescore_days).
    assert {r["date"] for r in lh.table("results.predictions").read().select("date").distinct().collect()} == {tomorrow}


def test_a_missed_night_is_caught_up_and_outcomes_merged_and_measured_once(missed_night, spark):
    """The nightly of 2013-03-21 never ran. That of 03-22 (resumed after its failed score stage,
    see above) scores 03-22 (whose outcomes are not known yet) as well as 03-23, merges the
    outcomes of 03-20 and 03-21 into silver.flights, and writes live metrics for 03-21, scored two
    nights before; a second evaluation adds nothing. After those new versions of the tables and a
    vacuum with no retention, the blessed model is reproduced: the same validation AUC (within
    1e-4) and weights, on CPU with 2 processes."""
    from pipelines.ml import registry, results
    from pipelines.ml.reproduce import reproduce
    from pipelines.ops.maintenance import maintain

    cfg, lh, before = missed_night.cfg, missed_night.lh, missed_night.predicted
    scored = MISSED
    assert missed_night.resumed.status == "succeeded"

    preds = lh.table("results.predictions").read()
    for day in (date(2013, 3, 22), date(2013, 3, 23)):
        assert preds.filter(f"date = '{day}'").count() == scheduled(lh, day) > 500
    after = {r["flight_id"]: (r["score"], r["scored_at"]) for r in preds.filter(f"date = '{scored}'").collect()}
    assert after == before  # a prediction, once made, stays as it was made

    flights = lh.table("silver.flights").read().filter(f"date = '{scored}'")
    merged = flights.filter("_flight_outcomes_file IS NOT NULL").count()
    quarantined = lh.table("silver.quarantine").read().filter(f"table = 'flight_outcomes' AND date = '{scored}'").count()
    assert merged + quarantined == lh.table("bronze.flight_outcomes").read().filter(f"date = '{scored}'").count()
    assert merged == flights.count() and flights.filter("arr_delay IS NOT NULL").count() > 0.9 * merged
    assert flights.filter("_flight_outcomes_file = 'flight_outcomes/2013/03/21.csv'").count() == merged

    live = [m for m in results.read_metrics(lh) if m["split"] == "live"]
    assert [m["date"] for m in live] == [scored]
    labelled = lh.table("gold.features").read().filter(f"date = '{scored}' AND label IS NOT NULL").count()
    assert live[0]["rows"] == labelled and 0.5 < live[0]["auc"] < 1.0
    assert results.live_metrics(lh, "flight_id", date(2013, 3, 22), cfg.training.threshold) == []

    model = registry.blessed(lh)
    # Every daily table the model pins has newer versions now (the reference tables, planes, did not
    # change, and the spec is refitted only with the windows).
    moved = {name for name, versions in model.pinned.items() if lh.table(name).version() > max(versions)}
    assert {"gold.model_input", "gold.features", "silver.flights", "silver.weather", "bronze.flights",
            "bronze.flight_outcomes", "bronze.weather"} <= moved
    maintain(lh, retention_hours=0, row_group_rows=1000)
    again = reproduce(cfg, spark, model.model_version)
    assert again.auc_difference <= 1e-4 and again.weights_equal, again.to_dict()
    assert again.num_proc == 2 and again.differences == []


def test_a_quiet_nights_report_copies_the_models_plots_and_reads_the_last_weeks_for_drift(
        nightly_lakehouse, tmp_path, spark):
    """A night that trains nothing draws none of the model's plots: they are drawn once per model
    version (and versions of the tables they come from) and copied into each night's report. The
    feature drift compares the latest two days as before, read from the last weeks' files only."""
    from pyspark.sql import functions as F

    from pipelines.report import build_report, feature_drift
    from pipelines.report.build import DRIFT_LOOKBACK_DAYS
    from pipelines.report.page import SECTION_FILE
    from pipelines.storage import Lakehouse

    cfg = copy_of(nightly_lakehouse, tmp_path)
    lh = Lakehouse.from_config(cfg, spark)
    cached = sorted((Path(cfg.lakehouse.root) / "reports" / "models").glob("*/*.png"))
    assert {p.name for p in cached} >= {"training_curves.png", "roc.png", "confusion.png", "reliability.png",
                                        "slices.png", "importance.png"}
    drawn = {p: p.stat().st_mtime_ns for p in cached}
    page = build_report(cfg, spark, lh, "nightly-2013-03-20-again", RUN_DATE)
    assert {p: p.stat().st_mtime_ns for p in cached} == drawn   # not one drawn again
    first = Path(nightly_lakehouse[2].report)
    for p in cached:
        assert (page.parent / p.name).read_bytes() == p.read_bytes() == (first.parent / p.name).read_bytes()
    assert (page.parent / SECTION_FILE).read_text() == cached[0].parent.name   # what maintain keeps
    captions = [line for line in first.read_text().splitlines() if line.startswith("<h2>")]
    assert [line for line in page.read_text().splitlines() if line.startswith("<h2>")] == captions

    frame, previous, latest = feature_drift(lh, RUN_DATE)
    features = lh.table("gold.features")
    days = [r[0].isoformat() for r in features.read().filter(F.col("date") <= RUN_DATE).select("date")
            .distinct().orderBy(F.desc("date")).limit(2).collect()]
    assert [latest, previous] == days and len(frame) > 3 and frame["shift"].notna().all()
    window = ("date", RUN_DATE - timedelta(days=DRIFT_LOOKBACK_DAYS), RUN_DATE)
    assert 0 < len(features.read(between=window).inputFiles()) < len(features.read().inputFiles())


def test_a_reused_model_scores_with_its_own_spec_after_the_spec_is_refitted(nightly_lakehouse, tmp_path, spark):
    """The spec is refitted on another training window; the blessed model, reused, still encodes
    tomorrow's rows with the spec it was trained with, and gives the scores it gave."""
    from pipelines.config import load_config
    from pipelines.ml import registry
    from pipelines.ml.scoring import score_days
    from pipelines.stages.gold import ServingError, build_features
    from pipelines.storage import Lakehouse

    cfg = copy_of(nightly_lakehouse, tmp_path)
    lh = Lakehouse.from_config(cfg, spark)
    tomorrow = date(2013, 3, 21)
    model = registry.blessed(lh)
    before = {r["flight_id"]: r["score"] for r in
              lh.table("results.predictions").read().filter(f"date = '{tomorrow}'").collect()}
    refit = load_config("local", [*overrides(Path(cfg.lakehouse.root).parent), "pipeline.splits.train=[2013-01-10,2013-02-28]"])
    build_features(refit, spark, dates=[tomorrow], refit_spec=True, lakehouse=lh)
    spec = lh.table("gold.feature_spec")
    assert spec.version() > model.feature_spec_version
    means = lambda version: {r["name"]: r["mean"] for r in spec.to_arrow(version=version).to_pylist()}  # noqa: E731
    assert means(spec.version())["num_distance"] != means(model.feature_spec_version)["num_distance"]

    scored, versions = score_days(cfg, lh, model, [tomorrow], registry.decision_of(model))
    again = {r["flight_id"]: r["score"] for r in scored.collect()}
    assert versions["feature_spec_version"] == model.feature_spec_version
    assert again.keys() == before.keys()
    assert max(abs(again[k] - before[k]) for k in before) < 1e-6

    # A model whose spec version cannot be read is refused by name, not served another spec.
    model.feature_spec_version = 999
    with pytest.raises(ServingError, match="gold.feature_spec v999, which can no longer be read"):
        score_days(cfg, lh, model, [tomorrow], registry.decision_of(model))


def test_an_unseen_category_and_an_empty_history_get_the_same_score_by_both_paths(nightly_lakehouse, tmp_path, spark):
    """A new carrier, route and plane on a day with no history at all: encoded as index 0 and
    filled, flagged means, and scored the same through the path training measures (the model's
    encoding of model-input rows) and the serving path."""
    from pyspark.sql import functions as F

    from pipelines.datasets import load_dataset
    from pipelines.datasets.features import features_for
    from pipelines.ml import registry
    from pipelines.ml.scoring import score_days, served_scores
    from pipelines.stages.gold import encode
    from pipelines.storage import Lakehouse

    cfg = copy_of(nightly_lakehouse, tmp_path)
    lh = Lakehouse.from_config(cfg, spark)
    model = registry.blessed(lh)
    features = lh.table("gold.features")
    new_day = date(2013, 4, 15)
    history = [c.source for c in features_for(load_dataset("nycflights13")).model_columns if c.source.endswith(("_7d", "_28d"))]
    row = (features.read().filter("date = '2013-03-21'").limit(3)
           .withColumn("date", F.lit(new_day))
           .withColumn("carrier", F.lit("ZZ")).withColumn("dest", F.lit("ZZZ"))
           .withColumn("route", F.concat_ws("-", "origin", F.lit("ZZZ")))
           .withColumn("plane_known", F.lit(0.0))
           .withColumn("plane_type", F.lit(None).cast("string")).withColumn("plane_age", F.lit(None).cast("double")))
    for column in history:
        row = row.withColumn(column, F.lit(None).cast("double"))
    features.write(row, mode="overwrite", partitions={"date": [new_day]})

    served, _ = score_days(cfg, lh, model, [new_day], registry.decision_of(model))
    serving = {r["flight_id"]: r["score"] for r in served.collect()}
    encoded = encode(cfg, lh, features.read().filter(f"date = '{new_day}'"), model.feature_spec_version)
    cats = encoded.select("cat_carrier", "cat_route", "cat_dest").distinct().collect()
    assert [tuple(r) for r in cats] == [(0, 0, 0)]
    assert encoded.filter("`num_route_late_rate_7d_missing` = 1.0").count() == 3
    training = {r["flight_id"]: r["score"] for r in
                served_scores(encoded, model, "flight_id", key_columns=("flight_id",)).collect()}
    assert len(serving) == 3 and serving.keys() == training.keys()
    assert all(0.0 < serving[k] < 1.0 and abs(serving[k] - training[k]) < 1e-6 for k in serving)


def test_a_blessed_stack_is_served_by_the_nightly_and_the_transformer(nightly_lakehouse, tmp_path, spark):
    """The entry made to serve its stack: tomorrow's rows are scored by the network and the
    logistic regression beside it, combined by the stacker and decided by the stack's decision,
    the same by the nightly's scoring and by the Transformer."""
    import numpy as np

    from pipelines.ml import registry, stacking
    from pipelines.ml.scoring import baseline_path, score, score_days, score_with_baseline
    from pipelines.ml.transformer import load_transformer
    from pipelines.stages.gold import encode
    from pipelines.storage import Lakehouse

    cfg = copy_of(nightly_lakehouse, tmp_path)
    lh = Lakehouse.from_config(cfg, spark)
    model = registry.blessed(lh)
    model.serves = "stack"
    registry.register(lh, model)
    model = registry.blessed(lh)
    assert model.serves == "stack"
    decision, stacker = registry.decision_of(model), stacking.load(str(Path(model.path).parent / stacking.STACK_FILE))["stack"]
    assert decision.chosen_on.startswith("the validation split") and decision == registry.decision_of(model, "stack")
    tomorrow = date(2013, 3, 21)
    scored, _ = score_days(cfg, lh, model, [tomorrow], decision)
    nightly = scored.toPandas().set_index("flight_id").sort_index()

    rows = lh.table("gold.features").read().filter(f"date = '{tomorrow}'")
    encoded = encode(cfg, lh, rows, model.feature_spec_version)
    raw = {"dnn": score(encoded, model.path, 0.5, ("flight_id",)),
           "logreg": score_with_baseline(encoded, baseline_path(model, "logreg"), 0.5, ("flight_id",))}
    raw = {m: f.toPandas().set_index("flight_id").sort_index()["score"] for m, f in raw.items()}
    expected = decision.calibrate(stacker.predict(raw))
    assert len(nightly) == len(expected) > 100
    assert np.allclose(nightly["score"].to_numpy(), expected, atol=1e-6)
    assert (nightly["predicted_label"].to_numpy() == decision.labels(expected)).all()
    # Not the network's scores: the logistic regression's weight moves them.
    assert not np.allclose(nightly["score"].to_numpy(), registry.decision_of(model, "dnn").calibrate(raw["dnn"].to_numpy()))

    transformer = load_transformer(cfg, lh)
    assert transformer.stacker == stacker
    by_transformer = transformer.transform(rows).toPandas().set_index("flight_id").sort_index()
    assert np.allclose(by_transformer["score"].to_numpy(), nightly["score"].to_numpy(), atol=1e-6)


def test_a_second_run_is_refused_while_the_lock_is_held(nightly_lakehouse):
    from pipelines.storage import LakehouseLock

    cfg, _, _ = nightly_lakehouse
    with LakehouseLock(cfg.lakehouse.root, "nightly", "run-holding-the-lakehouse"):
        proc = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "nightly", "--date", "2013-03-21",
             *sum((["--set", o] for o in overrides(Path(cfg.lakehouse.root).parent)), [])],
            capture_output=True, text=True, cwd=PROJECT, timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "held by run run-holding-the-lakehouse" in proc.stderr


@pytest.mark.parametrize("notebook", sorted(p.name for p in (PROJECT / "notebooks").glob("*.ipynb")))
def test_notebooks_run_on_the_slice(nightly_lakehouse, notebook):
    import nbformat
    from nbclient import NotebookClient

    cfg, _, _ = nightly_lakehouse
    nb = nbformat.read(PROJECT / "notebooks" / notebook, as_version=4)
    env_before = dict(os.environ)
    os.environ["LAKEHOUSE_DL_SET"] = " ".join(overrides(Path(cfg.lakehouse.root).parent))
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(PROJECT)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    images = sum(1 for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
                 if "image/png" in out.get("data", {}))
    assert images >= 1, f"{notebook} drew no plot"


def documented_cluster_commands() -> list[str]:
    """The commands of the first bash block of docs/cluster.md ("Running on a cluster"), with
    backslash continuations joined."""
    text = (PROJECT / "docs" / "cluster.md").read_text()
    block = text[text.index("```bash\n") + len("```bash\n"):]
    block = block[:block.index("```")]
    return [line.strip() for line in block.replace("\\\n", " ").splitlines()
            if line.strip() and not line.strip().startswith("#")]


def executor_pid(workdir: Path) -> int | None:
    """The pid of the executor JVM working in `workdir` (a worker's folder), if one runs."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if cwd.startswith(str(workdir)) and b"CoarseGrainedExecutorBackend" in cmdline:
            return int(entry)
    return None


@pytest.mark.cluster
def test_the_documented_cluster_commands_train_with_horovod_on_a_standalone_cluster_and_resume_after_an_executor_dies(
        nightly_lakehouse, tmp_path, standalone_cluster, spark):
    """The cluster commands of docs/cluster.md, as written, with the placeholders filled: the nightly for the next
    day, retraining, submitted to a real standalone cluster of two one-core workers. The executor of
    one Horovod rank is killed (SIGKILL) after the first epoch's checkpoint: the submit fails naming
    the lost executor and registers nothing. The same submit again resumes from the checkpoint:
    Horovod runs one rank in each worker's executor, the ranks import the package from the shipped
    zip, rank 0 writes the model, the registry records it, and the model scores the validation and
    test rows. (One test, not two: each submitted nightly costs minutes on two one-core workers.)"""
    import signal

    from pipelines.config import load_config
    from pipelines.ml import registry, results
    from pipelines.ml.training import read_result
    from pipelines.ops.runs import last_run
    from pipelines.storage import Lakehouse

    cfg = copy_of(nightly_lakehouse, tmp_path)
    root = Path(cfg.lakehouse.root).parent     # the lakehouse; the dataset's tables are in root/nycflights13
    commands = documented_cluster_commands()
    assert [c.split()[0] for c in commands] == ["make", "export", "spark-submit"], commands
    next_day = "2013-03-21"
    placeholders = {"/shared/lakehouse": str(root), "spark://master:7077": standalone_cluster.master_url,
                    "2013-12-30": next_day}

    def filled(command: str) -> str:
        for placeholder, value in placeholders.items():
            command = command.replace(placeholder, value)
        return command

    env = {**standalone_cluster.env(), "PATH": f"{standalone_cluster.home / 'bin'}:{os.environ['PATH']}"}
    env.pop("LAKEHOUSE_DL_CONF", None)     # the job finds dist/conf beside the zip by itself
    made = subprocess.run(filled(commands[0]), shell=True, cwd=PROJECT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    for assignment in filled(commands[1]).split()[1:]:
        name, _, value = assignment.partition("=")
        env[name] = value
    # Sized for the slice, and retraining: the model of the day before would otherwise be reused.
    # Four epochs without early stopping, so the kill lands while the ranks are training.
    sizing = [o for o in overrides(root) if not o.startswith(("spark.master", "lakehouse.root"))]
    # No backtest (its folds are tested on local Spark above): two one-core workers would train
    # every fold's network and baselines again in each submit.
    sizing += ["nightly.retrain_every_days=1", "training.epochs=4", "training.early_stopping_patience=0",
               "spark.conf.spark.ui.showConsoleProgress=false", "backtest.folds=0",
               # Epochs of 16,384 rows (32 steps of 256 on each rank) instead of the 50,000 of January
               # and February, and the importance pass on 1,000 validation rows: the submit checks
               # where the work runs and that it resumes, the local slice above measures the model.
               # (The logistic regression's fit is copied from the 03-20 model's folder when its
               # inputs did not change, as the nightly does.)
               "training.max_train_rows=16384", "training.importance_rows=1000"]
    submit = ["bash", "-c", filled(commands[2]) + "".join(f" --set {o}" for o in sizing)]
    lh = Lakehouse.from_config(load_config("local", overrides(root)), spark)

    with open(tmp_path / "first.out", "w") as out, open(tmp_path / "first.err", "w") as err:
        first = subprocess.Popen(submit, cwd=PROJECT, env=env, stdout=out, stderr=err)
        killed = None
        deadline = time.time() + 600
        while time.time() < deadline and first.poll() is None and killed is None:
            states = [json.loads(p.read_text()) for p in Path(cfg.lakehouse.root).glob("models/20130321-*/state.json")]
            if any(s.get("epochs_done", 0) >= 1 for s in states):
                killed = executor_pid(standalone_cluster.workdir / "work-1")
                assert killed, "no executor runs in work-1"
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.5)
        assert killed, "training never checkpointed an epoch: " + (tmp_path / "first.err").read_text()[-3000:]
        code = first.wait(timeout=600)
    # spark-submit hands the Python driver's stderr to its stdout.
    said = (tmp_path / "first.out").read_text() + (tmp_path / "first.err").read_text()
    assert code == 1, said[-4000:]
    assert "FAILED: stage 'train'" in said, said[-4000:]
    assert "Spark lost executor " in said, said[said.index("FAILED: stage"):][:3000]
    assert "Command exited with code 137" in said and "epoch(s) are checkpointed" in said
    assert not [e for e in registry.entries(lh) if e.run_date == date.fromisoformat(next_day)]

    started = time.time()
    again = subprocess.run(submit, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, (again.stdout[-3000:], again.stderr[-3000:], standalone_cluster.log_tail())
    assert last_run(lh, "nightly", date.fromisoformat(next_day))["status"] == "succeeded"
    [model] = [e for e in registry.entries(lh) if e.run_date == date.fromisoformat(next_day)]
    trained = read_result(os.path.dirname(model.path))
    assert trained.num_proc == 2 and Path(model.path).exists()
    assert trained.initial_epoch >= 1 and trained.history[-1]["epoch"] == 4
    # One rank in each worker's executor (not the driver, which ran in the project folder), both
    # importing the package from the zip the executors received.
    workers = sorted(Path(r["cwd"]).relative_to(standalone_cluster.workdir).parts[0] for r in trained.ranks)
    assert workers == ["work-0", "work-1"], trained.ranks
    assert all("lakehouse_dl-0.1.0.zip" in r["package"] for r in trained.ranks), trained.ranks
    assert sorted(r["rank"] for r in trained.ranks) == [0, 1]
    # The registry records it, and it scored the validation and test rows on the cluster.
    scored = {m["split"] for m in results.read_metrics(lh) if m["model_version"] == model.model_version
              and m["model"] == "dnn"}
    assert {"validation", "test"} <= scored
    assert lh.table("results.predictions").read().filter("date = '2013-03-22'").count() > 0
    local = read_result(os.path.dirname(next(e for e in registry.entries(lh) if e.run_date == RUN_DATE).path))
    print(f"\nHorovod training under spark-submit on the standalone cluster, resumed from epoch "
          f"{trained.initial_epoch}: {trained.wall_seconds:.1f}s ({trained.samples_per_sec:,.0f} samples/s); "
          f"the same training in local mode: {local.wall_seconds:.1f}s ({local.epochs_run} epochs, "
          f"{local.samples_per_sec:,.0f} samples/s); the resumed submit {time.time() - started:.0f}s")


def test_status_shows_the_night_the_serving_model_and_the_feeds_in_one_screen(nightly_lakehouse, capsys):
    import json

    from pipelines.cli.main import main
    from pipelines.ml import registry

    cfg, lh, record = nightly_lakehouse
    assert main(["status", "--json", *sum((["--set", o] for o in overrides(Path(cfg.lakehouse.root).parent)), [])]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dataset"] == "nycflights13"
    night = report["runs"][0]
    assert (night["job"], night["run_date"], night["status"]) == ("nightly", RUN_DATE.isoformat(), "succeeded")
    assert {"ingest", "clean", "features", "train", "score"} <= set(night["stages"])
    blessed = registry.blessed(lh)
    assert report["serving"]["model_version"] == blessed.model_version and report["serving"]["why"] == blessed.reason
    assert report["serving"]["decision"] == registry.decision_of(blessed).describe()
    feeds = {f["source"]: f for f in report["feeds"]}
    assert set(feeds) == {"flights", "flight_outcomes", "weather"}
    assert all(f["days"] > 0 and f["missing_days"] == sum(
        (date.fromisoformat(b) - date.fromisoformat(a)).days + 1 for a, b in f["gaps"]) for f in feeds.values())
    assert {t["table"] for t in report["tables"]} == {t.name for t in lh.tables()}

    assert main(["status", *sum((["--set", o] for o in overrides(Path(cfg.lakehouse.root).parent)), [])]) == 0
    screen = capsys.readouterr().out
    assert blessed.model_version in screen and "serving model" in screen and "daily feeds" in screen
