"""The self-contained SavedModel: the feature spec (fills, scaling, vocabularies) inside the graph,
around the trained Keras model, so raw rows of `gold.features` score without Spark.

Its `serving_default` signature takes one 1-D tensor per source column of `gold.features` that
the spec reads, named like the column, and returns `score`, `predicted_label` and `raw_score`
(one per row) for a classifier, or `prediction` (float32, in the target's units) for a model of
the regression head. The columns it takes:
- numeric sources and categorical sources of an integral or boolean type: float64, NaN for null
  (what `pandas` gives for a nullable column of numbers);
- categorical sources of a string (or fractional) type: strings, as Spark's `cast("string")`
  writes them; a null is any value outside the vocabulary (the empty string, say).

It computes exactly what `apply_feature_spec` computes in Spark: `(coalesce(x, fill) - mean) /
std` in float64 then float32, 1.0 where a flagged source is null, and the vocabulary index
(value i of the list is i+1, unseen or null 0) of the value stringified as Spark does (an int 5
is "5", a boolean "true").

    >>> export_saved_model(model, spec_rows(spec_df), source_types(features_df.schema), f"{model_dir}/saved_model")
    >>> served = tf.saved_model.load(f"{model_dir}/saved_model").signatures["serving_default"]
    >>> served(**raw_inputs(features_pdf, served))["score"]
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np

from pipelines.config.settings import CLASSIFICATION, REGRESSION

log = logging.getLogger(__name__)

SAVED_MODEL_DIR = "saved_model"
SIGNATURE = "serving_default"
# How a source column reaches the SavedModel: "float" (float64, NaN = null) or "string".
FLOAT, STRING = "float", "string"
# Spark types a categorical source may have and how its value becomes the vocabulary's string.
_INTEGRAL = ("byte", "short", "int", "integer", "long", "bigint", "tinyint", "smallint")


class ExportError(ValueError):
    """The spec cannot be put inside a SavedModel as asked; the message says why."""


def source_types(schema) -> dict[str, str]:
    """`{column: Spark simple type}` of a Spark schema (gold.features'), what `export_saved_model` needs."""
    return {field.name: field.dataType.simpleString() for field in schema.fields}


def _inputs_of(spec: Sequence[Mapping], types: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """`{source: (how it is fed, its Spark type)}` for every source column the spec reads."""
    inputs: dict[str, tuple[str, str]] = {}
    for row in spec:
        source, spark_type = row["source"], types.get(row["source"])
        if spark_type is None:
            raise ExportError(f"spec column {row['name']} reads {source}, which the features table does not have")
        if row["transform"] == "vocabulary":
            feed = FLOAT if spark_type in _INTEGRAL or spark_type == "boolean" else STRING
        elif spark_type == "string":
            raise ExportError(f"spec column {row['name']} standardizes {source}, a string column")
        else:
            feed = FLOAT
        if inputs.get(source, (feed,))[0] != feed:
            raise ExportError(f"{source} is read both as a number and as a string by the spec")
        inputs[source] = (feed, spark_type)
    return inputs


def serving_module(model, spec: Sequence[Mapping], types: Mapping[str, str], decision=None,
                   head: str = CLASSIFICATION):
    """A `tf.Module` holding `model` whose `serve` function maps raw source columns to `score` (the
    calibrated probability of the model's `decision`, `pipelines.ml.decision`), `predicted_label`
    (score >= the decision's threshold) and `raw_score` (the network's own output); for the
    regression `head`, to `prediction` (the network's output, which restores the target's units)."""
    import tensorflow as tf

    from pipelines.ml.decision import as_decision

    inputs = _inputs_of(spec, types)
    decision = as_decision(decision if decision is not None else 0.5)

    def calibrated(raw):
        p = tf.cast(raw, tf.float64)
        if decision.calibration == "platt":
            p = tf.clip_by_value(p, 1e-7, 1 - 1e-7)
            return tf.sigmoid(decision.params["a"] * (tf.math.log(p) - tf.math.log1p(-p)) + decision.params["b"])
        if decision.calibration == "isotonic":
            starts = tf.constant(decision.params["starts"], tf.float64)
            values = tf.constant(decision.params["values"], tf.float64)
            index = tf.clip_by_value(tf.searchsorted(starts, p, side="right") - 1, 0, len(decision.params["values"]) - 1)
            return tf.gather(values, index)
        return p

    class FeaturesModel(tf.Module):
        def __init__(self):
            super().__init__(name="features_model")
            self.model = model
            self.tables = {}
            for row in spec:
                vocabulary = list(row.get("vocabulary") or [])
                if row["transform"] == "vocabulary" and vocabulary:
                    init = tf.lookup.KeyValueTensorInitializer(
                        tf.constant(vocabulary, tf.string), tf.constant(list(range(1, len(vocabulary) + 1)), tf.int64))
                    self.tables[row["name"]] = tf.lookup.StaticHashTable(init, default_value=0)

        @tf.function(input_signature=[{source: tf.TensorSpec([None], tf.float64 if feed == FLOAT else tf.string,
                                                             name=source)
                                       for source, (feed, _) in inputs.items()}])
        def serve(self, raw):
            encoded = {}
            for row in spec:
                x = raw[row["source"]]
                feed, spark_type = inputs[row["source"]]
                if row["transform"] == "standardize":
                    filled = tf.where(tf.math.is_nan(x), tf.constant(row["fill"], tf.float64), x)
                    value = tf.cast((filled - row["mean"]) / row["std"], tf.float32)
                elif row["transform"] == "missing_flag":
                    value = tf.cast(tf.math.is_nan(x) if feed == FLOAT else tf.equal(x, ""), tf.float32)
                elif row["transform"] == "vocabulary":
                    table = self.tables.get(row["name"])
                    if table is None:
                        value = tf.zeros_like(x, tf.int32) if feed == STRING else tf.zeros(tf.shape(x), tf.int32)
                    else:
                        if feed == FLOAT:
                            missing = tf.math.is_nan(x)
                            if spark_type == "boolean":
                                text = tf.where(x != 0, "true", "false")
                            else:
                                text = tf.strings.as_string(tf.cast(tf.where(missing, tf.zeros_like(x), x), tf.int64))
                            index = tf.where(missing, tf.zeros_like(x, tf.int64), table.lookup(text))
                        else:
                            index = table.lookup(x)
                        value = tf.cast(index, tf.int32)
                else:
                    raise ExportError(f"spec column {row['name']}: unknown transform {row['transform']!r}")
                encoded[row["name"]] = tf.reshape(value, [-1, 1])
            wanted = {t.name.split(":")[0] for t in self.model.inputs}
            raw_score = tf.reshape(self.model({k: v for k, v in encoded.items() if k in wanted}, training=False), [-1])
            if head == REGRESSION:
                return {"prediction": tf.cast(raw_score, tf.float32)}
            score = calibrated(raw_score)
            return {"score": tf.cast(score, tf.float32), "raw_score": tf.cast(raw_score, tf.float32),
                    "predicted_label": tf.cast(score >= decision.threshold, tf.int32)}

    return FeaturesModel()


def export_saved_model(model, spec: Sequence[Mapping], types: Mapping[str, str], path: str, decision=None,
                       head: str = CLASSIFICATION) -> str:
    """Write `model` with the spec and its `decision` (a classifier's) inside as a SavedModel at
    `path` (its `saved_model.pb` and variables)."""
    import tensorflow as tf

    module = serving_module(model, spec, types, decision, head)
    tf.saved_model.save(module, path, signatures={SIGNATURE: module.serve})
    log.info(f"[export] SavedModel with the feature spec inside: {path}")
    return path


def raw_inputs(frame, signature) -> dict:
    """The signature's inputs from a pandas frame of raw `gold.features` rows: float64 columns with
    NaN for null, string columns stringified as Spark does (None → "")."""
    import tensorflow as tf

    out = {}
    for name, spec in signature.structured_input_signature[1].items():
        column = frame[name]
        if spec.dtype == tf.float64:
            out[name] = tf.constant(np.asarray(column.astype("float64"), dtype=np.float64))
        else:
            out[name] = tf.constant(["" if v is None or (isinstance(v, float) and np.isnan(v)) else _spark_string(v)
                                     for v in column.tolist()], tf.string)
    return out


def _spark_string(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def export_beside(lakehouse, model_path: str, spec_version: int, owner: str = "the model", decision=None,
                  head: str = CLASSIFICATION) -> str:
    """The SavedModel of the Keras model at `model_path` with `gold.feature_spec` v`spec_version`
    and its `decision` inside, written beside it (`<model dir>/saved_model/`); returns its folder."""
    import os

    from pipelines.catalog import FEATURES
    from pipelines.ml.model import load_model
    from pipelines.stages.gold import spec_at, spec_rows

    spec = spec_rows(spec_at(lakehouse, spec_version, owner))
    types = source_types(lakehouse.table(FEATURES).read().schema)
    return export_saved_model(load_model(model_path), spec, types,
                              os.path.join(os.path.dirname(model_path), SAVED_MODEL_DIR), decision, head)
