"""Input pipeline: training samples/s when the model reads a pinned Delta snapshot through
Petastorm (`pipelines.ml.tensors.make_dataset`), against the same model fed from tensors already in
memory (`tf.data.Dataset.from_tensor_slices` of the same rows), which is the upper limit. The
in-memory feed gathers whole batches from the tensors (the fastest feed; the ratio is against it);
the row-by-row `from_tensor_slices` → shuffle → batch feed is reported beside it.

How: one process, TensorFlow limited to `--threads` threads (training.threads_per_proc, as one
Horovod rank runs). Both runs train `pipelines.ml.model.build_model` from the same feature spec, with
the same seed, batch size and steps per epoch, for `--epochs` epochs; the rate is samples over
training time of every epoch but the first (which traces the graph and fills the buffers).
Goal: Petastorm / in-memory >= 0.9.

    python -m bench.input_pipeline [--root ./lakehouse] [--quick]
"""
from __future__ import annotations

import argparse
import shutil
import time

from bench.common import bench_config, print_table, ratio, scratch_dir, start_spark, write_result

GOAL = 0.9


class EpochClock:
    """A Keras callback keeping the training seconds of every epoch."""

    def __new__(cls):
        import tensorflow as tf

        class _Clock(tf.keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seconds: list[float] = []

            def on_epoch_begin(self, epoch, logs=None):
                self._t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self._t)

        return _Clock()


