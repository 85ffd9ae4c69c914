"""The driver side of training: pin the snapshot and the feature spec, write the plan, run it in
this process or in N Horovod processes (`horovod.spark.run`, Gloo), and gather the result.

    >>> result = train(cfg, spark)                               # cfg.training.num_proc workers
    >>> result = train(cfg, num_proc=1)                          # no Spark, no Horovod
    >>> result = train(cfg, spark, model_version=result.model_version)   # resume a failed run
    >>> model = pipelines.ml.model.load_model(result.model_path)
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import asdict, replace
from datetime import datetime, timezone

import cloudpickle

from pipelines.catalog import FEATURE_SPEC, MODEL_INPUT
from pipelines.config import config_hash
from pipelines.config.settings import REGRESSION
from pipelines.console import RankOutput
from pipelines.ml.model import TargetScale, label_for
from pipelines.ml.tensors import SplitFiles, check_shardable, load_feature_spec, pin_snapshot
from pipelines.ml.training.launch import rank_entry, shipped_files
from pipelines.ml.training.plan import (MODEL_FILE, RESULT_FILE, SPEC_FILE, STATE_FILE, TrainingError, TrainingPlan,
                                        TrainingResult, model_dir_for, read_state, write_json)
from pipelines.ml.training.worker import run_training
from pipelines.storage import Lakehouse
from pipelines.storage.spark import lost_executors

log = logging.getLogger(__name__)


def new_model_version() -> str:
    """A sortable, unique model version: UTC time plus a short random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def train(cfg, spark=None, *, model_version: str | None = None, table_version: int | None = None,
          spec_version: int | None = None, num_proc: int | None = None, callbacks: tuple = (),
          verbose: bool = True, return_weights: bool = False) -> TrainingResult:
    """Train the model on `gold.model_input` at `table_version` (latest when None) and save it.

    `num_proc` (default `cfg.training.num_proc`) of 1 trains in this process, without Spark or
    Horovod; more runs the same function in that many Horovod processes through
    `horovod.spark.run` (Gloo), which needs `spark`. Running again with the `model_version` of a run
    that failed resumes from its last epoch checkpoint, on the table versions that run pinned.
    `callbacks` are extra Keras callbacks for every rank (their classes must import on the workers).

    Returns a `TrainingResult`; raises `TrainingError` when a worker fails, and then no model is saved.
    """
    started = time.time()
    num_proc = num_proc or cfg.training.num_proc
    if num_proc > 1:
        _answer_horovod_build_check()
    model_version = model_version or new_model_version()
    model_dir = model_dir_for(cfg, model_version)
    lakehouse = Lakehouse.from_config(cfg, spark)
    state = read_state(model_dir)
    if state:
        _check_resumable(state, cfg, model_version, table_version, spec_version)
        table_version = state["table_versions"][MODEL_INPUT]
        spec_version = state["table_versions"][FEATURE_SPEC]
    snapshot = pin_snapshot(lakehouse, table_version)
    # Fail here, with the reason, rather than as N worker processes exiting non-zero.
    for split in ("train", "validation"):
        check_shardable(snapshot.splits[split], num_proc)
    spec = load_feature_spec(lakehouse, snapshot, spec_version)
    if cfg.training.architecture != "sequence":
        # Only the sequence model reads the seq_* columns: the others neither read nor record them,
        # so a table that declares sequences trains the same mlp or cross model as one that does not.
        spec = replace(spec, sequences={})
    if not state:
        state = {
            "model_version": model_version,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "table_versions": {snapshot.table: snapshot.version, FEATURE_SPEC: spec.version},
            "training_config_hash": _training_hash(cfg),
            "config_hash": config_hash(cfg),
            "epochs_done": 0, "history": [], "best_epoch": 0, "best_score": None, "wait": 0,
            "stopped_early": False,
        }
        os.makedirs(model_dir, exist_ok=True)
        write_json(os.path.join(model_dir, STATE_FILE), state)
    write_json(os.path.join(model_dir, SPEC_FILE), spec.to_dict())
    target_scale = target_scale_of(snapshot.splits["train"], label_for(cfg.training)) \
        if cfg.training.head == REGRESSION else None
    plan = TrainingPlan(cfg.training, spec, snapshot.splits["train"], snapshot.splits["validation"],
                        model_version, model_dir, distributed=num_proc > 1, verbose=verbose,
                        return_weights=return_weights, callbacks=tuple(callbacks), target_scale=target_scale)
    model_path = os.path.join(model_dir, MODEL_FILE)
    had_model = os.path.exists(model_path)
    # From here on, an executor Spark removes is one the ranks ran in: a failure names it.
    ranks_started = datetime.now(timezone.utc)
    try:
        if num_proc == 1:
            per_rank = [run_training(plan)]
        else:
            per_rank = _run_horovod(plan, spark, num_proc)
    except BaseException as exc:
        # A model written by this attempt may come from ranks that did not all finish: drop it.
        if not had_model and os.path.exists(model_path):
            os.remove(model_path)
        done = (read_state(model_dir) or {}).get("epochs_done", 0)
        if isinstance(exc, KeyboardInterrupt):
            raise
        lost = lost_executors(spark, ranks_started) if spark is not None and num_proc > 1 else []
        cause = f"Spark lost {', '.join(lost)}. " if lost else ""
        raise TrainingError(
            f"training of model {model_version} failed ({num_proc} process(es)): {cause}{type(exc).__name__}: {exc}\n"
            f"No model was produced. {done} epoch(s) are checkpointed under {model_dir}; run again with "
            f"model version {model_version} to resume from there.") from exc

    chief = per_rank[0]
    history = chief["history"]
    best = next((h for h in history if h["epoch"] == chief["best_epoch"]), history[-1])
    result = TrainingResult(
        model_version=model_version, model_path=model_path, model_dir=model_dir, head=cfg.training.head,
        table_versions=dict(state["table_versions"]),
        rows={"train": plan.train.rows, "validation": plan.validation.rows},
        history=history, best_epoch=chief["best_epoch"], best_metrics=best,
        initial_epoch=chief["initial_epoch"], epochs_run=len(history), stopped_early=chief["stopped_early"],
        num_proc=num_proc, wall_seconds=round(time.time() - started, 2),
        samples_per_sec=_steady_rate(history, chief["initial_epoch"]),
        config_hash=state["config_hash"],
        ranks=[{k: r.get(k) for k in ("rank", "host", "pid", "cwd", "package", "device")} for r in per_rank],
        weights=[r.get("weights") for r in per_rank] if return_weights else None)
    write_json(os.path.join(model_dir, RESULT_FILE), result.to_dict())
    return result


