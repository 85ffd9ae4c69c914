"""Rolling-origin folds (pure), and the backtest and the search on the tiny model_input."""
from __future__ import annotations

import json
from datetime import date, timedelta

import pytest

from model_input_fixtures import model_input_lakehouse, training_config
from pipelines.ml.backtest import decide, summary_rows
from pipelines.ml.folds import folds


def days(window):
    start, end = window
    return {start + timedelta(days=i) for i in range((end - start).days + 1)}


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_no_fold_trains_on_its_own_validation_days_or_touches_the_test_window(count):
    train, validation, test = ((date(2013, 1, 1), date(2013, 9, 30)), (date(2013, 10, 1), date(2013, 11, 30)),
                               (date(2013, 12, 1), date(2013, 12, 31)))
    fold_list = folds(train, validation, count)
    assert [f.name for f in fold_list] == [f"fold_{i}" for i in range(1, count + 1)]
    for fold in fold_list:
        assert not days(fold.train) & days(fold.validation)
        assert max(days(fold.train)) < min(days(fold.validation))      # trained only on the past
        assert not (days(fold.train) | days(fold.validation)) & days(test)
        assert fold.train[0] == date(2013, 1, 1) and fold.validation[0].day == 1
        # The network stops early on the last month of the fold's training days and fits on the
        # days before it: the month it is scored on chooses nothing.
        assert days(fold.stopping) < days(fold.train) and fold.stopping[1] == fold.validation[0] - timedelta(days=1)
        assert days(fold.fit) == days(fold.train) - days(fold.stopping) and max(days(fold.fit)) < min(days(fold.stopping))
    # Rolling origin: the validation months are the last ones, one after the other, up to November.
    assert fold_list[-1].validation == (date(2013, 11, 1), date(2013, 11, 30))
    assert [f.validation[0].month for f in fold_list] == list(range(12 - count, 12))


def test_a_fold_count_that_leaves_no_training_month_is_refused():
    with pytest.raises(ValueError, match="lower backtest.folds"):
        folds((date(2013, 1, 1), date(2013, 2, 28)), (date(2013, 3, 1), date(2013, 3, 14)), 3)
    [first, second] = folds((date(2013, 1, 1), date(2013, 2, 28)), (date(2013, 3, 1), date(2013, 3, 14)), 2)
    assert first.train == (date(2013, 1, 1), date(2013, 1, 31)) and second.validation == (date(2013, 3, 1), date(2013, 3, 14))
    # One training month leaves none to stop on: that fold's network fits on all of it.
    assert first.stopping is None and first.fit == first.train
    assert second.stopping == (date(2013, 2, 1), date(2013, 2, 28)) and second.fit == (date(2013, 1, 1), date(2013, 1, 31))


def test_months_without_rows_are_no_fold():
    # A league's summer break: June and July have no matches.
    present = {date(2004, m, 1) for m in (1, 2, 3, 4, 5, 8, 9)}
    fold_list = folds((date(2004, 1, 1), date(2004, 6, 30)), (date(2004, 7, 1), date(2004, 9, 30)), 2, present)
    assert [f.validation for f in fold_list] == [(date(2004, 8, 1), date(2004, 8, 31)), (date(2004, 9, 1), date(2004, 9, 30))]
    assert fold_list[0].train == (date(2004, 1, 1), date(2004, 7, 31))
    # The stopping month is the last one with matches, May, not the empty July.
    assert fold_list[0].stopping == (date(2004, 5, 1), date(2004, 5, 31)) and fold_list[0].fit == (date(2004, 1, 1), date(2004, 4, 30))


