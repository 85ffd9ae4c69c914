"""The Keras model built from the feature spec: inputs, heads, optimizers, save and load."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.config import load_config
from pipelines.ml.model import build_model, compile_model, dropout_generators, label_for, load_model, make_optimizer
from pipelines.ml.inputs import FeatureSpec

SPEC = FeatureSpec(numeric=("num_distance", "num_temp_missing"), categorical={"cat_carrier": 6, "cat_origin": 4})


def training(*overrides: str):
    return load_config("local", ["training.hidden_units=[8,4]", "training.embedding_dim=3", *overrides]).training


def columns(n: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"num_distance": rng.normal(size=n).astype(np.float32), "num_temp_missing": np.zeros(n, np.float32),
            "cat_carrier": rng.integers(0, 6, n).astype(np.int32), "cat_origin": rng.integers(0, 4, n).astype(np.int32)}


def test_one_named_input_per_column_and_an_embedding_per_categorical():
    model = build_model(SPEC, training())
    assert sorted(t.name.split(":")[0] for t in model.inputs) == sorted(SPEC.inputs)
    embeddings = {layer.name: layer for layer in model.layers if layer.name.endswith("_embedding")}
    assert {n: (layer.input_dim, layer.output_dim) for n, layer in embeddings.items()} == {
        "cat_carrier_embedding": (6, 3), "cat_origin_embedding": (4, 3)}
    hidden = [layer.units for layer in model.layers if layer.name.startswith("hidden_")]
    assert hidden == [8, 4]
    assert model.layers[-1].activation.__name__ == "sigmoid" and model.output_shape == (None, 1)
    # Dropout draws from generators the training checkpoint saves, so a resumed run draws alike.
    assert sorted(dropout_generators(model)) == ["rng_dropout_0", "rng_dropout_1"]


def test_regression_head_is_linear_on_the_target():
    cfg = training("training.head=regression", "training.dropout=0")
    model = build_model(SPEC, cfg)
    assert label_for(cfg) == "target"
    assert model.layers[-1].activation.__name__ == "linear"
    assert not any(layer.name.startswith("dropout") for layer in model.layers)
    compile_model(model, cfg, make_optimizer(cfg, 0.01))
    assert type(model.loss).__name__ == "Huber" and model.loss.get_config()["delta"] == cfg.huber_delta


@pytest.mark.parametrize("name,cls", [("adam", "Adam"), ("sgd", "SGD"), ("rmsprop", "RMSprop")])
def test_optimizer_comes_from_config(name, cls):
    cfg = training(f"training.optimizer={name}", "training.momentum=0.5")
    optimizer = make_optimizer(cfg, learning_rate=0.02)
    assert type(optimizer).__name__ == cls
    assert optimizer.get_config()["learning_rate"] == pytest.approx(0.02)
    if name != "adam":
        assert optimizer.get_config()["momentum"] == pytest.approx(0.5)


def test_classification_learns_and_survives_save_and_load(tmp_path):
    import tensorflow as tf

    cfg = training("training.dropout=0")
    tf.keras.utils.set_random_seed(1)
    model = build_model(SPEC, cfg)
    compile_model(model, cfg, make_optimizer(cfg, 0.05))
    data = columns(512)
    x = {k: v.reshape(-1, 1) for k, v in data.items()}
    y = (data["num_distance"] > 0).astype(np.float32).reshape(-1, 1)
    history = model.fit(x, y, batch_size=64, epochs=8, verbose=0).history
    assert history["loss"][-1] < history["loss"][0] and history["auc"][-1] > 0.9

    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = load_model(path)
    # Scoring feeds 1-D pandas columns by input name; the model takes them as they come.
    flat = {k: v[:5] for k, v in data.items()}
    np.testing.assert_allclose(loaded.predict(flat, verbose=0), model.predict(x, verbose=0)[:5], rtol=1e-6)


SEQUENCE_SPEC = FeatureSpec(SPEC.numeric, SPEC.categorical, None, {"seq_route_late_rate": 7, "seq_carrier_late_rate": 7})


def sequence_columns(n: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return columns(n) | {name: rng.normal(size=(n, 7)).astype(np.float32) for name in SEQUENCE_SPEC.sequences}


@pytest.mark.parametrize("overrides, spec, layer", [
    (("training.architecture=mlp", "training.wide=false"), SPEC, "hidden_0"),
    (("training.architecture=mlp", "training.wide=true"), SPEC, "wide_and_deep"),
    (("training.architecture=cross", "training.cross_layers=3"), SPEC, "cross_2"),
    (("training.architecture=sequence", "training.sequence_layer=gru"), SEQUENCE_SPEC, "sequence_gru"),
    (("training.architecture=sequence", "training.sequence_layer=conv"), SEQUENCE_SPEC, "sequence_pool"),
])
def test_each_architecture_builds_from_config_and_takes_a_training_step(overrides, spec, layer):
    from pipelines.ml.inputs import model_inputs, spec_of_model

    cfg = training(*overrides)
    model = build_model(spec, cfg)
    assert layer in {lay.name for lay in model.layers}
    assert spec_of_model(model).sequences == spec.sequences
    compile_model(model, cfg, make_optimizer(cfg, learning_rate=0.01))
    x = model_inputs(sequence_columns(16), spec)
    y = (x["num_distance"] > 0).astype(np.float32)
    before = [w.copy() for w in model.get_weights()]
    loss = model.train_on_batch(x, y)
    assert np.all(np.isfinite(loss))
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))


def test_the_default_architecture_is_the_mlp_the_backtest_chose_and_the_bundesliga_keeps_its_wide_term():
    cfg = load_config("local").training
    assert (cfg.architecture, cfg.wide) == ("mlp", False)
    names = {layer.name for layer in build_model(SPEC, training()).layers}
    assert "hidden_0" in names and "wide_and_deep" not in names
    assert not any(n.startswith(("cross_", "sequence")) or n.endswith("_wide") for n in names)
    assert load_config("local", ["pipeline.dataset=bundesliga"]).training.wide is True


def test_a_sequence_model_without_sequence_columns_says_what_to_declare():
    with pytest.raises(ValueError, match="features.history.sequence"):
        build_model(SPEC, training("training.architecture=sequence"))


def test_sequence_columns_read_as_fixed_length_arrays_whatever_the_container():
    from pipelines.ml.inputs import TensorInputError, model_inputs

    frame = sequence_columns(3)
    # A pandas column of arrays (scoring) and a 2-D array (Petastorm) give the same tensor; a null reads as zeros.
    ragged = np.empty(3, dtype=object)
    ragged[:] = [frame["seq_route_late_rate"][0], None, np.full(7, np.nan)]
    got = model_inputs(frame | {"seq_route_late_rate": ragged}, SEQUENCE_SPEC)["seq_route_late_rate"]
    assert got.shape == (3, 7) and got.dtype == np.float32
    np.testing.assert_array_equal(got[0], frame["seq_route_late_rate"][0])
    assert not got[1:].any()
    with pytest.raises(TensorInputError, match="expects 7"):
        model_inputs(frame | {"seq_route_late_rate": np.zeros((3, 5), np.float32)}, SEQUENCE_SPEC)
