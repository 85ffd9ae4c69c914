"""Training: one process and two Horovod processes, resume from checkpoints, the train command."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from model_input_fixtures import model_input_lakehouse, training_config
from pipelines.ml import tensors
from pipelines.ml.model import build_model, compile_model, load_model, make_optimizer
from pipelines.ml.training import STATE_FILE, TrainingError, read_state, train


@pytest.fixture(scope="module")
def root(spark, tmp_path_factory):
    lakehouse = model_input_lakehouse(spark, tmp_path_factory.mktemp("training") / "lakehouse")
    return lakehouse.root


@pytest.fixture(scope="module")
def reference(root):
    """An uninterrupted three-epoch single-process run, the yardstick of the tests below."""
    return train(training_config(root), num_proc=1, model_version="reference", verbose=False, return_weights=True)


class StopAfterEpoch(tf.keras.callbacks.Callback):
    """Simulates a crash right after an epoch's checkpoint was written."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise RuntimeError(f"simulated failure after epoch {self.epoch}")


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def constant_predictor_loss(labels: np.ndarray) -> float:
    p = labels.mean()
    return float(-(p * math.log(p) + (1 - p) * math.log(1 - p)))


def test_single_process_learns_saves_and_is_reproducible(root, reference):
    cfg = training_config(root)
    val = tensors.pin_snapshot(tensors_lakehouse(root)).splits["validation"]
    spec = tensors.FeatureSpec.from_dict(read_json(os.path.join(reference.model_dir, "feature_spec.json")))
    labels = np.concatenate([y.ravel() for _, y in tensors.iter_batches(
        val, spec, label="label", batch_size=500, training=False)])

    best = reference.best_metrics
    assert best["val_loss"] < constant_predictor_loss(labels) - 0.03
    assert best["val_auc"] > 0.75
    assert [h["epoch"] for h in reference.history] == [1, 2, 3] and reference.initial_epoch == 0
    assert reference.table_versions == {"gold.model_input": 0, "gold.feature_spec": 0}
    assert reference.rows == {"train": 4000, "validation": 1000}
    assert reference.samples_per_sec > 0 and reference.wall_seconds > 0
    assert reference.model_path == os.path.join(root, "models", "reference", "model.keras")
    saved = read_json(os.path.join(reference.model_dir, "result.json"))
    assert saved["best_epoch"] == reference.best_epoch

    # The saved model is the best epoch's weights and predicts like the model in memory did.
    model = load_model(reference.model_path)
    x, _ = next(tensors.iter_batches(val, spec, label="label", batch_size=256, training=False))
    assert model.predict(x, verbose=0).shape == (256, 1)

    again = train(cfg, num_proc=1, model_version="again", verbose=False, return_weights=True)
    timing = ("samples_per_sec", "seconds", "cpu_cores")   # wall-clock figures differ between two runs
    assert again.history == [{**h, **{k: a[k] for k in timing}} for h, a in zip(reference.history, again.history)]
    assert all(np.array_equal(a, b) for a, b in zip(reference.weights[0], again.weights[0]))


def tensors_lakehouse(root):
    from pipelines.storage import Lakehouse

    return Lakehouse(root)


