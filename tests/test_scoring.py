"""Distributed scoring gives the same scores as the model on the driver."""
import numpy as np
import pytest


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    num = tf.keras.Input((1,), name="num_distance", dtype=tf.float32)
    cat = tf.keras.Input((1,), name="cat_carrier", dtype=tf.int32)
    emb = tf.keras.layers.Flatten()(tf.keras.layers.Embedding(5, 2)(cat))
    out = tf.keras.layers.Dense(1, activation="sigmoid")(tf.keras.layers.Concatenate()([num, emb]))
    model = tf.keras.Model({"num_distance": num, "cat_carrier": cat}, out)
    path = str(tmp_path_factory.mktemp("model") / "model.keras")
    model.save(path)
    return path, model


def test_scores_match_the_driver_model(spark, saved_model):
    from pipelines.scoring import model_inputs, score

    path, model = saved_model
    rng = np.random.default_rng(1)
    rows = [(int(i), 20131201, float(rng.normal()), int(rng.integers(0, 5))) for i in range(300)]
    df = spark.createDataFrame(rows, "flight_id long, day int, num_distance float, cat_carrier int").repartition(3)
    scored = score(df, path, threshold=0.5).toPandas().sort_values("flight_id")
    assert len(scored) == 300 and scored["flight_id"].is_unique
    frame = df.toPandas().sort_values("flight_id")
    expected = model.predict(model_inputs(model, frame), verbose=0).reshape(-1)
    np.testing.assert_allclose(scored["score"].to_numpy(), expected, rtol=1e-5, atol=1e-6)
    assert (scored["predicted_label"].to_numpy() == (expected >= 0.5)).all()
