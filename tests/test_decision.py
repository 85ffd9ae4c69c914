"""The decision: calibration and threshold fitted on a validation histogram (pipelines.ml.decision)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.ml.decision import (DECISION_BINS, Decision, DecisionRule, decisions_from_json, decisions_json,
                                   expected_calibration_error, fit_decision)


def histogram(scores, labels, bins=DECISION_BINS) -> pd.DataFrame:
    """What evaluation.score_histogram computes in Spark, in pandas."""
    frame = pd.DataFrame({"bin": np.minimum((scores * bins).astype(int), bins - 1), "score": scores, "y": labels})
    return (frame.groupby("bin").agg(pos=("y", "sum"), neg=("y", lambda y: (1 - y).sum()), mean_score=("score", "mean"))
            .reset_index().astype({"pos": float, "neg": float}))


def shrunk_scores(n=40_000, seed=0):
    """A score squeezed below 0.5, as the network's: the true probability is sigmoid(3 * logit(s) + 1)."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(0.05, 0.45, n)
    truth = 1 / (1 + np.exp(-(3 * np.log(s / (1 - s)) + 1)))
    return s, (rng.uniform(size=n) < truth).astype(float), truth


def brute_force(scores, labels, objective):
    """The best cut over every distinct score, by direct counting."""
    best = None
    for t in np.unique(scores):
        pred = scores >= t
        tp, fp = float((pred & (labels == 1)).sum()), float((pred & (labels == 0)).sum())
        value = objective(tp, fp, labels.sum() - tp)
        if best is None or value > best[0]:
            best = (value, t)
    return best


def test_platt_recovers_the_true_probabilities_of_a_shrunk_score():
    s, y, truth = shrunk_scores()
    d = fit_decision(histogram(s, y), DecisionRule(calibration="platt"), chosen_on="validation")
    assert d.calibration == "platt"
    assert d.params["a"] == pytest.approx(3, abs=0.25) and d.params["b"] == pytest.approx(1, abs=0.25)
    assert np.abs(d.calibrate(s) - truth).max() < 0.03
    # The raw scores never cross 0.5; the decision calls a sizeable share of the rows positive.
    assert (s >= 0.5).sum() == 0 and 0.2 < d.labels(d.calibrate(s)).mean() < 0.9


def test_isotonic_is_non_decreasing_and_matches_the_observed_rates():
    s, y, truth = shrunk_scores(seed=1)
    d = fit_decision(histogram(s, y), DecisionRule(calibration="isotonic"), chosen_on="validation")
    values = np.array(d.params["values"])
    assert (np.diff(values) > 0).all() and d.params["starts"][0] == 0.0
    grid = np.linspace(0, 1, 1001)
    assert (np.diff(d.calibrate(grid)) >= 0).all()
    # Calibrated on its own rows, the mean probability equals the observed rate.
    assert d.calibrate(s).mean() == pytest.approx(y.mean(), abs=1e-9)


def test_expected_calibration_error_falls_after_calibration():
    s, y, _ = shrunk_scores(seed=2)
    d = fit_decision(histogram(s, y), DecisionRule(), chosen_on="validation")

    def ece(p):
        groups = np.minimum((p * 10).astype(int), 9)
        rows = [(p[groups == g].mean(), y[groups == g].mean(), (groups == g).sum()) for g in range(10) if (groups == g).any()]
        return expected_calibration_error(*zip(*rows))

    assert ece(s) > 0.1 and ece(d.calibrate(s)) < 0.02


