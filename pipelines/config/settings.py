"""The typed configuration: one dataclass per section of `conf/`.

The values, defaults included, live only in the YAML files: `conf/base/*.yaml` declares every
key, so these classes carry types and no values (a key missing from every layer is an error that
names it). Loading, merging and validation are in `pipelines.config.loader`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal, get_args

# What a dataset's network learns and its nightly serves: its `label` (a probability and a
# decision) or its `target` (a number in the target's units). The dataset declares it
# (`prediction.head`); `training.head` overrides it for a run.
Head = Literal["classification", "regression"]
HEADS: tuple[str, ...] = get_args(Head)
# The heads by name, for comparisons: `cfg.training.head == REGRESSION`.
CLASSIFICATION, REGRESSION = HEADS


@dataclass(frozen=True)
class Baseline:
    """One kind of baseline `pipelines.ml.baselines` fits: its name in logs, and the settings that
    `tuning.space.<kind>` may search and `fit_baselines(params={kind: ...})` takes."""
    name: str
    settings: tuple[str, ...]


# Every baseline kind, the one list of them: the configuration's lists (`training.baselines`,
# `nightly.baselines`), the search space's check and `fit_baselines` derive from it.
BASELINES = {
    "logreg": Baseline("logistic regression", ("reg_param", "elastic_net")),
    "gbt": Baseline("gradient-boosted trees", ("max_depth", "max_iter", "step_size")),
    "xgb": Baseline("XGBoost trees", ("max_depth", "n_estimators", "learning_rate")),
}
BaselineKind = Literal[tuple(BASELINES)]


@dataclass
class SparkConfig:
    app_name: str
    master: str
    log_level: str
    shuffle_partitions: int
    conf: dict[str, str]


@dataclass
class LakehouseConfig:
    root: str
    landing: str
    engine: Literal["auto", "delta-rs", "jvm"]
    partition_by: Literal["month", "date", "none"]
    target_file_bytes: int
    row_group_rows: int
    model_input_row_group_rows: int
    vacuum_retention_hours: int
    keep_registered_models: int
    keep_reports: int
    lock_lease_seconds: float
    tracking_uri: str


@dataclass
class PipelineConfig:
    dataset: str
    splits: dict[str, list[str]]


@dataclass
class NaiveForecast:
    """A naive forecast of the regression target a dataset declares (`training.naive_forecasts`):
    the last known target of the rows of the same `group` (Spark SQL over gold.model_input's
    columns and `date`; none: every row) dated at least `lag_days` before the row. `lag_days` must
    cover the dataset's outcome delay (pipelines.ml.naive checks it): what it reads is known when
    the row is predicted."""
    lag_days: int
    group: list[str]


@dataclass
class TrainingConfig:
    num_proc: int
    threads_per_proc: int
    use_gpu: bool
    head: Head
    architecture: Literal["mlp", "cross", "sequence"]
    hidden_units: list[int]
    wide: bool
    cross_layers: int
    sequence_layer: Literal["gru", "conv"]
    sequence_units: int
    dropout: float
    l2: float
    embedding_dim: int
    optimizer: Literal["adam", "sgd", "rmsprop"]
    momentum: float
    learning_rate: float
    warmup_epochs: int
    batch_size: int
    epochs: int
    early_stopping_patience: int
    shuffle_buffer: int
    seed: int
    local_cache: bool
    max_train_rows: int
    threshold: float
    threshold_rule: Literal["fixed", "f1", "youden"]
    importance_rows: int
    regression_loss: Literal["huber", "mse"]
    huber_delta: float
    naive_forecasts: dict[str, NaiveForecast]
    reader_threads: int
    baselines: list[BaselineKind]


@dataclass
class NightlyConfig:
    retrain_every_days: int
    rescore_days: int
    baselines: list[BaselineKind]
    default_date: str
    evaluate_days: int


@dataclass
class BacktestConfig:
    folds: int
    # The fewest rows a fold's validation window (and its network's stopping window) holds: whole
    # months with rows are taken together, from the last one back, until they hold as many (0: one
    # calendar month a fold).
    min_fold_rows: int
    epochs: int
    max_train_rows: int
    spread_penalty: float
    min_lift: float
    # Fit the stacked ensemble (pipelines.ml.stacking) on the folds' out-of-fold scores.
    stack: bool


@dataclass
class TuningConfig:
    max_evals: int
    parallelism: int
    algo: Literal["tpe", "random"]
    # A trial's network budget per fold (0: the backtest's).
    epochs: int
    max_train_rows: int
    # {model: {setting: {kind: arguments}}}, kinds as conf/base/backtest.yaml lists them.
    space: dict[str, dict[str, dict[str, Any]]]


@dataclass
class Config:
    env: str
    spark: SparkConfig
    lakehouse: LakehouseConfig
    pipeline: PipelineConfig
    training: TrainingConfig
    nightly: NightlyConfig
    backtest: BacktestConfig
    tuning: TuningConfig

    @property
    def root(self) -> Path:
        """The lakehouse root as an absolute path."""
        return Path(self.lakehouse.root)

    @property
    def landing(self) -> Path:
        return Path(self.lakehouse.landing)

    def split(self, name: str) -> tuple[date, date]:
        """The inclusive (start, end) dates of a split named in `pipeline.splits`."""
        start, end = self.pipeline.splits[name]
        return date.fromisoformat(start), date.fromisoformat(end)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
