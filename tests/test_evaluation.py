"""Spark-side metrics agree with scikit-learn on the same scores."""
import numpy as np
import pytest
from sklearn.metrics import f1_score, log_loss, precision_score, recall_score, roc_auc_score

from pipelines.ml.evaluation import binary_metrics, calibration, metrics_and_histogram, roc_points, score_histogram


@pytest.fixture(scope="module")
def scored(spark):
    rng = np.random.default_rng(7)
    label = rng.integers(0, 2, 5000)
    score = np.clip(0.3 * label + rng.uniform(0, 0.7, 5000), 0, 1)
    pdf = {"score": score.round(6).tolist(), "label": label.tolist()}
    return spark.createDataFrame(list(zip(pdf["score"], pdf["label"])), "score double, label int"), score.round(6), label


def test_metrics_match_sklearn(scored):
    df, score, label = scored
    m = binary_metrics(df, threshold=0.5)
    pred = (score >= 0.5).astype(int)
    assert m.rows == 5000 and m.positives == label.sum()
    assert m.auc == pytest.approx(roc_auc_score(label, score), abs=2e-3)
    assert m.log_loss == pytest.approx(log_loss(label, score), rel=1e-4)
    assert m.precision == pytest.approx(precision_score(label, pred))
    assert m.recall == pytest.approx(recall_score(label, pred))
    assert m.f1 == pytest.approx(f1_score(label, pred))


def test_roc_and_calibration_are_monotone_and_complete(scored):
    df, _, label = scored
    hist = score_histogram(df)
    fpr, tpr = roc_points(hist)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == pytest.approx(1) and tpr[-1] == pytest.approx(1)
    assert all(b >= a for a, b in zip(tpr, tpr[1:]))
    mean_score, observed, n = calibration(hist)
    assert n.sum() == len(label)
    assert np.all((observed >= 0) & (observed <= 1))


def test_one_pass_gives_the_metrics_and_the_histogram_of_their_own_passes(scored):
    """The nightly's one Spark job per model and split: the same histogram as `score_histogram`
    and an AUC exact up to ties within a 1/10,000 bin."""
    df, score, label = scored
    m, hist = metrics_and_histogram(df, threshold=0.5)
    assert m == binary_metrics(df, threshold=0.5)
    assert m.auc == pytest.approx(roc_auc_score(label, score), abs=1e-4)
    alone = score_histogram(df)
    assert hist["bin"].tolist() == alone["bin"].tolist()
    assert hist["pos"].tolist() == alone["pos"].tolist() and hist["neg"].tolist() == alone["neg"].tolist()
    assert np.allclose(hist["mean_score"], alone["mean_score"])
    with pytest.raises(ValueError, match="must divide"):
        metrics_and_histogram(df, threshold=0.5, bins=300)


def test_empty_scores_are_refused(spark):
    with pytest.raises(ValueError, match="empty"):
        binary_metrics(spark.createDataFrame([], "score double, label int"), threshold=0.5)


def test_the_chosen_threshold_maximises_its_rule_over_every_bin_edge(scored):
    from pipelines.ml.evaluation import choose_threshold

    df, score, label = scored
    hist = score_histogram(df, bins=100)
    edges = np.arange(1, 100) / 100

    def best(objective):
        return max(edges, key=lambda t: round(objective(t), 12))

    def f1(t):
        return f1_score(label, (score >= t).astype(int))

    def youden(t):
        pred = score >= t
        return pred[label == 1].mean() - pred[label == 0].mean()

    assert choose_threshold(hist, "f1", 0.5, bins=100) == pytest.approx(best(f1))
    assert choose_threshold(hist, "youden", 0.5, bins=100) == pytest.approx(best(youden))
    assert choose_threshold(hist, "fixed", 0.5, bins=100) == 0.5
    with pytest.raises(ValueError, match="unknown threshold rule"):
        choose_threshold(hist, "accuracy", 0.5, bins=100)


def test_confusion_and_brier_match_sklearn(scored):
    from sklearn.metrics import brier_score_loss, confusion_matrix

    from pipelines.ml.evaluation import brier_score, confusion

    df, score, label = scored
    tn, fp, fn, tp = confusion_matrix(label, (score >= 0.37).astype(int)).ravel()
    assert confusion(df, 0.37) == {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    assert brier_score(df) == pytest.approx(brier_score_loss(label, score), rel=1e-9)


def test_feature_groups_keep_a_missing_flag_with_its_column():
    from pipelines.ml.evaluation import feature_groups

    assert feature_groups(["flight_id", "num_temp", "num_temp_missing", "num_gust_missing", "cat_origin", "label"]) == {
        "temp": ["num_temp", "num_temp_missing"], "gust_missing": ["num_gust_missing"], "origin": ["cat_origin"]}


def test_permutation_importance_finds_the_one_feature_a_model_reads(spark):
    from pyspark.sql import functions as F

    from pipelines.ml.review import importance_rows

    rng = np.random.default_rng(3)
    n = 2000
    a, b = rng.normal(size=n), rng.normal(size=n)
    label = (a + 0.5 * rng.normal(size=n) > 0).astype(float)
    rows = [(float(x), float(y), 1.0 if y > 0 else 0.0, int(i % 3), float(lab)) for i, (x, y, lab) in enumerate(zip(a, b, label))]
    validation = spark.createDataFrame(rows, "num_a double, num_b double, num_b_missing double, cat_c int, label double")

    def reads_a(df):   # a model that reads num_a only
        return df.select("_group", "label", (1 / (1 + F.exp(-F.col("num_a")))).alias("score"))

    out = {r["feature"]: r for r in importance_rows(validation, {"m": reads_a}, rows=500, seed=1)}
    assert set(out) == {"a", "b", "c"} and out["b"]["columns"] == "num_b,num_b_missing"
    assert all(r["rows"] == 500 and r["split"] == "validation" for r in out.values())
    assert out["a"]["base_auc"] > 0.8 and out["a"]["auc_drop"] > 0.3
    assert out["b"]["auc_drop"] == 0 and out["c"]["auc_drop"] == 0
