"""Scale: grow the 2013 flights ×N with realistic variation, write them as landing files, and time
every stage of the pipeline at ×1 and ×10 (×100 with `--x100`), with the driver's peak memory.

The data: `bench.generate` (a Spark job, in its own process before the timed run) writes copy k
(k = 0..N-1) of the year shifted by k whole years, copy 0 being the real data, with new flight
numbers, new planes and delays drawn again from the same route and month in the other copies; its
docstring has the details. The files are in the layout `lakehouse-dl landing seed` writes, so the
real ingest reads them. Its time and memory are reported apart (`generate_seconds`,
`generate_memory`) and are not part of the pipeline's.

Each factor runs in a fresh process over a fresh lakehouse (so the memory figures are its own):
ingest, clean, features, then a 1-epoch train with training.num_proc Horovod processes. The
splits are the first 75% of the days (train), the next 17% (validation) and the rest (test). Peak
memory is sampled every 0.2 s: the Python driver, the driver JVM (Spark local mode: the executors
live in it) and the other child processes (Spark's Python workers, Horovod ranks).

After the stages, each factor also measures the training input (`input_rates`): the network trained
for a fixed number of steps from the pinned snapshot through Petastorm and from the same rows in
memory, so the Petastorm rate at ×100 can be set against the in-memory rate at ×1.

    python -m bench.scale [--factors 1,10] [--x100] [--window 2013-01-01,2013-01-31] [--quick]

`make bench-x100` runs ×1, ×10 and ×100 of January (2.7 million flights at ×100) with the peer.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

from bench.common import (PeakMemory, bench_config, parse_window, print_table, ratio, run_watched, scratch_dir,
                          start_spark, write_result)
from bench.profile import PROFILE_SPARK_SETTINGS, StageProfile, line as profile_line, summary as profile_summary

STAGES = ("ingest", "clean", "features", "train")


# ------------------------------------------------------------------------------------------------
# The splits


def splits_for(days: list[date] | list[str]) -> dict[str, list[str]]:
    """Train on the first 75% of the days, validate on the next 17%, test on the rest (the days of
    the generated files: `bench.generate` reports them without reading any row back)."""
    days = sorted(date.fromisoformat(d) if isinstance(d, str) else d for d in days)
    a, b = int(len(days) * 0.75), int(len(days) * 0.92)
    return {"train": [days[0].isoformat(), days[a - 1].isoformat()],
            "validation": [days[a].isoformat(), days[b - 1].isoformat()],
            "test": [days[b].isoformat(), days[-1].isoformat()]}


# ------------------------------------------------------------------------------------------------
# One factor, in its own process


def run_factor(factor: int, window: tuple[date, date] | None, root: Path, epochs: int, driver_memory: str,
               extra: list[str] = ()) -> dict:
    """Generate ×`factor`, then run and time every stage over a fresh lakehouse at `root`."""
    from bench.generate import generate_in_subprocess

    out: dict = {"factor": factor, "stages": {}}
    started = time.perf_counter()
    # The generator runs in its own process: the memory measured below is the pipeline's alone.
    generated = generate_in_subprocess(root, factor, window)
    landing = generated["landing"]
    splits = splits_for(landing["flights"]["days"])
    for counts in landing.values():
        counts.pop("days", None)
    cfg = bench_config(root, "spark.master=local[*]", f"spark.conf.spark.driver.memory={driver_memory}",
                       f"pipeline.splits={json.dumps(splits)}", f"training.epochs={epochs}",
                       "training.early_stopping_patience=0", *extra)
    out["landing"] = landing
    out["splits"] = splits
    out["rows"] = {"flights": landing["flights"]["rows"], "weather": landing["weather"]["rows"]}
    out["generate_seconds"] = round(time.perf_counter() - started, 2)
    out["generate_memory"] = generated["memory"]
    input_rows = out["rows"]["flights"] + out["rows"]["weather"]
    with PeakMemory() as mem:
        spark = start_spark(cfg, f"scale-x{factor}")
        out["spark_start_seconds"] = round(time.perf_counter() - started - out["generate_seconds"], 2)
        for stage in STAGES:
            # What the stage did: Spark jobs/tasks, shuffle, files, Delta commits, CPU (bench/profile.py).
            # The profile's own REST calls and folder walks fall outside the stage's seconds.
            profile = StageProfile(spark, root)
            try:
                with profile:
                    t0 = time.perf_counter()
                    detail = _run_stage(stage, cfg, spark)
                    seconds = time.perf_counter() - t0
            except Exception as exc:   # noqa: BLE001 — a stage that fails is reported, and the rest skipped
                out["stages"][stage] = {"error": f"{type(exc).__name__}: {str(exc)[:400]}",
                                        "profile": profile.figures()}
                print(f"[scale] ×{factor} {stage} failed: {type(exc).__name__}: {str(exc)[:400]}", flush=True)
                break
            rows = detail.pop("rows", None) or input_rows
            out["stages"][stage] = {"seconds": round(seconds, 2), "rows": rows,
                                    "rows_per_sec": round(rows / seconds), **detail, "profile": profile.figures()}
            print(f"[scale] ×{factor} {stage}: {seconds:,.1f}s, {rows:,} rows, {rows / seconds:,.0f} rows/s, "
                  f"memory now {mem.sample().get('total', 0) / 2**20:,.0f} MiB", flush=True)
            print(f"[scale] ×{factor} {stage} profile: {profile_line(profile.figures())}", flush=True)
        if all("seconds" in out["stages"].get(s, {}) for s in STAGES):
            t0 = time.perf_counter()
            out["input"] = input_rates(cfg, spark)
            print(f"[scale] ×{factor} input: Petastorm {out['input']['petastorm']['samples_per_sec']:,.0f} samples/s, "
                  f"in memory {out['input']['in_memory']['samples_per_sec']:,.0f} ({out['input']['steps_per_epoch']} "
                  f"steps of {out['input']['batch_size']}) in {time.perf_counter() - t0:,.1f}s", flush=True)
        spark.stop()
    out["memory"] = mem.result()
    out["total_seconds"] = round(time.perf_counter() - started, 2)
    return out


def _run_stage(stage: str, cfg, spark) -> dict:
    """Run one pipeline stage through its public function; the rows it handled where it says."""
    if stage == "ingest":
        from pipelines.stages import bronze

        results = bronze.ingest(cfg, spark)
        return {"rows": sum(r.rows for r in results), "rejected": sum(r.rejected for r in results)}
    if stage == "clean":
        from pipelines.stages import silver

        results = silver.clean(cfg, spark, dates=None)
        return {"rows": sum(r.bronze_rows for r in results),
                "quarantined": sum(r.quarantined for r in results),
                "duplicates": sum(r.duplicates for r in results)}
    if stage == "features":
        from pipelines.stages import gold

        summary = gold.build_features(cfg, spark, dates=None)
        return {"rows": summary.get("flight_features"), "model_input": summary.get("model_input")}
    from pipelines.ml.training import train

    result = train(cfg, spark, verbose=False)
    best = result.best_metrics
    return {"rows": result.rows["train"] * result.epochs_run, "num_proc": result.num_proc,
            "val_auc": best.get("val_auc"), "epochs": result.epochs_run,
            "train_samples_per_sec": result.samples_per_sec}


# Steps per epoch of the input measurement (fewer when the training split is smaller), and epochs
# (the first, which traces the graph and fills the buffers, is left out of the rate).
INPUT_STEPS, INPUT_EPOCHS = 100, 4


def input_rates(cfg, spark) -> dict:
    """Item 4's input figure at this factor: the network trained for a fixed number of steps from the
    pinned snapshot through Petastorm (`make_dataset`, as a Horovod rank reads it) and from the same
    rows gathered in memory (`bench.input_pipeline`), one process, samples/s of the steady epochs.
    The rows read per step are the same at every factor; only the table they come from grows."""
    import dataclasses

    from bench.input_pipeline import fit_rate, gather_dataset, load_rows
    from pipelines.ml.model import label_for
    from pipelines.ml.tensors import load_feature_spec, make_dataset, pin_snapshot
    from pipelines.storage import Lakehouse

    lh = Lakehouse.from_config(cfg, spark)
    snapshot = pin_snapshot(lh)
    spec = load_feature_spec(lh, snapshot)
    split = snapshot.splits["train"]
    batch = cfg.training.batch_size
    steps = max(1, min(INPUT_STEPS, split.rows // batch))
    training = dataclasses.replace(cfg.training, max_train_rows=steps * batch)
    label = label_for(training)
    petastorm = fit_rate(make_dataset(split, spec, training, label=label, training=True, epochs=INPUT_EPOCHS),
                         spec, training, INPUT_EPOCHS, steps)
    inputs, labels = load_rows(split, spec, label)
    in_memory = fit_rate(gather_dataset(inputs, labels, training, INPUT_EPOCHS, steps), spec, training,
                         INPUT_EPOCHS, steps)
    return {"table_rows": split.rows, "files": len(split.files), "row_groups": split.row_groups,
            "steps_per_epoch": steps, "batch_size": batch, "epochs": INPUT_EPOCHS,
            "petastorm": petastorm, "in_memory": in_memory,
            "ratio_petastorm_to_in_memory": ratio(petastorm["samples_per_sec"], in_memory["samples_per_sec"])}


def run_in_subprocess(factor: int, window, epochs: int, driver_memory: str, memory_limit_gib: float | None = None,
                      extra: list[str] = ()) -> dict:
    """`run_factor` in a fresh Python process (so its memory is its own); stopped, and reported so,
    when the whole process tree's RSS passes `memory_limit_gib`."""
    import shutil

    root = scratch_dir(f"scale-x{factor}")
    out_file = root / "result.json"
    cmd = [sys.executable, "-m", "bench.scale", "--_worker", str(factor), "--_out", str(out_file),
           "--_root", str(root / "lakehouse"), "--epochs", str(epochs), "--driver-memory", driver_memory,
           *(["--_window", f"{window[0]},{window[1]}"] if window else []),
           # The profile reads Spark's UI: keep every job, stage and SQL execution of the run (bench/profile.py).
           *[f"--_set={e}" for e in (*extra, *PROFILE_SPARK_SETTINGS)]]
    watched = run_watched(cmd, memory_limit_gib)
    try:
        if watched["exceeded_gib"]:
            return {"factor": factor, "failed": f"stopped: the processes held {watched['exceeded_gib']} GiB, "
                                                f"over the limit of {memory_limit_gib} GiB", "memory": watched["memory"]}
        if watched["returncode"] != 0 or not out_file.exists():
            return {"factor": factor, "failed": f"exit code {watched['returncode']}", "memory": watched["memory"]}
        result = json.loads(out_file.read_text())
        result["memory_process_tree"] = watched["memory"]
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# The report


