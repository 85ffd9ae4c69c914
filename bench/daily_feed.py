"""Daily feed: years of a feed with one row a day in two sources, through ingest, clean and features,
timed stage by stage, with the files each table ends up in against the months it holds, and a pandas
process reading and joining the same landing files beside it.

The shape is the Bundesliga's (conf/base/datasets/bundesliga.yaml), one row a day: a `schedule` feed
known the day before (the site, its slot and the planned volume) and an `outcomes` feed known the
morning after that `updates` it (the demand and what was served), both one CSV per day in
`{yyyy}/{mm}/{dd}.csv`, from 2010-01-01 on. The declaration is written as YAML into a copy of conf/
in the benchmark's folder (never into the repository's), which `LAKEHOUSE_DL_CONF` points the
pipeline at for the run. The rows are drawn from a seeded generator: the same `--seed` and `--days`
give the same files.

The stages are the library's, called as the nightly calls them (pipelines/flows/stages.py): ingest
everything landed, clean the days ingest rewrote, build features for the days clean rewrote. The
goal (issue 25): ingest + clean + features <= 60 s at 5,000 days, and no table in more than one
file per month of data.

    python -m bench.daily_feed [--days 5000] [--root DIR] [--seed 25] [--quick]

`make bench-daily` runs it at 5,000 days; `--quick` (as `bench.run_all --quick` passes) at 400.
"""
from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import time
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path

import yaml

from bench.common import REPO, bench_config, print_table, ratio, scratch_dir, start_spark, write_result
from bench.profile import PROFILE_SPARK_SETTINGS

NAME = "daily_feed"
FIRST_DAY = date(2010, 1, 1)
STAGES = ("ingest", "clean", "features")
GOAL_SECONDS = 60.0
GOAL_FILES_PER_MONTH = 1
DAYS, QUICK_DAYS = 5000, 400
SITES = ("north", "south", "east", "west")

# ------------------------------------------------------------------------------------------------
# The dataset: its declaration and its landing files


def declaration(days: list[date]) -> dict:
    """The dataset's YAML as a mapping: two daily sources, a prediction and a few declared features;
    the splits are the first 75% of the days (train), the next 17% (validation) and the rest (test)."""
    a, b = int(len(days) * 0.75), int(len(days) * 0.92)
    csv = {"header": True, "delimiter": ",", "null_values": ["NA", ""]}
    key_rules = [
        {"name": "key_not_null", "check": "not_null", "blocking": True, "columns": ["site", "day"]},
        {"name": "date_matches_file", "check": "expression", "blocking": True, "expr": "to_date(day) = date"},
    ]
    return {
        "name": NAME,
        "description": f"Synthetic daily feed (bench/daily_feed.py): one row a day from {days[0]} to {days[-1]}, "
                       "a schedule known the day before and its outcome the morning after.",
        "prediction": {"source": "schedule", "time": {"at": "day_before", "time": "23:00"},
                       "target": "demand - planned", "label": "demand > planned"},
        "splits": {"train": [days[0].isoformat(), days[max(a - 1, 0)].isoformat()],
                   "validation": [days[a].isoformat(), days[b - 1].isoformat()],
                   "test": [days[b].isoformat(), days[-1].isoformat()]},
        "default_run_date": (days[-1] - timedelta(days=1)).isoformat(),
        "sources": {
            "schedule": {
                "path": "schedule/{yyyy}/{mm}/{dd}.csv", "format": "csv", "csv": csv,
                "known": {"at": "day_before", "time": "00:00"},
                "columns": {"day": "string", "site": {"type": "string", "max_length": 20}, "slot": "int",
                            "planned": "double"},
                "primary_key": ["date", "site"],
                "id_column": "event_id",
                "rules": [*key_rules,
                          {"name": "slot_range", "check": "range", "column": "slot", "min": 1, "max": 3,
                           "blocking": True},
                          {"name": "planned_range", "check": "range", "column": "planned", "min": 0, "max": 1000,
                           "blocking": True}],
            },
            "outcomes": {
                "path": "outcomes/{yyyy}/{mm}/{dd}.csv", "format": "csv", "csv": csv,
                "updates": "schedule",
                "known": {"at": "day_after", "time": "06:00"},
                "columns": {"day": "string", "site": {"type": "string", "max_length": 20}, "demand": "double",
                            "served": "int"},
                "primary_key": ["date", "site"],
                "rules": [*key_rules,
                          {"name": "demand_range", "check": "range", "column": "demand", "min": 0, "max": 10000,
                           "blocking": True}],
            },
        },
        # Three declared features: the site, the planned volume and the weekday; and how often the
        # site's demand passed its plan over the last four weeks known the evening before.
        "features": {
            "columns": {"day": {"model": False}, "slot": {"model": False}, "site": "categorical",
                        "planned": "numeric"},
            "calendar": {"weekday": "categorical"},
            "history": {"windows": [28], "groups": {"site": ["site"]},
                        "aggregates": {"over_plan_rate": {"rate": "demand > planned", "flag": True}}},
        },
    }


