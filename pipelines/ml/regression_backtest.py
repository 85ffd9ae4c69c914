"""The regression head's backtest: on the rolling-origin folds of `pipelines.ml.folds` (the
classification head's, `backtest.folds` and `backtest.min_fold_rows`), the network (the nightly's
recipe on the standardised target, stopping early on the fold's stopping window), the regression
baselines (refitted on the fold's training days) and the naive forecasts (the training mean of
the fold's training days; the last known value of a group, as the nightly would have known it)
are each measured on the fold's validation window by MAE, RMSE and MAPE. The rows go to
`results.metrics` under splits `fold_k`, `backtest_mean` and `backtest_std`, and the bless rule
(`pipelines.ml.regression.decide`) compares the network's mean fold MAE with every other model's.

    >>> rows = run_regression_backtest(cfg, spark, lakehouse, 3, ["linreg"], "20240101-ab12cd34")

The naive forecasts' windows over the model input are computed once for all folds (each fold
fills in its own training mean). Unlike the classification backtest, a fold's result is measured
again by every run that trains (nothing is recorded in `results.backtest_folds`): a regression
nightly retrains every `nightly.retrain_every_days` days, and its series is small.
"""
from __future__ import annotations

import logging

from pipelines.catalog import MODEL_INPUT
from pipelines.ml.backtest import network_scores, summary_rows
from pipelines.ml.folds import fold_rows, folds_for, months_with_rows
from pipelines.stages.gold.spec import TARGET

log = logging.getLogger(__name__)

MEASURES = ("mae", "rmse", "mape")


def run_regression_backtest(cfg, spark, lakehouse, version: int, kinds: list[str], model_version: str) -> list[dict]:
    """Rows for results.metrics: each model's MAE, RMSE and MAPE on each fold (split `fold_k`),
    then their mean and standard deviation over the folds; [] without folds (`backtest.folds: 0`,
    or windows too short for them, which the log says)."""
    import pandas as pd
    from pyspark.sql import functions as F

    from pipelines.datasets import dataset_for
    from pipelines.ml.baselines import fit_regression_baselines, model_input_frames, regression_predictions
    from pipelines.ml.naive import PREFIX as NAIVE_PREFIX
    from pipelines.ml.naive import declared_forecasts, last_known_values, outcome_delay_days, with_training_mean
    from pipelines.ml.regression import regression_metrics_by
    from pipelines.ml.tensors import load_feature_spec, pin_snapshot

    if not cfg.backtest.folds:
        log.info("[backtest] backtest.folds is 0: no backtest; the blessing compares the validation window only")
        return []
    dataset = dataset_for(cfg)
    key = dataset.key
    frames = model_input_frames(lakehouse, version)
    rows = frames["train"].unionByName(frames["validation"]).filter(F.col(TARGET).isNotNull()).cache()
    try:
        fold_list = folds_for(cfg, months_with_rows(rows))
    except ValueError as exc:
        rows.unpersist()
        log.warning(f"[backtest] no backtest: {exc}; the blessing compares the validation window only")
        return []
    snapshot = pin_snapshot(lakehouse, version)
    spec = load_feature_spec(lakehouse, snapshot)
    # The folds' networks side by side as Spark tasks, one process each (as for classification).
    network = network_scores(cfg, spark, snapshot, spec, fold_list)
    forecasts = declared_forecasts(cfg.training.naive_forecasts, outcome_delay_days(dataset))
    # What the naive forecasts read is the same for every fold; only their training mean differs.
    known = last_known_values(lakehouse.table(MODEL_INPUT).read(version=version), key, forecasts).cache()
    out = []
    try:
        for fold in fold_list:
            train, validation = fold_rows(rows, fold, "train"), fold_rows(rows, fold, "validation")
            fitted = fit_regression_baselines(train, kinds, seed=cfg.training.seed)
            train_mean = float(train.agg(F.avg(F.col(TARGET).cast("double"))).collect()[0][0])
            naive = with_training_mean(known, forecasts, train_mean).drop("split", TARGET)
            scored = network[fold.name]
            dnn = spark.createDataFrame(pd.DataFrame({key: scored["keys"], "dnn": scored["scores"].astype("float64")}))
            predicted = (validation.select(key, F.col(TARGET).cast("double").alias(TARGET))
                         .withColumn("split", F.lit(fold.name)).join(naive, key).join(dnn, key))
            for kind, baseline in fitted.items():
                predicted = predicted.join(regression_predictions(validation, baseline["model"], (key,))
                                           .withColumnRenamed("prediction", kind), key)
            names = ["dnn", *fitted, *[c for c in naive.columns if c.startswith(NAIVE_PREFIX)]]
            measured = regression_metrics_by(predicted, names, by="split")
            out += [{"model_version": model_version, "model": name, "split": fold.name,
                     **measured[(fold.name, name)].as_dict()} for name in names if (fold.name, name) in measured]
            log.info(f"[backtest] {fold.name} (train to {fold.train[1]}, validate {fold.validation[0]}.."
                     f"{fold.validation[1]}): MAE " + ", ".join(
                         f"{name} {measured[(fold.name, name)].mae:.4f}" for name in names if (fold.name, name) in measured)
                     + f" (network: best epoch {scored['best_epoch']}, {scored['seconds']:.0f}s)")
    finally:
        rows.unpersist()
        known.unpersist()
    return out + summary_rows(out, MEASURES, skip_nan=True)
