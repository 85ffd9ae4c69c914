"""The stacked ensemble (pipelines/ml/stacking.py): out-of-fold rows aligned by key, the stacker's
fit, its Spark column, leave-one-fold-out backtest rows, and the bless rule that serves it."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.ml import stacking


def fold_scores(seed: int = 0, folds: int = 3, rows: int = 400) -> dict:
    """{(fold, model): frame}: `good` tracks the label, `noise` does not, `dnn` half-tracks it;
    every model's rows in another order, as Spark hands them back."""
    rng = np.random.default_rng(seed)
    out = {}
    for f in range(1, folds + 1):
        keys = np.arange(rows) + 1000 * f
        label = (rng.random(rows) < 0.3).astype("float64")
        signal = {"good": label * 1.5, "noise": 0 * label, "dnn": label * 0.7}
        for model, s in signal.items():
            score = 1 / (1 + np.exp(-(s - 1 + rng.normal(0, 1, rows))))
            order = rng.permutation(rows)
            out[(f"fold_{f}", model)] = pd.DataFrame({"key": keys[order], "label": label[order], "score": score[order]})
    return out


def test_out_of_fold_rows_line_up_each_members_score_by_key():
    scores = fold_scores()
    rows = stacking.out_of_fold(scores, ["dnn", "good"])
    assert len(rows) == 3 * 400 and list(rows.columns[:3]) == ["key", "label", "dnn"]
    for (fold, model), frame in scores.items():
        if model in ("dnn", "good"):
            merged = rows[rows["fold"] == fold].merge(frame.assign(key=frame["key"].astype(str)), on="key")
            assert np.allclose(merged[model], merged["score"]) and (merged["label_x"] == merged["label_y"]).all()


def test_the_stacker_trusts_the_informative_model_and_predicts_like_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    scores = fold_scores()
    rows = stacking.out_of_fold(scores, ["dnn", "good", "noise"])
    fitted = stacking.fit(rows, ["dnn", "good", "noise"], seed=1)
    weights = dict(zip(fitted.members, fitted.weights))
    assert weights["good"] > weights["dnn"] > abs(weights["noise"])
    x = np.column_stack([stacking.logit(rows[m].to_numpy()) for m in fitted.members])
    expected = LogisticRegression(C=1.0, max_iter=1000, random_state=1).fit(x, rows["label"] > 0.5).predict_proba(x)[:, 1]
    assert np.allclose(fitted.predict(rows), expected)
    assert stacking.Stacker.from_dict(fitted.to_dict()) == fitted and fitted.rows == len(rows)


def test_stacks_are_fitted_with_and_without_the_network_and_never_on_one_model():
    scores = fold_scores()
    stackers = stacking.fit_stackers(scores, seed=1)
    assert stackers["stack"].members == ("dnn", "good", "noise")
    assert stackers["stack_no_dnn"].members == ("good", "noise")
    # The network and one baseline: a stack with the network, none without it (a stack of one model).
    two = {k: v for k, v in scores.items() if k[1] in ("dnn", "good")}
    assert set(stacking.fit_stackers(two, seed=1)) == {"stack"}
    # Without the network's folds there is no stack "with the network".
    assert set(stacking.fit_stackers({k: v for k, v in scores.items() if k[1] != "dnn"}, seed=1)) == {"stack_no_dnn"}


def test_the_spark_column_gives_the_stackers_scores(spark):
    scores = fold_scores()
    stacker = stacking.fit(stacking.out_of_fold(scores, ["dnn", "good"]), ["dnn", "good"], seed=1)
    raws = {m: spark.createDataFrame(scores[("fold_1", m)]).withColumnRenamed("key", "id") for m in ("dnn", "good")}
    got = stacking.stack_frame(stacker, raws, "id").toPandas().sort_values("id")
    wide = stacking.out_of_fold({k: v for k, v in scores.items() if k[0] == "fold_1"}, ["dnn", "good"])
    wide = wide.assign(id=wide["key"].astype(int)).sort_values("id")
    assert np.allclose(got["score"].to_numpy(), stacker.predict(wide), atol=1e-9)


