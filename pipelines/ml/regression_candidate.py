"""The train stage of the regression head (`training.head: regression`): train the network on the
standardised target, fit the regression baselines on the same train rows, compute the naive
forecasts (`pipelines.ml.naive`), measure every one of them on each split of the same pinned
`gold.model_input` version (MAE, RMSE, MAPE), and register the network, blessed only when its
validation MAE beats the best baseline's, the best naive forecast's and the blessed model's on the
same rows, and, with backtest folds, its mean fold MAE every other model's
(`pipelines.ml.regression_backtest`, `pipelines.ml.regression.decide`),
with its training history, its SavedModel (`prediction` in the target's units) and its MLflow run.
The reviewer's tables follow the head: every model's MAE by slice on the test split
(results.slices) and its permutation importance by MAE increase on validation (results.importance).

    >>> candidate = train_and_register_regression(cfg, spark, lakehouse, run_id, run_date)
    >>> candidate.entry.status, candidate.entry.reason
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import date

from pipelines.catalog import FEATURE_SPEC, IMPORTANCE, MODEL_INPUT, SLICES
from pipelines.config.settings import REGRESSION
from pipelines.datasets import dataset_for
from pipelines.ml import registry, results
from pipelines.ml.backtest import MEAN
from pipelines.ml.baselines import (REGRESSION_BASELINES, fit_regression_baselines, model_input_frames,
                                    regression_predictions)
from pipelines.ml.candidate import Candidate, Laps, dependencies, model_version_for, publish, validation_rows_of
from pipelines.ml.naive import PREFIX as NAIVE_PREFIX
from pipelines.ml.naive import declared_forecasts, naive_forecasts, outcome_delay_days
from pipelines.ml.regression import decide, predict, regression_metrics, regression_metrics_by
from pipelines.ml.regression_backtest import run_regression_backtest
from pipelines.ml.review import (IMPORTANCE_SCHEMA, SLICES_SCHEMA, regression_importance_rows, regression_slice_rows,
                                 replace_model_rows)
from pipelines.ml.training import model_dir_for, read_result, train
from pipelines.stages.gold import ServingError
from pipelines.stages.gold.spec import TARGET

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


def regression_kinds(configured: list[str]) -> list[str]:
    """The regression baselines for the configured kinds: the linear regression always (the bar
    every candidate clears, as the logistic regression is for classification), then the others."""
    return ["linreg", *[REGRESSION_BASELINES[k] for k in configured if k != "logreg"]]


@dataclass
class Measured:
    """What `measure` gives: the metrics, the test split by slice, the fitted baselines."""

    metrics: list[dict]             # MAE, RMSE and MAPE per (model, split)
    slices: list[dict]              # results.slices rows (`by_slice`), else []
    baselines: dict[str, object]    # the fitted PipelineModel of each baseline kind


def measure(cfg, spark, lakehouse, result, kinds: list[str], splits: tuple[str, ...] = SPLITS,
            by_slice: bool = False) -> Measured:
    """MAE, RMSE and MAPE of the network of `result`, of the regression baselines `kinds` (fitted
    here on the train split and saved in the model's folder, `baselines/<kind>`) and of the naive
    forecasts, on the rows of each of `splits` whose target is known: one dict per (model, split);
    with `by_slice`, the same on the test split per slice the dataset declares
    (`review.regression_slice_rows`, for results.slices)."""
    from pyspark.sql import functions as F

    version = result.table_versions[MODEL_INPUT]
    dataset = dataset_for(cfg)
    key = dataset.key
    frames = {s: f.filter(F.col(TARGET).isNotNull()).cache()
              for s, f in model_input_frames(lakehouse, version, splits=tuple(dict.fromkeys(("train", *splits)))).items()}
    fitted = fit_regression_baselines(frames["train"], kinds, seed=cfg.training.seed)
    for kind, baseline in fitted.items():
        baseline["model"].write().overwrite().save(os.path.join(result.model_dir, "baselines", kind))
    train_mean = float(frames["train"].agg(F.avg(F.col(TARGET).cast("double"))).collect()[0][0])
    forecasts = declared_forecasts(cfg.training.naive_forecasts, outcome_delay_days(dataset))
    # Every split's rows are the history: a validation day reads the train days before it, and
    # its own split's days once they are `lag` days old, as the nightly would have known them.
    naive = naive_forecasts(lakehouse.table(MODEL_INPUT).read(version=version), key, forecasts, train_mean)
    # Every model's prediction of every row, side by side, so one pass measures them all.
    rows_measured = None
    for split in splits:
        rows_measured = frames[split] if rows_measured is None else rows_measured.unionByName(frames[split])
    predicted = naive.join(predict(rows_measured, result.model_path, (key,)).withColumnRenamed("prediction", "dnn"), key)
    for kind, b in fitted.items():
        predicted = predicted.join(regression_predictions(rows_measured, b["model"], (key,))
                                   .withColumnRenamed("prediction", kind), key)
    names = ["dnn", *fitted, *[c for c in naive.columns if c.startswith(NAIVE_PREFIX)]]
    if by_slice:
        predicted = predicted.cache()       # measured twice: by split, then the test split by slice
    measured = regression_metrics_by(predicted, names, by="split")
    rows = [{"model_version": result.model_version, "model": name, "split": split, **measured[(split, name)].as_dict()}
            for split in splits for name in names if (split, name) in measured]
    sliced = regression_slice_rows(cfg, lakehouse, predicted.filter(F.col("split") == "test"), names, TARGET) \
        if by_slice and "test" in splits else []
    for frame in (*frames.values(), predicted):
        frame.unpersist()
    return Measured(rows, sliced, {kind: b["model"] for kind, b in fitted.items()})


def train_and_register_regression(cfg, spark, lakehouse, run_id: str, run_date: date) -> Candidate:
    """The nightly's train stage for the regression head (see the module's doc)."""
    laps = Laps()
    version_name = model_version_for(cfg, run_date)
    result = read_result(model_dir_for(cfg, version_name))
    if result is None:
        result = train(cfg, spark, model_version=version_name)
    else:
        log.info(f"[train] model {version_name} was trained by an earlier attempt; registering it")
    laps("network")
    kinds = regression_kinds(cfg.nightly.baselines)
    measured = measure(cfg, spark, lakehouse, result, kinds, by_slice=True)
    metrics = measured.metrics
    laps("baselines, naive forecasts, metrics, slices")
    metrics += run_regression_backtest(cfg, spark, lakehouse, result.table_versions[MODEL_INPUT], kinds,
                                       result.model_version)
    laps("backtest")
    results.write_metrics(lakehouse, run_id, metrics)
    replace_model_rows(lakehouse, SLICES, SLICES_SCHEMA, run_id, result.model_version, measured.slices)
    validation_rows = model_input_frames(lakehouse, result.table_versions[MODEL_INPUT], splits=("validation",))
    replace_model_rows(lakehouse, IMPORTANCE, IMPORTANCE_SCHEMA, run_id, result.model_version,
                       importance(cfg, result, measured.baselines, validation_rows["validation"]))
    laps("importance")
    status, reason = decide(metrics, backtest_cfg=cfg.backtest,
                            blessed_mae=blessed_mae(cfg, lakehouse, result.model_version, validation_rows["validation"]))
    summary = {f"{m['split']}_{m['model']}_{k}": m[k] for m in metrics for k in ("mae", "rmse", "mape")
               if not m["split"].startswith("fold_")}
    validation = {m["model"]: m["mae"] for m in metrics if m["split"] == "validation"}
    entry = registry.ModelEntry(
        model_version=result.model_version, created_at=registry.now(), run_id=run_id, run_date=run_date,
        path=result.model_path, training_table=MODEL_INPUT, training_version=result.table_versions[MODEL_INPUT],
        feature_spec_version=result.table_versions.get(FEATURE_SPEC), config_hash=result.config_hash,
        code_version=registry.code_version(),
        metrics=json.dumps({"head": REGRESSION, "validation_mae": validation.get("dnn"),
                            **{f"{model}_validation_mae": v for model, v in validation.items() if model != "dnn"},
                            "best_epoch": result.best_epoch, "samples_per_sec": result.samples_per_sec,
                            "wall_seconds": result.wall_seconds, **summary}),
        status=status, reason=reason, **dependencies(cfg, lakehouse, result))
    results.write_history(lakehouse, run_id, result.model_version, result.history)
    train_rows = model_input_frames(lakehouse, result.table_versions[MODEL_INPUT], splits=("train",))["train"]
    publish(cfg, lakehouse, entry, metrics, result, train_rows, head=REGRESSION)
    registry.register(lakehouse, entry)
    laps("history, SavedModel, MLflow, registry")
    log.info(f"[train] seconds: {laps}")
    log.info(f"[train] model {result.model_version}: {status} ({reason})")
    for line in mae_lines(metrics):
        log.info(line)
    return Candidate(entry, metrics, result.rows["train"])


def importance(cfg, result, baselines: dict, validation) -> list[dict]:
    """Permutation importance (the MAE increase) of the network of `result` and of each fitted
    baseline, on `training.importance_rows` of the `validation` rows (`review.regression_importance_rows`)."""
    carried = ("_group", TARGET)
    scorers = {"dnn": lambda df: predict(df, result.model_path, carried)}
    for kind, fitted in baselines.items():
        scorers[kind] = lambda df, fitted=fitted: regression_predictions(df, fitted, carried)
    return regression_importance_rows(validation, scorers, cfg.training.importance_rows, cfg.training.seed, TARGET)


def blessed_mae(cfg, lakehouse, model_version: str, validation) -> float | None:
    """The MAE of the blessed regression model on the candidate's `validation` rows, which the
    candidate `model_version` must beat (`mae_of`); None when no other regression model is blessed."""
    current = registry.blessed(lakehouse)
    if current is None or current.model_version == model_version or registry.head_of(current) != REGRESSION:
        return None
    return mae_of(cfg, lakehouse, current, validation)


def mae_of(cfg, lakehouse, entry: registry.ModelEntry, validation) -> float | None:
    """The MAE of the regression `entry` on `validation` (model-input rows: their keys), the rows
    read from gold.features with its own feature spec; its recorded validation MAE when that spec
    cannot be read any more."""
    from pyspark.sql import functions as F

    key = dataset_for(cfg).key
    try:
        rows = validation_rows_of(cfg, lakehouse, entry, validation).filter(F.col(TARGET).isNotNull())
        return regression_metrics(rows.select(key, TARGET).join(predict(rows, entry.path, (key,)), key)).mae
    except ServingError as exc:
        recorded = entry.metric.get("validation_mae")
        log.warning(f"[train] model {entry.model_version} cannot be measured again ({exc}); "
                    f"comparing with its recorded validation MAE {recorded}")
        return recorded


def mae_lines(metrics: list[dict]) -> list[str]:
    """The MAE of every model on every split, one line per model, the network first."""
    models = sorted({m["model"] for m in metrics}, key=lambda n: (n != "dnn", n.startswith(NAIVE_PREFIX), n))
    splits = [s for s in (*SPLITS, MEAN) if any(m["split"] == s for m in metrics)]
    lines = ["[train] MAE                       " + "".join(f"{s:>14}" for s in splits)]
    for model in models:
        cells = [next((m["mae"] for m in metrics if m["model"] == model and m["split"] == s), float("nan"))
                 for s in splits]
        lines.append(f"[train] {model:26}" + "".join(f"{v:>14.4f}" for v in cells))
    return lines
