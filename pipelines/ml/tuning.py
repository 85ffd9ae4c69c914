"""The hyper-parameter search (`lakehouse-dl tune`): Hyperopt over the space of `tuning.space`,
every trial scored by its backtest (mean AUC over `pipelines.ml.folds.folds_for`), every
trial a row of `results.trials`.

The network's trials run as Spark tasks through Hyperopt's `SparkTrials` (`tuning.parallelism` at
once), each training one process per fold on the pinned gold snapshot through Petastorm. The
baselines get the same budget (`tuning.max_evals`) on the same folds; their trials are MLlib jobs,
which run from the driver, so they use Hyperopt's plain `Trials`. The nightly trains with the
best trial found so far for the same dataset and search space (`with_best`).

    >>> tune(cfg, spark, lakehouse)          # every model in tuning.space, tuning.max_evals trials each
    >>> cfg, best = with_best(cfg, lakehouse)   # training.* of the best trial; best: {model: its settings}
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import uuid
from datetime import datetime, timezone

from pipelines.catalog import MODEL_INPUT, TRIALS
from pipelines.datasets import dataset_for
from pipelines.ml import backtest, folds

log = logging.getLogger(__name__)

TRIALS_SCHEMA = ("search_id string, dataset string, space_hash string, model string, trial int, params string, "
                 "table_version long, folds string, fold_aucs string, mean_auc double, std_auc double, "
                 "seconds double, status string, error string, created_at timestamp")


def _folds(cfg, lakehouse, version: int) -> list:
    from pipelines.ml.baselines import model_input_frames

    frames = model_input_frames(lakehouse, version)
    return folds.folds_for(cfg, folds.months_with_rows(frames["train"].unionByName(frames["validation"])))


def space_hash(cfg, model: str) -> str:
    """A short hash of one model's search space and folds: trials of another space are not compared."""
    data = {"space": cfg.tuning.space.get(model, {}), "splits": cfg.pipeline.splits, "folds": cfg.backtest.folds,
            "epochs": cfg.backtest.epochs, "max_train_rows": cfg.backtest.max_train_rows,
            "trial_budget": [cfg.tuning.epochs, cfg.tuning.max_train_rows],
            # Set, another fold shape (unset, the hash of the trials recorded before it existed).
            **({"min_fold_rows": cfg.backtest.min_fold_rows} if cfg.backtest.min_fold_rows else {})}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def hyperopt_space(model: str, settings: dict) -> dict:
    """The Hyperopt expression of one model's `tuning.space` entry."""
    from hyperopt import hp

    out = {}
    for name, spec in settings.items():
        [(kind, args)] = spec.items()
        label = f"{model}.{name}"
        if kind == "choice":
            out[name] = hp.choice(label, list(args))
        elif kind == "uniform":
            out[name] = hp.uniform(label, *args)
        elif kind == "loguniform":
            import math

            out[name] = hp.loguniform(label, math.log(args[0]), math.log(args[1]))
        else:
            out[name] = hp.quniform(label, *args)
    return out


def _plain(params: dict) -> dict:
    """Hyperopt's values as JSON-ready Python (tuples → lists, numpy → float or int)."""
    def one(v):
        if isinstance(v, (list, tuple)):
            return [one(x) for x in v]
        if hasattr(v, "item"):
            v = v.item()
        return int(v) if isinstance(v, float) and v.is_integer() and abs(v) >= 1 else v
    return {k: one(v) for k, v in params.items()}


