"""Horovod: training samples/s with 2 Horovod processes of 1 thread each against 1 process of 1
thread, same model and data, through `pipelines.ml.training.train(num_proc=1)` and `(num_proc=2)`.

How it is measured: `train` logs, per epoch, the samples of all ranks over the epoch's training
seconds (validation left out; the `Throughput` callback). The steady-state rate is the mean of
the epochs after the first (the first traces the graph, warms Petastorm's reader and, with 2
processes, includes Gloo's first allreduce); the wall time of each call, start-up included, is
reported beside it. Both runs read the same pinned snapshot (`--rows` training rows per epoch) with
the same global rows per epoch: each of 2 ranks takes half the steps of 1 rank. Goal: ratio >= 1.8.

    python -m bench.horovod_scaling [--root ./lakehouse] [--epochs 4] [--quick]
"""
from __future__ import annotations

import argparse
import os
import shutil

from bench.common import bench_config, print_table, ratio, scratch_dir, start_spark, write_result

GOAL = 1.8


def train_both(cfg, spark) -> dict:
    """Train with 1 process, then with 2; the rates and wall times of each."""
    from pipelines.ml.training import train

    runs = {}
    # One process first: it trains in this process, before anything else starts TensorFlow here.
    for num_proc in (1, 2):
        result = train(cfg, spark, num_proc=num_proc, verbose=False)
        per_epoch = [round(h["samples_per_sec"], 1) for h in result.history]
        steady = result.history[1:] or result.history
        cores = round(sum(h.get("cpu_cores", 0) for h in steady) / len(steady), 2)
        runs[num_proc] = {"samples_per_sec_steady": result.samples_per_sec, "samples_per_sec_per_epoch": per_epoch,
                          "cpu_cores_per_process": cores, "cpu_cores_total": round(cores * num_proc, 2),
                          "wall_seconds": result.wall_seconds, "epochs": result.epochs_run,
                          "val_auc": result.best_metrics.get("val_auc")}
        print(f"[horovod] {num_proc} process(es): steady {result.samples_per_sec:,.0f} samples/s "
              f"(per epoch {per_epoch}), {cores} busy cores per process, wall {result.wall_seconds:.1f}s", flush=True)
    return runs


def run(root: str | None, quick: bool, epochs: int | None, rows: int | None) -> dict:
    from bench.model_input import prepare

    epochs = epochs or (2 if quick else 6)
    rows = rows or (16_384 if quick else 200_000)
    scratch = scratch_dir("horovod_scaling")
    cfg = bench_config(scratch, "spark.master=local[2]", "training.threads_per_proc=1",
                       f"training.epochs={epochs}", "training.early_stopping_patience=0",
                       f"training.max_train_rows={rows}",
                       *(["lakehouse.model_input_row_group_rows=1024"] if quick else []))
    spark = start_spark(cfg, "horovod_scaling")
    _, source = prepare(spark, cfg, root, {"train": rows, "validation": max(rows // 10, 4 * cfg.lakehouse.model_input_row_group_rows)})
    print(f"[horovod] model_input: {source['model_input']}; {rows:,} training rows per epoch, {epochs} epochs, "
          f"batch {cfg.training.batch_size} per rank, 1 thread per process", flush=True)
    runs = {}
    try:
        runs = train_both(cfg, spark)
    finally:
        spark.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    out = {"quick": quick, "source": source, "epochs": epochs, "rows_per_epoch": rows,
           "batch_size_per_rank": cfg.training.batch_size, "threads_per_proc": 1,
           "one_process": runs[1], "two_processes": runs[2],
           "ratio_2_to_1": ratio(runs[2]["samples_per_sec_steady"], runs[1]["samples_per_sec_steady"]),
           "ratio_wall_1_to_2": ratio(runs[1]["wall_seconds"], runs[2]["wall_seconds"]),
           "goal": GOAL,
           "cores_on_machine": os.cpu_count(),
           "measured_how": "mean of per-epoch samples/s (all ranks, training seconds only) over epochs 2..n; "
                           "busy cores = CPU seconds of each training process per second of training"}
    out["goal_met"] = (out["ratio_2_to_1"] or 0) >= GOAL
    return out


def report(result: dict) -> None:
    print_table([
        {"processes": n, "steady samples/s": r["samples_per_sec_steady"], "busy cores": r.get("cpu_cores_total"),
         "wall s": r["wall_seconds"],
         "per epoch": r["samples_per_sec_per_epoch"]}
        for n, r in (("1 x 1 thread", result["one_process"]), ("2 x 1 thread", result["two_processes"]))])
    print(f"ratio 2 processes / 1 process = {result['ratio_2_to_1']} (goal >= {GOAL}: "
          f"{'met' if result['goal_met'] else 'missed'}); wall-time speed-up incl. start-up {result['ratio_wall_1_to_2']}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="lakehouse", help="lakehouse whose gold.model_input to read (synthetic when absent)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs", type=int)
    p.add_argument("--rows", type=int, help="training rows per epoch")
    args = p.parse_args(argv)
    result = run(args.root, args.quick, args.epochs, args.rows)
    report(result)
    write_result("horovod_scaling", result)
    return result


if __name__ == "__main__":
    main()
