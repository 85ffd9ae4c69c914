"""Distributed batch scoring: executors load the saved model once per Python worker and score Arrow batches.

Nothing is collected to the driver: `score` returns a lazy DataFrame of key, score and predicted
label, which the caller writes to `results.predictions` by partition overwrite.
"""
from __future__ import annotations

import os

# One loaded model per Python worker process and model path (Spark reuses its Python workers,
# so a model is loaded once per worker, not once per batch).
_MODELS: dict[str, object] = {}


def load_model(path: str):
    """Load a saved Keras model (cached per process)."""
    model = _MODELS.get(path)
    if model is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(1)
        model = tf.keras.models.load_model(path, compile=False)
        _MODELS[path] = model
    return model


def model_inputs(model, frame) -> dict:
    """The pandas columns the model's named inputs ask for, as arrays of the right dtype."""
    import numpy as np

    inputs = {}
    for tensor in model.inputs:
        name = tensor.name.split(":")[0]
        dtype = np.int32 if tensor.dtype.is_integer else np.float32
        values = frame[name].to_numpy()
        if dtype is np.float32:
            values = np.nan_to_num(values.astype(np.float32))
        inputs[name] = values.astype(dtype)
    return inputs


def score(df, model_path: str, threshold: float = 0.5, key_columns: tuple[str, ...] = ("flight_id", "day"),
          batch_size: int = 4096):
    """Score `df` (model-input rows) with the model at `model_path`.

    Returns a DataFrame of `key_columns` + `score` (float) + `predicted_label` (int).

        >>> preds = score(lh.table("gold.model_input").read().filter("day = 20131231"), path)
    """
    from pyspark.sql.types import DoubleType, IntegerType, StructField, StructType

    out_schema = StructType([df.schema[k] for k in key_columns] + [
        StructField("score", DoubleType(), False), StructField("predicted_label", IntegerType(), False)])

    def score_batches(frames):
        model = load_model(model_path)
        for frame in frames:
            if frame.empty:
                continue
            probs = model.predict(model_inputs(model, frame), batch_size=batch_size, verbose=0).reshape(-1)
            out = frame[list(key_columns)].copy()
            out["score"] = probs.astype("float64")
            out["predicted_label"] = (probs >= threshold).astype("int32")
            yield out

    return df.mapInPandas(score_batches, out_schema)