def test_each_fold_is_scored_by_a_stacker_fitted_on_the_other_folds_only(spark):
    from pipelines.ml.backtest import exact_auc

    scores = fold_scores()
    stackers = stacking.fit_stackers(scores, seed=1)
    rows = stacking.fold_rows(spark, scores, {"stack": stackers["stack"]}, "m1", 0.5, seed=1)
    assert [r["split"] for r in rows] == ["fold_1", "fold_2", "fold_3"] and {r["model"] for r in rows} == {"stack"}
    wide = stacking.out_of_fold(scores, list(stackers["stack"].members))
    for r in rows:
        held_out = wide[wide["fold"] == r["split"]]
        other = stacking.fit(wide[wide["fold"] != r["split"]], list(stackers["stack"].members), seed=1)
        # The binned AUC of binary_metrics, against the exact one of the same scores.
        assert r["rows"] == len(held_out) and r["auc"] == pytest.approx(exact_auc(held_out["label"], other.predict(held_out)), abs=0.01)
    # Changing a held-out fold's labels changes the stacker that scores it not at all.
    flipped = dict(scores)
    for m in ("dnn", "good", "noise"):
        frame = scores[("fold_1", m)]
        flipped[("fold_1", m)] = frame.assign(label=1 - frame["label"])
    again = stacking.fold_rows(spark, flipped, {"stack": stackers["stack"]}, "m1", 0.5, seed=1)
    assert again[0]["auc"] == pytest.approx(1 - rows[0]["auc"], abs=0.01)


def metric_rows(means: dict[str, float], validation: dict[str, float]) -> list[dict]:
    from pipelines.ml.backtest import MEAN, SPREAD

    rows = [{"model": m, "split": MEAN, "auc": a} for m, a in means.items()]
    rows += [{"model": m, "split": SPREAD, "auc": 0.0} for m in means]
    return rows + [{"model": m, "split": "validation", "auc": a} for m, a in validation.items()]


@pytest.mark.parametrize("means, serves, status", [
    ({"dnn": 0.66, "logreg": 0.64, "xgb": 0.65, "stack": 0.67, "stack_no_dnn": 0.66}, "stack", "blessed"),
    # The stack beats the baselines but not the network: the network serves.
    ({"dnn": 0.68, "logreg": 0.64, "xgb": 0.65, "stack": 0.67, "stack_no_dnn": 0.66}, "dnn", "blessed"),
    # The stack beats every single model though the network alone does not beat the trees.
    ({"dnn": 0.64, "logreg": 0.63, "xgb": 0.65, "stack": 0.66, "stack_no_dnn": 0.655}, "stack", "blessed"),
    # Neither beats every baseline.
    ({"dnn": 0.60, "logreg": 0.63, "xgb": 0.65, "stack": 0.645, "stack_no_dnn": 0.65}, "dnn", "rejected"),
])
def test_the_stack_is_served_when_it_beats_every_single_model_by_the_backtest_rule(means, serves, status):
    from types import SimpleNamespace

    from pipelines.ml.candidate import bless

    metrics = metric_rows(means, {m: a for m, a in means.items()})
    rule = SimpleNamespace(spread_penalty=0.0, min_lift=0.0)
    got_status, reason, got_serves = bless(metrics, rule, ["logreg", "xgb"], None, lambda m: means[m])
    assert (got_status, got_serves) == (status, serves), reason
    # Both verdicts are in the reason, whichever serves.
    assert "stack" in reason and "backtest" in reason
    # The blessed model's validation AUC is a bar for the stack too.
    blocked = bless(metrics, rule, ["logreg", "xgb"], 0.99, lambda m: means[m])
    assert blocked[0] == "rejected"
