"""The regression head's measures (pipelines/ml/regression.py), its naive forecasts
(pipelines/ml/naive.py) and the standardised target (pipelines/ml/model.py's TargetScale), on tiny
hand-made rows with exact values."""
from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import pytest

from pipelines.config import load_config
from pipelines.config.settings import NaiveForecast
from pipelines.ml.inputs import FeatureSpec
from pipelines.ml.model import TargetScale, build_model, compile_model, make_optimizer
from pipelines.ml.naive import (declared_forecasts, last_known_values, naive_forecasts, outcome_delay_days,
                                with_training_mean)
from pipelines.ml.regression import decide, regression_metrics

SPEC = FeatureSpec(numeric=("num_planned",), categorical={"cat_weekday": 8})


def test_mae_rmse_and_mape_are_exact_and_mape_leaves_out_a_zero_target(spark):
    df = spark.createDataFrame([(1.0, 2.0), (2.0, 2.0), (4.0, 2.0), (0.0, 1.0), (None, 50.0)],
                               "target double, prediction double")
    m = regression_metrics(df)
    assert m.rows == 4 and m.mae == 1.0 and m.rmse == pytest.approx(math.sqrt(1.5))
    # |2-1|/1, 0/2, |2-4|/4 over the three rows whose target is not 0.
    assert m.mape == pytest.approx(50.0)
    with pytest.raises(ValueError, match="empty"):
        regression_metrics(df.filter("target is null"))


def daily_rows(spark, targets):
    """One model_input row a day from 2010-01-01 (a Friday): event_id, day (yyyymmdd), split, target."""
    first = date(2010, 1, 1)
    rows = [(i, int((first + timedelta(days=i)).strftime("%Y%m%d")), "train" if i < 7 else "validation", t)
            for i, t in enumerate(targets)]
    return spark.createDataFrame(rows, "event_id long, day int, split string, target double")


def test_naive_forecasts_read_only_the_days_known_at_prediction_time(spark):
    targets = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, None, 90.0, 100.0]
    declared = {"same_weekday": NaiveForecast(lag_days=2, group=["dayofweek(date)"]),
                "two_weeks_before": NaiveForecast(lag_days=14, group=[])}
    forecasts = declared_forecasts(declared, delay=2)
    assert forecasts == {"last_known": (2, []), "same_weekday": (2, ["dayofweek(date)"]), "two_weeks_before": (14, [])}
    out = naive_forecasts(daily_rows(spark, targets), "event_id", forecasts, train_mean=5.0).toPandas()
    out = out.sort_values("event_id").reset_index(drop=True)
    assert out["naive_training_mean"].tolist() == [5.0] * 10
    # The latest known target two days back or more; day 7's is missing, so day 9 reads day 6's.
    assert out["naive_last_known"].tolist() == [5.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 70.0]
    # The same weekday a week before (the first week has none: the training mean).
    assert out["naive_same_weekday"].tolist() == [5.0] * 7 + [10.0, 20.0, 30.0]
    assert out["naive_two_weeks_before"].tolist() == [5.0] * 10
    assert out["split"].tolist() == ["train"] * 7 + ["validation"] * 3
    # A backtest's folds: the windows once, each fold's training mean filled in after.
    known = last_known_values(daily_rows(spark, targets), "event_id", forecasts).cache()
    for mean in (5.0, 7.5):
        by_fold = with_training_mean(known, forecasts, mean).toPandas().sort_values("event_id").reset_index(drop=True)
        whole = naive_forecasts(daily_rows(spark, targets), "event_id", forecasts, mean).toPandas()
        assert by_fold.equals(whole.sort_values("event_id").reset_index(drop=True)), mean
    known.unpersist()


def test_a_lag_shorter_than_the_outcome_delay_is_refused_and_the_delay_comes_from_the_dataset(tmp_path):
    from bench import daily_feed
    from pipelines.datasets import load_dataset

    days = [daily_feed.FIRST_DAY + timedelta(days=i) for i in range(30)]
    conf = daily_feed.write_conf(tmp_path, days)
    dataset = load_dataset(conf / "base" / "datasets" / f"{daily_feed.NAME}.yaml")
    # Predicted the day before at 23:00, the outcome known the morning after: day d knows d - 2.
    assert outcome_delay_days(dataset) == 2
    with pytest.raises(ValueError, match=r"training.naive_forecasts.yesterday.lag_days is 1.*lag_days >= 2"):
        declared_forecasts({"yesterday": NaiveForecast(lag_days=1, group=[])}, delay=2)


def test_the_bless_rule_needs_the_network_below_the_best_baseline_and_the_best_naive_forecast():
    def rows(dnn, naive_best=6.67, split="validation"):
        return [{"model": "dnn", "split": split, "mae": dnn}, {"model": "linreg", "split": split, "mae": 3.0},
                {"model": "gbt", "split": split, "mae": 2.5}, {"model": "naive_training_mean", "split": split, "mae": 6.67},
                {"model": "naive_two_weeks_before", "split": split, "mae": naive_best}]

    status, reason = decide(rows(2.0, naive_best=1.69))
    assert status == "rejected" and "naive_two_weeks_before 1.6900" in reason and "gbt 2.5000" in reason
    assert decide(rows(2.6))[0] == "rejected"                 # beats the naive forecasts, not the trees
    status, reason = decide(rows(1.5, naive_best=1.69))
    assert status == "blessed" and reason.startswith("validation MAE 1.5000 beats")
    # The test split chooses nothing: a network that only wins there is not blessed.
    assert decide(rows(9.0) + [{**r, "split": "test", "mae": r["mae"] + 10} for r in rows(1.0)])[0] == "rejected"
    assert decide(rows(float("nan")))[0] == "rejected"