def tune(cfg, spark, lakehouse, models: list[str] | None = None, max_evals: int | None = None,
         table_version: int | None = None) -> list[dict]:
    """Search every model of `models` (default: those in `tuning.space`) with `max_evals` trials
    each (default `tuning.max_evals`) on gold.model_input at `table_version` (the latest), and
    append the trials to `results.trials`. Returns the rows written."""
    from hyperopt import STATUS_FAIL, STATUS_OK, SparkTrials, Trials, fmin, rand, tpe

    from pipelines.ml.tensors import load_feature_spec, pin_snapshot

    if not cfg.backtest.folds:
        raise ValueError("the search scores every trial on the backtest: backtest.folds must be 1 or more, it is 0")
    models = models or list(cfg.tuning.space)
    budget = max_evals or cfg.tuning.max_evals
    snapshot = pin_snapshot(lakehouse, table_version)
    spec = load_feature_spec(lakehouse, snapshot)
    fold_list = _folds(cfg, lakehouse, snapshot.version)
    search_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    algo = tpe.suggest if cfg.tuning.algo == "tpe" else rand.suggest
    rows = []
    for model in models:
        started = time.time()
        if model == "dnn":
            # Each trial runs in one Spark task: its folds one after the other, one process each.
            training = backtest.backtest_training(cfg.training, trial_budget(cfg))
            jobs = [backtest.fold_splits(snapshot, f) for f in fold_list]
            key = dataset_for(cfg).key

            def objective(params, training=training, jobs=jobs):
                begun = time.time()
                try:
                    trial_cfg = dataclasses.replace(training, **_plain(params))
                    aucs = [backtest.exact_auc(r["labels"], r["scores"]) for r in
                            (backtest.network_fold(trial_cfg, spec, key, *splits) for splits in jobs)]
                except Exception as exc:  # a trial that fails is recorded, the search goes on
                    return {"status": STATUS_FAIL, "error": f"{type(exc).__name__}: {exc}", "seconds": time.time() - begun}
                return {"status": STATUS_OK, "loss": -sum(aucs) / len(aucs), "aucs": aucs, "seconds": time.time() - begun}

            trials = SparkTrials(parallelism=min(cfg.tuning.parallelism, budget), spark_session=spark)
        else:
            frames = _baseline_frames(lakehouse, snapshot.version)

            def objective(params, model=model, frames=frames):
                begun = time.time()
                aucs = _baseline_fold_aucs(cfg, spark, frames, fold_list, model, _plain(params))
                return {"status": STATUS_OK, "loss": -sum(aucs) / len(aucs), "aucs": aucs, "seconds": time.time() - begun}

            trials = Trials()
        # Trial 0: the configured settings, so that the nightly keeps them unless a trial beats them.
        configured = configured_params(cfg, model)
        if model == "dnn":
            first = spark.sparkContext.parallelize([configured], 1).map(objective).collect()[0]
        else:
            first = objective(configured)
        rows.append(_row(cfg, model, search_id, snapshot.version, fold_list, 0, configured, first))
        log.info(f"[tune] {model}: the configured settings score {rows[-1]['mean_auc'] or float('nan'):.4f} on the backtest")
        fmin(objective, hyperopt_space(model, cfg.tuning.space.get(model, {})), algo=algo, max_evals=budget,
             trials=trials, show_progressbar=False, rstate=_rstate(cfg.training.seed))
        rows += _trial_rows(cfg, model, search_id, snapshot.version, fold_list, trials)
        done = [r for r in rows if r["model"] == model and r["status"] == "ok"]
        best = max(done, key=lambda r: r["mean_auc"], default=None)
        log.info(f"[tune] {model}: {len(done)} of {budget} trial(s) in {time.time() - started:.0f}s; best backtest AUC "
                 f"{best['mean_auc'] if best else float('nan'):.4f} with {best['params'] if best else '-'}")
    lakehouse.table(TRIALS).write(lakehouse.spark.createDataFrame(rows, TRIALS_SCHEMA), mode="append")
    return rows


def trial_budget(cfg):
    """The backtest settings a network trial trains its folds with: `tuning.epochs` and
    `tuning.max_train_rows` in place of the backtest's where not 0. A cheaper budget ranks the
    settings; the nightly then trains the best with the full recipe and backtests it in full."""
    return dataclasses.replace(cfg.backtest, **backtest.budget_of(cfg.tuning))


