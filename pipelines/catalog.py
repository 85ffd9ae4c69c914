"""Every table of the lakehouse, named once: its layer, partitioning, the stage that writes it.

Code asks the catalog for a table's name and never spells one; a table's folder is
`<root>/<layer>/<name>` (`pipelines.storage.Lakehouse`).

A table is partitioned in one of two ways: a fixed column of its own (`gold.model_input` by
`split`), or, for a daily table (one row set per date: `daily`), by the layout the lakehouse
configures (`lakehouse.partition_by`, month by default, or a source's own `partition_by`; see
`pipelines.storage.layout`). Bookkeeping tables are unpartitioned.

    >>> MODEL_INPUT
    'gold.model_input'
    >>> bronze("flights"), rejected("flights"), silver("flights")
    ('bronze.flights', 'bronze.flights_rejected', 'silver.flights')
    >>> entry("bronze.weather").daily, entry(QUARANTINE).partition_by
    (True, ())
"""
from __future__ import annotations

from dataclasses import dataclass

LAYERS = ("bronze", "silver", "gold", "results", "ops")
# The partition column of every daily table: the date of the file a row arrived in.
PARTITION_COLUMN = "date"


@dataclass(frozen=True)
class TableEntry:
    """One table: its name, how it is partitioned, which module writes it, and what it holds."""

    name: str
    partition_by: tuple[str, ...]
    owner: str
    content: str
    # Partitioned by the lakehouse's daily layout (rows carry a `date`), not by `partition_by`.
    daily: bool = False

    @property
    def layer(self) -> str:
        return self.name.split(".", 1)[0]


def bronze(source: str) -> str:
    """The raw rows of one source, typed by the declared schema, with lineage columns."""
    return f"bronze.{source}"


def rejected(source: str) -> str:
    """The records of one source that did not parse, with their raw text and the reason."""
    return f"bronze.{source}_rejected"


def silver(source: str) -> str:
    """The cleaned, deduplicated rows of one source."""
    return f"silver.{source}"


INGEST_LOG = "ops.ingest_log"
QUARANTINE = "silver.quarantine"
DUPLICATES = "silver.duplicates"
DATA_QUALITY = "ops.data_quality"
FEATURES = "gold.features"
FEATURE_SPEC = "gold.feature_spec"
MODEL_INPUT = "gold.model_input"
SERVING_INPUT = "gold.serving_input"
PREDICTIONS = "results.predictions"
METRICS = "results.metrics"
HISTORY = "results.training_history"
MODELS = "results.models"
TRIALS = "results.trials"
BACKTEST_FOLDS = "results.backtest_folds"
BACKTEST_SCORES = "results.backtest_scores"
RUNS = "results.runs"
STAGE_LOG = "ops.stage_log"
FEED_GAPS = "ops.feed_gaps"
CONFUSION = "results.confusion"
CALIBRATION = "results.calibration"
SLICES = "results.slices"
IMPORTANCE = "results.importance"

_FIXED = [
    TableEntry(INGEST_LOG, (), "stages.bronze", "one row per raw file ingested: path, sha256, rows, rejected"),
    TableEntry(QUARANTINE, (), "stages.silver", "rows failing a blocking rule, with the rule and reason"),
    TableEntry(DUPLICATES, (), "stages.silver", "rows removed as duplicates: their file and line, and the kept row's"),
    TableEntry(DATA_QUALITY, (), "stages.silver", "rows checked and failed per table, date and rule"),
    TableEntry(FEATURES, (), "stages.gold", "readable features, one row per entity, key and label", daily=True),
    TableEntry(FEATURE_SPEC, (), "stages.gold", "how each model column is encoded, fitted on the training window"),
    TableEntry(MODEL_INPUT, ("split",), "stages.gold", "fixed-width model-ready rows: what Petastorm reads"),
    TableEntry(SERVING_INPUT, (), "stages.gold", "the rows scored, encoded with the scoring model's own feature spec", daily=True),
    TableEntry(PREDICTIONS, (), "ml.results", "scores of the blessed model per key and day", daily=True),
    TableEntry(METRICS, (), "ml.results", "AUC, log loss, accuracy, ... per run, model and split"),
    TableEntry(HISTORY, (), "ml.results", "one row per training epoch"),
    TableEntry(TRIALS, (), "ml.tuning", "one row per hyper-parameter trial: model, settings, fold AUCs, time"),
    TableEntry(BACKTEST_FOLDS, (), "ml.fold_results", "one row per backtest fold and model measured: its metrics and the fingerprint of its inputs"),
    TableEntry(BACKTEST_SCORES, (), "ml.fold_results", "the out-of-fold score of every row of every fold result, by its fingerprint: what the stacked ensemble fits on"),
    TableEntry(MODELS, (), "ml.registry", "the model registry: one row per trained model and its status"),
    TableEntry(RUNS, (), "ops.runs", "one row per job and date: status, stage times and counts"),
    TableEntry(STAGE_LOG, (), "ops.runs", "the finished stages of each date, which a resumed run skips"),
    TableEntry(FEED_GAPS, (), "stages.bronze", "days a feed's calendar expects with no file delivered"),
    TableEntry(CONFUSION, (), "ml.review", "confusion matrix on the test split per model, at the threshold chosen on validation"),
    TableEntry(CALIBRATION, (), "ml.review", "reliability curve and Brier score on the test split per model"),
    TableEntry(SLICES, (), "ml.review", "AUC (the regression head: MAE, RMSE, MAPE), rows and observed rate on the test split per model, slice and value"),
    TableEntry(IMPORTANCE, (), "ml.review", "permutation importance (AUC drop; the regression head: MAE increase) per model and feature group, on validation"),
]
TABLES: dict[str, TableEntry] = {e.name: e for e in _FIXED}


def entry(name: str, daily: bool = True) -> TableEntry:
    """The catalog entry of a table, the per-source bronze and silver tables included (`daily`:
    the source is a daily feed, laid out by the daily layout, not a reference table).

    Raises KeyError for a name the catalog does not know.
    """
    if name in TABLES:
        return TABLES[name]
    layer, _, table = name.partition(".")
    if layer == "bronze" and table.endswith("_rejected"):
        return TableEntry(name, (), "stages.bronze", f"rejected records of source {table[:-len('_rejected')]}")
    if layer == "bronze" and table:
        return TableEntry(name, (), "stages.bronze", f"raw rows of source {table}", daily=daily)
    if layer == "silver" and table:
        return TableEntry(name, (), "stages.silver", f"clean rows of source {table}", daily=daily)
    raise KeyError(f"{name!r} is not a table of the catalog (pipelines/catalog.py)")
