"""Train a candidate, measure it against the baselines, and register it: the nightly train stage.

The candidate (Horovod + Petastorm, `pipelines.ml.training.train`) and the baselines of
`nightly.baselines` (a logistic regression always; gradient-boosted trees, XGBoost's trees) are
all measured on the same pinned `gold.model_input` version, on the train, validation and test
splits and on the backtest folds (`pipelines.ml.backtest`). The candidate is blessed by the
backtest rule (`backtest.decide`), and only when its validation AUC also beats the blessed
model's (measured again on the same rows).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from datetime import date

from pipelines.catalog import FEATURE_SPEC, FEATURES, MODEL_INPUT
from pipelines.config import config_hash
from pipelines.config.settings import CLASSIFICATION
from pipelines.datasets import dataset_for
from pipelines.lineage.pins import upstream
from pipelines.ml import backtest, registry, results, stacking, tracking, tuning
from pipelines.ml.baselines import BASELINE_NAMES, baseline_scores, fit_baselines, model_input_frames
from pipelines.ml.decision import (DECISION_BINS, Decision, DecisionRule, decisions_json,
                                   expected_calibration_error, fit_decision)
from pipelines.ml.evaluation import binary_metrics, calibration, metrics_and_histogram, roc_points, score_histogram
from pipelines.ml.export import export_beside
from pipelines.ml.inputs import model_inputs, spec_of_model
from pipelines.ml.model import load_model
from pipelines.ml.review import write_review
from pipelines.ml.scoring import score, served_scores
from pipelines.ml.training import ROC_FILE, TrainingResult, model_dir_for, read_result, train
from pipelines.stages.gold import ServingError, encode

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


@dataclass
class Candidate:
    entry: registry.ModelEntry
    metrics: list[dict]
    rows_trained: int


def model_version_for(cfg, run_date: date) -> str:
    """Stable per date and configuration, so a nightly run that failed mid-training resumes it."""
    return f"{run_date:%Y%m%d}-{config_hash(cfg)[:8]}"


def dnn_scores(df, model_path: str, decision: Decision | float, key: str):
    """`df` (model-input rows) scored by the saved model and `decision` (a bare number: the raw
    score at that threshold): `key`, label, score, predicted_label."""
    return score(df, model_path, decision, key_columns=(key, "label"))


def train_and_register(cfg, spark, lakehouse, run_id: str, run_date: date) -> Candidate:
    # The best settings `lakehouse-dl tune` found so far (the configured ones before any search);
    # the registry stores the configuration the model was trained with.
    cfg, tuned = tuning.with_best(cfg, lakehouse)
    if tuned:
        log.info(f"[train] with the best trial settings of {', '.join(sorted(tuned))}: {tuned}")
    threshold = cfg.training.threshold
    laps = Laps()
    version_name = model_version_for(cfg, run_date)
    result = read_result(model_dir_for(cfg, version_name))
    if result is not None:
        # Trained by a run that died before registering it: measure and register that model.
        log.info(f"[train] model {version_name} was trained by an earlier attempt; registering it")
    else:
        result = train(cfg, spark, model_version=version_name)
    laps("network")
    version = result.table_versions[MODEL_INPUT]
    frames = {k: v.cache() for k, v in model_input_frames(lakehouse, version, splits=SPLITS).items()}
    kinds = ["logreg", *[k for k in cfg.nightly.baselines if k != "logreg"]]
    log.info(f"[train] baselines: {', '.join(BASELINE_NAMES[k] for k in kinds)} on {MODEL_INPUT} v{version}")
    # Where the same baselines may have been fitted already: this model's folder (a resumed run),
    # then every registered model's, newest first.
    earlier = [result.model_dir, *(os.path.dirname(e.path) for e in reversed(registry.entries(lakehouse)))]
    baselines, reused = nightly_baselines(cfg, spark, lakehouse, version, frames, kinds, tuned, result.model_dir, earlier)
    laps("baselines", note=f"{', '.join(reused)} reused" if reused else "")

    dataset = dataset_for(cfg)
    key = dataset.key
    # Raw scores (the network's output, the baselines' probability): each model's decision is
    # fitted on its validation scores, then applied to every split.
    scorers = {"dnn": lambda df: dnn_scores(df, result.model_path, threshold, key)}
    for kind, fitted in baselines.items():
        scorers[kind] = lambda df, fitted=fitted["model"]: baseline_scores(df, fitted, key)
    present = {split: frames[split].limit(1).count() > 0 for split in SPLITS}
    # Rolling-origin folds inside the train + validation windows: the blessing compares on them,
    # and the stacked ensembles fit on their out-of-fold scores. The fold that trains on the
    # train split scores the baselines just fitted on it.
    measured = backtest.run_backtest(cfg, spark, lakehouse, version, kinds, result.model_version,
                                     baseline_params=tuned,
                                     fitted_on_train={kind: b["model"] for kind, b in baselines.items()})
    stackers = stacking.fit_stackers(measured.scores, cfg.training.seed) if measured.scores else {}
    stack_rows = stacking.fold_rows(spark, measured.scores, stackers, result.model_version, threshold,
                                    cfg.training.seed)
    stacking.save(os.path.join(result.model_dir, stacking.STACK_FILE), stackers)
    laps("backtest", note=str(measured))

    def with_stacks(raws: dict) -> dict:
        """The members' raw scores of one split, and the stacks' scores of the same rows."""
        return {**raws, **{name: stacking.stack_frame(s, raws, key).cache() for name, s in stackers.items()}}

    raw_validation = with_stacks({name: scorer(frames["validation"]).cache() for name, scorer in scorers.items()}
                                 ) if present["validation"] else {}
    decisions = fit_decisions(raw_validation, dataset.decision, threshold,
                              chosen_on=f"the validation split of {MODEL_INPUT} v{version}")
    laps("decisions")

    metrics, roc, kept = [], {}, {}
    for split in SPLITS:
        if not present[split]:
            log.info(f"[train] no {split} rows in {MODEL_INPUT} v{version}: no {split} metrics")
            continue
        # A stack scores the validation and test windows (on train, its members scored their own rows).
        raws = (raw_validation if split == "validation" else
                {name: scorer(frames[split]) for name, scorer in scorers.items()})
        if split == "test":
            raws = with_stacks({name: raw.cache() for name, raw in raws.items()})
        for name, raw in raws.items():
            scored = decisions[name].apply(raw).cache()
            if split != "train":
                kept[(name, split)] = scored   # the review reads them; unpersisted after it
            m, hist = metrics_and_histogram(scored, threshold=decisions[name].threshold)
            metrics.append({"model_version": result.model_version, "model": name, "split": split, **m.as_dict()})
            if split == "test":
                fpr, tpr = roc_points(hist)
                mean_score, observed, rows = calibration(hist)
                roc[name] = {"fpr": fpr, "tpr": tpr, "auc": m.auc, "threshold": decisions[name].threshold,
                             "ece": expected_calibration_error(mean_score, observed, rows),
                             "calibration": {"mean_score": mean_score.tolist(), "observed": observed.tolist()}}
            if split == "train":
                scored.unpersist()
        if split == "test":
            for raw in raws.values():
                raw.unpersist()
    laps("scoring the splits")
    metrics += measured.rows + stack_rows + backtest.summary_rows(stack_rows)
    results.write_metrics(lakehouse, run_id, metrics)
    results.write_history(lakehouse, run_id, result.model_version, result.history)
    # Permutation importance for the network and the trees (the logistic regression is the bar, not a subject).
    shuffled = {"dnn": lambda df: dnn_scores(df, result.model_path, threshold, "_group")}
    if "gbt" in baselines:
        shuffled["gbt"] = lambda df: baseline_scores(df, baselines["gbt"]["model"], "_group")
    write_review(cfg, lakehouse, run_id, result.model_version, kept, shuffled, frames["validation"], decisions)
    laps("review")
    for scored in [*kept.values(), *raw_validation.values()]:
        scored.unpersist()
    with open(os.path.join(result.model_dir, ROC_FILE), "w") as fh:
        json.dump(roc, fh)

    def auc(model: str, split: str = "validation") -> float:
        return next((m["auc"] for m in metrics if m["model"] == model and m["split"] == split), float("nan"))

    current = registry.blessed(lakehouse)
    blessed_auc = None
    if current is not None and current.model_version != result.model_version:
        blessed_auc = _auc_of(cfg, lakehouse, current, frames["validation"], threshold)
    status, reason, serves = bless(metrics, cfg.backtest, kinds, blessed_auc, auc)
    summary = {f"{split}_{m['model']}_auc": m["auc"] for split in (*SPLITS, backtest.MEAN, backtest.SPREAD)
               for m in metrics if m["split"] == split}
    if {f"test_{name}_auc" for name in stacking.STACKS} <= set(summary):
        # What the network adds to the ensemble: the stack with it minus the stack without it.
        for split in ("test", backtest.MEAN):
            summary[f"{split}_network_gain_in_stack"] = (summary.get(f"{split}_stack_auc", float("nan"))
                                                         - summary.get(f"{split}_stack_no_dnn_auc", float("nan")))
    summary.update({f"test_{m['model']}_f1": m["f1"] for m in metrics if m["split"] == "test"})
    summary.update({f"{name}_threshold": d.threshold for name, d in decisions.items()})
    summary.update({f"test_{name}_ece": r["ece"] for name, r in roc.items()})
    entry = registry.ModelEntry(
        model_version=result.model_version, created_at=registry.now(), run_id=run_id, run_date=run_date,
        path=result.model_path, training_table=MODEL_INPUT, training_version=version,
        feature_spec_version=result.table_versions.get(FEATURE_SPEC), config_hash=result.config_hash, code_version=registry.code_version(),
        metrics=json.dumps({"validation_auc": auc(serves),
                            **{f"{kind}_validation_auc": auc(kind) for kind in BASELINE_NAMES},
                            "best_epoch": result.best_epoch,
                            "samples_per_sec": result.samples_per_sec, "wall_seconds": result.wall_seconds,
                            **summary}),
        status=status, reason=reason, decisions=decisions_json(decisions), serves=serves,
        **dependencies(cfg, lakehouse, result))
    publish(cfg, lakehouse, entry, metrics, result, frames["train"], decision=decisions["dnn"],
            extra_artifacts=[os.path.join(result.model_dir, ROC_FILE)])
    registry.register(lakehouse, entry)
    laps("bless, SavedModel, MLflow")
    for frame in frames.values():
        frame.unpersist()
    log.info(f"[train] seconds: {laps}")
    log.info(f"[train] model {result.model_version}: {status}, serving {serves} ({reason})")
    if "test_network_gain_in_stack" in summary:
        log.info(f"[train] the network's gain in the stack (AUC with it minus without it): backtest "
                 f"{summary[f'{backtest.MEAN}_network_gain_in_stack']:+.4f}, test {summary['test_network_gain_in_stack']:+.4f}")
    for line in comparison_lines(metrics):
        log.info(line)
    return Candidate(entry, metrics, result.rows["train"])


def publish(cfg, lakehouse, entry: registry.ModelEntry, metrics: list[dict], result: TrainingResult, train_rows,
            decision=None, head: str = CLASSIFICATION, extra_artifacts: list[str] = ()) -> None:
    """What every registered model gets, whatever its head: the SavedModel with the feature spec
    inside (`pipelines.ml.export`: a classifier's `decision`, or the regression `head`'s
    prediction), so it is served without Spark, and the MLflow run with the registered model
    (`pipelines.ml.tracking`, five of `train_rows` as its input example), its ids set on `entry`."""
    saved_model = None
    if lakehouse.table(FEATURES).exists():
        saved_model = export_beside(lakehouse, result.model_path, entry.feature_spec_version,
                                    owner=f"model {result.model_version}", decision=decision, head=head)
    else:
        # A model trained from a model_input written without the features stage (a test fixture).
        log.warning(f"[train] no {FEATURES} table to read the raw column types from: no SavedModel for "
                    f"{result.model_version}")
    example = model_inputs(train_rows.limit(5).toPandas(), spec_of_model(load_model(result.model_path)))
    entry.mlflow_run_id, entry.mlflow_model_version = tracking.log_model_run(
        cfg, lakehouse, entry, metrics, result.history, example, saved_model_dir=saved_model,
        extra_artifacts=extra_artifacts)


def bless(metrics: list[dict], backtest_cfg, kinds: list[str], blessed_auc: float | None, auc) -> tuple[str, str, str]:
    """(status, reason, what the entry serves): the network is blessed when it beats every
    baseline by the backtest rule (by validation AUC without a backtest) and the blessed model;
    the stacked ensemble, when it beats every single model, the network included, by the same
    rule, and is then served instead of the network."""
    def backtested(model: str) -> bool:
        return any(m["split"] == backtest.MEAN and m["model"] == model for m in metrics)

    if backtested("dnn"):
        status, reason = backtest.decide(metrics, backtest_cfg, blessed_auc, against=kinds)
    else:
        status, reason = registry.decide(auc("dnn"), auc("logreg"), blessed_auc)
    if not backtested(stacking.STACK):
        return status, reason, "dnn"
    stack_status, stack_reason = backtest.decide(metrics, backtest_cfg, blessed_auc, candidate=stacking.STACK,
                                                 against=[*kinds, "dnn"])
    if stack_status == "blessed":
        return stack_status, f"the stack serves: {stack_reason} (network: {reason})", stacking.STACK
    return status, f"{reason} (stack: {stack_reason})", "dnn"


def fit_decisions(raw_validation: dict, rule: DecisionRule, threshold: float, chosen_on: str) -> dict[str, Decision]:
    """{model: its decision}, fitted on its raw validation scores (`raw_validation[model]`) by the
    dataset's `rule`; without validation rows, the raw score at the configured `threshold`."""
    decisions = {}
    for name, raw in raw_validation.items():
        decisions[name] = fit_decision(score_histogram(raw, bins=DECISION_BINS), rule, chosen_on=chosen_on)
        log.info(f"[train] {name} decision: {decisions[name].describe()}")
    return decisions if decisions else {name: Decision.fixed(threshold)
                                        for name in ("dnn", *BASELINE_NAMES, *stacking.STACKS)}


