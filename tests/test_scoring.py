"""Distributed scoring gives the same scores as the model on the driver."""
import numpy as np
import pytest


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    num = tf.keras.Input((1,), name="num_distance", dtype=tf.float32)
    cat = tf.keras.Input((1,), name="cat_carrier", dtype=tf.int32)
    # Named as pipelines.ml.model names embeddings: the spec of a model is read off its layers.
    emb = tf.keras.layers.Flatten()(tf.keras.layers.Embedding(5, 2, name="cat_carrier_embedding")(cat))
    out = tf.keras.layers.Dense(1, activation="sigmoid")(tf.keras.layers.Concatenate()([num, emb]))
    model = tf.keras.Model({"num_distance": num, "cat_carrier": cat}, out)
    path = str(tmp_path_factory.mktemp("model") / "model.keras")
    model.save(path)
    return path, model


def test_scores_match_the_driver_model(spark, saved_model):
    from pipelines.ml.inputs import model_inputs, spec_of_model
    from pipelines.ml.scoring import score

    path, model = saved_model
    rng = np.random.default_rng(1)
    rows = [(int(i), 20131201, float(rng.normal()), int(rng.integers(0, 5))) for i in range(300)]
    df = spark.createDataFrame(rows, "flight_id long, day int, num_distance float, cat_carrier int").repartition(3)
    scored = score(df, path, 0.5, key_columns=("flight_id", "day")).toPandas().sort_values("flight_id")
    assert len(scored) == 300 and scored["flight_id"].is_unique
    frame = df.toPandas().sort_values("flight_id")
    expected = model.predict(model_inputs(frame, spec_of_model(model)), verbose=0).reshape(-1)
    np.testing.assert_allclose(scored["score"].to_numpy(), expected, rtol=1e-5, atol=1e-6)
    assert (scored["predicted_label"].to_numpy() == (expected >= 0.5)).all()


def test_training_and_scoring_feed_the_model_the_same_tensors(spark, tmp_path):
    """The same model_input rows through the training path (Petastorm → iter_batches) and the scoring
    path (Spark rows → the scoring task's inputs, spec read off the saved model) give equal tensors,
    and the model's scores of them agree with `score`."""
    import pandas as pd
    from pyspark.sql import functions as F

    from model_input_fixtures import model_input_lakehouse, training_config
    from pipelines.ml import tensors
    from pipelines.ml.inputs import model_inputs, spec_of_model
    from pipelines.ml.model import build_model, load_model
    from pipelines.ml.scoring import score

    lakehouse = model_input_lakehouse(spark, tmp_path / "lakehouse")
    snapshot = tensors.pin_snapshot(lakehouse)
    spec = tensors.load_feature_spec(lakehouse, snapshot)
    path = str(tmp_path / "model.keras")
    build_model(spec, training_config(lakehouse.root).training).save(path)
    model = load_model(path)

    # Training path: the validation split as training reads it, with the key read as the "label".
    batches = list(tensors.iter_batches(snapshot.splits["validation"], spec, label="flight_id", batch_size=128,
                                        training=False))
    ids = np.concatenate([y.ravel() for _, y in batches]).astype(np.int64)
    order = np.argsort(ids)
    trained = {name: np.concatenate([x[name] for x, _ in batches])[order] for name in spec.inputs}

    # Scoring path: the same rows read by Spark, as the scoring task turns them into inputs.
    rows = (lakehouse.table("gold.model_input").read(version=snapshot.version)
            .filter(F.col("split") == "validation").drop("split"))
    frame = rows.toPandas().sort_values("flight_id").reset_index(drop=True)
    scored_inputs = model_inputs(frame, spec_of_model(model))

    read_off = spec_of_model(model)   # Keras orders a dict of inputs by name; the names and sizes are what count
    assert read_off.categorical == spec.categorical and sorted(read_off.numeric) == sorted(spec.numeric)
    assert list(frame["flight_id"]) == list(ids[order])
    for name in spec.inputs:
        assert trained[name].dtype == scored_inputs[name].dtype and trained[name].shape == scored_inputs[name].shape
        np.testing.assert_array_equal(trained[name], scored_inputs[name])

    expected = model.predict(trained, verbose=0).reshape(-1)
    scores = score(rows, path, 0.5, key_columns=("flight_id", "day")).toPandas().sort_values("flight_id")["score"].to_numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)

    # One rule for categories the model does not know: negative or beyond its vocabulary → 0.
    odd = pd.DataFrame({**{n: [0.5, np.nan] for n in spec.numeric},
                        **{n: [size + 3, -1] for n, size in spec.categorical.items()}})
    x = model_inputs(odd, spec)
    assert all((x[n] == 0).all() for n in spec.categorical)
    assert all(x[n][1, 0] == 0.0 for n in spec.numeric)


def test_a_sequence_model_scores_its_array_columns_in_spark_tasks_as_on_the_driver(spark, tmp_path):
    """Spark hands the scoring task an array<float> column as a pandas column of arrays; the spec
    read off the saved model sizes it, and the scores match the driver's."""
    from pipelines.config import load_config
    from pipelines.ml.inputs import FeatureSpec, model_inputs, spec_of_model
    from pipelines.ml.model import build_model, load_model
    from pipelines.ml.scoring import score

    spec = FeatureSpec(("num_distance",), {"cat_carrier": 5}, None, {"seq_route_late_rate": 4})
    cfg = load_config("local", ["training.architecture=sequence", "training.hidden_units=[4]",
                                "training.sequence_units=3"]).training
    path = str(tmp_path / "model.keras")
    build_model(spec, cfg).save(path)
    model = load_model(path)
    assert spec_of_model(model).sequences == {"seq_route_late_rate": 4}
    rng = np.random.default_rng(2)
    rows = [(i, 20131201, float(rng.normal()), int(rng.integers(0, 5)), [float(v) for v in rng.normal(size=4)])
            for i in range(200)]
    df = spark.createDataFrame(rows, "flight_id long, day int, num_distance float, cat_carrier int, "
                                     "seq_route_late_rate array<float>").repartition(2)
    scored = score(df, path, 0.5, key_columns=("flight_id", "day")).toPandas().sort_values("flight_id")
    frame = df.toPandas().sort_values("flight_id")
    expected = model.predict(model_inputs(frame, spec_of_model(model)), verbose=0).reshape(-1)
    np.testing.assert_allclose(scored["score"].to_numpy(), expected, rtol=1e-5, atol=1e-6)
