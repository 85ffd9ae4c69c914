"""Peer: the seeds' way of doing the same job, one Python process with pandas joins and a Keras
fit, against the pipeline (Spark + Delta + Petastorm + Horovod), on the same landing files.

The peer reads the landing CSVs (the ones `bench.generate` writes, in `landing seed`'s layout),
deduplicates flights on their key, computes the features of pipelines/datasets/features/nycflights13.py
with pandas (calendar, carrier/origin/dest/route, distance, plane, the weather at the scheduled
hour or up to 2 hours before, the 7/28-day late rates and mean delays per route, carrier and
origin-hour, the origin's flights the day before), fits the same feature spec on the training
window (`pipelines.stages.gold.model_columns`: same columns and missing-value policies), and trains
`pipelines.ml.model.build_model` for `training.epochs` epochs with the same early stopping.
The pipeline side is `bench.scale`'s run of every stage with the same epochs.

Reported at ×1 and ×10: end-to-end seconds of each (data generation excluded; Spark start-up
included), the ratio pipeline / peer, validation AUC of each (the best epoch by validation loss),
and each side's peak memory. Each side runs in its own process, watched: when its process tree
passes `--memory-limit-gib` (default: the machine's memory less 1 GiB) it is stopped and the
scale is reported as not finishing. `--probe 30,100` tries larger scales to find the largest each
finishes.

    python -m bench.peer [--factors 1,10] [--probe 30,100] [--quick] [--pipeline-from bench/results/scale.json]

`--pipeline-from` takes the pipeline side of a factor from a `bench.scale` result written with the
same window, epochs and settings (as `bench.run_all` does, which runs scale first), instead of
running every stage a second time; factors it lacks are run here.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import date
from pathlib import Path

from bench.common import (PeakMemory, bench_config, default_memory_limit_gib, parse_window, print_table, ratio,
                          run_watched, scratch_dir, write_result)

KEY = ["date", "carrier", "flight", "origin", "sched_dep_time"]


# ------------------------------------------------------------------------------------------------
# The seeds' way, in pandas


def read_landing(landing: Path) -> dict:
    """Every landing CSV of each source, concatenated (NA → missing)."""
    import pandas as pd

    kw = dict(na_values=["NA"], keep_default_na=False)
    out = {}
    for source in ("flights", "flight_outcomes", "weather"):
        files = sorted((landing / source).rglob("*.csv"))
        out[source] = pd.concat((pd.read_csv(f, **kw) for f in files), ignore_index=True)
    out["planes"] = pd.read_csv(landing / "planes" / "planes.csv", **kw)
    return out


def features(raw: dict, late_minutes: int = 15, windows=(7, 28), lookback_hours: int = 2):
    """The readable features, one row per flight, as pipelines/datasets/features/nycflights13.py defines them."""
    import numpy as np
    import pandas as pd

    f = raw["flights"].dropna(subset=["year", "month", "day", "carrier", "flight", "origin", "sched_dep_time"])
    f = f.assign(date=pd.to_datetime(dict(year=f.year, month=f.month, day=f.day)))
    f = f.drop_duplicates(KEY).reset_index(drop=True)
    # The outcomes (times and delays) arrive in their own files the morning after: joined on the
    # flight's key, as silver merges them.
    o = raw["flight_outcomes"].dropna(subset=["year", "month", "day", "carrier", "flight", "origin", "sched_dep_time"])
    o = o.assign(date=pd.to_datetime(dict(year=o.year, month=o.month, day=o.day))).drop_duplicates(KEY)
    f = f.merge(o[[*KEY, "arr_delay"]], on=KEY, how="left")
    f["time_hour"] = pd.to_datetime(f["time_hour"], utc=True)
    f["sched_hour"] = f["sched_dep_time"] // 100
    f["route"] = f["origin"] + "-" + f["dest"]
    f["sched_minute_of_day"] = f["sched_hour"] * 60 + f["sched_dep_time"] % 100
    f["weekday"] = f["date"].dt.strftime("%a")
    f["month"] = f["date"].dt.month
    f["day_of_year"] = f["date"].dt.dayofyear
    f["_day"] = (f["date"] - pd.Timestamp("1970-01-01")).dt.days

    planes = raw["planes"].drop_duplicates("tailnum")
    planes = planes.rename(columns={"year": "_built", "seats": "plane_seats", "engine": "plane_engine",
                                    "type": "plane_type"})[["tailnum", "_built", "plane_seats", "plane_engine", "plane_type"]]
    planes["plane_known"] = 1.0
    f = f.merge(planes, on="tailnum", how="left")
    f["plane_known"] = f["plane_known"].fillna(0.0)
    f["plane_age"] = f["date"].dt.year - f["_built"]

    weather_cols = ["temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib"]
    w = raw["weather"].copy()
    w["time_hour"] = pd.to_datetime(w["time_hour"], utc=True)
    w = w.drop_duplicates(["origin", "time_hour"]).rename(columns={"time_hour": "_observed"})
    w = w[["origin", "_observed", *weather_cols]].sort_values("_observed")
    w["weather_known"] = 1.0
    # The observation at the scheduled hour, else the latest of the `lookback_hours` before it.
    f = pd.merge_asof(f.sort_values("time_hour"), w, left_on="time_hour", right_on="_observed", by="origin",
                      direction="backward", tolerance=pd.Timedelta(hours=lookback_hours))
    f["weather_known"] = f["weather_known"].fillna(0.0)

    arrived = f["arr_delay"].notna()
    f["_arrived"] = arrived.astype(float)
    f["_late"] = (arrived & (f["arr_delay"] >= late_minutes)).astype(float)
    f["_delay"] = f["arr_delay"].fillna(0.0)
    days = np.arange(f["_day"].min(), f["_day"].max() + 1)
    groups = {"route": ["origin", "dest"], "carrier": ["carrier"], "origin_hour": ["origin", "sched_hour"]}
    for group, keys in groups.items():
        daily = f.groupby([*keys, "_day"])[["_arrived", "_late", "_delay"]].sum()
        wide = daily.unstack(keys).reindex(days, fill_value=0.0).fillna(0.0)
        parts = {}
        for n in windows:
            # Sums over the n days before each day: the day itself never counts.
            rolled = wide.rolling(n, min_periods=1).sum().shift(1)
            count = rolled["_arrived"].where(rolled["_arrived"] > 0)
            parts[f"{group}_late_rate_{n}d"] = (rolled["_late"] / count).stack(keys, future_stack=True)
            parts[f"{group}_mean_delay_{n}d"] = (rolled["_delay"] / count).stack(keys, future_stack=True)
        history = pd.DataFrame(parts)
        history.index = history.index.set_names(["_day", *keys])
        f = f.merge(history.reset_index(), on=["_day", *keys], how="left")
    # The schedule: the plane's leg of the day and minutes since its last departure, the departures
    # its airport schedules in the same hour.
    f = f.sort_values(["date", "tailnum", "sched_dep_time", "carrier", "flight", "origin"]).reset_index(drop=True)
    legs = f[f["tailnum"].notna()].groupby(["date", "tailnum"])
    f.loc[legs.ngroup().index, "plane_leg_of_day"] = legs.cumcount().astype(float) + 1
    f.loc[legs.ngroup().index, "plane_minutes_since_last_departure"] = legs["sched_minute_of_day"].diff()
    f["origin_hour_departures"] = f.groupby(["date", "origin", "sched_hour"])["flight"].transform("size").astype(float)
    counts = f.groupby(["_day", "origin"]).size().unstack("origin").reindex(days, fill_value=0).fillna(0)
    prev = counts.shift(1).fillna(0.0).stack(future_stack=True).rename("origin_flights_prev_day").reset_index()
    f = f.merge(prev.rename(columns={"level_0": "_day"}), on=["_day", "origin"], how="left")
    f["label"] = np.where(f["arr_delay"].notna(), (f["arr_delay"] >= late_minutes).astype(float), np.nan)
    return f


def fit_spec(frame, columns, train_window):
    """The feature spec of the training window's labelled rows: mean, population std and fill per
    numeric column (plus its missing flag), the sorted vocabulary per categorical one."""
    import pandas as pd

    start, end = (pd.Timestamp(d) for d in train_window)
    train = frame[(frame["date"] >= start) & (frame["date"] <= end)]
    spec = []
    for col in columns:
        values = train[col.source]
        if col.kind == "numeric":
            values = values.astype(float)
            mean = float(values.mean()) if values.notna().any() else 0.0
            std = float(values.std(ddof=0)) if values.notna().any() else 1.0
            std = std if std > 1e-9 * max(1.0, abs(mean)) else 1.0
            fill = {"mean": mean, "zero": 0.0, "median": values.median(),
                    "mode": values.mode().min() if values.notna().any() else mean}[col.fill]
            spec.append({"name": f"num_{col.source}", "kind": "standardize", "source": col.source, "mean": mean,
                         "std": std, "fill": mean if pd.isna(fill) else float(fill)})
            if col.flag:
                spec.append({"name": f"num_{col.source}_missing", "kind": "missing_flag", "source": col.source})
        else:
            vocab = sorted(values.dropna().map(_as_string).unique())
            spec.append({"name": f"cat_{col.source}", "kind": "vocabulary", "source": col.source, "vocabulary": vocab})
    # Numeric first, then categorical: the model input's order.
    return sorted(spec, key=lambda s: s["kind"] == "vocabulary")


def _as_string(v) -> str:
    # Spark casts integers to "5", not "5.0".
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def encode(frame, spec) -> dict:
    """The model's (n, 1) inputs of `frame` under `spec`."""
    import numpy as np

    out = {}
    for s in spec:
        values = frame[s["source"]]
        if s["kind"] == "standardize":
            x = ((values.astype(float).fillna(s["fill"]) - s["mean"]) / s["std"]).to_numpy(np.float32)
        elif s["kind"] == "missing_flag":
            x = values.isna().to_numpy(np.float32)
        else:
            index = {v: i + 1 for i, v in enumerate(s["vocabulary"])}
            x = values.map(lambda v: index.get(_as_string(v), 0) if v == v and v is not None else 0).to_numpy(np.int32)
        out[s["name"]] = x.reshape(-1, 1)
    return out