def nightly_baselines(cfg, spark, lakehouse, version: int, frames: dict, kinds: list[str], params: dict | None,
                      model_dir: str, earlier: list[str]) -> tuple[dict[str, dict], list[str]]:
    """The baselines `kinds` fitted on the train split (`fit_baselines`, with `params`), saved in
    `model_dir/baselines/<kind>` beside the fingerprint of what they were fitted from
    (`<kind>.json`: the train and validation files, spec, seed, settings, code and libraries, as
    `pipelines.ml.fold_results` takes them). A baseline whose fingerprint one saved in an `earlier`
    model folder (newest first) has is copied from there instead of fitted again: the same
    inputs fit the same model.

    Returns ({kind: {"model": the fitted PipelineModel}}, the kinds reused).
    """
    from pyspark.ml import PipelineModel

    from pipelines.ml import fold_results
    from pipelines.ml.tensors import load_feature_spec, pin_snapshot

    snapshot = pin_snapshot(lakehouse, version)
    shared = fold_results.shared_inputs(lakehouse, snapshot, load_feature_spec(lakehouse, snapshot))
    prints = {kind: fold_results.fingerprint_of({**shared, "model": kind, "fitted_on": "the train split",
                                                 "settings": fold_results.model_settings(cfg, kind, None, params)})
              for kind in kinds}
    out, reused = {}, []
    for kind in kinds:
        target = os.path.join(model_dir, "baselines", kind)
        source = next((os.path.join(d, "baselines", kind) for d in earlier
                       if _fingerprint_at(os.path.join(d, "baselines", kind)) == prints[kind][0]), None)
        if source and os.path.abspath(source) != os.path.abspath(target):
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)
            reused.append(kind)
        if source:
            out[kind] = {"model": PipelineModel.load(target)}
    todo = [k for k in kinds if k not in out]
    if todo:
        fitted = fit_baselines(spark, frames["train"], frames["validation"], kinds=todo, seed=cfg.training.seed,
                               params=params)
        for kind, result in fitted.items():
            result["model"].write().overwrite().save(os.path.join(model_dir, "baselines", kind))
            out[kind] = result
    for kind in kinds:
        fp, inputs = prints[kind]
        with open(os.path.join(model_dir, "baselines", f"{kind}.json"), "w") as fh:
            json.dump({"fingerprint": fp, "inputs": json.loads(inputs)}, fh)
    return {kind: out[kind] for kind in kinds}, reused


