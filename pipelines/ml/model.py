"""The Keras model built from the feature spec: an embedding per categorical column, the numeric
columns, a deep part chosen by `training.architecture` (an MLP, a cross network beside it, or a
GRU / 1D convolution over the sequence columns feeding it), an optional wide part, and a head for
the dataset's label (sigmoid) or its numeric target (regression).

    >>> model = build_model(spec, cfg.training)
    >>> compile_model(model, cfg.training, make_optimizer(cfg.training, learning_rate=1e-3))
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from pipelines.config.settings import CLASSIFICATION, REGRESSION
from pipelines.ml.inputs import FeatureSpec
from pipelines.stages.gold.spec import LABEL, TARGET

# The column of model_input each head learns.
LABELS = {CLASSIFICATION: LABEL, REGRESSION: TARGET}


def label_for(training_cfg) -> str:
    """The model_input column the configured head learns."""
    return LABELS[training_cfg.head]


@dataclass(frozen=True)
class TargetScale:
    """The regression target's mean and standard deviation on the training rows. The network
    learns the standardised target, (y - mean) / std, and its output layer restores it: the saved
    model predicts in the target's own units, and its last Dense layer starts near the mean
    whatever the target's scale (an unscaled target of mean 100 kept a small network far from the
    training mean for its whole budget).

        >>> scale = TargetScale.fit([1.0, 2.0, 3.0]); scale.restore(scale.standardise(2.5))
        2.5
    """
    mean: float
    std: float

    @classmethod
    def fit(cls, values) -> "TargetScale":
        """From the training rows' targets (nulls and NaN left out); a constant target gets std 1."""
        import numpy as np

        y = np.asarray(values, dtype=np.float64)
        y = y[~np.isnan(y)]
        if y.size == 0:
            raise ValueError("no known target on the training rows to standardise it by")
        mean, std = float(y.mean()), float(y.std())
        return cls(mean, std if std > 1e-9 * max(1.0, abs(mean)) else 1.0)

    def standardise(self, y):
        return (y - self.mean) / self.std

    def restore(self, z):
        return z * self.std + self.mean


