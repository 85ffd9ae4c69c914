"""A registered model as a Spark ML Transformer: raw `gold.features` rows in, the same rows with
`score` and `predicted_label` out (`prediction`, in the target's units, for a model of the
regression head), as Horovod's `KerasEstimator` hands back a `KerasModel`.

It encodes with the feature spec version the model was trained with (`apply_feature_spec`) and
scores in Spark tasks (`pipelines.ml.scoring.score`): the nightly's own path, in one call. An
entry that serves a stacked ensemble (`pipelines.ml.stacking`) scores with it: the network and the
baselines saved beside it, combined by the stacker (`pipelines.ml.scoring.score_stacked`).

    >>> model = load_transformer(cfg, lh)                  # the blessed model; or model_version="20130320-..."
    >>> model.transform(lh.table("gold.features").read().filter("date = '2013-03-21'")).show()
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

from pyspark.ml import Transformer

from pipelines.config.settings import CLASSIFICATION, REGRESSION
from pipelines.ml.decision import Decision, as_decision
from pipelines.ml.regression import predict
from pipelines.ml.results import CLASSIFICATION_OUTPUTS, REGRESSION_OUTPUTS
from pipelines.ml.scoring import score, score_stacked
from pipelines.stages.gold.spec import LABEL, SPEC_SCHEMA, TARGET, apply_feature_spec

SCORE_COLUMNS = (*CLASSIFICATION_OUTPUTS, *REGRESSION_OUTPUTS)


class FeaturesModel(Transformer):
    """Scores raw feature rows (the dataset's key, `date`, the spec's source columns) with the Keras
    model at `model_path`, its feature spec rows `spec` and its `decision` (calibration and
    threshold, `pipelines.ml.decision`), or, for the regression `head`, with its prediction of
    the target; every other column is carried along."""

    def __init__(self, model_path: str, spec: Sequence[Mapping], key: str, decision: Decision | float,
                 model_version: str | None = None, stacker=None, head: str = CLASSIFICATION):
        super().__init__()
        self.model_path, self.spec, self.key = model_path, [dict(r) for r in spec], key
        self.decision, self.model_version, self.stacker = as_decision(decision), model_version, stacker
        self.head = head

    def _transform(self, df):
        from pyspark.sql import functions as F

        for column in (LABEL, TARGET):
            if column not in df.columns:   # rows to score need no outcome
                df = df.withColumn(column, F.lit(None).cast("double"))
        encoded_names = {self.key, "day", LABEL, TARGET, *(r["name"] for r in self.spec)}
        carried = [c for c in df.columns if c not in encoded_names and c not in SCORE_COLUMNS]
        encoded = apply_feature_spec(df, df.sparkSession.createDataFrame(self.spec, SPEC_SCHEMA), key=self.key,
                                     keep=carried)
        if self.head == REGRESSION:
            return predict(encoded, self.model_path, key_columns=(self.key, *carried, TARGET))
        key_columns = (self.key, *carried, LABEL)
        if self.stacker is not None:
            return score_stacked(encoded, self.model_path, self.stacker, self.decision, self.key, key_columns)
        return score(encoded, self.model_path, self.decision, key_columns=key_columns)

    def __repr__(self) -> str:
        return f"FeaturesModel({self.model_version or self.model_path})"


def load_transformer(cfg, lakehouse, model_version: str | None = None) -> FeaturesModel:
    """The registered model `model_version` (default: the blessed one) as a `FeaturesModel`, with
    the feature spec version its registry entry pins."""
    from pipelines.datasets import dataset_for
    from pipelines.ml import registry, stacking
    from pipelines.stages.gold import spec_at, spec_rows

    entry = registry.get(lakehouse, model_version) if model_version else registry.blessed(lakehouse)
    if entry is None:
        raise LookupError(f"no registered model {model_version}" if model_version else
                          "no blessed model yet: run `lakehouse-dl train` or the nightly")
    owner = f"model {entry.model_version}"
    spec = spec_rows(spec_at(lakehouse, entry.feature_spec_version, owner))
    stacker = None
    if entry.serves in stacking.STACKS:
        stacker = stacking.load(os.path.join(os.path.dirname(entry.path), stacking.STACK_FILE))[entry.serves]
    return FeaturesModel(entry.path, spec, key=dataset_for(cfg).key, decision=registry.decision_of(entry),
                         model_version=entry.model_version, stacker=stacker, head=registry.head_of(entry))