def _fingerprint_at(saved: str) -> str | None:
    """The fingerprint recorded beside a saved baseline (None without one, or without the model)."""
    try:
        with open(f"{saved}.json") as fh:
            return json.load(fh)["fingerprint"] if os.path.isdir(saved) else None
    except (OSError, ValueError, KeyError):
        return None


class Laps:
    """Seconds per part of the train stage: `laps("name")` closes the part that began at the
    previous call, `note` saying what it did (what the backtest reused); str() lists them, for the
    stage's log.

        >>> laps("backtest", note="6 of 9 fold results reused, 3 computed"); str(laps)
        'network 29, baselines 60, backtest 41 (6 of 9 fold results reused, 3 computed)'
    """

    def __init__(self):
        self.last, self.seconds, self.notes = time.perf_counter(), {}, {}

    def __call__(self, name: str, note: str = "") -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self.last
        self.last = now
        if note:
            self.notes[name] = note

    def __str__(self) -> str:
        return ", ".join(f"{name} {s:.0f}" + (f" ({self.notes[name]})" if name in self.notes else "")
                         for name, s in self.seconds.items())


def dependencies(cfg, lakehouse, result: TrainingResult) -> dict:
    """The registry fields that pin what a model depends on (see `pipelines.ml.registry`): every
    table version it read, transitively, the merged configuration, seeds, libraries, processes."""
    read = {MODEL_INPUT: result.table_versions[MODEL_INPUT], FEATURE_SPEC: result.table_versions[FEATURE_SPEC]}
    devices = [r.get("device") or "unknown" for r in result.ranks]
    return {"pins": json.dumps(upstream(lakehouse, read)),
            "config": json.dumps(cfg.to_dict(), sort_keys=True),
            "seeds": json.dumps(registry.seeds(cfg.training)),
            "libraries": json.dumps(registry.environment(devices)),
            "num_proc": result.num_proc}


