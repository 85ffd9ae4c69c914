"""Gold: silver → `gold.features`, `gold.feature_spec`, `gold.model_input`, and the
serving input a model scores.

`spec` fits and applies the feature spec (pure transforms); `build` is the stage (reads silver,
writes the three tables); `serving` encodes the days to score with the scoring model's own spec.
"""
from pipelines.stages.gold.build import build_features, model_columns
from pipelines.stages.gold.serving import ServingError, build_serving_input, encode, spec_at
from pipelines.stages.gold.spec import FeaturesError, apply_feature_spec, fit_feature_spec, spec_rows, split_column

__all__ = ["build_features", "model_columns", "FeaturesError", "fit_feature_spec", "apply_feature_spec", "spec_rows",
           "split_column", "ServingError", "build_serving_input", "encode", "spec_at"]