def test_folds_of_a_minimum_of_rows_take_whole_months_back_from_the_last_one():
    # Two seasons of a league: about 30 matches a month from August to May, none in June and July.
    rows = {date(y, m, 1): 30 + m for y in (2003, 2004) for m in range(1, 13) if m not in (6, 7)}
    train, validation = (date(2003, 1, 1), date(2004, 4, 30)), (date(2004, 5, 1), date(2004, 12, 31))
    fold_list = folds(train, validation, 3, rows, min_rows=100)
    for fold in fold_list:
        months = [m for m in rows if fold.validation[0] <= m <= fold.validation[1]]
        held = sum(rows[m] for m in months)
        # The fewest whole months that hold 100 rows: dropping the first of them leaves fewer.
        assert held >= 100 and held - rows[min(months)] < 100
        assert fold.validation[0].day == 1 and (fold.validation[1] + timedelta(days=1)).day == 1
        assert max(days(fold.train)) < min(days(fold.validation)) and fold.train[0] == date(2003, 1, 1)
        stopping = [m for m in rows if fold.stopping[0] <= m <= fold.stopping[1]]
        assert sum(rows[m] for m in stopping) >= 100 and fold.stopping[1] == fold.validation[0] - timedelta(days=1)
    # Back from December: October to December (42 + 41 + 40 rows), then May to September across
    # the empty summer (39 + 38 + 35), then January to April (34 + 33 + 32 is 99, one short).
    assert [f.validation for f in fold_list] == [(date(2004, 1, 1), date(2004, 4, 30)),
                                                  (date(2004, 5, 1), date(2004, 9, 30)),
                                                  (date(2004, 10, 1), date(2004, 12, 31))]
    # Without the minimum, one month a fold, as before; and a minimum the windows cannot meet is
    # refused by name.
    assert [f.validation[0] for f in folds(train, validation, 3, rows)] == [date(2004, m, 1) for m in (10, 11, 12)]
    with pytest.raises(ValueError, match="lower backtest.folds or backtest.min_fold_rows"):
        folds(train, validation, 3, rows, min_rows=400)

def test_blessing_compares_the_backtest_mean_and_the_configured_spread_penalty():
    from types import SimpleNamespace

    def rows(model, aucs):
        return [{"model": model, "split": f"fold_{i}", "auc": a, "rows": 10, "positives": 3, "threshold": 0.5,
                 "log_loss": 0.5, "accuracy": 0.7, "precision": 0.5, "recall": 0.5, "f1": 0.5}
                for i, a in enumerate(aucs, 1)]
    metrics = rows("dnn", [0.80, 0.60, 0.79]) + rows("logreg", [0.70, 0.71, 0.70])
    metrics += summary_rows(metrics)
    assert decide(metrics, SimpleNamespace(spread_penalty=0.0, min_lift=0.0))[0] == "blessed"
    # A candidate that wins on average but swings from month to month loses once spread counts.
    status, reason = decide(metrics, SimpleNamespace(spread_penalty=1.0, min_lift=0.0))
    assert status == "rejected" and "logreg" in reason
    metrics.append({"model": "dnn", "split": "validation", "auc": 0.75})
    assert decide(metrics, SimpleNamespace(spread_penalty=0.0, min_lift=0.0), blessed_auc=0.76)[0] == "rejected"


@pytest.fixture(scope="module")
def spread_lakehouse(spark, tmp_path_factory):
    """The tiny model_input with its days spread over January to March 2013."""
    return model_input_lakehouse(spark, tmp_path_factory.mktemp("backtest") / "lakehouse", day_span=90)


SPLITS = ["pipeline.splits.train=[2013-01-01,2013-02-28]", "pipeline.splits.validation=[2013-03-01,2013-03-31]",
          "pipeline.splits.test=[2013-04-01,2013-04-30]", "backtest.folds=2", "backtest.epochs=2", "training.learning_rate=0.01"]


