"""Distributed batch scoring: executors load the saved model once per Python worker and score Arrow batches.

Nothing is collected to the driver: `score` returns a lazy DataFrame of key, score and predicted
label, which the caller writes to `results.predictions` by partition overwrite. The rows become
tensors through `pipelines.ml.inputs.model_inputs`, as in training, with the spec read off the
model itself, so a model always scores with the inputs it was built for.
"""
from __future__ import annotations

from datetime import date

from pipelines.catalog import MODEL_INPUT
from pipelines.ml.inputs import model_inputs, spec_of_model
from pipelines.ml.model import load_model


def score(df, model_path: str, threshold: float, key_columns: tuple[str, ...] = ("flight_id", "day"),
          batch_size: int = 4096):
    """Score `df` (model-input rows) with the model at `model_path`.

    Returns a DataFrame of `key_columns` + `score` (float) + `predicted_label` (int).

        >>> preds = score(lh.table("gold.model_input").read().filter("day = 20131231"), path, cfg.training.threshold)
    """
    from pyspark.sql.types import DoubleType, IntegerType, StructField, StructType

    out_schema = StructType([df.schema[k] for k in key_columns] + [
        StructField("score", DoubleType(), False), StructField("predicted_label", IntegerType(), False)])

    def score_batches(frames):
        import tensorflow as tf

        try:
            # One thread per Python worker: Spark already runs one worker per core.
            tf.config.threading.set_inter_op_parallelism_threads(1)
            tf.config.threading.set_intra_op_parallelism_threads(1)
        except RuntimeError:
            pass   # TensorFlow already started in this worker
        model = load_model(model_path)
        spec = spec_of_model(model)
        for frame in frames:
            if frame.empty:
                continue
            probs = model.predict(model_inputs(frame, spec), batch_size=batch_size, verbose=0).reshape(-1)
            out = frame[list(key_columns)].copy()
            out["score"] = probs.astype("float64")
            out["predicted_label"] = (probs >= threshold).astype("int32")
            yield out

    return df.mapInPandas(score_batches, out_schema)


def score_days(lakehouse, model_path: str, days: list[date], threshold: float) -> tuple[object, int]:
    """The rows of `gold.model_input`'s latest version dated `days`, scored; (scores, version read)."""
    from pyspark.sql import functions as F

    table = lakehouse.table(MODEL_INPUT)
    version = table.version()
    rows = table.read(version=version).filter(F.col("day").isin([int(d.strftime("%Y%m%d")) for d in days]))
    return score(rows, model_path, threshold=threshold), version