@pytest.mark.parametrize("rule, objective", [
    (DecisionRule(objective="f1", calibration="none"), lambda tp, fp, fn: 2 * tp / (2 * tp + fp + fn)),
    (DecisionRule(objective="cost", false_positive=1, false_negative=4, calibration="none"),
     lambda tp, fp, fn: -(fp + 4 * fn)),
])
def test_the_threshold_is_the_best_cut_by_direct_counting(rule, objective):
    rng = np.random.default_rng(3)
    # Scores on the bin grid, so that a bin's lower edge is a score: the cuts are exactly comparable.
    bins = 200
    s = rng.integers(0, bins, 5_000) / bins
    y = (rng.uniform(size=len(s)) < s).astype(float)
    d = fit_decision(histogram(s, y, bins), rule, chosen_on="validation", bins=bins)
    best, at = brute_force(s, y, objective)
    pred = s >= d.threshold
    tp, fp = float((pred & (y == 1)).sum()), float((pred & (y == 0)).sum())
    assert objective(tp, fp, y.sum() - tp) == pytest.approx(best) and d.threshold == pytest.approx(at)


def test_precision_at_keeps_the_floor_with_the_most_recall():
    s, y, _ = shrunk_scores(seed=4)
    d = fit_decision(histogram(s, y), DecisionRule(objective="precision_at", at=0.7), chosen_on="validation")
    pred = d.labels(d.calibrate(s)) == 1
    precision, recall = y[pred].mean(), y[pred].sum() / y.sum()
    assert precision >= 0.7 - 1e-9
    # One step lower (more rows called positive) breaks the floor or gains no recall.
    lower = d.calibrate(s) >= d.threshold - 1e-3
    assert y[lower].mean() < 0.7 or y[lower].sum() / y.sum() <= recall + 1e-9


def test_one_class_only_keeps_raw_scores():
    s = np.linspace(0.1, 0.9, 100)
    d = fit_decision(histogram(s, np.zeros_like(s)), DecisionRule(), chosen_on="validation")
    assert d.calibration == "none" and d.threshold == 0.5 and "one class" in d.chosen_on


def test_a_decision_round_trips_through_the_registry_text():
    s, y, _ = shrunk_scores(seed=5)
    fitted = {"dnn": fit_decision(histogram(s, y), DecisionRule(calibration="isotonic"), chosen_on="validation"),
              "logreg": Decision.fixed(0.5)}
    back = decisions_from_json(decisions_json(fitted))
    assert back == fitted and decisions_from_json(None) == {}


def test_bad_rules_are_refused_with_the_key():
    with pytest.raises(ValueError, match="needs `at`"):
        DecisionRule(objective="precision_at")
    with pytest.raises(ValueError, match="unknown calibration"):
        DecisionRule(calibration="beta")


def test_the_dataset_declares_its_decision(tmp_path):
    import yaml

    from pipelines.config import PROJECT_ROOT, ConfigError
    from pipelines.datasets.loader import load_dataset

    data = yaml.safe_load((PROJECT_ROOT / "conf/base/datasets/nycflights13.yaml").read_text())
    assert load_dataset(PROJECT_ROOT / "conf/base/datasets/nycflights13.yaml").decision == DecisionRule()
    data["evaluation"]["decision"] = {"objective": "recall_at", "at": 0.6, "calibration": "isotonic"}
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(data))
    assert load_dataset(tmp_path / "d.yaml").decision == DecisionRule(objective="recall_at", at=0.6, calibration="isotonic")
    data["evaluation"]["decision"] = {"objective": "recall_at"}
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="evaluation.decision"):
        load_dataset(tmp_path / "d.yaml")


def test_spark_and_numpy_apply_the_same_decision(spark):
    s, y, _ = shrunk_scores(n=2_000, seed=6)
    for calibration in ("platt", "isotonic"):
        d = fit_decision(histogram(s, y), DecisionRule(calibration=calibration), chosen_on="validation")
        df = spark.createDataFrame(pd.DataFrame({"id": np.arange(len(s)), "score": s}))
        out = d.apply(df).toPandas().sort_values("id")
        assert np.allclose(out["score"], d.calibrate(s), atol=1e-9)
        assert (out["predicted_label"].to_numpy() == d.labels(d.calibrate(s))).all()