def test_the_backtest_measures_every_model_on_each_fold_and_their_mean_and_spread(spark, spread_lakehouse):
    from pipelines.ml.backtest import run_backtest

    cfg = training_config(spread_lakehouse.root, *SPLITS)
    rows = run_backtest(cfg, spark, spread_lakehouse, spread_lakehouse.table("gold.model_input").version(),
                        ["logreg"], "m1").rows
    by = {(r["model"], r["split"]): r for r in rows}
    assert set(by) == {(m, s) for m in ("dnn", "logreg") for s in ("fold_1", "fold_2", "backtest_mean", "backtest_std")}
    # Fold 1 validates on February: a third of the ~5,000 rows, never January's.
    assert 1200 < by["dnn", "fold_1"]["rows"] < 2000 and by["dnn", "fold_1"]["rows"] == by["logreg", "fold_1"]["rows"]
    for model in ("dnn", "logreg"):
        assert 0.6 < by[model, "backtest_mean"]["auc"] < 1, rows
        assert by[model, "backtest_mean"]["auc"] == pytest.approx((by[model, "fold_1"]["auc"] + by[model, "fold_2"]["auc"]) / 2)


def test_tune_records_every_trial_and_the_nightly_takes_the_best(spark, spread_lakehouse):
    from pipelines.ml.tuning import tune, with_best

    # --set merges into conf/base's space: the batch sizes are the tiny table's.
    cfg = training_config(spread_lakehouse.root, *SPLITS, "tuning.parallelism=2",
                          "tuning.space.dnn={learning_rate: {loguniform: [0.003, 0.01]}, hidden_units: {choice: [[16], [32, 16]]}}",
                          "tuning.space.dnn.batch_size={choice: [128]}")
    rows = tune(cfg, spark, spread_lakehouse, models=["dnn", "logreg"], max_evals=2)
    table = spread_lakehouse.table("results.trials").read().toPandas()
    # Per model, trial 0 (the configured settings) and the 2 trials of the budget.
    assert len(table) == 6 and set(table["model"]) == {"dnn", "logreg"} and (table["status"] == "ok").all()
    assert sorted(table["trial"]) == [0, 0, 1, 1, 2, 2]
    for row in rows:
        assert len(json.loads(row["fold_aucs"])) == 2 and row["seconds"] > 0
        params = json.loads(row["params"])
        if row["trial"] == 0:
            configured = {k: getattr(cfg.training, k) for k in cfg.tuning.space["dnn"]}
            assert params == (json.loads(json.dumps(configured)) if row["model"] == "dnn" else {})
            assert row["model"] == "logreg" or params["learning_rate"] == 0.01
        else:
            assert set(params) == (set(cfg.tuning.space["dnn"]) if row["model"] == "dnn" else {"reg_param", "elastic_net"})
    best_dnn = max((r for r in rows if r["model"] == "dnn"), key=lambda r: r["mean_auc"])
    tuned, best = with_best(cfg, spread_lakehouse)
    assert tuned.training.learning_rate == pytest.approx(json.loads(best_dnn["params"])["learning_rate"])
    assert list(tuned.training.hidden_units) == json.loads(best_dnn["params"])["hidden_units"]
    assert set(best) == {"dnn", "logreg"}
    # Another search space is another search: its trials are not taken as the best.
    other = training_config(spread_lakehouse.root, *SPLITS, "tuning.space.dnn={dropout: {uniform: [0, 0.3]}}")
    assert with_best(other, spread_lakehouse)[0].training == other.training


def test_a_search_space_naming_an_unknown_setting_is_refused():
    from pipelines.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"tuning.space.dnn.learning_rat' is not a setting of dnn"):
        load_config("local", ["tuning.space.dnn.learning_rat={uniform: [0, 1]}"])
    with pytest.raises(ConfigError, match=r"tuning.space.gbt.max_depth' must be"):
        load_config("local", ["tuning.space.gbt.max_depth={between: [3, 5]}"])


