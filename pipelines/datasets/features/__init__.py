"""A dataset's features: declared in the `features:` block of its YAML, compiled to Spark here.

`pipelines.stages.gold` is generic; it asks `features_for(dataset)` what to read and how to build:

    >>> features = features_for(load_dataset("nycflights13"))
    >>> features.sources                       # {"flights": "silver.flights", "weather": ..., "planes": ...}
    >>> df = features.build({name: lh.table(t).read() for name, t in features.sources.items()},
    ...                     [date(2013, 1, 11)], dataset)
    >>> df.columns                             # ["flight_id", "date", "carrier", ..., "label", "target"]

The block is read and checked by `declared.py` and built by `compiled.py`; what YAML cannot say
lives in an optional module `pipelines.datasets.features.<name>` named by `features.python`: its
`extend(frame, sources, dates, dataset)` adds columns, its MODEL_COLUMNS are model inputs and its
HISTORY_DAYS the days before a date it reads. Every row is built from what was known at its
prediction time (`dataset.prediction_time`, `pipelines.datasets.timing`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Literal

from pipelines import catalog
from pipelines.config import ConfigError
from pipelines.datasets.dataset import FILLS

# A null numeric value is filled in the model input with a statistic of the training window (or
# zero, FILLS); `flag` adds a 0/1 column saying it was missing. Nulls stay nulls in the readable
# features table: a fixed-width float column is the first place that cannot hold them.


@dataclass(frozen=True)
class ModelColumn:
    """A column of the features table that the model sees, and how it is encoded.

    `policy_from` names the silver column ("weather.temp") whose missing-value policy, when the
    dataset's YAML declares one, replaces `fill` and `flag` (see `with_declared_policies`).
    A `sequence` column is an array of `length` daily values (`features.history.sequence`).
    """

    source: str
    kind: Literal["numeric", "categorical", "sequence"]
    fill: str = "mean"
    flag: bool = False
    policy_from: str | None = None
    length: int = 0

    def __post_init__(self):
        if self.kind not in ("numeric", "categorical", "sequence"):
            raise ValueError(f"{self.source}: kind must be 'numeric', 'categorical' or 'sequence', got {self.kind!r}")
        if self.fill not in FILLS:
            raise ValueError(f"{self.source}: fill must be one of {', '.join(FILLS)}, got {self.fill!r}")


def numeric(source: str, fill: str = "mean", flag: bool = False, policy_from: str | None = None) -> ModelColumn:
    return ModelColumn(source, "numeric", fill, flag, policy_from)


def categorical(source: str) -> ModelColumn:
    # A missing category needs no policy: it maps to index 0, like a category never seen.
    return ModelColumn(source, "categorical")


def sequence(source: str, length: int) -> ModelColumn:
    # A day without a value is the training mean (0 after standardising), like a numeric null.
    return ModelColumn(source, "sequence", length=length)


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


@dataclass(frozen=True)
class Features:
    """What gold reads and how it builds a dataset's features table (see the module doc)."""

    sources: dict[str, str]
    dated_sources: tuple[str, ...]
    history_days: int
    model_columns: list[ModelColumn]
    # The checked `features:` block (declared.Declaration) and the `features.python` module, if any.
    declaration: object = field(default=None, repr=False)
    extension: object = field(default=None, repr=False)

    def build(self, sources: dict, dates: list[date] | None, dataset):
        """One row per row of the prediction source on `dates` (all when None): `dataset.key`,
        `date`, the readable features, `label` and `target` (both null while the outcome is unknown).

        `sources` are the silver DataFrames named in `self.sources`; the dated ones must hold the
        `history_days` days before the earliest of `dates` for the history features to be complete.
        """
        from pipelines.datasets.features.compiled import build

        extend = getattr(self.extension, "extend", None)
        return build(self.declaration, dataset, sources, dates, extend)


def features_for(dataset) -> Features:
    """The compiled `features:` block of `dataset` (a `pipelines.datasets.Dataset`).

    Raises ConfigError naming the dataset's file and the key of the first problem found.
    """
    from pipelines.datasets.features.compiled import history_days
    from pipelines.datasets.features.declared import declaration

    decl = declaration(dataset)
    extension = _extension(decl.python, dataset) if decl.python else None
    names = [dataset.prediction_source] + [lookup.source for lookup in decl.lookups]
    names += [n for n in getattr(extension, "SOURCES", ()) if n not in names]
    names = list(dict.fromkeys(names))
    sequence_days = decl.history.sequence.days if decl.history and decl.history.sequence else 0
    columns = [numeric(f.name, f.fill, f.flag, f.policy_from) if f.kind == "numeric"
               else sequence(f.name, sequence_days) if f.kind == "sequence" else categorical(f.name)
               for f in decl.features() if f.model and f.kept]
    columns += list(getattr(extension, "MODEL_COLUMNS", ()))
    days = max(history_days(decl, dataset), int(getattr(extension, "HISTORY_DAYS", 0)))
    return Features(sources={n: catalog.silver(n) for n in names},
                    dated_sources=tuple(n for n in names if dataset.source(n).daily),
                    history_days=days,
                    model_columns=with_declared_policies(columns, dataset),
                    declaration=decl, extension=extension)


def _extension(name: str, dataset):
    module_name = f"pipelines.datasets.features.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ConfigError(f"{dataset.file}: key 'features.python' names {name!r}, but there is no "
                          f"{module_name.replace('.', '/')}.py") from None
    if not callable(getattr(module, "extend", None)):
        raise ConfigError(f"{dataset.file}: key 'features.python': {module_name} has no "
                          f"extend(frame, sources, dates, dataset)")
    return module