def pipeline_total(run: dict) -> float | None:
    """Spark start-up plus every stage (the data generation is not part of the pipeline); None
    when a stage did not finish."""
    stages = run.get("stages", {})
    if not all("seconds" in stages.get(s, {}) for s in STAGES):
        return None
    return round(run.get("spark_start_seconds", 0) + sum(stages[s]["seconds"] for s in STAGES), 2)


def growth(results: dict[int, dict]) -> list[dict]:
    """Per stage: time at each factor and (time ×N / time ×1) / N, which is 1.0 when cost grows linearly."""
    base = results.get(min(results))
    rows = []
    for stage in (*STAGES, "total"):
        row = {"stage": stage}
        for factor, r in sorted(results.items()):
            s = pipeline_total(r) if stage == "total" else r.get("stages", {}).get(stage, {}).get("seconds")
            row[f"x{factor} s"] = s
            if stage != "total":
                row[f"x{factor} rows/s"] = r.get("stages", {}).get(stage, {}).get("rows_per_sec")
            b = pipeline_total(base) if stage == "total" else base.get("stages", {}).get(stage, {}).get("seconds")
            if factor != min(results):
                n = factor / min(results)
                row[f"x{factor}/x{min(results)} time / {n:g}"] = ratio(ratio(s, b), n)
        rows.append(row)
    return rows


