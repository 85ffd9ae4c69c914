"""The SavedModel with the feature spec inside scores raw feature rows as the pipeline does
(Spark's encoding, then the Keras model), nulls, unseen values and stringified ints included."""
from datetime import date

import numpy as np
import pytest

from pipelines.ml.decision import Decision

SPEC = [
    {"position": 1, "name": "num_distance", "kind": "numeric", "transform": "standardize", "source": "distance",
     "vocabulary": [], "vocab_size": 0, "mean": 1000.0, "std": 400.0, "fill_with": "median", "fill": 900.0},
    {"position": 2, "name": "num_distance_missing", "kind": "numeric", "transform": "missing_flag",
     "source": "distance", "vocabulary": [], "vocab_size": 0, "mean": None, "std": None, "fill_with": None, "fill": None},
    {"position": 3, "name": "num_seats", "kind": "numeric", "transform": "standardize", "source": "seats",
     "vocabulary": [], "vocab_size": 0, "mean": 150.0, "std": 30.0, "fill_with": "mean", "fill": 150.0},
    {"position": 4, "name": "cat_carrier", "kind": "categorical", "transform": "vocabulary", "source": "carrier",
     "vocabulary": ["AA", "B6", "DL"], "vocab_size": 4, "mean": None, "std": None, "fill_with": None, "fill": None},
    # An int categorical: the vocabulary holds Spark's strings of it ("5"), sorted as strings.
    {"position": 5, "name": "cat_hour", "kind": "categorical", "transform": "vocabulary", "source": "hour",
     "vocabulary": ["10", "23", "5", "6"], "vocab_size": 5, "mean": None, "std": None, "fill_with": None, "fill": None},
    {"position": 6, "name": "cat_known", "kind": "categorical", "transform": "vocabulary", "source": "known",
     "vocabulary": ["false", "true"], "vocab_size": 3, "mean": None, "std": None, "fill_with": None, "fill": None},
    {"position": 7, "name": "cat_empty", "kind": "categorical", "transform": "vocabulary", "source": "carrier",
     "vocabulary": [], "vocab_size": 1, "mean": None, "std": None, "fill_with": None, "fill": None},
]
FEATURES_SCHEMA = ("flight_id long, date date, distance double, seats int, carrier string, hour int, known boolean, "
                   "label double, target double")


def raw_rows(n: int, seed: int = 3) -> list[tuple]:
    rng = np.random.default_rng(seed)
    pick = lambda values: values[int(rng.integers(0, len(values)))]  # noqa: E731
    return [(i, date(2013, 12, 1 + i % 28), pick([None, 250.5, 1000.0, 2475.0, float(rng.normal(1000, 400))]),
             pick([None, 55, 149, 379]), pick([None, "AA", "B6", "DL", "ZZ", ""]), pick([None, 5, 6, 10, 23, 7]),
             pick([None, True, False]), pick([None, 0.0, 1.0]), None) for i in range(n)]


@pytest.fixture(scope="module")
def exported(spark, tmp_path_factory):
    import tensorflow as tf

    from pipelines.ml.export import export_saved_model, source_types
    from pipelines.ml.inputs import FeatureSpec
    from pipelines.ml.model import build_model
    from tests.model_input_fixtures import training_config

    tf.keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("export")
    spec = FeatureSpec(("num_distance", "num_distance_missing", "num_seats"),
                       {"cat_carrier": 4, "cat_hour": 5, "cat_known": 3, "cat_empty": 1})
    model = build_model(spec, training_config(folder / "nycflights13").training)
    # Spread the embeddings so that every index gives a visibly different score.
    for layer in model.layers:
        if layer.name.endswith("_embedding") or layer.name.endswith("_wide"):
            layer.set_weights([np.random.default_rng(1).normal(size=w.shape) for w in layer.get_weights()])
    features = spark.createDataFrame(raw_rows(400), FEATURES_SCHEMA)
    path = export_saved_model(model, SPEC, source_types(features.schema), str(folder / "saved_model"), DECISION)
    model.save(str(folder / "model.keras"))   # beside it, as training leaves it
    return model, features, path


# A Platt calibration that moves every score: what the train stage fits on the validation window.
DECISION = Decision(threshold=0.45, calibration="platt", params={"a": 2.0, "b": 0.3}, objective="f1",
                    chosen_on="validation")


def test_the_saved_model_scores_raw_rows_like_spark_encoding_and_the_keras_model(spark, exported):
    import tensorflow as tf

    from pipelines.ml.export import raw_inputs
    from pipelines.ml.inputs import model_inputs, spec_of_model
    from pipelines.stages.gold.spec import SPEC_SCHEMA, apply_feature_spec

    model, features, path = exported
    assert (tf.io.gfile.exists(f"{path}/saved_model.pb"))
    encoded = apply_feature_spec(features, spark.createDataFrame(SPEC, SPEC_SCHEMA), key="flight_id").toPandas()
    encoded = encoded.sort_values("flight_id")
    expected = model.predict(model_inputs(encoded, spec_of_model(model)), verbose=0).reshape(-1)

    served = tf.saved_model.load(path).signatures["serving_default"]
    raw = features.toPandas().sort_values("flight_id")   # nullable ints arrive as float64 with NaN
    out = served(**raw_inputs(raw, served))
    raw_scores, scores = out["raw_score"].numpy(), out["score"].numpy()
    assert scores.shape == (400,)
    np.testing.assert_allclose(raw_scores, expected, rtol=1e-6, atol=1e-6)
    # The decision inside: the calibrated score and the label, as Spark scoring gives them.
    np.testing.assert_allclose(scores, DECISION.calibrate(expected), rtol=1e-5, atol=1e-6)
    labels = out["predicted_label"].numpy()
    near = np.abs(DECISION.calibrate(expected) - DECISION.threshold) < 1e-5
    assert (labels[~near] == DECISION.labels(DECISION.calibrate(expected))[~near]).all() and 0 < labels.sum() < 400
    # The rows really exercise what the spec does: every index of each vocabulary, unseen and null values.
    assert set(encoded["cat_hour"]) == {0, 1, 2, 3, 4} and set(encoded["cat_carrier"]) == {0, 1, 2, 3}
    assert set(encoded["cat_known"]) == {0, 1, 2} and encoded["num_distance_missing"].sum() > 0
    assert len(np.unique(scores.round(5))) > 20


def test_the_saved_model_needs_no_spark_and_names_its_inputs_after_the_features(exported):
    import tensorflow as tf

    _, _, path = exported
    served = tf.saved_model.load(path).signatures["serving_default"]
    inputs = served.structured_input_signature[1]
    assert {k: v.dtype for k, v in inputs.items()} == {"distance": tf.float64, "seats": tf.float64,
                                                       "carrier": tf.string, "hour": tf.float64, "known": tf.float64}
    one = served(distance=tf.constant([np.nan], tf.float64), seats=tf.constant([150.0], tf.float64), carrier=tf.constant(["B6"]),
                 hour=tf.constant([5.0], tf.float64), known=tf.constant([np.nan], tf.float64))["score"].numpy()
    assert one.shape == (1,) and 0.0 < one[0] < 1.0


def test_a_spec_that_reads_a_missing_column_is_refused(exported):
    from pipelines.ml.export import ExportError, serving_module

    model, _, _ = exported
    with pytest.raises(ExportError, match="does not have"):
        serving_module(model, SPEC, {"distance": "double"})