def write_conf(folder: Path, days: list[date]) -> Path:
    """A copy of the repository's conf/ under `folder` with the dataset's YAML in base/datasets/."""
    conf = folder / "conf"
    shutil.rmtree(conf, ignore_errors=True)
    shutil.copytree(REPO / "conf", conf)
    (conf / "base" / "datasets" / f"{NAME}.yaml").write_text(yaml.safe_dump(declaration(days), sort_keys=False))
    return conf


@contextmanager
def conf_root(conf: Path):
    """The pipeline's configuration folder is `conf` inside the block (the stages find the dataset's
    YAML through it); the previous one after."""
    previous = os.environ.get("LAKEHOUSE_DL_CONF")
    os.environ["LAKEHOUSE_DL_CONF"] = str(conf)
    try:
        yield conf
    finally:
        if previous is None:
            os.environ.pop("LAKEHOUSE_DL_CONF", None)
        else:
            os.environ["LAKEHOUSE_DL_CONF"] = previous


def feed_rows(days: list[date], seed: int):
    """(schedule row, outcome row) of each day, drawn from `seed`: the demand follows the plan, the
    weekday and the site, so the label has something to learn."""
    rng = random.Random(seed)
    lift = {s: rng.uniform(-0.1, 0.1) for s in SITES}
    for day in days:
        site, slot = rng.choice(SITES), rng.randint(1, 3)
        planned = round(rng.uniform(50, 150), 1)
        weekend = 0.15 if day.weekday() >= 5 else 0.0
        demand = round(max(0.0, planned * (1 + lift[site] + weekend + rng.gauss(0, 0.1))), 1)
        served = int(min(demand, planned * 1.1))
        yield (day.isoformat(), site, slot, planned), (day.isoformat(), site, demand, served)


def write_landing(landing: Path, dataset, days: list[date], seed: int) -> dict:
    """One CSV per source and day in the landing folder, with the header the declaration names."""
    schedule, outcomes = dataset.source("schedule"), dataset.source("outcomes")
    counts = {"schedule": 0, "outcomes": 0}
    for day, (plan, outcome) in zip(days, feed_rows(days, seed)):
        for source, row in ((schedule, plan), (outcomes, outcome)):
            path = landing / source.path_for(day)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(",".join(source.file_column_names) + "\n" + ",".join(map(str, row)) + "\n")
            counts[source.name] += 1
    return {name: {"files": n, "rows": n} for name, n in counts.items()}


# ------------------------------------------------------------------------------------------------
# The pipeline and the tables it leaves


