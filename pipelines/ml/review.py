"""The evaluation a reviewer asks for, as results tables, for every model a candidate is measured
with (the network and the MLlib baselines). Rows are keyed by model version: the train stage run
again for a date replaces them.

- `results.confusion`: the confusion matrix on the test split at the model's decision threshold
  (rule `decision`: what its predicted_label uses, `pipelines.ml.decision`), at the threshold
  chosen on the validation split by `training.threshold_rule` (f1, youden), and at the configured
  `training.threshold` (rule `fixed`); the rule, where it was chosen and the value are columns.
  The scores are the calibrated ones.
- `results.calibration`: the reliability curve of the calibrated scores on the test split (mean
  score against the observed rate in ten score ranges), the Brier score and the expected
  calibration error (`ece`).
- `results.slices`: rows, positives, AUC, mean score and observed rate on the test split per value
  of each slice the dataset declares (`evaluation: {slices: ...}`, over `gold.features`). For the
  regression head (`regression_slice_rows`): rows, MAE, RMSE and MAPE, the mean prediction
  (`mean_score`) and the mean target (`observed`), for the network, the baselines and the naive
  forecasts; its `positives` and `auc` are null.
- `results.importance`: permutation importance on a seeded sample of the validation split
  (`training.importance_rows`): each feature group (a numeric column with its `_missing` flag,
  a categorical column) shuffled in turn, the AUC drop, for the network and the trees. The
  permuted copies are built and scored in Spark, one pass per model. For the regression head
  (`regression_importance_rows`): the MAE increase, for the network and the baselines.

    >>> write_review(cfg, lakehouse, run_id, "20131230-ab12cd34", scored, {"dnn": dnn_scorer}, validation)
    {'confusion': 1.2, 'calibration': 0.8, 'slices': 2.1, 'importance': 31.0}
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Callable

from pipelines.catalog import CALIBRATION, CONFUSION, FEATURES, IMPORTANCE, SLICES
from pipelines.datasets import dataset_for
from pipelines.ml.decision import expected_calibration_error
from pipelines.ml.evaluation import (auc_from_histogram, brier_score, calibration, choose_threshold, confusion,
                                     feature_groups, grouped_histogram, score_histogram)

log = logging.getLogger(__name__)

# Score bins: the threshold search's resolution, and the AUC's (ties within a bin count half).
THRESHOLD_BINS = 1000
SLICE_BINS = 1000
IMPORTANCE_BINS = 2000
# The baseline row of permutation importance: nothing shuffled.
UNSHUFFLED = ""

_RUN = "run_id string, model_version string, model string, split string, "
CONFUSION_SCHEMA = (_RUN + "rule string, chosen_on string, threshold double, rows long, tp long, fp long, "
                    "fn long, tn long, precision double, recall double, f1 double, created_at timestamp")
CALIBRATION_SCHEMA = (_RUN + "bin int, mean_score double, observed double, rows long, brier double, "
                      "created_at timestamp, ece double")
SLICES_SCHEMA = (_RUN + "slice string, value string, rows long, positives long, auc double, mean_score double, "
                 "observed double, created_at timestamp, mae double, rmse double, mape double")
IMPORTANCE_SCHEMA = (_RUN + "feature string, columns string, rows long, base_auc double, auc double, "
                     "auc_drop double, seconds double, created_at timestamp, base_mae double, mae double, "
                     "mae_increase double")


def write_review(cfg, lakehouse, run_id: str, model_version: str, scored: dict, importance_scorers: dict[str, Callable],
                 validation, decisions: dict | None = None) -> dict[str, float]:
    """Write the four tables for `model_version`. `scored[(model, split)]`: the key, label and score
    of each model on the validation and test splits; `importance_scorers[model](df)`: `df` scored
    (its `_group` column carried as the key); `validation`: the model-input rows of that split;
    `decisions[model]`: the decision its scores were calibrated with (`pipelines.ml.decision`),
    whose threshold the confusion matrix also shows (rule `decision`).

    What each part reads: the confusion matrix, the calibration and the slices every row of the
    test split (they count rows, and a slice's rows must be all of them), each from the scores the
    train stage cached; the threshold search the validation split's score histogram; the
    importance a seeded sample of `training.importance_rows` validation rows, the only part whose
    cost grows with the number of feature groups (one scored copy of the sample per group).

    Returns the seconds each part took.
    """
    models = sorted({m for m, split in scored if split == "test" and (m, "validation") in scored})
    parts = {
        "confusion": (CONFUSION, CONFUSION_SCHEMA, lambda: [
            r for m in models for r in confusion_rows(cfg, m, scored[(m, "validation")], scored[(m, "test")],
                                                      (decisions or {}).get(m))]),
        "calibration": (CALIBRATION, CALIBRATION_SCHEMA, lambda: [
            r for m in models for r in calibration_rows(m, scored[(m, "test")])]),
        "slices": (SLICES, SLICES_SCHEMA, lambda: slice_rows(cfg, lakehouse, {m: scored[(m, "test")] for m in models})),
        "importance": (IMPORTANCE, IMPORTANCE_SCHEMA, lambda: importance_rows(
            validation, importance_scorers, cfg.training.importance_rows, cfg.training.seed)),
    }
    seconds = {}
    for part, (table, schema, rows_of) in parts.items():
        started = time.time()
        written = replace_model_rows(lakehouse, table, schema, run_id, model_version, rows_of())
        seconds[part] = round(time.time() - started, 1)
        log.info(f"[train] {table}: {written} rows for model {model_version} in {seconds[part]} s")
    return seconds


def replace_model_rows(lakehouse, table: str, schema: str, run_id: str, model_version: str, rows: list[dict]) -> int:
    """Replace `model_version`'s rows of the review `table` with `rows`, stamped with the run and
    the time (nothing is written when there are none); returns how many."""
    if rows:
        stamp = {"run_id": run_id, "model_version": model_version, "created_at": datetime.now(timezone.utc)}
        lakehouse.table(table).replace_rows([{**r, **stamp} for r in rows], schema, key=("model_version",))
    return len(rows)


def confusion_rows(cfg, model: str, validation, test, decision=None) -> list[dict]:
    """The test split's confusion matrix at the model's `decision` threshold (the one its
    predicted_label uses), at the threshold `training.threshold_rule` chooses on the validation
    split, and at the configured threshold."""
    rule, fixed = cfg.training.threshold_rule, cfg.training.threshold
    hist = score_histogram(validation, bins=THRESHOLD_BINS)
    rows = []
    for r in dict.fromkeys((["decision"] if decision is not None else []) + [rule, "fixed"]):
        threshold = decision.threshold if r == "decision" else choose_threshold(hist, r, fixed, THRESHOLD_BINS)
        c = confusion(test, threshold)
        precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
        recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0
        rows.append({"model": model, "split": "test", "rule": r,
                     "chosen_on": {"fixed": "configuration", "decision": decision and decision.objective}.get(r, "validation"),
                     "threshold": float(threshold),
                     "rows": sum(c.values()), **c, "precision": precision, "recall": recall,
                     "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0})
    return rows


def calibration_rows(model: str, test) -> list[dict]:
    """The reliability curve (ten score ranges, the empty ones left out), the Brier score and the
    expected calibration error (the rows' mean |score - observed rate| over those ranges)."""
    mean_score, observed, n = calibration(score_histogram(test))
    brier = brier_score(test)
    ece = expected_calibration_error(mean_score, observed, n)
    return [{"model": model, "split": "test", "bin": i, "mean_score": float(s), "observed": float(o), "rows": int(k),
             "brier": brier, "ece": ece} for i, (s, o, k) in enumerate(zip(mean_score, observed, n))]


def slice_rows(cfg, lakehouse, tests: dict) -> list[dict]:
    """Per model, slice and value: rows, positives, AUC, mean score and observed rate. The slice
    values are the dataset's `evaluation.slices` expressions over `gold.features`, joined on the key
    (`_by_slice`). Every model's test rows are stacked and measured in one pass."""
    from functools import reduce

    from pyspark.sql import functions as F

    dataset = dataset_for(cfg)
    if not dataset.slices or not tests or not lakehouse.table(FEATURES).exists():
        return []
    scored = reduce(lambda a, b: a.unionByName(b), [
        test.select(F.lit(model).alias("_model"), dataset.key, "label", "score") for model, test in tests.items()])
    hist = grouped_histogram(_by_slice(cfg, lakehouse, scored, ["label", "score"]), ["_model", "slice", "value"], SLICE_BINS)
    rows = []
    for (model, name, value), h in hist.groupby(["_model", "slice", "value"]):
        n = float(h["pos"].sum() + h["neg"].sum())
        rows.append({"model": model, "split": "test", "slice": name, "value": value, "rows": int(n),
                     "positives": int(h["pos"].sum()), "auc": auc_from_histogram(h),
                     "mean_score": float(h["score_sum"].sum() / n), "observed": float(h["pos"].sum() / n)})
    order = list(tests)
    return sorted(rows, key=lambda r: order.index(r["model"]))


def regression_slice_rows(cfg, lakehouse, test, models: list[str], target: str) -> list[dict]:
    """Per model, slice and value of the regression head: rows, MAE, RMSE, MAPE (percent, over the
    rows whose target is not 0), the mean prediction and the mean target. `test`: the test split's
    rows with the key, `target` and one prediction column per model of `models`, side by side."""
    from functools import reduce

    from pyspark.sql import functions as F

    dataset = dataset_for(cfg)
    if not dataset.slices or not models or not lakehouse.table(FEATURES).exists():
        return []
    y = F.col(target).cast("double")
    stacked = reduce(lambda a, b: a.unionByName(b), [
        test.filter(y.isNotNull() & F.col(m).isNotNull()).select(
            F.lit(m).alias("_model"), dataset.key, y.alias("_y"), F.col(m).cast("double").alias("_p"))
        for m in models])
    error = F.col("_p") - F.col("_y")
    measured = (_by_slice(cfg, lakehouse, stacked, ["_y", "_p"]).groupBy("_model", "slice", "value").agg(
        F.count("*").alias("rows"), F.avg(F.abs(error)).alias("mae"), F.sqrt(F.avg(error * error)).alias("rmse"),
        (100.0 * F.avg(F.when(F.col("_y") != 0, F.abs(error) / F.abs(F.col("_y"))))).alias("mape"),
        F.avg("_p").alias("mean_score"), F.avg("_y").alias("observed")).collect())
    rows = [{"model": r["_model"], "split": "test", "slice": r["slice"], "value": r["value"], "rows": int(r["rows"]),
             "positives": None, "auc": None, "mean_score": r["mean_score"], "observed": r["observed"],
             "mae": r["mae"], "rmse": r["rmse"], "mape": r["mape"]} for r in measured]
    return sorted(rows, key=lambda r: (models.index(r["model"]), r["slice"], r["value"]))


def _by_slice(cfg, lakehouse, stacked, columns: list[str]):
    """`stacked` (a `_model` column, the key, `columns`) once per slice the dataset declares, with
    the row's `slice` name and `value` (the expression over `gold.features`, "(null)" for a null).

    `gold.features` is read for the test window's dates only (`date`, the column its layout skips
    files on): the test split holds no other day, so the rows and their values are the same as with
    the whole table."""
    from pyspark.sql import functions as F

    dataset = dataset_for(cfg)
    first, last = cfg.split("test")
    values = lakehouse.table(FEATURES).read().filter(F.col("date").between(F.lit(first), F.lit(last))).select(
        dataset.key, *[F.coalesce(F.expr(expr).cast("string"), F.lit("(null)")).alias(f"_slice_{name}")
                       for name, expr in dataset.slices.items()])
    return stacked.join(values, dataset.key).select("_model", *columns, F.explode(F.array(*[
        F.struct(F.lit(name).alias("slice"), F.col(f"_slice_{name}").alias("value")) for name in dataset.slices
    ])).alias("s")).select("_model", *columns, "s.slice", "s.value")


def importance_rows(validation, scorers: dict[str, Callable], rows: int, seed: int) -> list[dict]:
    """Permutation importance of each feature group for each model in `scorers`, on the same
    `rows` validation rows and the same permutations; one row per model and group, `auc_drop` the
    unshuffled AUC minus the AUC with the group shuffled.

    The pass scores `rows` × (groups + 1) rows per model, a seeded sample (`permuted_copies`): its
    cost follows `rows` and the number of feature groups, not the size of the validation split."""
    def aucs(scored) -> dict[str, float]:
        hist = grouped_histogram(scored, ["_group"], IMPORTANCE_BINS)
        return {g: auc_from_histogram(h) for g, h in hist.groupby("_group")}

    return _permutation_rows(validation, scorers, rows, seed, "label", aucs,
                             lambda base, shuffled: {"base_auc": base, "auc": shuffled, "auc_drop": base - shuffled})


def regression_importance_rows(validation, scorers: dict[str, Callable], rows: int, seed: int,
                               target: str) -> list[dict]:
    """`importance_rows` for the regression head: `mae_increase` is the MAE with the group
    shuffled minus the unshuffled MAE (`base_mae`), on the same sample and permutations for every
    model. `scorers[model](df)` gives `_group`, `target` and `prediction` of `df`'s rows."""
    from pyspark.sql import functions as F

    def maes(scored) -> dict[str, float]:
        error = F.abs(F.col("prediction") - F.col(target).cast("double"))
        return {r["_group"]: r["mae"] for r in scored.groupBy("_group").agg(F.avg(error).alias("mae")).collect()}

    return _permutation_rows(validation.filter(F.col(target).isNotNull()), scorers, rows, seed, target, maes,
                             lambda base, shuffled: {"base_mae": base, "mae": shuffled, "mae_increase": shuffled - base})


def _permutation_rows(validation, scorers: dict[str, Callable], rows: int, seed: int, label: str,
                      by_group: Callable, columns: Callable) -> list[dict]:
    """The rows of both heads' permutation importance: every model of `scorers` scores the same
    permuted copies (`permuted_copies`, built once), `by_group(scored)` measures each copy
    ({group: value}), and `columns(unshuffled, shuffled)` names the measures of one group."""
    if not scorers:
        return []
    stacked, groups, n = permuted_copies(validation, rows, seed, label)
    if n == 0:
        return []
    stacked = stacked.cache()
    out = []
    try:
        for model, scorer in scorers.items():
            started = time.time()
            measured = by_group(scorer(stacked))
            base, seconds = measured[UNSHUFFLED], round(time.time() - started, 1)
            out += [{"model": model, "split": "validation", "feature": g, "columns": ",".join(cols), "rows": n,
                     **columns(base, measured[g]), "seconds": seconds} for g, cols in groups.items()]
    finally:
        stacked.unpersist()
    return out


def permuted_copies(validation, rows: int, seed: int, label: str = "label"):
    """A seeded sample of `rows` validation rows, stacked once unshuffled (`_group` "") and once per
    feature group with that group's columns shuffled (one permutation of the rows per group, the
    group's columns moved together), beside their `label` (the regression head: its target).
    Returns (the stacked DataFrame, the groups, the sample's rows)."""
    import numpy as np
    import pandas as pd
    from pyspark.sql import functions as F

    groups = feature_groups(validation.columns)
    columns = [c for cols in groups.values() for c in cols]
    sample = validation.orderBy(F.rand(seed)).limit(rows).select(*columns, label).toPandas()
    n = len(sample)
    spark = validation.sparkSession
    sample["_row"] = np.arange(n, dtype=np.int64)
    base = spark.createDataFrame(sample)
    rng = np.random.default_rng(seed)
    names = [UNSHUFFLED, *groups]
    perm = spark.createDataFrame(pd.DataFrame({
        "_group": np.repeat(names, n), "_row": np.tile(np.arange(n, dtype=np.int64), len(names)),
        "_src": np.concatenate([np.arange(n, dtype=np.int64)] + [rng.permutation(n) for _ in groups])}))
    source = base.select(F.col("_row").alias("_src"), *[F.col(c).alias(f"_src_{c}") for c in columns])
    group_of = {c: g for g, cols in groups.items() for c in cols}
    stacked = (perm.join(F.broadcast(base), "_row").join(F.broadcast(source), "_src")
               .select("_group", label, *[F.when(F.col("_group") == group_of[c], F.col(f"_src_{c}"))
                                            .otherwise(F.col(c)).alias(c) for c in columns]))
    return stacked, groups, n
