"""The training function: one process (notebooks, debugging) or N Horovod processes under
`horovod.spark.run`, on a pinned `gold.model_input` version, with a checkpoint every epoch.

    >>> result = train(cfg, spark)                               # cfg.training.num_proc workers
    >>> result = train(cfg, num_proc=1)                          # no Spark, no Horovod
    >>> result = train(cfg, spark, model_version=result.model_version)   # resume a failed run
    >>> model = pipelines.model.load_model(result.model_path)
"""
from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from pipelines.tensors import FEATURE_SPEC, FeatureSpec, SplitFiles

MODEL_FILE = "model.keras"
STATE_FILE = "state.json"
RESULT_FILE = "result.json"
SPEC_FILE = "feature_spec.json"
CHECKPOINT_PREFIX = "epoch"


class TrainingError(RuntimeError):
    """Training cannot start or did not finish; no model was produced by this call."""


@dataclass
class TrainingPlan:
    """Everything one rank needs, shipped to every Horovod process (it pickles)."""

    training: Any                       # pipelines.config.TrainingConfig
    spec: FeatureSpec
    train: SplitFiles
    validation: SplitFiles
    model_version: str
    model_dir: str
    distributed: bool = False
    verbose: bool = True
    return_weights: bool = False
    callbacks: tuple = ()


@dataclass
class TrainingResult:
    """What a training run produced; `to_dict()` is what the results table and registry record."""

    model_version: str
    model_path: str
    model_dir: str
    head: str
    table_versions: dict[str, int]
    rows: dict[str, int]
    history: list[dict]
    best_epoch: int
    best_metrics: dict[str, float]
    initial_epoch: int
    epochs_run: int
    stopped_early: bool
    num_proc: int
    wall_seconds: float
    samples_per_sec: float
    config_hash: str
    weights: list | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("weights")
        return out


# --------------------------------------------------------------------------------------------
# Driver side


def model_dir_for(cfg, model_version: str) -> str:
    """Where a model version's checkpoints and final model live: `<root>/models/<model_version>`."""
    return os.path.join(cfg.lakehouse.root, "models", model_version)


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
    from pipelines.config import config_hash
    from pipelines.lakehouse import Lakehouse
    from pipelines.tensors import check_shardable, load_feature_spec, pin_snapshot

    started = time.time()
    num_proc = num_proc or cfg.training.num_proc
    _check_horovod_build_early()
    model_version = model_version or new_model_version()
    model_dir = model_dir_for(cfg, model_version)
    lakehouse = Lakehouse.from_config(cfg, spark)
    state = read_state(model_dir)
    if state:
        _check_resumable(state, cfg, model_version, table_version, spec_version)
        table_version = state["table_versions"]["gold.model_input"]
        spec_version = state["table_versions"][FEATURE_SPEC]
    snapshot = pin_snapshot(lakehouse, table_version)
    # Fail here, with the reason, rather than as N worker processes exiting non-zero.
    for split in ("train", "validation"):
        check_shardable(snapshot.splits[split], num_proc)
    spec = load_feature_spec(lakehouse, snapshot, spec_version)
    if not state:
        state = {
            "model_version": model_version,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "table_versions": {snapshot.table: snapshot.version, FEATURE_SPEC: spec.version},
            "training_config_hash": _training_hash(cfg),
            "config_hash": config_hash(cfg),
            "epochs_done": 0, "history": [], "best_epoch": 0, "best_val_loss": None, "wait": 0,
            "stopped_early": False,
        }
        os.makedirs(model_dir, exist_ok=True)
        write_json(os.path.join(model_dir, STATE_FILE), state)
    write_json(os.path.join(model_dir, SPEC_FILE), spec.to_dict())
    plan = TrainingPlan(cfg.training, spec, snapshot.splits["train"], snapshot.splits["validation"],
                        model_version, model_dir, distributed=num_proc > 1, verbose=verbose,
                        return_weights=return_weights, callbacks=tuple(callbacks))
    model_path = os.path.join(model_dir, MODEL_FILE)
    had_model = os.path.exists(model_path)
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
        raise TrainingError(
            f"training of model {model_version} failed ({num_proc} process(es)): {type(exc).__name__}: {exc}\n"
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
        weights=[r.get("weights") for r in per_rank] if return_weights else None)
    write_json(os.path.join(model_dir, RESULT_FILE), result.to_dict())
    return result


def _steady_rate(history: list[dict], initial_epoch: int) -> float:
    """Mean samples/sec of this call's epochs, leaving out its first (which traces the graph)."""
    ran = [h for h in history if h["epoch"] > initial_epoch]
    steady = ran[1:] or ran or history
    return round(sum(h["samples_per_sec"] for h in steady) / max(1, len(steady)), 1)