def validation_rows_of(cfg, lakehouse, entry: registry.ModelEntry, validation):
    """The candidate's `validation` rows (model-input rows: their keys are used) as the registry
    `entry` (the blessed model) reads them: their gold.features rows encoded with its own feature
    spec. Raises ServingError when that spec cannot be read any more."""
    from pyspark.sql import functions as F

    key = dataset_for(cfg).key
    # The validation split holds the validation window's days only: no other day of
    # gold.features is read (its layout skips the files by `date`).
    first, last = cfg.split("validation")
    rows = (lakehouse.table(FEATURES).read().filter(F.col("date").between(F.lit(first), F.lit(last)))
            .join(validation.select(key), key))
    return encode(cfg, lakehouse, rows, entry.feature_spec_version, owner=f"model {entry.model_version}")


def _auc_of(cfg, lakehouse, entry: registry.ModelEntry, validation, threshold: float) -> float | None:
    """The blessed model's AUC on the candidate's validation rows, encoded with the blessed model's
    own feature spec; its recorded AUC when that spec cannot be read any more."""
    from pyspark.sql import functions as F

    try:
        key = dataset_for(cfg).key
        encoded = validation_rows_of(cfg, lakehouse, entry, validation)
        scored = served_scores(encoded.filter(F.col("label").isNotNull()), entry, key, key_columns=(key, "label"))
        return binary_metrics(scored, threshold).auc
    except ServingError as exc:
        recorded = entry.metric.get("validation_auc")
        log.warning(f"[train] blessed model {entry.model_version} cannot be measured again ({exc}); "
                    f"comparing with its recorded validation AUC {recorded}")
        return recorded


