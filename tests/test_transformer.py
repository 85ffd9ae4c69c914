"""The Spark ML Transformer scores raw feature rows as the SavedModel does, and carries the rows along."""
import os

import numpy as np

from tests.test_export import DECISION, SPEC, exported  # noqa: F401  (the module fixture: a model, raw rows, its SavedModel)


def test_transform_scores_raw_feature_rows_like_the_saved_model(spark, exported):  # noqa: F811
    import tensorflow as tf

    from pipelines.ml.export import raw_inputs
    from pipelines.ml.transformer import FeaturesModel

    model, features, path = exported
    keras_path = os.path.join(os.path.dirname(path), "model.keras")
    transformer = FeaturesModel(keras_path, SPEC, key="flight_id", decision=DECISION)
    scored = transformer.transform(features.drop("label", "target").repartition(3)).toPandas().sort_values("flight_id")
    assert len(scored) == 400 and scored["flight_id"].is_unique
    assert {"date", "carrier", "hour", "score", "predicted_label"} <= set(scored.columns)

    served = tf.saved_model.load(path).signatures["serving_default"]
    out = served(**raw_inputs(features.toPandas().sort_values("flight_id"), served))
    # The same decision inside both: the same calibrated scores and labels.
    np.testing.assert_allclose(scored["score"].to_numpy(), out["score"].numpy(), rtol=1e-5, atol=1e-6)
    assert (scored["predicted_label"].to_numpy() == (scored["score"].to_numpy() >= DECISION.threshold)).all()
    near = np.abs(scored["score"].to_numpy() - DECISION.threshold) < 1e-5
    assert (scored["predicted_label"].to_numpy() == out["predicted_label"].numpy())[~near].all()