def test_a_candidate_must_also_beat_the_blessed_model_on_the_same_validation_rows():
    rows = [{"model": "dnn", "split": "validation", "mae": 1.5}, {"model": "linreg", "split": "validation", "mae": 3.0},
            {"model": "naive_last_known", "split": "validation", "mae": 1.69}]
    assert decide(rows, blessed_mae=None) == decide(rows)
    status, reason = decide(rows, blessed_mae=1.4)
    assert status == "rejected" and reason == "validation MAE 1.5000 is not below the blessed model's 1.4000"
    assert decide(rows, blessed_mae=1.5)[0] == "rejected"       # as good is not better
    status, reason = decide(rows, blessed_mae=1.6)
    assert status == "blessed" and reason.endswith("; validation MAE 1.5000 beats the blessed model's 1.6000")
    # A candidate the other rules reject keeps their reason.
    assert decide(rows[:1] + [{**rows[1], "mae": 1.0}] + rows[2:], blessed_mae=9.0) == decide(
        rows[:1] + [{**rows[1], "mae": 1.0}] + rows[2:])


def test_with_backtest_folds_the_network_must_also_lead_on_its_mean_fold_mae():
    from types import SimpleNamespace

    def rows(dnn_folds, split="validation", dnn=1.5):
        fold = {"dnn": dnn_folds, "linreg": (3.0, 3.2), "naive_last_known": (1.8, 2.2)}
        out = [{"model": "dnn", "split": split, "mae": dnn}, {"model": "linreg", "split": split, "mae": 3.0},
               {"model": "naive_last_known", "split": split, "mae": 1.69}]
        for model, maes in fold.items():
            out += [{"model": model, "split": "backtest_mean", "mae": float(np.mean(maes))},
                    {"model": model, "split": "backtest_std", "mae": float(np.std(maes))}]
        return out

    rule = SimpleNamespace(spread_penalty=0.0, min_lift=0.0)
    # Below every model on the folds' mean, and on validation: blessed, both said.
    status, reason = decide(rows((1.6, 1.8)), backtest_cfg=rule)
    assert status == "blessed" and reason.startswith("backtest mean MAE 1.7000 beats linreg 3.1000, naive_last_known 2.0000; validation MAE 1.5000")
    # Best on validation but not on the folds: the folds decide.
    status, reason = decide(rows((1.9, 2.3)), backtest_cfg=rule)
    assert status == "rejected" and "is not below naive_last_known" in reason
    # A penalty on the spread, and a lift to clear.
    assert decide(rows((1.2, 2.4)), backtest_cfg=SimpleNamespace(spread_penalty=1.0, min_lift=0.0))[0] == "rejected"
    assert decide(rows((1.6, 1.8)), backtest_cfg=SimpleNamespace(spread_penalty=0.0, min_lift=0.5))[0] == "rejected"
    # Good folds do not bless a network that loses on validation; without folds, validation alone.
    assert decide(rows((1.6, 1.8), dnn=2.0), backtest_cfg=rule)[0] == "rejected"
    assert decide(rows((1.9, 2.3))) == decide([r for r in rows((1.9, 2.3)) if r["split"] == "validation"])


def test_the_target_is_standardised_for_the_loss_and_restored_on_output():
    import tensorflow as tf

    y = np.array([40.0, 55.0, 70.0, 95.0, 140.0])
    scale = TargetScale.fit([*y, float("nan")])
    assert scale.mean == pytest.approx(80.0) and scale.std == pytest.approx(float(np.std(y)))
    np.testing.assert_allclose(scale.restore(scale.standardise(y)), y)
    assert TargetScale.fit([3.0, 3.0]) == TargetScale(3.0, 1.0)     # a constant target: std 1, no division by 0

    cfg = load_config("local", ["training.head=regression", "training.hidden_units=[4]", "training.embedding_dim=2",
                                "training.dropout=0", "training.l2=0", "training.huber_delta=15"]).training
    model = build_model(SPEC, cfg, scale)
    last = model.get_layer("deep_logit")
    last.set_weights([np.zeros_like(w) for w in last.get_weights()])
    x = {"num_planned": np.zeros((5, 1), np.float32), "cat_weekday": np.ones((5, 1), np.int32)}
    # A standardised output of 0 is the training mean in the target's units.
    np.testing.assert_allclose(model.predict(x, verbose=0).reshape(-1), [80.0] * 5, rtol=1e-6)
    compile_model(model, cfg, make_optimizer(cfg, 0.01), scale)
    loss = model.evaluate(x, y.reshape(-1, 1), verbose=0)[0]
    # The loss is Huber of the standardised residual, its delta in standard deviations.
    standardised = tf.keras.losses.Huber(delta=15 / scale.std)(scale.standardise(y).reshape(-1, 1), np.zeros((5, 1)))
    assert loss == pytest.approx(float(standardised), rel=1e-5)