def input_table(results: dict[int, dict]) -> list[dict]:
    """Per factor, training samples/s through Petastorm and from memory (`input_rates`), and Petastorm's
    rate against the in-memory rate of the smallest factor (item 4's goal: at least 0.9 at ×100)."""
    base = results.get(min(results), {}).get("input", {}).get("in_memory", {}).get("samples_per_sec")
    rows = []
    for factor, r in sorted(results.items()):
        i = r.get("input")
        if not i:
            continue
        rows.append({"factor": f"x{factor}", "table rows": i["table_rows"], "row groups": i["row_groups"],
                     "steps": f"{i['epochs']} x {i['steps_per_epoch']} of {i['batch_size']}",
                     "Petastorm samples/s": i["petastorm"]["samples_per_sec"],
                     "in-memory samples/s": i["in_memory"]["samples_per_sec"],
                     "Petastorm / in-memory": i["ratio_petastorm_to_in_memory"],
                     f"Petastorm / in-memory x{min(results)}": ratio(i["petastorm"]["samples_per_sec"], base),
                     "largest worker MiB": r.get("memory", {}).get("largest_worker_peak_mib")})
    return rows


def profile_table(results: dict[int, dict]) -> list[dict]:
    """Per stage and factor, what the stage did (bench/profile.py): Spark jobs and tasks, shuffle read +
    write, files read by Spark's scans, Parquet files written and Delta commits, executor CPU, JVM GC,
    and the CPU of Spark's Python workers and of the driver's Python. "-" where a figure was unavailable."""
    rows = []
    for stage in STAGES:
        for factor, r in sorted(results.items()):
            figures = r.get("stages", {}).get(stage, {}).get("profile")
            if figures:
                rows.append({"stage": stage, "factor": f"x{factor}",
                             "s": figures.get("wall_seconds"), **profile_summary(figures)})
    return rows


