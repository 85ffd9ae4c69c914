"""Rolling-origin backtests: each model is trained on the days before a month and measured on that
month, for the last `backtest.folds` months of the train + validation windows (the folds and their
windows: `pipelines.ml.folds`). The test window is in no fold; the nightly measures it once, at the end.

Every fold reads the same pinned `gold.model_input` version: the baselines through Spark with a
`day` filter, the network through Petastorm (`pipelines.ml.tensors.restrict_days`), one process per
fold, the folds side by side as Spark tasks.

The network of a fold trains the nightly's recipe (its epochs, early stopping and rows, unless
`backtest.epochs` / `backtest.max_train_rows` ask for less) and stops early on the fold's own
`stopping` month, the last month of its training window, which it then does not fit on: the month
it is scored on chooses nothing, as the baselines' does not.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from pipelines.catalog import MODEL_INPUT
from pipelines.config.settings import CLASSIFICATION, REGRESSION
from pipelines.ml.folds import Fold, fold_rows, folds_for, months_with_rows

log = logging.getLogger(__name__)

MEAN, SPREAD = "backtest_mean", "backtest_std"


# --------------------------------------------------------------------------------------------
# The network of one fold: runs in a Spark task (or in this process), without Spark


def backtest_training(training_cfg, backtest_cfg, overrides: dict | None = None):
    """The training settings of a fold: the nightly's, with `overrides` (a trial's) on top, in one
    process; `backtest.epochs` and `backtest.max_train_rows` replace the training's when not 0."""
    return dataclasses.replace(training_cfg, **budget_of(backtest_cfg), **(overrides or {}), num_proc=1, local_cache=False)


def budget_of(section) -> dict:
    """The `epochs` and `max_train_rows` a config section (`backtest`, `tuning`) sets, 0 meaning
    "keep the one below it" and left out."""
    return {k: getattr(section, k) for k in ("epochs", "max_train_rows") if getattr(section, k)}


def network_fold(training_cfg, spec, key: str, train_split, stopping_split, validation_split) -> dict:
    """Train the network on `train_split` in this process, stopping early on `stopping_split` (by
    the training measure when None), and score `validation_split`: returns {"keys", "labels",
    "scores"} (numpy arrays, a row each: the regression head's target and prediction, in its
    units), the training "seconds" and the "best_epoch"."""
    from pipelines.ml.inputs import model_inputs
    from pipelines.ml.model import label_for, load_model
    from pipelines.ml.tensors import split_frame
    from pipelines.ml.training.driver import target_scale_of
    from pipelines.ml.training.plan import MODEL_FILE, STATE_FILE, TrainingPlan, write_json
    from pipelines.ml.training.worker import run_training

    started = time.time()
    model_dir = tempfile.mkdtemp(prefix="backtest-")
    label = label_for(training_cfg)
    try:
        write_json(os.path.join(model_dir, STATE_FILE), {"epochs_done": 0, "history": [], "best_epoch": 0,
                                                         "best_score": None, "wait": 0})
        # The regression network learns the target standardised on its own training days.
        scale = target_scale_of(train_split, label) if training_cfg.head == REGRESSION else None
        plan = TrainingPlan(training_cfg, spec, train_split, stopping_split, "backtest", model_dir, verbose=False,
                            target_scale=scale)
        trained = run_training(plan)
        model = load_model(os.path.join(model_dir, MODEL_FILE))
        rows = split_frame(validation_split, [key, label, *spec.inputs])
        scores = np.asarray(model.predict(model_inputs(rows, spec), batch_size=training_cfg.batch_size,
                                          verbose=0)).reshape(-1)
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
    return {"keys": rows[key].to_numpy(), "labels": rows[label].to_numpy(dtype="float64"), "scores": scores,
            "seconds": round(time.time() - started, 2), "best_epoch": trained.get("best_epoch")}


def fold_splits(snapshot, fold: Fold) -> tuple:
    """The Petastorm splits of a fold: the days the network fits on, its stopping month (or None)
    and its validation month, from the train and validation files of the pinned snapshot."""
    from pipelines.ml.tensors import restrict_days

    files = [snapshot.splits["train"], snapshot.splits["validation"]]
    stopping = (restrict_days(files, *fold.days("stopping"), f"{fold.name}_stopping") if fold.stopping else None)
    return (restrict_days(files, *fold.days("fit"), f"{fold.name}_fit"), stopping,
            restrict_days(files, *fold.days("validation"), f"{fold.name}_validation"))


