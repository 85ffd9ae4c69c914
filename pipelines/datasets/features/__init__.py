"""Dataset-specific feature builders: one module per dataset, found by the dataset's name.

`pipelines.stages.gold` is generic; what a dataset brings is one module here that declares
what it reads and which of its columns the model sees:

    SOURCES          {argument name: silver table}, e.g. {"flights": "silver.flights", ...}
    DATED_SOURCES    the sources partitioned by `date` (read only for the days a run needs)
    HISTORY_DAYS     days before a date whose rows its features need (history windows)
    KEY, TARGET      the key column (int64) and the regression target; `label` is derived
    MODEL_COLUMNS    [ModelColumn(...)]: the columns of the features table the model sees
    build(sources: dict[str, DataFrame], dates: list[date] | None, dataset: Dataset) -> DataFrame
                     the features table: KEY, `date`, readable features, `label`, TARGET; each
                     row built from what was known at its prediction time (`dataset.prediction_time`,
                     `pipelines.datasets.timing`)
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from datetime import date
from types import ModuleType
from typing import Callable, Literal

from pipelines.datasets.dataset import FILLS

# A null numeric value is filled in the model input with a statistic of the training window (or
# zero, FILLS); `flag` adds a 0/1 column saying it was missing. Nulls stay nulls in the readable
# features table: a fixed-width float column is the first place that cannot hold them.


@dataclass(frozen=True)
class ModelColumn:
    """A column of the features table that the model sees, and how it is encoded.

    `policy_from` names the silver column ("weather.temp") whose missing-value policy, when the
    dataset's YAML declares one, replaces `fill` and `flag` (see `with_declared_policies`).
    """

    source: str
    kind: Literal["numeric", "categorical"]
    fill: str = "mean"
    flag: bool = False
    policy_from: str | None = None

    def __post_init__(self):
        if self.kind not in ("numeric", "categorical"):
            raise ValueError(f"{self.source}: kind must be 'numeric' or 'categorical', got {self.kind!r}")
        if self.fill not in FILLS:
            raise ValueError(f"{self.source}: fill must be one of {', '.join(FILLS)}, got {self.fill!r}")


def numeric(source: str, fill: str = "mean", flag: bool = False, policy_from: str | None = None) -> ModelColumn:
    return ModelColumn(source, "numeric", fill, flag, policy_from)


def categorical(source: str) -> ModelColumn:
    # A missing category needs no policy: it maps to index 0, like a category never seen.
    return ModelColumn(source, "categorical")


def with_declared_policies(columns: list[ModelColumn], dataset) -> list[ModelColumn]:
    """The columns with the missing-value policies the dataset's YAML declares for their silver columns.

    `dataset` is a `pipelines.datasets.Dataset` (None: the module's own defaults). A declared
    `{fill: ..., flag: ...}` wins; `flag` alone keeps the module's fill and adds the flag; `keep`
    (or nothing declared) keeps the module's default, as a model input column cannot hold a null.
    """
    if dataset is None:
        return list(columns)
    out = []
    for col in columns:
        policy = None
        if col.kind == "numeric" and col.policy_from:
            source, _, column = col.policy_from.partition(".")
            if source in dataset.sources:
                policy = dataset.source(source).missing.get(column)
        if policy is not None and (policy.fill or policy.flag):
            col = replace(col, fill=policy.fill or col.fill, flag=policy.flag)
        out.append(col)
    return out


def feature_module(dataset: str) -> ModuleType:
    """The features module of a dataset, `pipelines.datasets.features.<dataset>`, checked for what gold uses."""
    name = f"pipelines.datasets.features.{dataset}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        raise ValueError(f"dataset {dataset!r} has no features module: add {name.replace('.', '/')}.py "
                         f"(see pipelines/datasets/features/__init__.py for what it declares)") from None
    missing = [attr for attr in ("SOURCES", "DATED_SOURCES", "HISTORY_DAYS", "KEY", "TARGET", "MODEL_COLUMNS", "build")
               if not hasattr(module, attr)]
    if missing:
        raise ValueError(f"{name} does not declare {', '.join(missing)}")
    return module


@dataclass(frozen=True)
class Features:
    """What gold needs to know of a dataset's features: the silver tables they read, how far back,
    the model columns, and the function that builds them (key, `date`, features, `label`, `target`)."""

    sources: dict[str, str]
    dated_sources: tuple[str, ...]
    history_days: int
    model_columns: list[ModelColumn]
    builder: Callable

    def build(self, sources: dict, dates: list[date] | None, dataset):
        return self.builder(sources, dates, dataset)


def features_for(dataset) -> Features:
    """The features of `dataset` (a `pipelines.datasets.Dataset`)."""
    module = feature_module(dataset.name)

    def build(sources, dates, ds):
        return module.build(sources, dates, ds).withColumnRenamed(module.TARGET, "target")

    return Features(dict(module.SOURCES), tuple(module.DATED_SOURCES), module.HISTORY_DAYS,
                    with_declared_policies(module.MODEL_COLUMNS, dataset), build)