def run_stages(cfg, spark, log=print) -> dict:
    """Ingest, clean and features as the nightly chains them (the days one stage rewrote are the
    days the next one builds); each stage's seconds, rows, rows/s, what it did, and its profile
    (bench/profile.py: Spark jobs and tasks, Delta commits, CPU), taken outside its seconds."""
    from bench.profile import StageProfile, line

    out, dates = {}, None
    for stage in STAGES:
        profile = StageProfile(spark, cfg.lakehouse.root)
        with profile:
            t0 = time.perf_counter()
            detail, dates = STAGE_STEPS[stage](cfg, spark, dates)
            seconds = time.perf_counter() - t0
        out[stage] = {"seconds": round(seconds, 3), **detail,
                      "rows_per_sec": round(detail["rows"] / seconds) if seconds else None,
                      "profile": profile.figures()}
        log(f"[daily_feed] {stage}: {seconds:,.1f}s, {detail['rows']:,} rows; {line(profile.figures())}")
    return out


def _ingest(cfg, spark, dates):
    from pipelines.stages import bronze

    ingested = bronze.ingest(cfg, spark, dates=dates)
    # The nightly cleans only the days whose files changed (every day, when none did).
    return ({"rows": sum(r.rows for r in ingested), "rejected": sum(r.rejected for r in ingested),
             "files": sum(r.files_ingested for r in ingested)},
            sorted({d for r in ingested for d in r.dates}) or None)


def _clean(cfg, spark, dates):
    from pipelines.stages import silver

    cleaned = silver.clean(cfg, spark, dates=dates)
    return ({"rows": sum(r.bronze_rows for r in cleaned),
             "tables": {r.table: {"bronze_rows": r.bronze_rows, "silver_rows": r.silver_rows,
                                  "quarantined": r.quarantined, "duplicates": r.duplicates} for r in cleaned}},
            sorted({d for r in cleaned for d in r.dates}) if dates else None)


def _features(cfg, spark, dates):
    from pipelines.stages import gold

    summary = gold.build_features(cfg, spark, dates=dates)
    return ({"rows": int(summary.get("features") or 0), "model_input": summary.get("model_input"),
             "spec": summary.get("spec")}, dates)


STAGE_STEPS = {"ingest": _ingest, "clean": _clean, "features": _features}


def table_files(lh, feed_months: int) -> list[dict]:
    """Per table: rows, files, the months of data it holds (of its `date` column; the feed's for a
    table without one), its partitions and the most files in one, and whether it keeps to one file
    per month: no more files than months (or than partitions, for a table partitioned more coarsely,
    gold.model_input by split) and, when partitioned, one file in each partition."""
    out = []
    for info in sorted(lh.tables(), key=lambda i: i.name):
        table = lh.table(info.name)
        months = feed_months
        if "date" in table.schema().fieldNames():
            months = len({d.strftime("%Y-%m") for d in table.rows_per_partition("date") if d is not None})
        counts: dict = {}
        for a in table.add_actions():
            key = tuple(a.get(f"partition.{c}") for c in info.partition_by)
            counts[key] = counts.get(key, 0) + 1
        most = max(counts.values(), default=0)
        met = info.files <= max(months, len(counts), 1) * GOAL_FILES_PER_MONTH and (
            not info.partition_by or most <= GOAL_FILES_PER_MONTH)
        out.append({"table": info.name, "rows": info.rows, "files": info.files, "months": months,
                    "partition_by": ",".join(info.partition_by) or "none", "partitions": len(counts),
                    "most_files_in_a_partition": most, "files_per_month_met": met})
    return out


def accounting(lh, landed: dict) -> dict:
    """Every landed row in silver, quarantine or duplicates; and every outcome merged onto its day."""
    from pyspark.sql import functions as F

    schedule = lh.table("silver.schedule").read()
    held = {}
    for name in ("silver.quarantine", "silver.duplicates"):
        t = lh.table(name)
        held[name] = ({r["table"]: r["count"] for r in t.read().groupBy("table").count().collect()}
                      if t.exists() else {})
    return {"landed_schedule_rows": landed["schedule"]["rows"], "landed_outcome_rows": landed["outcomes"]["rows"],
            "silver_schedule_rows": schedule.count(),
            "silver_rows_with_outcome": schedule.filter(F.col("demand").isNotNull()).count(),
            "quarantined": held["silver.quarantine"], "duplicates": held["silver.duplicates"]}