def run_peer(landing: Path, cfg) -> dict:
    """The whole peer job, timed by step: read, features, spec + encoding, fit."""
    import pandas as pd
    import tensorflow as tf

    from pipelines.stages.gold import model_columns
    from pipelines.ml.model import build_model, compile_model, make_optimizer
    from pipelines.ml.inputs import FeatureSpec

    times = {}
    t = time.perf_counter()
    raw = read_landing(landing)
    times["read"] = time.perf_counter() - t
    t = time.perf_counter()
    frame = features(raw)
    del raw
    times["features"] = time.perf_counter() - t
    t = time.perf_counter()
    labelled = frame[frame["label"].notna()]
    columns = model_columns(cfg)
    spec = fit_spec(labelled, columns, cfg.split("train"))
    sets = {}
    for split in ("train", "validation"):
        start, end = (pd.Timestamp(d) for d in cfg.split(split))
        rows = labelled[(labelled["date"] >= start) & (labelled["date"] <= end)]
        sets[split] = (encode(rows, spec), rows["label"].to_numpy("float32").reshape(-1, 1))
    del frame, labelled
    times["encode"] = time.perf_counter() - t

    t = time.perf_counter()
    feature_spec = FeatureSpec(tuple(s["name"] for s in spec if s["kind"] != "vocabulary"),
                               {s["name"]: len(s["vocabulary"]) + 1 for s in spec if s["kind"] == "vocabulary"})
    tc = cfg.training
    tf.keras.utils.set_random_seed(tc.seed)
    model = build_model(feature_spec, tc)
    compile_model(model, tc, make_optimizer(tc, tc.learning_rate))
    callbacks = [tf.keras.callbacks.EarlyStopping("val_loss", patience=tc.early_stopping_patience,
                                                  restore_best_weights=True)] if tc.early_stopping_patience else []
    history = model.fit(*sets["train"], batch_size=tc.batch_size, epochs=tc.epochs, shuffle=True,
                        validation_data=sets["validation"], callbacks=callbacks, verbose=0).history
    times["fit"] = time.perf_counter() - t
    best = min(range(len(history["val_loss"])), key=lambda i: history["val_loss"][i])
    return {"seconds": {k: round(v, 2) for k, v in times.items()}, "total_seconds": round(sum(times.values()), 2),
            "rows": {k: len(v[1]) for k, v in sets.items()}, "epochs": len(history["val_loss"]),
            "best_epoch": best + 1, "val_auc": round(float(history["val_auc"][best]), 4),
            "model_inputs": len(feature_spec.inputs)}