def test_a_fold_network_trains_the_nightly_recipe_and_a_trial_the_budget_of_the_search():
    from pipelines.config import load_config
    from pipelines.ml.backtest import backtest_training
    from pipelines.ml.tuning import space_hash, trial_budget

    cfg = load_config("local", ["training.dropout=0.2"])
    fold = backtest_training(cfg.training, cfg.backtest)
    assert (fold.epochs, fold.early_stopping_patience, fold.max_train_rows, fold.dropout) == (
        cfg.training.epochs, cfg.training.early_stopping_patience, cfg.training.max_train_rows, 0.2)
    assert fold.num_proc == 1
    cheap = load_config("local", ["tuning.epochs=3", "tuning.max_train_rows=1000"])
    trial = backtest_training(cheap.training, trial_budget(cheap), {"learning_rate": 0.01})
    assert (trial.epochs, trial.max_train_rows, trial.learning_rate) == (3, 1000, 0.01)
    # The nightly's backtest keeps the full recipe; trials of another budget are another search.
    assert backtest_training(cheap.training, cheap.backtest).epochs == cheap.training.epochs
    assert space_hash(cheap, "dnn") != space_hash(cfg, "dnn")


def test_no_folds_means_no_backtest_and_no_search(spark, spread_lakehouse):
    from pipelines.ml.backtest import run_backtest
    from pipelines.ml.tuning import tune

    cfg = training_config(spread_lakehouse.root, *SPLITS, "backtest.folds=0")
    assert run_backtest(cfg, spark, spread_lakehouse, 0, ["logreg"], "m0").rows == []
    with pytest.raises(ValueError, match="backtest.folds must be 1 or more"):
        tune(cfg, spark, spread_lakehouse, models=["logreg"], max_evals=1)


def test_a_fold_whose_inputs_did_not_change_is_reused_and_a_changed_input_measures_it_again(spark, tmp_path, monkeypatch):
    from pipelines.ml import backtest, baselines
    from pipelines.ml.backtest import run_backtest

    lakehouse = model_input_lakehouse(spark, tmp_path / "lakehouse", day_span=90,
                                      rows={"train": 4000, "validation": 1000, "test": 500})
    table = lakehouse.table("gold.model_input")
    cfg = training_config(lakehouse.root, *SPLITS)

    def rows_of(done):
        return {(r["model"], r["split"]): {k: v for k, v in r.items() if k != "model_version"} for r in done.rows}

    first = run_backtest(cfg, spark, lakehouse, table.version(), ["logreg"], "m1")
    assert (first.reused, first.computed) == (0, 4) and str(first) == "0 of 4 fold results reused, 4 computed"
    recorded = lakehouse.table("results.backtest_folds").read().toPandas()
    assert sorted(zip(recorded["model"], recorded["fold"])) == [("dnn", "fold_1"), ("dnn", "fold_2"),
                                                                ("logreg", "fold_1"), ("logreg", "fold_2")]

    # A night that rewrites only the test split, which no fold reads: every fold is reused, nothing
    # is trained, and the metrics are the recorded ones.
    test_split = table.read().filter("split = 'test'")
    test_rows = test_split.toPandas()
    table.write(spark.createDataFrame(test_rows.assign(label=1.0 - test_rows["label"]), test_split.schema),
                mode="overwrite", partitions={"split": ["test"]})

    def no_training(*args, **kwargs):
        raise AssertionError("a fold whose inputs did not change was trained again")
    with monkeypatch.context() as m:
        m.setattr(baselines, "fit_baselines", no_training)
        m.setattr(backtest, "network_scores", no_training)
        again = run_backtest(cfg, spark, lakehouse, table.version(), ["logreg"], "m2")
    assert (again.reused, again.computed) == (4, 0)
    assert rows_of(again) == rows_of(first) and {r["model_version"] for r in again.rows} == {"m2"}

    # Another network setting: the network's folds are trained again, the baseline's reused.
    tuned = run_backtest(training_config(lakehouse.root, *SPLITS, "training.dropout=0.3"), spark, lakehouse,
                         table.version(), ["logreg"], "m3")
    assert (tuned.reused, tuned.computed) == (2, 2)
    assert rows_of(tuned)[("logreg", "fold_1")] == rows_of(first)[("logreg", "fold_1")]

    # Changed training rows (a rebuilt day's labels): every fold is measured again.
    train_split = table.read().filter("split = 'train'")
    train_rows = train_split.toPandas()
    flipped = train_rows["label"].where(train_rows["flight_id"] % 7 != 0, 1.0 - train_rows["label"])
    table.write(spark.createDataFrame(train_rows.assign(label=flipped), train_split.schema), mode="overwrite",
                partitions={"split": ["train"]})
    changed = run_backtest(cfg, spark, lakehouse, table.version(), ["logreg"], "m4")
    assert (changed.reused, changed.computed) == (0, 4)
    assert rows_of(changed)[("logreg", "fold_1")]["auc"] != rows_of(first)[("logreg", "fold_1")]["auc"]
    assert len(lakehouse.table("results.backtest_folds").read().toPandas()) == 4 + 2 + 4