# ------------------------------------------------------------------------------------------------
# The peer: pandas reads and joins the same landing files


def pandas_peer(landing: Path) -> dict:
    """Read every landing CSV of both sources (one parse per source over the files' rows) and join the
    outcomes onto the schedule by day and site, as a single pandas process would."""
    import pandas as pd

    t0 = time.perf_counter()
    frames = {}
    for source in ("schedule", "outcomes"):
        files = sorted((landing / source).rglob("*.csv"))
        parts = [p.read_bytes() for p in files]
        body = parts[0] + b"".join(p.split(b"\n", 1)[1] for p in parts[1:]) if parts else b""
        frames[source] = pd.read_csv(io.BytesIO(body)) if body else pd.DataFrame()
    joined = frames["schedule"].merge(frames["outcomes"][["day", "site", "demand", "served"]],
                                      on=["day", "site"], how="left")
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 3), "files": sum(len(list((landing / s).rglob("*.csv"))) for s in frames),
            "rows_read": sum(len(f) for f in frames.values()), "rows_joined": len(joined),
            "rows_with_outcome": int(joined["demand"].notna().sum())}


# ------------------------------------------------------------------------------------------------
# The run


def run(days_count: int, root: Path, seed: int, spark=None, log=print) -> dict:
    """Generate the feed under `root`, run the stages over a fresh lakehouse there, and return the
    result. With `spark` (a test's session) the stages run on it and it is left running; otherwise
    the benchmark starts its own, from the configuration, and stops it."""
    from pipelines.datasets import load_dataset
    from pipelines.storage import Lakehouse

    days = [FIRST_DAY + timedelta(days=i) for i in range(days_count)]
    months = len({d.strftime("%Y-%m") for d in days})
    t0 = time.perf_counter()
    conf = write_conf(root, days)
    with conf_root(conf):
        cfg = bench_config(root / "lakehouse", f"pipeline.dataset={NAME}", *PROFILE_SPARK_SETTINGS)
        dataset = load_dataset(NAME)
        landing = Path(cfg.lakehouse.landing)
        # A fresh lakehouse and landing folder: files of an earlier, longer run would add days.
        shutil.rmtree(cfg.lakehouse.root, ignore_errors=True)
        shutil.rmtree(landing, ignore_errors=True)
        landed = write_landing(landing, dataset, days, seed)
        generate_seconds = round(time.perf_counter() - t0, 3)
        log(f"[daily_feed] {days_count:,} days ({days[0]} .. {days[-1]}, {months} months): "
            f"{sum(s['files'] for s in landed.values()):,} landing files in {generate_seconds:.1f}s")
        t0 = time.perf_counter()
        own_spark = spark is None
        spark = start_spark(cfg, NAME) if own_spark else spark
        spark_seconds = round(time.perf_counter() - t0, 3)
        load_before = [round(x, 2) for x in os.getloadavg()]
        try:
            stages = run_stages(cfg, spark, log)
            load_after = [round(x, 2) for x in os.getloadavg()]
            lh = Lakehouse.from_config(cfg, spark)
            tables = table_files(lh, months)
            accounted = accounting(lh, landed)
        finally:
            if own_spark:
                spark.stop()
    peer = pandas_peer(landing)
    total = round(sum(stages[s]["seconds"] for s in STAGES), 3)
    return {
        "days": days_count, "first_day": days[0].isoformat(), "last_day": days[-1].isoformat(), "months": months,
        "seed": seed, "landing": landed, "generate_seconds": generate_seconds, "spark_start_seconds": spark_seconds,
        "stages": stages, "total_seconds": total,
        "rows_per_sec": round(sum(s["rows"] for s in landed.values()) / total) if total else None,
        "load_average_during_run": {"before_1m_5m_15m": load_before, "after_1m_5m_15m": load_after},
        "tables": tables, "accounting": accounted, "peer": peer,
        "ratio_pipeline_to_peer": ratio(total, peer["seconds"]),
        "goal": {"total_seconds_at_most": GOAL_SECONDS, "files_per_month_at_most": GOAL_FILES_PER_MONTH,
                 "days": DAYS},
        "goal_seconds_met": total <= GOAL_SECONDS,
        "goal_files_met": all(t["files_per_month_met"] for t in tables),
    }


