"""Distributed batch scoring: executors load the saved model once per Python worker and score Arrow batches.

Nothing is collected to the driver: `score` returns a lazy DataFrame of key, score and predicted
label, which the caller writes to `results.predictions` by partition overwrite. `score_days`
scores every row of the days asked (tomorrow's rows have no outcome yet) from
`gold.serving_input`, encoded with the feature spec version the model's registry entry pins; the
rows become tensors through `pipelines.ml.inputs.model_inputs`, as in training, so a model always
scores with the encoding and the inputs it was trained with.
"""
from __future__ import annotations

import os
from datetime import date

from pipelines.catalog import PARTITION_COLUMN, SERVING_INPUT
from pipelines.config.settings import REGRESSION
from pipelines.datasets import dataset_for
from pipelines.ml.baselines import regression_predictions
from pipelines.ml.decision import Decision, as_decision
from pipelines.ml.inputs import model_inputs, spec_of_model
from pipelines.ml.model import load_model
from pipelines.ml.regression import predict
from pipelines.ml.stacking import STACK_FILE, STACKS
from pipelines.ml.stacking import load as load_stackers
from pipelines.stages.gold import build_serving_input


def score(df, model_path: str, decision: Decision | float, key_columns: tuple[str, ...], batch_size: int = 4096):
    """Score `df` (model-input rows) with the model at `model_path` and its `decision` (the
    calibration and threshold fitted with it, `pipelines.ml.decision`; a bare number is a fixed
    threshold on the raw score).

    Returns a DataFrame of `key_columns` (columns of `df` carried along, the key and `day` say) +
    `score` (float, calibrated) + `predicted_label` (int).

        >>> rows = lh.table("gold.serving_input").read().filter("day = 20131231")
        >>> preds = score(rows, path, registry.decision_of(entry), key_columns=(dataset.key, "day"))
    """
    decision = as_decision(decision)
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
            out["score"] = decision.calibrate(probs)
            out["predicted_label"] = decision.labels(out["score"])
            yield out

    return df.mapInPandas(score_batches, out_schema)


def score_with_baseline(df, path: str, decision: Decision | float, key_columns: tuple[str, ...]):
    """Score `df` (model-input rows) with the MLlib pipeline saved at `path` (a baseline fitted
    beside a candidate on the same rows) and its `decision`: the same columns as `score`."""
    from pyspark.ml import PipelineModel
    from pyspark.ml.functions import vector_to_array

    probability = vector_to_array("probability")[1]
    raw = PipelineModel.load(path).transform(df).select(*key_columns, probability.alias("score"))
    return as_decision(decision).apply(raw)


def score_stacked(df, model_path: str, stacker, decision: Decision | float, key: str,
                  key_columns: tuple[str, ...]):
    """Score `df` (model-input rows, one per `key`) with a stacked ensemble
    (`pipelines.ml.stacking.Stacker`): the network at `model_path` and the baselines saved beside
    it give their raw scores, the stacker combines them, `decision` calibrates and decides. The
    same columns as `score`."""
    from pyspark.sql import functions as F

    raw = Decision.fixed(0.5)
    joined = None
    for member in stacker.members:
        if member == "dnn":
            scored = score(df, model_path, raw, key_columns)
        else:
            scored = score_with_baseline(df, os.path.join(os.path.dirname(model_path), "baselines", member), raw,
                                         key_columns)
        scored = scored.drop("predicted_label").withColumnRenamed("score", f"_s_{member}")
        joined = scored if joined is None else joined.join(scored.select(key, f"_s_{member}"), key)
    stacked = joined.select(*key_columns, stacker.column({m: F.col(f"_s_{m}") for m in stacker.members}).alias("score"))
    return as_decision(decision).apply(stacked)


def served_scores(df, entry, key: str, key_columns: tuple[str, ...]):
    """`df` (model-input rows) scored by what the registry `entry` serves: its network, or the
    stacked ensemble of it and the baselines beside it (`entry.serves`), with the served decision."""
    from pipelines.ml import registry

    if entry.serves in STACKS:
        stacker = load_stackers(os.path.join(os.path.dirname(entry.path), STACK_FILE))[entry.serves]
        return score_stacked(df, entry.path, stacker, registry.decision_of(entry), key, key_columns)
    return score(df, entry.path, registry.decision_of(entry), key_columns)


def predict_target(df, model, key_columns: tuple[str, ...], baseline: str | None = None):
    """`df` (model-input rows) with the prediction of a regression entry `model` (the regression
    head, `pipelines.ml.regression_candidate`) in the target's units: its network's, or the
    regression `baseline`'s fitted beside it when one is named. Returns `key_columns` + `prediction`."""
    if baseline:
        from pyspark.ml import PipelineModel

        return regression_predictions(df, PipelineModel.load(baseline_path(model, baseline)), key_columns)
    return predict(df, model.path, key_columns)


def baseline_path(model, kind: str) -> str:
    """Where the baseline `kind` fitted beside `model` (a registry entry) was saved."""
    return os.path.join(os.path.dirname(model.path), "baselines", kind)


def score_days(cfg, lakehouse, model, days: list[date], decision: Decision | float,
               baseline: str | None = None) -> tuple[object, dict]:
    """Every row of `gold.features` dated `days`, labelled or not, encoded with the feature
    spec `model` (a registry entry) was trained with into `gold.serving_input`, and scored by
    the model, or by the `baseline` fitted beside it when one is named, with `decision` (that
    model's, `registry.decision_of`). A regression entry predicts the target instead
    (`predict_target`; `decision` is not used).

    Returns (scores, versions): the lazy scores (key, day, score, predicted_label; key, day,
    prediction for a regression entry) and the versions they come from, `feature_spec_version`
    and `serving_input_version`.
    """
    from pyspark.sql import functions as F

    from pipelines.ml import registry

    owner = f"model {model.model_version}"
    version, rows = build_serving_input(cfg, lakehouse, days, model.feature_spec_version, owner=owner)
    key = dataset_for(cfg).key
    serving = (lakehouse.table(SERVING_INPUT).read(version=version, between=(PARTITION_COLUMN, min(days), max(days)))
               .filter(F.col(PARTITION_COLUMN).isin(list(days))))
    if registry.head_of(model) == REGRESSION:
        scored = predict_target(serving, model, (key, "day"), baseline)
    elif baseline:
        scored = score_with_baseline(serving, baseline_path(model, baseline), decision, key_columns=(key, "day"))
    elif model.serves in STACKS:
        stacker = load_stackers(os.path.join(os.path.dirname(model.path), STACK_FILE))[model.serves]
        scored = score_stacked(serving, model.path, stacker, decision, key, key_columns=(key, "day"))
    else:
        scored = score(serving, model.path, decision, key_columns=(key, "day"))
    return scored, {"feature_spec_version": int(model.feature_spec_version), "serving_input_version": version,
                    "rows": rows}