def network_scores(cfg, spark, snapshot, spec, fold_list: list[Fold], overrides: dict | None = None) -> dict[str, dict]:
    """{fold name: network_fold(...)} for every fold, the folds as parallel Spark tasks (one
    process each) when `spark` is given, one after the other here otherwise."""
    from pipelines.datasets import dataset_for

    training, key = backtest_training(cfg.training, cfg.backtest, overrides), dataset_for(cfg).key
    jobs = [(fold.name, *fold_splits(snapshot, fold)) for fold in fold_list]
    if spark is None:
        return {name: network_fold(training, spec, key, *splits) for name, *splits in jobs}
    rdd = spark.sparkContext.parallelize(jobs, len(jobs))
    done = rdd.map(lambda job: (job[0], network_fold(training, spec, key, *job[1:]))).collect()
    return dict(done)


# --------------------------------------------------------------------------------------------
# Scores


def exact_auc(labels, scores) -> float:
    """The ROC AUC of `scores` against 0/1 `labels` (Mann-Whitney, ties counted half)."""
    from scipy.stats import rankdata

    labels = np.asarray(labels).reshape(-1) > 0.5
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        return float("nan")
    ranks = rankdata(np.asarray(scores).reshape(-1))
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


# The measures of a classification fold row that `summary_rows` summarises by default.
MEASURES = ("auc", "log_loss", "accuracy", "precision", "recall", "f1")


def summary_rows(rows: list[dict], measures: tuple[str, ...] = MEASURES, skip_nan: bool = False) -> list[dict]:
    """Per model, the mean (split `backtest_mean`) and standard deviation (`backtest_std`) over
    its fold rows (split `fold_*`) of each of `measures`, with their `rows` (and `positives`)
    summed and their `threshold` kept where they have them. With `skip_nan`, a measure is taken
    over the folds that have one (the regression head's MAPE); NaN when none has."""
    out = []
    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model and r["split"].startswith("fold_")]
        if not mine:
            continue
        base = {k: mine[0][k] for k in ("model_version", "model") if k in mine[0]}
        counts = {k: int(sum(r[k] for r in mine)) for k in ("rows", "positives") if k in mine[0]}
        kept = {"threshold": mine[0]["threshold"]} if "threshold" in mine[0] else {}
        for split, stat in ((MEAN, np.mean), (SPREAD, np.std)):
            values = {}
            for measure in measures:
                known = [r[measure] for r in mine
                         if not (skip_nan and (r[measure] is None or np.isnan(r[measure])))]
                values[measure] = float(stat(known)) if known else float("nan")
            out.append({**base, "split": split, **counts, **kept, **values})
    return out


def score_of(metrics: list[dict], model: str, penalty: float) -> float:
    """A model's backtest score: mean fold AUC minus `penalty` times their standard deviation."""
    mean = next((m["auc"] for m in metrics if m["model"] == model and m["split"] == MEAN), float("nan"))
    spread = next((m["auc"] for m in metrics if m["model"] == model and m["split"] == SPREAD), 0.0)
    return mean - penalty * spread


def decide(metrics: list[dict], backtest_cfg, blessed_auc: float | None = None,
           candidate: str = "dnn", against: list[str] | None = None) -> tuple[str, str]:
    """Bless or reject, with the reason: the candidate's backtest score beats every other model's
    (those `against`, when given) by more than `backtest.min_lift` (scores as `score_of`, with
    `backtest.spread_penalty`), and its validation AUC beats `blessed_auc`, the blessed model's
    on the same rows (that model cannot be backtested without training its recipe again)."""
    penalty, lift = backtest_cfg.spread_penalty, backtest_cfg.min_lift
    mine = score_of(metrics, candidate, penalty)
    others = {m["model"] for m in metrics if m["split"] == MEAN and m["model"] != candidate
              and (against is None or m["model"] in against)}
    scored = ", ".join(f"{o} {score_of(metrics, o, penalty):.4f}" for o in sorted(others))
    beaten = [o for o in others if not mine > score_of(metrics, o, penalty) + lift]
    rule = f"mean-{penalty:g}*std AUC" if penalty else "mean AUC"
    if np.isnan(mine) or beaten:
        return "rejected", f"backtest {rule} {mine:.4f} does not beat {', '.join(sorted(beaten)) or 'nothing'} by {lift:g} ({scored})"
    validation = next((m["auc"] for m in metrics if m["model"] == candidate and m["split"] == "validation"), float("nan"))
    if blessed_auc is not None and not validation > blessed_auc:
        return "rejected", f"validation AUC {validation:.4f} does not beat the blessed model {blessed_auc:.4f}"
    against = f"; validation AUC {validation:.4f} beats the blessed model {blessed_auc:.4f}" if blessed_auc is not None else ""
    return "blessed", f"backtest {rule} {mine:.4f} beats {scored}{against}"


# --------------------------------------------------------------------------------------------
# The backtest of a candidate