def build_model(spec: FeatureSpec, training_cfg, target_scale: TargetScale | None = None):
    """An uncompiled functional model with one named input per model_input column: (n, 1) for the
    numeric and categorical columns, (n, length) for the sequence columns.

    Inputs are named exactly like the columns, so scoring feeds a frame's columns by name. The deep
    part is `training.architecture`: `mlp`, `cross` or `sequence`; `training.wide` adds the wide part
    to any of them. The default (mlp, wide) builds exactly the layers it built before architectures
    were configurable, so saved models and their figures stay comparable. The regression head ends
    in a fixed layer that restores the standardised output to the target's units (`target_scale`,
    none: the identity).
    """
    import tensorflow as tf

    cfg = training_cfg
    regularizer = tf.keras.regularizers.l2(cfg.l2) if cfg.l2 else None
    inputs, parts = {}, []
    if spec.numeric:
        for name in spec.numeric:
            inputs[name] = tf.keras.Input(shape=(1,), name=name, dtype=tf.float32)
        numeric = [inputs[n] for n in spec.numeric]
        parts.append(numeric[0] if len(numeric) == 1 else tf.keras.layers.Concatenate(name="numeric")(numeric))
    for name, size in spec.categorical.items():
        inputs[name] = tf.keras.Input(shape=(1,), name=name, dtype=tf.int32)
        embedded = tf.keras.layers.Embedding(size, cfg.embedding_dim, embeddings_regularizer=regularizer,
                                             name=f"{name}_embedding")(inputs[name])
        parts.append(tf.keras.layers.Flatten(name=f"{name}_vector")(embedded))
    architecture = cfg.architecture
    if architecture == "sequence":
        parts.append(_sequence_branch(spec, cfg, inputs, regularizer))
    x0 = parts[0] if len(parts) == 1 else tf.keras.layers.Concatenate(name="features")(parts)
    x = x0
    for i, width in enumerate(cfg.hidden_units):
        x = tf.keras.layers.Dense(width, activation="relu", kernel_regularizer=regularizer, name=f"hidden_{i}")(x)
        if cfg.dropout:
            # A tf.random.Generator-backed dropout keeps its state in a variable, which the epoch
            # checkpoint saves: a resumed run draws the same masks as an uninterrupted one.
            x = tf.keras.layers.Dropout(cfg.dropout, force_generator=True, name=f"dropout_{i}")(x)
    if architecture == "cross":
        x = tf.keras.layers.Concatenate(name="cross_and_deep")([_cross_network(x0, cfg, regularizer), x])
    activation = "sigmoid" if cfg.head == CLASSIFICATION else "linear"
    logit = tf.keras.layers.Dense(1, name="deep_logit")(x)
    if cfg.wide:
        # Wide & deep (Cheng et al., 2016): a linear term over the numeric columns and one weight
        # per category, added to the MLP's output. The model then contains the logistic
        # regression it is measured against, and the MLP learns what the linear part misses.
        wide = [tf.keras.layers.Dense(1, use_bias=False, name="wide_numeric")(parts[0])] if spec.numeric else []
        for name, size in spec.categorical.items():
            weight = tf.keras.layers.Embedding(size, 1, name=f"{name}_wide")(inputs[name])
            wide.append(tf.keras.layers.Flatten(name=f"{name}_wide_weight")(weight))
        logit = tf.keras.layers.Add(name="wide_and_deep")([logit, *wide])
    if cfg.head == REGRESSION:
        scale = target_scale or TargetScale(0.0, 1.0)
        logit = tf.keras.layers.Rescaling(scale.std, offset=scale.mean, name="restore_target")(logit)
    output = tf.keras.layers.Activation(activation, name=label_for(cfg))(logit)
    return tf.keras.Model(inputs=inputs, outputs=output, name=f"{cfg.head}_model")


def _cross_network(x0, cfg, regularizer):
    """A cross network (DCN, Wang et al., 2017): x_{l+1} = x0 * (W x_l + b) + x_l, `cross_layers`
    times. Each layer multiplies in the inputs once more, so layer l holds feature crosses of
    degree l + 1 with a weight matrix per layer instead of a weight per pair of columns."""
    import tensorflow as tf

    width = x0.shape[-1]
    x = x0
    for i in range(cfg.cross_layers):
        projected = tf.keras.layers.Dense(width, kernel_regularizer=regularizer, name=f"cross_{i}")(x)
        x = tf.keras.layers.Add(name=f"cross_{i}_residual")([tf.keras.layers.Multiply(name=f"cross_{i}_x0")([x0, projected]), x])
    return x


def _sequence_branch(spec: FeatureSpec, cfg, inputs: dict, regularizer):
    """The seq_* inputs stacked as channels of one (length, k) series, read by a GRU or a 1D
    convolution (`sequence_layer`) into `sequence_units` values that join the MLP's input."""
    import tensorflow as tf

    if not spec.sequences:
        raise ValueError("training.architecture sequence needs seq_* columns in gold.model_input; declare "
                         "features.history.sequence in the dataset's YAML and rebuild the gold tables")
    lengths = set(spec.sequences.values())
    if len(lengths) != 1:
        raise ValueError(f"the seq_* columns differ in length ({sorted(lengths)}); they must share one")
    [length] = lengths
    channels = []
    for name in spec.sequences:
        inputs[name] = tf.keras.Input(shape=(length,), name=name, dtype=tf.float32)
        channels.append(tf.keras.layers.Reshape((length, 1), name=f"{name}_steps")(inputs[name]))
    series = channels[0] if len(channels) == 1 else tf.keras.layers.Concatenate(axis=-1, name="sequences")(channels)
    units = cfg.sequence_units
    if cfg.sequence_layer == "gru":
        return tf.keras.layers.GRU(units, kernel_regularizer=regularizer, name="sequence_gru")(series)
    # Two causal convolutions see the last 3 * 2 - 1 = 5 days; pooling keeps what any window held.
    x = tf.keras.layers.Conv1D(units, 3, padding="causal", activation="relu", kernel_regularizer=regularizer,
                               name="sequence_conv_0")(series)
    x = tf.keras.layers.Conv1D(units, 3, padding="causal", dilation_rate=2, activation="relu",
                               kernel_regularizer=regularizer, name="sequence_conv_1")(x)
    return tf.keras.layers.GlobalMaxPooling1D(name="sequence_pool")(x)


