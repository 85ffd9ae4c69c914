"""The rank side of training: the function every process runs, alone or as one of N Horovod ranks.

Imported without TensorFlow (the driver ships `run_training` to the ranks); TensorFlow, Horovod
and the callbacks are imported inside it, in the process that trains.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from pipelines.console import configure_logging, configured
from pipelines.ml.model import build_model, compile_model, dropout_generators, label_for, make_optimizer
from pipelines.ml.tensors import cache_locally, make_dataset, steps_per_epoch
from pipelines.ml.training.plan import CHECKPOINT_PREFIX, MODEL_FILE, TrainingPlan, read_state

log = logging.getLogger(__name__)


def run_training(plan: TrainingPlan) -> dict:
    """Train on this process's shard; the same function runs alone or as one of N Horovod ranks.

    Rank 0 writes the checkpoints, the progress file and the final model; every rank returns its
    rank, and rank 0 also the history, best epoch and where training resumed from.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    # The callbacks derive from Keras' Callback: importing them starts TensorFlow, here only.
    from pipelines.ml.training.callbacks import EpochProgress, Throughput, WarmupSchedule

    cfg = plan.training
    hvd = None
    rank, size, local_rank = 0, 1, 0
    if plan.distributed:
        import horovod.tensorflow.keras as hvd

        if not configured():
            # A rank is a process of its own: it logs as the job that started it asked (level, format).
            configure_logging()
        hvd.init()
        rank, size, local_rank = hvd.rank(), hvd.size(), hvd.local_rank()
    device = _configure_devices(tf, cfg, local_rank)
    # Same seed on every rank: identical initial weights even before rank 0's broadcast.
    tf.keras.utils.set_random_seed(cfg.seed)

    state = read_state(plan.model_dir)
    initial_epoch = state["epochs_done"]
    train_split, val_split = plan.train, plan.validation
    if cfg.local_cache:
        train_split, val_split = cache_locally(train_split), val_split and cache_locally(val_split)
    label = label_for(cfg)
    steps = steps_per_epoch(train_split.rows, cfg.batch_size, size, cfg.max_train_rows)
    train_ds = make_dataset(train_split, plan.spec, cfg, label=label, rank=rank, num_ranks=size,
                            training=True, first_epoch=initial_epoch, epochs=cfg.epochs)
    # No validation split (a backtest fold too short for a stopping month): the best epoch is the
    # best by training AUC.
    val_ds = (make_dataset(val_split, plan.spec, cfg, label=label, rank=rank, num_ranks=size, training=False)
              if val_split is not None else None)

    model = build_model(plan.spec, cfg, plan.target_scale)
    # Linear scaling rule: N workers take N times larger global batches, so N times the rate.
    optimizer = make_optimizer(cfg, learning_rate=cfg.learning_rate * size)
    if hvd is not None:
        # Embedding gradients are sparse; these tables are small, so a dense allreduce is cheaper
        # than Gloo's allgather of slices.
        optimizer = hvd.DistributedOptimizer(optimizer, sparse_as_dense=True)
    compile_model(model, cfg, optimizer, plan.target_scale)

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
        log.info(f"resuming model {plan.model_version} after epoch {initial_epoch}")
    model.fit(train_ds, epochs=cfg.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
              validation_data=val_ds, callbacks=callbacks, verbose=0)

    if hvd is not None:
        # Nobody returns before every rank finished its last step (a late failure fails the job).
        hvd_tf.allreduce(tf.constant(0.0), name="training_done")
    out: dict[str, Any] = {"rank": rank, "device": device, **where_this_process_runs()}
    if rank == 0:
        _export_best(plan, progress.best_epoch)
        out.update(history=progress.history, best_epoch=progress.best_epoch, initial_epoch=initial_epoch,
                   stopped_early=progress.stopped_early)
    if plan.return_weights:
        out["weights"] = [np.asarray(w) for w in model.get_weights()]
    return out


def _configure_devices(tf, cfg, local_rank: int) -> str:
    """Threads, and the one GPU of this rank or none; returns the device it trains on (the
    registry records it: only the CPU run is deterministic)."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(cfg.threads_per_proc)
        tf.config.threading.set_inter_op_parallelism_threads(cfg.threads_per_proc)
    except RuntimeError:
        # TensorFlow already started in this process (a notebook, a test): keep its thread pools.
        pass
    gpus = tf.config.list_physical_devices("GPU")
    device = "CPU"
    try:
        if cfg.use_gpu and gpus:
            # One GPU per process, chosen by the local rank; NCCL then does the allreduce.
            gpu = gpus[local_rank % len(gpus)]
            device = "GPU"
            tf.config.set_visible_devices(gpu, "GPU")
            tf.config.experimental.set_memory_growth(gpu, True)
        else:
            tf.config.set_visible_devices([], "GPU")
            # On CPU every op has a deterministic kernel: same seed and data, same model.
            tf.config.experimental.enable_op_determinism()
    except RuntimeError:
        pass
    return device


def _export_best(plan: TrainingPlan, best_epoch: int) -> None:
    """Save the best epoch's weights as the model (`model.keras`), atomically, without optimizer."""
    import tensorflow as tf

    export = build_model(plan.spec, plan.training, plan.target_scale)
    path = os.path.join(plan.model_dir, "checkpoints", f"{CHECKPOINT_PREFIX}-{best_epoch}")
    tf.train.Checkpoint(model=export).restore(path).expect_partial()
    partial = os.path.join(plan.model_dir, f"partial-{os.getpid()}.{MODEL_FILE}")
    export.save(partial)
    os.replace(partial, os.path.join(plan.model_dir, MODEL_FILE))


def where_this_process_runs() -> dict:
    """Host, pid, working folder and the package file this process imported: on a cluster, each
    rank's folder is its executor's, and the package comes from the zip shipped with --py-files."""
    import socket

    import pipelines

    return {"host": socket.gethostname(), "pid": os.getpid(), "cwd": os.getcwd(), "package": pipelines.__file__}
