"""MLlib baselines on the model-input features: logistic regression and gradient-boosted trees."""
from __future__ import annotations

import pytest

from model_input_fixtures import model_input_lakehouse
from pipelines.ml.baselines import feature_columns, fit_baselines, model_input_frames


@pytest.fixture(scope="module")
def frames(spark, tmp_path_factory):
    lakehouse = model_input_lakehouse(spark, tmp_path_factory.mktemp("baselines") / "lakehouse")
    return model_input_frames(lakehouse, version=0)


def test_frames_are_the_splits_of_the_pinned_version(frames):
    assert frames["train"].count() == 4000 and frames["validation"].count() == 1000
    assert feature_columns(frames["train"].columns) == (
        ["num_distance", "num_dep_hour", "num_temp", "num_temp_missing"], ["cat_carrier", "cat_origin"])


@pytest.mark.slow
def test_logreg_scores_auc_on_validation(spark, frames):
    results = fit_baselines(spark, frames["train"], frames["validation"], kinds=("logreg",), seed=42, max_iter=20)
    metrics = results["logreg"]
    # The fixture's label depends on the features, so a linear model finds most of it.
    assert metrics["val_auc"] > 0.75
    assert 0.5 < metrics["train_auc"] <= 1 and metrics["features"] == 6 and metrics["seconds"] > 0
    with pytest.raises(ValueError, match="unknown baseline"):
        fit_baselines(spark, frames["train"], frames["validation"], kinds=("forest",), seed=42)


@pytest.mark.slow
def test_gbt_scores_auc_on_validation(spark, frames):
    results = fit_baselines(spark, frames["train"], frames["validation"], kinds=("gbt",), seed=42, max_iter=10)
    assert set(results) == {"gbt"} and results["gbt"]["val_auc"] > 0.75