def test_the_fold_that_trains_on_the_train_split_scores_the_baselines_fitted_on_it(spark, tmp_path, monkeypatch):
    from pyspark.sql import functions as F

    from pipelines.datasets import dataset_for
    from pipelines.ml import baselines
    from pipelines.ml.backtest import run_backtest, trains_on_the_train_split
    from pipelines.ml.folds import folds_for
    from pipelines.ml.evaluation import binary_metrics

    lakehouse = model_input_lakehouse(spark, tmp_path / "lakehouse", day_span=90)
    table = lakehouse.table("gold.model_input")
    # Splits by time, as gold writes them: January and February train, March validates.
    rows = table.read().withColumn("split", F.when(F.col("day") < 20130301, "train").otherwise("validation"))
    table.write(spark.createDataFrame(rows.toPandas(), rows.schema), mode="overwrite")
    version = table.version()
    # The regression head has no network folds: only the baselines are backtested here.
    cfg = training_config(lakehouse.root, *SPLITS, "training.head=regression")
    first, second = folds_for(cfg)
    assert not trains_on_the_train_split(lakehouse, version, first) and trains_on_the_train_split(lakehouse, version, second)

    frames = baselines.model_input_frames(lakehouse, version)
    nightly = baselines.fit_baselines(spark, frames["train"], frames["validation"], kinds=["logreg"], seed=cfg.training.seed)
    fits, fit = [], baselines.fit_baselines
    monkeypatch.setattr(baselines, "fit_baselines", lambda spark, train, validation, **kw: fits.append(
        train.agg(F.max("day")).first()[0]) or fit(spark, train, validation, **kw))
    done = run_backtest(cfg, spark, lakehouse, version, ["logreg"], "m1", fitted_on_train={"logreg": nightly["logreg"]["model"]})
    # Only the first fold (trained on January) fits a logistic regression of its own.
    assert len(fits) == 1 and fits[0] < 20130201 and (done.reused, done.computed) == (0, 2)
    scored = baselines.baseline_scores(frames["validation"], nightly["logreg"]["model"], dataset_for(cfg).key)
    by = {r["split"]: r for r in done.rows if r["model"] == "logreg"}
    assert by["fold_2"]["auc"] == binary_metrics(scored, cfg.training.threshold).auc
    assert by["fold_2"]["rows"] == frames["validation"].count()


def test_a_fold_result_depends_on_the_code_that_measures_it_not_on_the_review_or_the_registry_s_bookkeeping():
    from pipelines.ml.fold_results import measuring_modules

    modules = set(measuring_modules())
    # The network's fold (training, model, Petastorm input), the baselines and the metrics.
    assert {"pipelines.ml.backtest", "pipelines.ml.baselines", "pipelines.ml.evaluation", "pipelines.ml.model",
            "pipelines.ml.tensors", "pipelines.ml.training.worker", "pipelines.ml.training"} <= modules
    assert not {"pipelines.ml.review", "pipelines.ml.candidate", "pipelines.ml.tracking", "pipelines.ml.tuning"} & modules