def _check_horovod_build_early() -> None:
    """Run Horovod's "was Gloo built?" check now, while this process has not trained yet.

    `horovod.spark.run` asks it by forking this process and importing `horovod.tensorflow` in the
    child, then reading the answer from a queue; the answer is cached per process. Forked from a
    process whose TensorFlow and Petastorm threads are running (after a training in this process,
    as `bench.horovod_scaling` and notebooks do), the child can die before answering, and the run
    fails with a bare `queue.Empty` (horovod/horovod#2161, #1831). Asked here first, with the
    arguments `horovod.spark.run` will use (verbose < 2 → False), later runs read the cache.
    """
    try:
        from horovod.common.util import gloo_built
    except ImportError:
        return
    gloo_built(verbose=False)


def _run_horovod(plan: TrainingPlan, spark, num_proc: int) -> list[dict]:
    if spark is None:
        raise TrainingError(f"training with {num_proc} processes runs under horovod.spark.run and needs a SparkSession; "
                            "pass spark=..., or num_proc=1 to train in this process")
    import horovod.spark

    slots = spark.sparkContext.defaultParallelism
    if slots < num_proc:
        raise TrainingError(f"training.num_proc={num_proc} needs {num_proc} Spark task slots but this Spark has "
                            f"{slots}; lower training.num_proc or give Spark more cores")
    results = horovod.spark.run(run_training, args=(plan,), num_proc=num_proc, use_gloo=True,
                                verbose=1 if plan.verbose else 0,
                                start_timeout=int(os.environ.get("HOROVOD_SPARK_START_TIMEOUT", "300")))
    if len(results) != num_proc or any(r is None for r in results):
        raise TrainingError(f"{num_proc} Horovod processes were started but only "
                            f"{sum(r is not None for r in results)} returned a result")
    return sorted(results, key=lambda r: r["rank"])