def dropout_generators(model) -> dict:
    """The random generators of the model's dropout layers, by layer name.

    Keras 2 does not track them as checkpoint dependencies; the training checkpoint saves them
    beside the weights so that a resumed run continues the same random stream.
    """
    generators = {}
    for layer in model.layers:
        generator = getattr(getattr(layer, "_random_generator", None), "_generator", None)
        if generator is not None:
            generators[f"rng_{layer.name}"] = generator
    return generators


def make_optimizer(training_cfg, learning_rate: float):
    """Adam, SGD (with `momentum`) or RMSprop at `learning_rate`.

    The legacy Keras optimizers are the ones Horovod's DistributedOptimizer wraps and
    tf.train.Checkpoint restores, slots included, on TF 2.15.
    """
    import tensorflow as tf

    name = training_cfg.optimizer
    legacy = tf.keras.optimizers.legacy
    if name == "adam":
        return legacy.Adam(learning_rate=learning_rate)
    if name == "sgd":
        return legacy.SGD(learning_rate=learning_rate, momentum=training_cfg.momentum)
    if name == "rmsprop":
        return legacy.RMSprop(learning_rate=learning_rate, momentum=training_cfg.momentum)
    raise ValueError(f"training.optimizer must be adam, sgd or rmsprop, got {name!r}")


def compile_model(model, training_cfg, optimizer, target_scale: TargetScale | None = None) -> None:
    """Loss and metrics of the head: BCE + AUC for classification, MSE or Huber + MAE for regression.

    The regression loss is the loss of the standardised target: the model's output is in the
    target's units, and Huber(delta) and MSE of a residual r both equal std² times their value at
    (r / std, delta / std), so the loss weight 1 / std² gives exactly the standardised loss (the L2
    penalty then weighs the same against it whatever the target's scale). `huber_delta` stays in
    the target's units; the MAE metric too.
    """
    import tensorflow as tf

    if training_cfg.head == CLASSIFICATION:
        loss = tf.keras.losses.BinaryCrossentropy()
        metrics = [tf.keras.metrics.AUC(name="auc", num_thresholds=500)]
    else:
        loss = (tf.keras.losses.Huber(delta=training_cfg.huber_delta) if training_cfg.regression_loss == "huber"
                else tf.keras.losses.MeanSquaredError())
        metrics = [tf.keras.metrics.MeanAbsoluteError(name="mae")]
        std = (target_scale or TargetScale(0.0, 1.0)).std
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics, loss_weights=1.0 / std ** 2)
        return
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)


# Loaded models of this process, by path and file time: Spark reuses its Python workers, so a
# scoring task loads a model once per worker, not once per batch.
_LOADED: dict[tuple[str, float], object] = {}


def load_model(path: str):
    """A saved model (`<root>/models/<model_version>/model.keras`) ready for `predict`, without
    optimizer; loaded once per process (again if the file changed). Training's evaluation,
    scoring, the candidate's metrics and notebooks all load models through here.

        >>> model = load_model(entry.path)
        >>> model.predict(model_inputs(frame, spec_of_model(model)))
    """
    key = (path, os.path.getmtime(path))
    model = _LOADED.get(key)
    if model is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        from pipelines.console import quiet_tensorflow

        quiet_tensorflow()
        model = tf.keras.models.load_model(path, compile=False)
        _LOADED.clear()   # one model at a time is what every caller needs; keeps a worker's memory flat
        _LOADED[key] = model
    return model