@dataclass
class Backtest:
    """What `run_backtest` measured: `rows` for results.metrics (every fold of every model, then
    their mean and spread), and how many (fold, model) results were `reused` from
    `results.backtest_folds` or `computed` (trained and scored) by this run."""

    rows: list[dict] = dataclasses.field(default_factory=list)
    reused: int = 0
    computed: int = 0
    # {(fold name, model): pandas frame of key, label, score}: each fold's month scored by the
    # model of that fold (with `backtest.stack`), what `pipelines.ml.stacking` fits on.
    scores: dict = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        total = self.reused + self.computed
        return f"{self.reused} of {total} fold results reused, {self.computed} computed" if total else "no folds"


def trains_on_the_train_split(lakehouse, version: int, fold: Fold, table: str = MODEL_INPUT) -> bool:
    """True when `fold` trains on exactly the train split of `table` at `version`: every file of
    that split holds days of the fold's training window only, and no validation file holds one
    (from the files' `day` statistics; False when a file has none).

        >>> trains_on_the_train_split(lakehouse, 7, folds_for(cfg)[1])   # trains to September 30
        True
    """
    from pipelines.ml.tensors import SPLIT_COLUMN

    first, last = fold.days("train")
    for a in lakehouse.table(table).add_actions(version):
        low, high, split = a.get("min.day"), a.get("max.day"), a.get(f"partition.{SPLIT_COLUMN}")
        if low is None or high is None:
            return False
        if split == "train" and not first <= low <= high <= last:
            return False
        if split == "validation" and not (high < first or low > last):
            return False
    return True