def test_resume_continues_the_epoch_count_and_ends_like_an_uninterrupted_run(root, reference):
    cfg = training_config(root)
    with pytest.raises(TrainingError, match="(?s)simulated failure after epoch 2.*No model was produced. 2 epoch.*to resume"):
        train(cfg, num_proc=1, model_version="interrupted", callbacks=(StopAfterEpoch(2),), verbose=False)
    model_dir = os.path.join(root, "models", "interrupted")
    assert read_state(model_dir)["epochs_done"] == 2
    assert not os.path.exists(os.path.join(model_dir, "model.keras"))

    resumed = train(cfg, num_proc=1, model_version="interrupted", verbose=False, return_weights=True)
    assert resumed.initial_epoch == 2 and [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for got, want in zip(resumed.history, reference.history):
        for key in ("loss", "auc", "val_loss", "val_auc"):
            assert got[key] == pytest.approx(want[key], rel=1e-6), (got["epoch"], key)
    assert all(np.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(resumed.weights[0], reference.weights[0]))

    with pytest.raises(TrainingError, match="already trained"):
        train(cfg, num_proc=1, model_version="interrupted", verbose=False)
    longer = train(training_config(root, "training.epochs=4"), num_proc=1, model_version="interrupted", verbose=False)
    assert longer.initial_epoch == 3 and [h["epoch"] for h in longer.history] == [1, 2, 3, 4]
    with pytest.raises(TrainingError, match="another training configuration"):
        train(training_config(root, "training.epochs=5", "training.dropout=0.3"), num_proc=1,
              model_version="interrupted", verbose=False)


def test_train_command_parses_and_summarises(root, reference):
    from pipelines.cli import build_parser
    from pipelines.cli.train import summary_lines

    args = build_parser().parse_args(["train", "--model-version", "m1", "--table-version", "3", "--baselines", "none"])
    assert (args.model_version, args.table_version, args.baselines) == ("m1", 3, "none")
    lines = summary_lines(reference, {"logreg": {"val_auc": 0.61}})
    text = "\n".join(lines)
    assert "gold.model_input v0, gold.feature_spec v0" in text and reference.model_path in text
    assert f"best epoch {reference.best_epoch} of 3" in text and "wall time" in text
    assert lines[-1].startswith("validation AUC: model 0.") and lines[-1].endswith("logreg 0.6100")


@pytest.mark.slow
def test_two_horovod_processes_take_the_same_step_as_one_process_on_the_joined_batch(spark, root):
    """One synchronous SGD step on two ranks equals one step on both ranks' batches together,
    and both ranks end with identical weights."""
    overrides = ["training.optimizer=sgd", "training.momentum=0", "training.dropout=0", "training.l2=0",
                 "training.warmup_epochs=0", "training.batch_size=64", "training.max_train_rows=128",
                 "training.epochs=1", "training.learning_rate=0.05"]
    cfg = training_config(root, *overrides)
    result = train(cfg, spark, num_proc=2, model_version="horovod", verbose=False, return_weights=True)
    rank0, rank1 = result.weights
    assert all(np.array_equal(a, b) for a, b in zip(rank0, rank1))
    assert result.num_proc == 2 and len(result.history) == 1 and os.path.exists(result.model_path)

    snap = tensors.pin_snapshot(tensors_lakehouse(root))
    spec = tensors.FeatureSpec.from_dict(read_json(os.path.join(result.model_dir, "feature_spec.json")))
    batches = [next(tensors.iter_batches(snap.splits["train"], spec, label="label", batch_size=64, rank=r,
                                         num_ranks=2, training=True, epoch=0, seed=cfg.training.seed, steps=1,
                                         shuffle_buffer=cfg.training.shuffle_buffer)) for r in range(2)]
    x = {k: np.concatenate([b[0][k] for b in batches]) for k in spec.inputs}
    y = np.concatenate([b[1] for b in batches])
    tf.keras.utils.set_random_seed(cfg.training.seed)
    single = build_model(spec, cfg.training)
    # Two ranks run at twice the per-worker rate (linear scaling), on a batch twice as large.
    compile_model(single, cfg.training, make_optimizer(cfg.training, learning_rate=0.05 * 2))
    before = [w.copy() for w in single.get_weights()]
    single.train_on_batch(x, y)
    moved = [not np.allclose(a, b) for a, b in zip(before, single.get_weights())]
    assert any(moved)
    for got, want in zip(rank0, single.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_worker_that_dies_fails_the_job_and_leaves_no_model(spark, root):
    cfg = training_config(root, "training.epochs=2")
    # A lambda travels to the Horovod processes by value; rank 1 exits as a killed worker would.
    die_on_rank_1 = tf.keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: os.environ.get("HOROVOD_RANK") == "1" and os._exit(3))
    with pytest.raises(TrainingError, match="(?s)failed \\(2 process\\(es\\)\\).*No model was produced"):
        train(cfg, spark, num_proc=2, model_version="dies", callbacks=(die_on_rank_1,), verbose=False)
    assert not os.path.exists(os.path.join(root, "models", "dies", "model.keras"))


def test_local_spark_has_no_executor_to_lose_and_the_driver_does_not_wait_for_one(spark):
    """Only a cluster's executors can be lost (tests/test_cluster.py kills one): under local Spark,
    where the driver runs the tasks, a failed training names none and does not wait to hear of one."""
    import time
    from datetime import datetime, timedelta, timezone

    from pipelines.storage.spark import lost_executors

    started = time.monotonic()
    assert lost_executors(spark, datetime.now(timezone.utc) - timedelta(hours=1), wait_s=600) == []
    assert time.monotonic() - started < 60


@pytest.mark.slow
def test_a_sequence_model_trains_under_horovod_on_two_processes(spark, tmp_path):
    """The GRU over the seq_* array columns trains on 2 ranks, which end with the same weights,
    and the saved model reads its sequence inputs back from the spec it records."""
    lakehouse = model_input_lakehouse(spark, tmp_path / "lakehouse", rows={"train": 1024, "validation": 256},
                                      row_group_rows=128, sequence_days=7)
    cfg = training_config(lakehouse.root, "training.architecture=sequence", "training.sequence_units=8",
                          "training.epochs=1", "training.batch_size=64")
    result = train(cfg, spark, num_proc=2, model_version="sequence", verbose=False, return_weights=True)
    rank0, rank1 = result.weights
    assert all(np.array_equal(a, b) for a, b in zip(rank0, rank1))
    spec = tensors.FeatureSpec.from_dict(read_json(os.path.join(result.model_dir, "feature_spec.json")))
    assert spec.sequences == {"seq_route_late_rate": 7, "seq_carrier_late_rate": 7}
    model = load_model(result.model_path)
    assert "sequence_gru" in {layer.name for layer in model.layers}
    assert math.isfinite(result.history[-1]["val_auc"])