def peer_worker(factor: int, window, out: Path, epochs: int | None, extra: list[str]) -> dict:
    """Generate ×`factor` landing files (not timed), then run the peer job watched by PeakMemory."""
    from bench.generate import generate_in_subprocess
    from bench.scale import splits_for

    root = out.parent / "lakehouse"
    generated = generate_in_subprocess(root, factor, window)
    cfg = bench_config(root, f"pipeline.splits={json.dumps(splits_for(generated['landing']['flights']['days']))}",
                       *([f"training.epochs={epochs}"] if epochs else []), *extra)
    with PeakMemory() as mem:
        result = run_peer(Path(cfg.lakehouse.landing), cfg)
    result["memory"] = mem.result()
    result["factor"] = factor
    out.write_text(json.dumps(result))
    return result


def run_peer_in_subprocess(factor: int, window, epochs: int | None, limit_gib: float, extra: list[str]) -> dict:
    folder = scratch_dir(f"peer-x{factor}")
    out = folder / "result.json"
    cmd = [sys.executable, "-m", "bench.peer", "--_worker", str(factor), "--_out", str(out),
           *(["--_window", f"{window[0]},{window[1]}"] if window else []),
           *(["--epochs", str(epochs)] if epochs else []), *[f"--_set={e}" for e in extra]]
    watched = run_watched(cmd, limit_gib)
    try:
        if watched["exceeded_gib"]:
            return {"factor": factor, "failed": f"stopped: {watched['exceeded_gib']} GiB > limit {limit_gib} GiB",
                    "memory": watched["memory"]}
        if watched["returncode"] != 0 or not out.exists():
            return {"factor": factor, "failed": f"exit code {watched['returncode']}", "memory": watched["memory"]}
        result = json.loads(out.read_text())
        result["memory_process_tree"] = watched["memory"]
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# Side by side