def target_scale_of(split: SplitFiles, column: str) -> TargetScale:
    """The regression target's scale on the rows `split` trains on (its files, its days), read
    with pyarrow on the driver: one column of the training rows."""
    from urllib.parse import urlparse

    import numpy as np
    import pyarrow.parquet as pq

    values = []
    for uri in split.files:
        path = urlparse(uri).path if uri.startswith("file:") else uri
        table = pq.read_table(path, columns=[column, "day"] if split.days else [column])
        y = table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
        if split.days:
            day = table.column("day").to_numpy(zero_copy_only=False)
            y = y[(day >= split.days[0]) & (day <= split.days[1])]
        values.append(y)
    return TargetScale.fit(np.concatenate(values) if values else [])


def _steady_rate(history: list[dict], initial_epoch: int) -> float:
    """Mean samples/sec of this call's epochs, leaving out its first (which traces the graph)."""
    ran = [h for h in history if h["epoch"] > initial_epoch]
    steady = ran[1:] or ran or history
    return round(sum(h["samples_per_sec"] for h in steady) / max(1, len(steady)), 1)


def _answer_horovod_build_check() -> None:
    """Answer Horovod's "was Gloo built?" question in this process, before `horovod.spark.run` asks.

    `horovod.spark.run` asks it by forking this process, importing `horovod.tensorflow` in the
    child and reading the answer from a queue. Forked from a process whose TensorFlow, Petastorm or
    Spark threads are running (a test session, a notebook, a bench that trained before), the child
    can die before answering, and the run fails with a bare `queue.Empty` (horovod/horovod#2161,
    #1831; it failed CI once here). The extension is loaded here instead, with no fork, and the
    runner is given the answer: a Horovod built without Gloo is still refused by the runner.
    """
    try:
        import horovod.spark.runner as runner
        import horovod.tensorflow as hvd
    except ImportError:
        return
    built = bool(hvd.gloo_built())
    runner.gloo_built = lambda verbose=False: built