def _check_resumable(state: dict, cfg, model_version: str, table_version, spec_version) -> None:
    pinned = state["table_versions"]
    if table_version is not None and table_version != pinned["gold.model_input"]:
        raise TrainingError(f"model {model_version} was trained on gold.model_input v{pinned['gold.model_input']}; "
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
    import hashlib

    settings = {k: v for k, v in asdict(cfg.training).items() if k not in ("epochs", "num_proc", "baselines")}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def read_state(model_dir: str) -> dict | None:
    """The progress file of a model version (epochs done, history, early-stopping state), if any."""
    path = os.path.join(model_dir, STATE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_json(path: str, data: dict) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never half of one."""
    partial = f"{path}.{os.getpid()}.partial"
    with open(partial, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(partial, path)


# --------------------------------------------------------------------------------------------
# Rank side: the function every process runs


def run_training(plan: TrainingPlan) -> dict:
    """Train on this process's shard; the same function runs alone or as one of N Horovod ranks.

    Rank 0 writes the checkpoints, the progress file and the final model; every rank returns its
    rank, and rank 0 also the history, best epoch and where training resumed from.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    from pipelines.model import build_model, compile_model, dropout_generators, label_for, make_optimizer
    from pipelines.tensors import cache_locally, make_dataset, steps_per_epoch

    cfg = plan.training
    hvd = None
    rank, size, local_rank = 0, 1, 0
    if plan.distributed:
        import horovod.tensorflow.keras as hvd

        hvd.init()
        rank, size, local_rank = hvd.rank(), hvd.size(), hvd.local_rank()
    _configure_devices(tf, cfg, local_rank)
    # Same seed on every rank: identical initial weights even before rank 0's broadcast.
    tf.keras.utils.set_random_seed(cfg.seed)

    state = read_state(plan.model_dir)
    initial_epoch = state["epochs_done"]
    train_split, val_split = plan.train, plan.validation
    if cfg.local_cache:
        train_split, val_split = cache_locally(train_split), cache_locally(val_split)
    label = label_for(cfg)
    steps = steps_per_epoch(train_split.rows, cfg.batch_size, size, cfg.max_train_rows)
    train_ds = make_dataset(train_split, plan.spec, cfg, label=label, rank=rank, num_ranks=size,
                            training=True, first_epoch=initial_epoch, epochs=cfg.epochs)
    val_ds = make_dataset(val_split, plan.spec, cfg, label=label, rank=rank, num_ranks=size, training=False)

    model = build_model(plan.spec, cfg)
    # Linear scaling rule: N workers take N times larger global batches, so N times the rate.
    optimizer = make_optimizer(cfg, learning_rate=cfg.learning_rate * size)
    if hvd is not None:
        # Embedding gradients are sparse; these tables are small, so a dense allreduce is cheaper
        # than Gloo's allgather of slices.
        optimizer = hvd.DistributedOptimizer(optimizer, sparse_as_dense=True)
    compile_model(model, cfg, optimizer)

    checkpoint_dir = os.path.join(plan.model_dir, "checkpoints")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, **dropout_generators(model))
    if initial_epoch:
        # Every rank restores (the lakehouse root is shared storage), so all resume from the same state.
        checkpoint.restore(os.path.join(checkpoint_dir, f"{CHECKPOINT_PREFIX}-{initial_epoch}"))
    if hvd is not None:
        import horovod.tensorflow as hvd_tf

        hvd_tf.broadcast_variables(model.variables, root_rank=0)

    progress = EpochProgress(plan, state, rank, size, checkpoint, checkpoint_dir)
    callbacks = [Throughput(steps * cfg.batch_size * size)]
    if hvd is not None:
        callbacks += [hvd.callbacks.BroadcastGlobalVariablesCallback(0), hvd.callbacks.MetricAverageCallback()]
    callbacks += [WarmupSchedule(cfg.learning_rate, size, cfg.warmup_epochs, steps), progress, *plan.callbacks]

    if initial_epoch and rank == 0 and plan.verbose:
        print(f"resuming model {plan.model_version} after epoch {initial_epoch}", flush=True)
    model.fit(train_ds, epochs=cfg.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
              validation_data=val_ds, callbacks=callbacks, verbose=0)

    if hvd is not None:
        # Nobody returns before every rank finished its last step (a late failure fails the job).
        hvd_tf.allreduce(tf.constant(0.0), name="training_done")
    out: dict[str, Any] = {"rank": rank}
    if rank == 0:
        _export_best(plan, progress.best_epoch)
        out.update(history=progress.history, best_epoch=progress.best_epoch, initial_epoch=initial_epoch,
                   stopped_early=progress.stopped_early)
    if plan.return_weights:
        out["weights"] = [np.asarray(w) for w in model.get_weights()]
    return out


def _configure_devices(tf, cfg, local_rank: int) -> None:
    try:
        tf.config.threading.set_intra_op_parallelism_threads(cfg.threads_per_proc)
        tf.config.threading.set_inter_op_parallelism_threads(cfg.threads_per_proc)
    except RuntimeError:
        # TensorFlow already started in this process (a notebook, a test): keep its thread pools.
        pass
    gpus = tf.config.list_physical_devices("GPU")
    try:
        if cfg.use_gpu and gpus:
            # One GPU per process, chosen by the local rank; NCCL then does the allreduce.
            gpu = gpus[local_rank % len(gpus)]
            tf.config.set_visible_devices(gpu, "GPU")
            tf.config.experimental.set_memory_growth(gpu, True)
        else:
            tf.config.set_visible_devices([], "GPU")
            # On CPU every op has a deterministic kernel: same seed and data, same model.
            tf.config.experimental.enable_op_determinism()
    except RuntimeError:
        pass


def _export_best(plan: TrainingPlan, best_epoch: int) -> None:
    """Save the best epoch's weights as the model (`model.keras`), atomically, without optimizer."""
    import tensorflow as tf

    from pipelines.model import build_model

    export = build_model(plan.spec, plan.training)
    path = os.path.join(plan.model_dir, "checkpoints", f"{CHECKPOINT_PREFIX}-{best_epoch}")
    tf.train.Checkpoint(model=export).restore(path).expect_partial()
    partial = os.path.join(plan.model_dir, f"partial-{os.getpid()}.{MODEL_FILE}")
    export.save(partial)
    os.replace(partial, os.path.join(plan.model_dir, MODEL_FILE))


# --------------------------------------------------------------------------------------------
# Callbacks


def _keras_callback_base():
    import tensorflow as tf

    return tf.keras.callbacks.Callback


class Throughput(_keras_callback_base()):
    """Adds `samples_per_sec` (this rank's training rate times the number of ranks), `seconds`, and
    `cpu_cores` (CPU seconds of this process per second of training).

    It runs before Horovod's metric averaging, so the logged value is the sum over ranks.
    """

    def __init__(self, samples_per_epoch_all_ranks: int):
        super().__init__()
        self.samples = samples_per_epoch_all_ranks
        self._start = self._train_end = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._train_end = time.perf_counter(), 0.0
        self._cpu_start, self._cpu_train_end = time.process_time(), 0.0

    def on_test_begin(self, logs=None):
        if not self._train_end:
            self._train_end, self._cpu_train_end = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        end, cpu_end = time.perf_counter(), time.process_time()
        train_seconds = (self._train_end or end) - self._start
        if logs is not None:
            logs["samples_per_sec"] = self.samples / max(train_seconds, 1e-9)
            logs["seconds"] = end - self._start
            # Cores this process kept busy while training (TensorFlow, the reader's threads, Horovod's
            # background thread), averaged over ranks like the other logs.
            logs["cpu_cores"] = ((self._cpu_train_end or cpu_end) - self._cpu_start) / max(train_seconds, 1e-9)


class WarmupSchedule(_keras_callback_base()):
    """Learning rate from `base_lr` up to `base_lr * size` over the first `warmup_epochs`, batch by batch.

    Large global batches diverge if they start at the scaled rate (Goyal et al., 2017); the rate
    depends only on (epoch, batch), so a resumed run follows the same schedule.
    """

    def __init__(self, base_lr: float, size: int, warmup_epochs: int, steps_per_epoch: int):
        super().__init__()
        self.base_lr, self.size = base_lr, size
        self.warmup_steps = warmup_epochs * steps_per_epoch
        self.steps_per_epoch = steps_per_epoch
        self._epoch = 0

    def rate(self, epoch: int, batch: int) -> float:
        step = epoch * self.steps_per_epoch + batch + 1
        if self.size == 1 or step >= self.warmup_steps:
            return self.base_lr * self.size
        return self.base_lr * (1 + (self.size - 1) * step / self.warmup_steps)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._set(self.rate(epoch, 0))

    def on_train_batch_begin(self, batch, logs=None):
        if (self._epoch * self.steps_per_epoch + batch) < self.warmup_steps:
            self._set(self.rate(self._epoch, batch))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(tf_value(self.model.optimizer.lr))

    def _set(self, value: float) -> None:
        import tensorflow as tf

        tf.keras.backend.set_value(self.model.optimizer.lr, value)


def tf_value(variable) -> float:
    import tensorflow as tf

    return float(tf.keras.backend.get_value(variable))


class EpochProgress(_keras_callback_base()):
    """History, early stopping on validation loss, one line per epoch, and (rank 0) a checkpoint
    plus the progress file after every epoch, so a failed run resumes where it stopped.

    Every rank sees the same averaged metrics, so every rank takes the same early-stopping decision.
    """

    def __init__(self, plan: TrainingPlan, state: dict, rank: int, size: int, checkpoint, checkpoint_dir: str):
        super().__init__()
        self.plan, self.state, self.rank, self.size = plan, state, rank, size
        self.checkpoint, self.checkpoint_dir = checkpoint, checkpoint_dir
        self.history: list[dict] = list(state["history"])
        self.best_epoch: int = state["best_epoch"]
        self.best_val_loss = state["best_val_loss"]
        self.wait: int = state["wait"]
        self.stopped_early = False

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        entry = {"epoch": epoch + 1, **{k: float(v) for k, v in sorted(logs.items())}}
        self.history.append(entry)
        val_loss = entry.get("val_loss", entry["loss"])
        if self.best_val_loss is None or val_loss < self.best_val_loss:
            self.best_val_loss, self.best_epoch, self.wait = val_loss, epoch + 1, 0
        else:
            self.wait += 1
        patience = self.plan.training.early_stopping_patience
        if patience and self.wait >= patience:
            self.stopped_early = True
            self.model.stop_training = True
        if self.rank == 0:
            self.checkpoint.write(os.path.join(self.checkpoint_dir, f"{CHECKPOINT_PREFIX}-{epoch + 1}"))
            self.state.update(epochs_done=epoch + 1, history=self.history, best_epoch=self.best_epoch,
                              best_val_loss=self.best_val_loss, wait=self.wait, stopped_early=self.stopped_early)
            write_json(os.path.join(self.plan.model_dir, STATE_FILE), self.state)
            if self.plan.verbose:
                print(format_epoch(entry, self.plan.training.epochs, self.size), flush=True)


def format_epoch(entry: dict, epochs: int, ranks: int) -> str:
    """One line per epoch: loss and AUC (or MAE) on train and validation, samples/sec over all ranks."""
    metric = "auc" if "auc" in entry else "mae"

    def val(key):
        return f"{entry[key]:.4f}" if key in entry else "-"

    return (f"epoch {entry['epoch']:>2}/{epochs}  loss {val('loss')}  {metric} {val(metric)}  |  "
            f"val_loss {val('val_loss')}  val_{metric} {val('val_' + metric)}  |  "
            f"{entry.get('samples_per_sec', 0):,.0f} samples/s ({ranks} rank{'s' if ranks > 1 else ''})  "
            f"{entry.get('seconds', 0):.1f}s")