def explain(rows: list[dict]) -> list[str]:
    """Plain-language notes on where cost is not linear (time ratio ÷ N outside 0.8..1.2) and the likely reason."""
    superlinear = {
        "ingest": "per-file costs: one landing file per source and day, so the file count grows with the factor "
                  "(listing, checksums, the ingest log, and a Delta log whose add actions every commit re-reads)",
        "clean": "the dedup on the key and the reference checks are shuffles: sorts grow as n log n and spill "
                 "to disk once partitions outgrow the driver's memory",
        "features": "the history windows sort each group's daily rows and the weather join explodes each hour "
                    "into 3 candidates: n log n sorts and shuffles, spilling at large factors",
        "train": "an epoch is linear in rows; more than linear means the reader or memory (swap, GC) is the limit",
    }
    sublinear = ("fixed costs (Spark job and task scheduling, JVM warm-up, Delta commits, Horovod start-up and "
                 "graph tracing) are paid once per run, so a small factor does not amortise them")
    notes = []
    for row in rows:
        for key, value in row.items():
            if "time /" not in key or value is None or 0.8 <= value <= 1.2:
                continue
            if row["stage"] == "total":
                why = "the sum of the stages above"
            else:
                why = superlinear[row["stage"]] if value > 1.2 else sublinear
            notes.append(f"{row['stage']}: {key} = {value} ({'super' if value > 1.2 else 'sub'}-linear): {why}")
    return notes or ["every stage grew within 20% of linear"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--factors", default="1,10", help="comma-separated factors (default 1,10)")
    p.add_argument("--x100", action="store_true", help="also run ×100 (hours on 2 cores)")
    p.add_argument("--quick", action="store_true", help="January 2013, ×1 and ×2")
    p.add_argument("--window", help="first,last day of 2013 to grow (default: the whole year), e.g. "
                                    "2013-01-01,2013-01-31 for the ×100 run of `make bench-x100`")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--driver-memory", default="8g", help="spark.driver.memory (local mode: the whole Spark)")
    p.add_argument("--memory-limit-gib", type=float, default=None, help="stop a factor whose processes pass this RSS")
    p.add_argument("--reuse-finished", action="store_true",
                   help="keep the factors that finished in bench/results/scale.json (same window, epochs and "
                        "settings) and run only the others")
    p.add_argument("--_worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--_out", help=argparse.SUPPRESS)
    p.add_argument("--_root", help=argparse.SUPPRESS)
    p.add_argument("--_window", help=argparse.SUPPRESS)
    p.add_argument("--_set", action="append", default=[], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._worker:
        window = tuple(date.fromisoformat(d) for d in args._window.split(",")) if args._window else None
        result = run_factor(args._worker, window, Path(args._root), args.epochs, args.driver_memory, args._set)
        Path(args._out).write_text(json.dumps(result, default=str))
        return result

    window = (date(2013, 1, 1), date(2013, 1, 31)) if args.quick else parse_window(args.window)
    factors = [1, 2] if args.quick else [int(f) for f in args.factors.split(",")]
    if args.x100 and 100 not in factors:
        factors.append(100)
    extra = ["training.batch_size=128", "lakehouse.model_input_row_group_rows=2048"] if args.quick else []
    results = finished_factors(window, args.epochs, extra, factors) if args.reuse_finished else {}
    for factor in factors:
        if factor in results:
            print(f"[scale] ×{factor}: kept from bench/results/scale.json (finished every stage)", flush=True)
            continue
        print(f"[scale] ×{factor}: generating and running every stage ...", flush=True)
        results[factor] = run_in_subprocess(factor, window, args.epochs, args.driver_memory,
                                            args.memory_limit_gib, extra)
    table = growth(results)
    print_table(table)
    print_table([{"factor": f"x{f}", **r.get("memory", {})} for f, r in results.items()])
    inputs = input_table(results)
    if inputs:
        print_table(inputs)
    profiles = profile_table(results)
    print_table(profiles)
    notes = explain(table)
    for n in notes:
        print(" -", n)
    result = {"quick": quick_flag(args), "window": [str(d) for d in window] if window else "2013 (whole year)",
              "epochs": args.epochs, "extra": extra, "factors": {f"x{f}": r for f, r in results.items()}, "growth": table, "input": inputs, "profile": profiles, "notes": notes,
              "measured_how": "each factor in a fresh process and lakehouse; wall time per stage call; "
                              "rows/s = rows the stage handled (ingest: flights+weather records; features: "
                              "flight rows; train: training rows × epochs) / seconds; total = Spark start-up + every stage "
                              "(generating the data is left out); RSS sampled every 0.2 s; stages.<stage>.profile and the "
                              "profile table: bench/profile.py (Spark's REST API, the Delta logs, psutil)"}
    write_result("scale", result)
    return result


def finished_factors(window, epochs: int, extra: list[str], factors: list[int]) -> dict[int, dict]:
    """The factors of the last scale.json, taken with the same window, epochs and settings, that ran every stage."""
    from bench.common import RESULTS

    path = RESULTS / "scale.json"
    if not path.exists():
        return {}
    r = json.loads(path.read_text())
    same = (r.get("window") == ([str(d) for d in window] if window else "2013 (whole year)")
            and r.get("epochs") == epochs and r.get("extra", []) == extra)
    if not same:
        print(f"[scale] {path} was taken with other settings: running every factor", flush=True)
        return {}
    kept = {}
    for f in factors:
        run = r.get("factors", {}).get(f"x{f}", {})
        if "failed" not in run and all("seconds" in run.get("stages", {}).get(s, {}) for s in STAGES):
            run["taken_at"] = r.get("machine", {}).get("taken_at")
            kept[f] = run
    return kept


def quick_flag(args) -> bool:
    return bool(args.quick)


if __name__ == "__main__":
    main()