def _run_horovod(plan: TrainingPlan, spark, num_proc: int) -> list[dict]:
    if spark is None:
        raise TrainingError(f"training with {num_proc} processes runs under horovod.spark.run and needs a SparkSession; "
                            "pass spark=..., or num_proc=1 to train in this process")
    import horovod.spark

    slots = spark.sparkContext.defaultParallelism
    if slots < num_proc:
        raise TrainingError(f"training.num_proc={num_proc} needs {num_proc} Spark task slots but this Spark has "
                            f"{slots}; lower training.num_proc or give Spark more cores")
    # The plan travels as bytes, unpickled by each rank once the shipped package is on its path.
    # The ranks' stdout (rank 0's epoch lines) reaches this stdout without Horovod's `[0]<stdout>:`
    # prefix; their stderr (TensorFlow's warnings) is logged at DEBUG, and its last lines are
    # shown when training fails.
    out, err = RankOutput("stdout"), RankOutput("stderr")
    try:
        results = horovod.spark.run(rank_entry, args=(cloudpickle.dumps(plan), shipped_files(spark)),
                                    num_proc=num_proc, use_gloo=True,
                                    verbose=1 if plan.verbose else 0, stdout=out, stderr=err,
                                    start_timeout=int(os.environ.get("HOROVOD_SPARK_START_TIMEOUT", "300")))
    except Exception:
        err.flush()
        if err.tail:
            log.warning("the Horovod ranks' last lines on stderr:\n" + "\n".join(err.tail))
        raise
    finally:
        out.flush()
    if len(results) != num_proc or any(r is None for r in results):
        raise TrainingError(f"{num_proc} Horovod processes were started but only "
                            f"{sum(r is not None for r in results)} returned a result")
    return sorted(results, key=lambda r: r["rank"])


def _check_resumable(state: dict, cfg, model_version: str, table_version, spec_version) -> None:
    pinned = state["table_versions"]
    if table_version is not None and table_version != pinned[MODEL_INPUT]:
        raise TrainingError(f"model {model_version} was trained on {MODEL_INPUT} v{pinned[MODEL_INPUT]}; "
                            f"it cannot resume on v{table_version}. Use a new model version.")
    if spec_version is not None and spec_version != pinned[FEATURE_SPEC]:
        raise TrainingError(f"model {model_version} was trained with {FEATURE_SPEC} v{pinned[FEATURE_SPEC]}; "
                            f"it cannot resume with v{spec_version}. Use a new model version.")
    if state["training_config_hash"] != _training_hash(cfg):
        raise TrainingError(f"model {model_version} was started with another training configuration (other than "
                            "epochs); resuming it would mix two models. Use a new model version.")
    if state.get("stopped_early") or state["epochs_done"] >= cfg.training.epochs:
        raise TrainingError(f"model {model_version} is already trained ({state['epochs_done']} epoch(s)"
                            f"{', stopped early' if state.get('stopped_early') else ''}); "
                            "use a new model version, or more training.epochs to continue it")


def _training_hash(cfg) -> str:
    """Hash of the training settings that shape the model; `epochs` may grow on a resume."""
    settings = {k: v for k, v in asdict(cfg.training).items() if k not in ("epochs", "num_proc", "baselines", "naive_forecasts")}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