def _rstate(seed: int):
    import numpy as np

    return np.random.default_rng(seed)


def configured_params(cfg, model: str) -> dict:
    """The configured value of every setting in `model`'s search space: the network's `training.*`;
    {} for a baseline (its settings are the defaults of `fit_baselines`)."""
    if model != "dnn":
        return {}
    return _plain({name: getattr(cfg.training, name) for name in cfg.tuning.space.get(model, {})})


def _trial_rows(cfg, model, search_id, version, fold_list, trials) -> list[dict]:
    """The rows of Hyperopt's trials, numbered from 1 (trial 0 is the configured settings)."""
    from hyperopt import space_eval

    space = hyperopt_space(model, cfg.tuning.space.get(model, {}))
    out = []
    for i, t in enumerate(trials.trials, 1):
        values = {k: v[0] for k, v in t["misc"]["vals"].items() if v}
        params = _plain(space_eval(space, values)) if len(values) == len(space) else {}
        out.append(_row(cfg, model, search_id, version, fold_list, i, params, t.get("result") or {}))
    return out


def _row(cfg, model, search_id, version, fold_list, trial: int, params: dict, result: dict) -> dict:
    """One row of results.trials from an objective's result."""
    aucs = result.get("aucs")
    ok = result.get("status") == "ok" and aucs
    mean = sum(aucs) / len(aucs) if ok else None
    std = (sum((a - mean) ** 2 for a in aucs) / len(aucs)) ** 0.5 if ok else None
    return {"search_id": search_id, "dataset": cfg.pipeline.dataset, "space_hash": space_hash(cfg, model),
            "model": model, "trial": trial, "params": json.dumps(params, sort_keys=True),
            "table_version": int(version), "folds": folds.fold_windows_json(fold_list),
            "fold_aucs": json.dumps(aucs), "mean_auc": mean, "std_auc": std,
            "seconds": float(result.get("seconds") or 0.0), "status": "ok" if ok else "failed",
            "error": result.get("error"), "created_at": datetime.now(timezone.utc)}


def _baseline_frames(lakehouse, version: int):
    from pipelines.ml.baselines import model_input_frames

    frames = model_input_frames(lakehouse, version, table=MODEL_INPUT)
    return frames["train"].unionByName(frames["validation"])


def _baseline_fold_aucs(cfg, spark, rows, fold_list, model: str, params: dict) -> list[float]:
    from pipelines.ml.baselines import fit_baselines

    aucs = []
    for fold in fold_list:
        fitted = fit_baselines(spark, folds.fold_rows(rows, fold, "train"), folds.fold_rows(rows, fold, "validation"),
                               kinds=[model], seed=cfg.training.seed, params={model: params})
        aucs.append(fitted[model]["val_auc"])
    return aucs


def best_trials(cfg, lakehouse) -> dict[str, dict]:
    """{model: its best ok trial} among the trials of this dataset and of each model's current
    search space (an empty dict before any search)."""
    from pyspark.sql import functions as F

    table = lakehouse.table(TRIALS)
    if not table.exists():
        return {}
    out = {}
    for model in cfg.tuning.space:
        rows = (table.read().filter((F.col("dataset") == cfg.pipeline.dataset) & (F.col("model") == model)
                                    & (F.col("space_hash") == space_hash(cfg, model)) & (F.col("status") == "ok"))
                .orderBy(F.col("mean_auc").desc(), F.col("created_at")).limit(1).collect())
        if rows:
            out[model] = rows[0].asDict()
    return out


def with_best(cfg, lakehouse):
    """(`cfg` with `training.*` set to the best network trial so far, or as it was without one;
    {model: the settings of its best trial}, which the nightly fits the baselines with)."""
    best = best_trials(cfg, lakehouse)
    if "dnn" in best:
        cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, **json.loads(best["dnn"]["params"])))
    return cfg, {model: json.loads(row["params"]) for model, row in best.items()}