def run_backtest(cfg, spark, lakehouse, version: int, kinds: list[str], model_version: str,
                 baseline_params: dict | None = None, overrides: dict | None = None,
                 fitted_on_train: dict | None = None) -> Backtest:
    """The fold rows (split `fold_k`) and their mean and spread of the network (`dnn`, with the
    training `overrides`) and of each baseline in `kinds`, on gold.model_input at `version`: rows
    for `results.metrics`. The network is backtested for the classification head only.

    Each model's result on each fold is recorded in `results.backtest_folds` under a fingerprint
    of its inputs (`pipelines.ml.fold_results`); a later run whose fingerprint matches takes the
    recorded metrics instead of training and scoring again, so a nightly whose train and
    validation rows, spec, settings and code did not change measures nothing twice. What a run
    computed is recorded even when a later fold fails, so the run that resumes it starts from it.

    `fitted_on_train`: {kind: fitted model} of baselines the caller fitted on the train split of
    the same version with the same seed and `baseline_params` (the nightly's). A fold that trains
    on exactly those rows (`trains_on_the_train_split`) scores them instead of fitting them again.

        >>> done = run_backtest(cfg, spark, lakehouse, 7, ["logreg", "gbt"], "20131230-ab12cd34")
        >>> str(done)
        '6 of 9 fold results reused, 3 computed'
    """
    import pandas as pd

    from pipelines.datasets import dataset_for
    from pipelines.ml import fold_results
    from pipelines.ml.baselines import baseline_scores, fit_baselines, model_input_frames
    from pipelines.ml.evaluation import binary_metrics
    from pipelines.ml.tensors import load_feature_spec, pin_snapshot

    threshold, key = cfg.training.threshold, dataset_for(cfg).key
    if not cfg.backtest.folds:
        log.info("[backtest] backtest.folds is 0: no backtest; the blessing compares the validation window only")
        return Backtest()
    frames = model_input_frames(lakehouse, version)
    rows = frames["train"].unionByName(frames["validation"]).cache()
    try:
        fold_list = folds_for(cfg, months_with_rows(rows))
    except ValueError as exc:
        rows.unpersist()
        log.warning(f"[backtest] no backtest: {exc}; the blessing compares the validation window only")
        return Backtest()
    snapshot = pin_snapshot(lakehouse, version)
    spec = load_feature_spec(lakehouse, snapshot)
    models = [*kinds, *(["dnn"] if cfg.training.head == CLASSIFICATION else [])]
    shared = fold_results.shared_inputs(lakehouse, snapshot, spec)
    fold_training = backtest_training(cfg.training, cfg.backtest, overrides)
    keys = {(fold.name, model): fold_results.fingerprint(
                shared, fold, model, fold_results.model_settings(cfg, model, fold_training, baseline_params))
            for fold in fold_list for model in models}
    history = fold_results.recorded_results(lakehouse)
    latest = {r["fingerprint"]: r for r in history}     # oldest first: the latest record of each wins
    results = {k: latest[fp] for k, (fp, _) in keys.items() if fp in latest}
    scores: dict = {}
    if cfg.backtest.stack:
        # The stacked ensemble needs every fold's scores: a result recorded without them is measured again.
        stored = fold_results.recorded_scores(lakehouse, {keys[k][0] for k in results})
        scores = {k: stored[keys[k][0]] for k in results if keys[k][0] in stored}
        results = {k: v for k, v in results.items() if k in scores}
    fold_results.explain_missing(fold_list, keys, results, history)
    computed: list[dict] = []
    computed_scores: dict = {}

    def keep(fold: Fold, model: str, metrics: dict, seconds: float, scored, best_epoch: int | None = None) -> None:
        fp, inputs = keys[(fold.name, model)]
        results[(fold.name, model)] = fold_results.record(
            fold, model, fp, inputs, metrics, table_version=int(version), spec_version=spec.version,
            model_version=model_version, best_epoch=best_epoch, seconds=float(seconds),
            created_at=datetime.now(timezone.utc))
        computed.append(results[(fold.name, model)])
        if cfg.backtest.stack:
            scores[(fold.name, model)] = computed_scores[fp] = scored

    def take_network(scored: dict) -> None:
        for fold in todo:
            result = scored[fold.name]
            frame = pd.DataFrame({"key": result["keys"], "label": result["labels"].astype("float64"),
                                  "score": result["scores"].astype("float64")})
            keep(fold, "dnn", binary_metrics(spark.createDataFrame(frame[["score", "label"]]),
                                             threshold=threshold).as_dict(),
                 result["seconds"], frame, result["best_epoch"])

    todo = [fold for fold in fold_list if (fold.name, "dnn") not in results] if "dnn" in models else []
    # The network's folds are submitted first, as one Spark job in a thread of their own: its tasks
    # take the task slots before the baselines' jobs do, and a slot a fold no longer needs (three
    # folds on two slots) fits baselines instead of standing idle. Each task is one process with
    # its own seed: what runs beside it changes none of its numbers.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backtest-network")
    started_network = time.perf_counter()
    network = pool.submit(network_scores, cfg, spark, snapshot, spec, todo, overrides) if todo else None
    try:
        try:
            for fold in fold_list:
                started = time.perf_counter()
                missing = [k for k in kinds if (fold.name, k) not in results]
                shared = ([k for k in missing if k in fitted_on_train]
                          if fitted_on_train and missing and trains_on_the_train_split(lakehouse, version, fold) else [])
                validation = fold_rows(rows, fold, "validation")
                fitted = {k: {"model": fitted_on_train[k], "seconds": 0.0} for k in shared}
                if len(shared) < len(missing):
                    fitted.update(fit_baselines(spark, fold_rows(rows, fold, "train"), validation,
                                                kinds=[k for k in missing if k not in shared],
                                                seed=cfg.training.seed, params=baseline_params))
                for kind, result in fitted.items():
                    begun = time.perf_counter()
                    scored = baseline_scores(validation, result["model"], key).cache()
                    frame = (scored.toPandas().rename(columns={key: "key"})[["key", "label", "score"]]
                             if cfg.backtest.stack else None)
                    keep(fold, kind, binary_metrics(scored, threshold=threshold).as_dict(),
                         result["seconds"] + time.perf_counter() - begun, frame)
                    scored.unpersist()
                if kinds:
                    how = [f"{', '.join(ks)} {what}" for ks, what in (
                        ([k for k in kinds if k not in missing], "reused"), (shared, "fitted on the train split"))
                        if ks]
                    log.info(f"[backtest] {fold.name} (train to {fold.train[1]}, validate {fold.validation[0]}.."
                             f"{fold.validation[1]}): "
                             + ", ".join(f"{k} {results[(fold.name, k)]['auc']:.4f}" for k in kinds)
                             + (f" ({'; '.join(how)})" if how else "")
                             + f" in {time.perf_counter() - started:.0f}s")
        finally:
            rows.unpersist()
        if "dnn" in models:
            if network is not None:
                take_network(network.result())
                log.info(f"[backtest] the network's {len(todo)} fold(s), side by side with the baselines, in "
                         f"{time.perf_counter() - started_network:.0f}s")
            for fold in fold_list:
                r = results[(fold.name, "dnn")]
                stopped = f"stopped on {fold.stopping[0]:%Y-%m}" if fold.stopping else "no stopping month"
                how = "reused" if fold not in todo else f"{r['seconds']:.0f}s"
                log.info(f"[backtest] {fold.name}: dnn {r['auc']:.4f} (best epoch {r['best_epoch']}, {stopped}, {how})")
    finally:
        pool.shutdown(wait=True)
        if network is not None and not network.exception() and (todo[0].name, "dnn") not in results:
            take_network(network.result())    # the baselines failed: the network's folds are kept
        fold_results.record_results(spark, lakehouse, computed)
        fold_results.record_scores(spark, lakehouse, computed_scores)
    out = [{"model_version": model_version, "model": model, "split": fold.name,
            **{k: results[(fold.name, model)][k] for k in fold_results.METRIC_FIELDS}}
           for model in models for fold in fold_list]
    done = Backtest(out + summary_rows(out), reused=len(keys) - len(computed), computed=len(computed),
                    scores=scores)
    log.info(f"[backtest] {done}")
    return done