def pipeline_seconds(result: dict) -> float | None:
    """End-to-end seconds of the pipeline run: Spark start-up plus every stage (generation left out)."""
    from bench.scale import pipeline_total

    return None if "failed" in result else pipeline_total(result)


def scale_runs(path: str | None, window, epochs: int, extra: list[str]) -> dict:
    """The finished factors of a bench.scale result taken with the same window, epochs and settings
    (early stopping cannot cut such a run short: scale trains exactly `epochs` epochs)."""
    if not path or not Path(path).exists():
        return {}
    r = json.loads(Path(path).read_text())
    same_window = r.get("window") == ([str(d) for d in window] if window else "2013 (whole year)")
    if not (same_window and r.get("epochs") == epochs and r.get("extra", []) == extra):
        print(f"[peer] {path} was taken with other settings: running the pipeline side here")
        return {}
    return {f: run for f, run in r.get("factors", {}).items() if pipeline_seconds(run) is not None}


def _rounded(value, places: int = 4):
    return round(value, places) if isinstance(value, float) else value


def main(argv=None) -> dict:
    from bench.scale import run_in_subprocess

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--factors", default="1,10")
    p.add_argument("--probe", default="", help="larger factors to try, in order, until a side no longer finishes")
    p.add_argument("--quick", action="store_true", help="January 2013, ×1 and ×2, 2 epochs")
    p.add_argument("--window", help="first,last day of 2013 to grow (default: the whole year), as bench.scale")
    p.add_argument("--epochs", type=int, help="training.epochs for both sides (default: the configuration's)")
    p.add_argument("--memory-limit-gib", type=float, default=default_memory_limit_gib())
    p.add_argument("--driver-memory", default="8g")
    p.add_argument("--pipeline-from", help="a bench.scale result whose runs stand for the pipeline side")
    p.add_argument("--_worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--_out", help=argparse.SUPPRESS)
    p.add_argument("--_window", help=argparse.SUPPRESS)
    p.add_argument("--_set", action="append", default=[], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._worker:
        window = tuple(date.fromisoformat(d) for d in args._window.split(",")) if args._window else None
        return peer_worker(args._worker, window, Path(args._out), args.epochs, args._set)

    window = (date(2013, 1, 1), date(2013, 1, 31)) if args.quick else parse_window(args.window)
    factors = [1, 2] if args.quick else [int(f) for f in args.factors.split(",")]
    probes = [int(f) for f in args.probe.split(",") if f]
    epochs = args.epochs or (2 if args.quick else None)
    from pipelines.config import load_config

    epochs_used = epochs or load_config("local").training.epochs
    extra = ["training.batch_size=128", "lakehouse.model_input_row_group_rows=2048"] if args.quick else []
    reused = scale_runs(args.pipeline_from, window, epochs_used, extra)
    rows, runs = [], {}
    largest = {"peer": None, "pipeline": None}
    stopped: set[str] = set()
    for factor in [*factors, *probes]:
        sides = {}
        for side in ("peer", "pipeline"):
            if side in stopped:
                continue      # it did not finish a smaller scale
            print(f"[peer] ×{factor} {side} ...", flush=True)
            if side == "peer":
                sides[side] = run_peer_in_subprocess(factor, window, epochs_used, args.memory_limit_gib, extra)
            elif f"x{factor}" in reused:
                print(f"[peer] ×{factor} pipeline: taken from {args.pipeline_from} (same window, epochs and settings)")
                sides[side] = reused[f"x{factor}"]
            else:
                sides[side] = run_in_subprocess(factor, window, epochs_used, args.driver_memory, args.memory_limit_gib,
                                                [f"training.early_stopping_patience={load_config('local').training.early_stopping_patience}",
                                                 *extra])
        runs[f"x{factor}"] = sides
        peer, pipe = sides.get("peer", {}), sides.get("pipeline", {})
        peer_s = peer.get("total_seconds") if "failed" not in peer else None
        pipe_s = pipeline_seconds(pipe) if pipe else None
        for side, ok in (("peer", peer_s), ("pipeline", pipe_s)):
            if ok is not None:
                largest[side] = factor
            elif side in sides:
                stopped.add(side)
        mem = lambda r: (r.get("memory_process_tree") or r.get("memory") or {}).get("total_peak_mib")  # noqa: E731
        rows.append({"scale": f"x{factor}", "peer s": peer_s, "pipeline s": pipe_s,
                     "pipeline/peer time": ratio(pipe_s, peer_s),
                     "peer val AUC": peer.get("val_auc"),
                     "pipeline val AUC": _rounded((pipe.get("stages", {}).get("train", {}) or {}).get("val_auc")),
                     "peer peak MiB": mem(peer), "pipeline peak MiB": mem(pipe),
                     "peer": peer.get("failed", "ok") if peer else "not run",
                     "pipeline": pipe.get("failed", "ok") if pipe else "not run"})
    print_table(rows)
    print(f"largest scale finished within {args.memory_limit_gib} GiB: peer ×{largest['peer']}, "
          f"pipeline ×{largest['pipeline']} (of those tried: {[*factors, *probes]})")
    result = {"quick": args.quick, "window": [str(d) for d in window] if window else "2013 (whole year)",
              "epochs": epochs_used, "memory_limit_gib": args.memory_limit_gib, "table": rows, "runs": runs,
              "largest_scale_within_limit": largest, "tried": [*factors, *probes],
              "pipeline_from": {f: args.pipeline_from for f in reused if f in runs},
              "measured_how": "each side in its own watched process; end-to-end = read landing files to a trained "
                              "model (pipeline: Spark start + ingest + clean + features + train); data generation "
                              "excluded; val AUC at the best epoch by validation loss"}
    write_result("peer", result)
    return result


if __name__ == "__main__":
    main()
