"""Baselines on the model-input features: logistic regression, gradient-boosted trees, XGBoost."""
from __future__ import annotations

import pytest

from model_input_fixtures import model_input_lakehouse
from pipelines.ml.baselines import feature_columns, fit_baselines, model_input_frames
from pipelines.ml.scoring import score_with_baseline


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


def test_xgb_learns_the_signal_and_scores_the_same_rows_identically_once_saved_and_loaded(spark, frames, tmp_path):
    from pyspark.ml.functions import vector_to_array

    results = fit_baselines(spark, frames["train"], frames["validation"], kinds=("xgb",), seed=42,
                            params={"xgb": {"n_estimators": 50}})
    xgb = results["xgb"]
    assert set(results) == {"xgb"} and xgb["val_auc"] > 0.75 and xgb["features"] == 6
    # Saved as the nightly saves a baseline, loaded and scored as batch scoring does.
    path = str(tmp_path / "baselines" / "xgb")
    xgb["model"].write().overwrite().save(path)
    validation = frames["validation"]
    fitted = (xgb["model"].transform(validation).select("flight_id", vector_to_array("probability").alias("p"))
              .toPandas().set_index("flight_id")["p"])
    # [p0, p1], as MLlib's classifiers write it: the scorers take p1.
    assert all(len(p) == 2 and abs(p[0] + p[1] - 1) < 1e-6 for p in fitted)
    loaded = score_with_baseline(validation, path, 0.5, key_columns=("flight_id",)).toPandas().set_index("flight_id")
    assert len(loaded) == 1000 and loaded["score"].equals(fitted.map(lambda p: p[1]).reindex(loaded.index))