def comparison_lines(metrics: list[dict]) -> list[str]:
    """The AUC of every model on every split, as a small table (one line per model)."""
    models = sorted({m["model"] for m in metrics}, key=lambda n: (n != "dnn", n))
    splits = [s for s in (*SPLITS, backtest.MEAN, backtest.SPREAD) if any(m["split"] == s for m in metrics)]
    width = max([12, *(len(s) + 2 for s in splits)])
    lines = ["[train] AUC        " + "".join(f"{s:>{width}}" for s in splits)]
    for model in models:
        cells = []
        for s in splits:
            v = next((m["auc"] for m in metrics if m["model"] == model and m["split"] == s), float("nan"))
            cells.append(f"{v:>{width}.4f}")
        lines.append(f"[train] {model:10}" + "".join(cells))
    return lines


def compare_with_baselines(cfg, spark, lakehouse, result: TrainingResult, kinds: list[str]) -> dict[str, dict]:
    """Fit the baselines `kinds` on the rows `result` was trained on and measure the model's AUC
    over the whole validation split the same way (`lakehouse-dl train`); returns the baselines'
    results and sets `result.best_metrics["val_auc"]` to that AUC.

    The epoch lines show the mean of each rank's AUC on its shard, which is close, not equal.
    """
    if not kinds or cfg.training.head != CLASSIFICATION:
        return {}
    frames = model_input_frames(lakehouse, result.table_versions[MODEL_INPUT])
    baselines = fit_baselines(spark, frames["train"], frames["validation"], kinds=kinds, seed=cfg.training.seed)
    scored = dnn_scores(frames["validation"], result.model_path, cfg.training.threshold, dataset_for(cfg).key)
    result.best_metrics = {**result.best_metrics, "val_auc": binary_metrics(scored, cfg.training.threshold).auc}
    return baselines