def load_rows(split, spec, label: str):
    """The split's rows read once into memory as the model's (n, 1) inputs and labels."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from pipelines.ml.inputs import model_inputs

    columns = [*spec.inputs, label]
    tables = []
    for uri in split.files:
        fs, path = pafs.FileSystem.from_uri(uri)
        tables.append(pq.read_table(path, filesystem=fs, columns=columns))
    data = pa.concat_tables(tables)
    arrays = {c: data.column(c).to_numpy() for c in columns}
    return model_inputs(arrays, spec), arrays[label].astype("float32").reshape(-1, 1)


def gather_dataset(inputs, labels, training_cfg, epochs: int, steps: int):
    """The upper limit: tensors in memory, a seeded permutation per epoch, each batch one vectorised
    gather (`from_tensor_slices` of the batches' row indices, then `tf.gather`)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(training_cfg.seed)
    n, batch = len(labels), training_cfg.batch_size
    index = np.stack([rng.permutation(n)[: steps * batch].reshape(steps, batch) for _ in range(epochs)])
    tensors = {k: tf.constant(v) for k, v in inputs.items()}
    target = tf.constant(labels)

    def take(rows):
        return {k: tf.gather(v, rows) for k, v in tensors.items()}, tf.gather(target, rows)

    ds = tf.data.Dataset.from_tensor_slices(index.reshape(-1, batch).astype(np.int32))
    return ds.map(take, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def slices_dataset(inputs, labels, training_cfg):
    """The textbook in-memory feed: `from_tensor_slices` of the rows, shuffle, batch, repeat
    (row by row through tf.data, so it is not always faster than Petastorm's whole row groups)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((inputs, labels))
    ds = ds.shuffle(training_cfg.shuffle_buffer, seed=training_cfg.seed, reshuffle_each_iteration=True)
    return ds.batch(training_cfg.batch_size, drop_remainder=True).repeat().prefetch(tf.data.AUTOTUNE)


def fit_rate(dataset, spec, training_cfg, epochs: int, steps: int) -> dict:
    """Train a fresh model on `dataset`; samples/s per epoch and the steady rate (epochs 2..n)."""
    import tensorflow as tf

    from pipelines.ml.model import build_model, compile_model, make_optimizer

    tf.keras.utils.set_random_seed(training_cfg.seed)
    model = build_model(spec, training_cfg)
    compile_model(model, training_cfg, make_optimizer(training_cfg, training_cfg.learning_rate))
    clock = EpochClock()
    model.fit(dataset, epochs=epochs, steps_per_epoch=steps, callbacks=[clock], verbose=0)
    samples = steps * training_cfg.batch_size
    steady = clock.seconds[1:] or clock.seconds
    return {"epoch_seconds": [round(s, 3) for s in clock.seconds],
            "samples_per_epoch": samples,
            "samples_per_sec": round(samples * len(steady) / sum(steady), 1)}


def run(root: str | None, quick: bool, epochs: int | None, rows: int | None, threads: int | None) -> dict:
    import tensorflow as tf

    from bench.model_input import prepare
    from pipelines.ml.model import label_for
    from pipelines.ml.tensors import load_feature_spec, make_dataset, pin_snapshot, steps_per_epoch

    epochs = epochs or (2 if quick else 6)
    rows = rows or (20_000 if quick else 200_000)
    scratch = scratch_dir("input_pipeline")
    cfg = bench_config(scratch, "spark.master=local[2]", f"training.max_train_rows={rows}",
                       *([f"lakehouse.model_input_row_group_rows={4096}"] if quick else []))
    threads = threads or cfg.training.threads_per_proc
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    tf.config.set_visible_devices([], "GPU")
    spark = start_spark(cfg, "input_pipeline")
    lh, source = prepare(spark, cfg, root, {"train": rows, "validation": max(1000, rows // 10)})
    snapshot = pin_snapshot(lh)
    spec = load_feature_spec(lh, snapshot)
    split = snapshot.splits["train"]
    label = label_for(cfg.training)
    steps = steps_per_epoch(split.rows, cfg.training.batch_size, 1, cfg.training.max_train_rows)
    print(f"[input_pipeline] model_input: {source['model_input']} ({split.rows:,} training rows, "
          f"{len(spec.numeric)} numeric + {len(spec.categorical)} categorical inputs); {steps} steps of "
          f"{cfg.training.batch_size} per epoch, {epochs} epochs, {threads} TF thread(s)")

    inputs, labels = load_rows(split, spec, label)
    loaded = len(labels)
    in_memory = fit_rate(gather_dataset(inputs, labels, cfg.training, epochs, steps), spec, cfg.training, epochs, steps)
    textbook = fit_rate(slices_dataset(inputs, labels, cfg.training), spec, cfg.training, epochs, steps)
    petastorm_ds = make_dataset(split, spec, cfg.training, label=label, training=True, epochs=epochs)
    petastorm = fit_rate(petastorm_ds, spec, cfg.training, epochs, steps)
    spark.stop()
    shutil.rmtree(scratch, ignore_errors=True)

    result = {
        "quick": quick, "source": source, "epochs": epochs, "steps_per_epoch": steps,
        "batch_size": cfg.training.batch_size, "threads": threads, "rows_in_memory": loaded,
        "snapshot": {"table": split.table, "version": split.version, "files": len(split.files),
                     "row_groups": split.row_groups},
        "in_memory": in_memory, "in_memory_row_by_row": textbook, "petastorm": petastorm,
        "ratio_petastorm_to_in_memory": ratio(petastorm["samples_per_sec"], in_memory["samples_per_sec"]),
        "ratio_petastorm_to_row_by_row": ratio(petastorm["samples_per_sec"], textbook["samples_per_sec"]),
        "goal": GOAL,
        "measured_how": "samples / training seconds of epochs 2..n (first epoch left out), same model, seed, batch and steps",
    }
    result["goal_met"] = (result["ratio_petastorm_to_in_memory"] or 0) >= GOAL
    return result


def report(result: dict) -> None:
    print_table([
        {"feed": "in-memory tensors, gathered batches (upper limit)", "samples/s": result["in_memory"]["samples_per_sec"],
         "epoch seconds": result["in_memory"]["epoch_seconds"]},
        {"feed": "in-memory tensors, row by row (shuffle+batch)",
         "samples/s": result["in_memory_row_by_row"]["samples_per_sec"],
         "epoch seconds": result["in_memory_row_by_row"]["epoch_seconds"]},
        {"feed": "Petastorm on the pinned snapshot", "samples/s": result["petastorm"]["samples_per_sec"],
         "epoch seconds": result["petastorm"]["epoch_seconds"]},
    ])
    print(f"ratio Petastorm / in-memory = {result['ratio_petastorm_to_in_memory']} "
          f"(goal >= {GOAL}: {'met' if result['goal_met'] else 'missed'}); "
          f"against the row-by-row feed {result['ratio_petastorm_to_row_by_row']}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", help="lakehouse whose gold.model_input to read (default ./lakehouse; synthetic when absent)",
                   default="lakehouse")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to prove the script works")
    p.add_argument("--epochs", type=int)
    p.add_argument("--rows", type=int, help="training rows per epoch (training.max_train_rows)")
    p.add_argument("--threads", type=int, help="TensorFlow threads (default training.threads_per_proc)")
    args = p.parse_args(argv)
    result = run(args.root, args.quick, args.epochs, args.rows, args.threads)
    report(result)
    write_result("input_pipeline", result)
    return result


if __name__ == "__main__":
    main()