def cpu_seconds(profile: dict) -> float | None:
    """CPU seconds of the driver's Python, the JVM and Spark's Python workers in a stage: on a shared
    machine the wall time waits for cores, this does not (None when a part was not measured)."""
    cpu = profile.get("cpu", {})
    parts = [cpu.get(k) for k in ("driver_python_cpu_seconds", "jvm_cpu_seconds", "python_workers_cpu_seconds")]
    return round(sum(parts), 2) if parts and None not in parts else None


def report(r: dict) -> None:
    """The stage table, the table of files per table, the peer and the goals."""
    from bench.profile import summary

    shown = ("jobs", "tasks", "files written", "commits", "exec CPU s", "driver py CPU s")
    rows = [{"stage": s, "seconds": r["stages"][s]["seconds"], "rows": r["stages"][s]["rows"],
             "rows/s": r["stages"][s]["rows_per_sec"],
             **{k: summary(r["stages"][s].get("profile", {})).get(k) for k in shown},
             "all CPU s": cpu_seconds(r["stages"][s].get("profile", {}))} for s in STAGES]
    rows.append({"stage": "total", "seconds": r["total_seconds"],
                 "rows": sum(s["rows"] for s in r["landing"].values()), "rows/s": r["rows_per_sec"]})
    print()
    print_table(rows)
    print()
    print_table([{"table": t["table"], "rows": t["rows"], "files": t["files"], "months": t["months"],
                  "partitioned by": t["partition_by"], "partitions": t["partitions"],
                  "most files/partition": t["most_files_in_a_partition"],
                  "<= 1 file/month": "met" if t["files_per_month_met"] else "missed"} for t in r["tables"]])
    p, load = r["peer"], r["load_average_during_run"]
    print(f"\npandas peer (read {p['files']:,} CSVs, join {p['rows_joined']:,} rows): {p['seconds']:.3f}s; "
          f"pipeline / peer: {r['ratio_pipeline_to_peer']}")
    print(f"load average (1m, 5m, 15m): {load['before_1m_5m_15m']} before the stages, "
          f"{load['after_1m_5m_15m']} after")
    days_note = "" if r["days"] == r["goal"]["days"] else f" (the goal is set at {r['goal']['days']:,} days)"
    print(f"goal: ingest + clean + features <= {GOAL_SECONDS:g} s: {r['total_seconds']:.1f}s, "
          f"{'met' if r['goal_seconds_met'] else 'missed'}{days_note}; "
          f"every table <= {GOAL_FILES_PER_MONTH} file per month: {'met' if r['goal_files_met'] else 'missed'}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--days", type=int, help=f"days of the feed, from {FIRST_DAY} (default {DAYS:,}; {QUICK_DAYS} "
                                            "with --quick)")
    p.add_argument("--root", help="folder for the conf copy, landing files and lakehouse (kept); "
                                  "default: a scratch folder removed after the run")
    p.add_argument("--seed", type=int, default=25, help="seed of the generated rows")
    p.add_argument("--quick", action="store_true", help="400 days unless --days says otherwise (a smoke test)")
    args = p.parse_args(argv)
    if args.days is None:
        args.days = QUICK_DAYS if args.quick else DAYS
    if args.days < 20:
        p.error("--days must be at least 20: the splits need days to train on, validate and test")
    from pipelines.console import configure_logging

    configure_logging()   # the stages' own lines ([ingest], [clean], [features]) between the benchmark's
    root = Path(args.root).resolve() if args.root else scratch_dir(NAME)
    root.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args.days, root, args.seed)
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)
    result["quick"] = args.quick
    report(result)
    write_result(NAME, result)
    return result


if __name__ == "__main__":
    main()
