"""Spark-side metrics agree with scikit-learn on the same scores."""
import numpy as np
import pytest
from sklearn.metrics import f1_score, log_loss, precision_score, recall_score, roc_auc_score

from pipelines.ml.evaluation import binary_metrics, calibration, roc_points, score_histogram


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


def test_empty_scores_are_refused(spark):
    with pytest.raises(ValueError, match="empty"):
        binary_metrics(spark.createDataFrame([], "score double, label int"), threshold=0.5)
