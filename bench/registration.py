"""Registration over a long backfill: a model's pins from the commits' lineage records against the
`_built_from` column walk, as the number of nightly table versions grows.

A synthetic daily feed, one nightly per day: bronze.flights, silver.flights (built from that
bronze version) and gold.features (built from that silver version) each rewrite the day's rows,
partitioned by month as the lakehouse's default layout is (so every nightly rewrites its month
and keeps the month's other days). Every `--retrain-every` days gold.model_input is rewritten
from all of gold.features and a model is registered with its pins. Printed: the seconds of the
day's writes (day 2 against the last day), the seconds of the pins from the records and from the
column walk at a few points, and, after `maintain` with no retention and `--keep-models`, the
data on disk against the live data's own size.

    python -m bench.registration [--days 365] [--rows-per-day 500] [--retrain-every 7] [--keep-models 5]
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from datetime import date, datetime, timedelta, timezone

from bench.common import bench_config, folder_bytes, print_table, ratio, scratch_dir, start_spark, write_result


def day_frame(spark, day: date, rows: int, lineage: dict[str, int] | None):
    from pyspark.sql import functions as F

    from pipelines.lineage.columns import built_from

    df = (spark.range(rows).withColumn("date", F.lit(day))
          .withColumn("dep_delay", (F.col("id") * 7 % 97).cast("double"))
          .withColumn("origin", F.element_at(F.array(F.lit("EWR"), F.lit("JFK"), F.lit("LGA")),
                                             (F.col("id") % 3 + 1).cast("int"))))
    return df.withColumn("_built_from", F.lit(built_from(lineage))) if lineage else df


def pins_both_ways(lakehouse, read: dict, walk: bool) -> dict:
    from pipelines.lineage.pins import upstream, upstream_by_column

    started = time.perf_counter()
    pins = upstream(lakehouse, read)
    out = {"record_s": round(time.perf_counter() - started, 3), "versions_pinned": sum(map(len, pins.values()))}
    if walk:
        started = time.perf_counter()
        walked = upstream_by_column(lakehouse, read)
        out["walk_s"] = round(time.perf_counter() - started, 3)
        out["same"] = walked == pins
        out["walk/record"] = ratio(out["walk_s"], out["record_s"])
    return {**out, "pins": pins}


def run(days: int, rows_per_day: int, retrain_every: int, keep_models: int, walk_points: int) -> dict:
    from pipelines import catalog
    from pipelines.ml import registry
    from pipelines.ops.maintenance import maintain
    from pipelines.storage import Lakehouse

    folder = scratch_dir("registration")
    cfg = bench_config(folder / "lakehouse", "lakehouse.engine=delta-rs", "spark.master=local[2]",
                       "spark.shuffle_partitions=2")
    spark = start_spark(cfg, "registration")
    lh = Lakehouse.from_config(cfg, spark)
    layout = lh.daily_partition_by()
    bronze, silver = lh.table(catalog.bronze("flights")), lh.table(catalog.silver("flights"))
    features, model_input = lh.table(catalog.FEATURES), lh.table(catalog.MODEL_INPUT)
    first = date(2013, 1, 1)
    nightly, registrations = [], []
    checkpoints = {max(2, round(days * k / walk_points)) for k in range(1, walk_points + 1)}
    for n in range(1, days + 1):
        day = first + timedelta(days=n - 1)
        started = time.perf_counter()
        part = {"date": [day]}
        vb = bronze.write(day_frame(spark, day, rows_per_day, None), mode="overwrite", partitions=part,
                          partition_by=layout)
        vs = silver.write(day_frame(spark, day, rows_per_day, {bronze.name: vb}), mode="overwrite",
                          partitions=part, partition_by=layout)
        vf = features.write(day_frame(spark, day, rows_per_day, {silver.name: vs}), mode="overwrite",
                            partitions=part, partition_by=layout)
        nightly.append(time.perf_counter() - started)
        if n % retrain_every == 0 or n in checkpoints:
            from pyspark.sql import functions as F

            from pipelines.lineage.columns import merge_built_from

            rows = features.read().withColumn("_built_from", merge_built_from(F.lit(None), {features.name: vf}))
            vm = model_input.write(rows, mode="overwrite")
            measured = pins_both_ways(lh, {model_input.name: vm}, walk=n in checkpoints)
            pins = measured.pop("pins")
            started = time.perf_counter()
            entry = registry.ModelEntry(f"m{n}", datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(days=n),
                                        f"run{n}", day, f"/models/m{n}", model_input.name, vm, None, "hash", "code",
                                        "{}", "blessed" if n % (4 * retrain_every) == 0 else "rejected", "bench",
                                        pins=json.dumps(pins))
            registry.register(lh, entry)
            registrations.append({"day": n, **measured, "register_s": round(time.perf_counter() - started, 3)})
            print(f"[registration] day {n}: {registrations[-1]}", flush=True)
    live = sum(lh.table(name).size()[1] for name in lh.table_names())
    before = folder_bytes(lh.root)
    started = time.perf_counter()
    done = maintain(lh, retention_hours=0, row_group_rows=cfg.lakehouse.row_group_rows, keep_registered=keep_models)
    maintain_s = time.perf_counter() - started
    after = folder_bytes(lh.root)
    spark.stop()
    shutil.rmtree(folder, ignore_errors=True)
    return {"days": days, "rows_per_day": rows_per_day, "retrain_every": retrain_every, "keep_models": keep_models,
            "nightly_writes_s": {"day 2": round(nightly[1], 3), f"day {days}": round(nightly[-1], 3),
                                 "last/day 2": ratio(nightly[-1], nightly[1])},
            "registrations": registrations,
            "storage": {"live_bytes": live, "on_disk_before_maintain": before, "on_disk_after_maintain": after,
                        "after/live": ratio(after, live), "maintain_s": round(maintain_s, 1),
                        "tables": {m.table: {"files": [m.files_before, m.files_after], "compacted": m.compacted,
                                             "vacuumed": len(m.vacuumed), "kept_versions": len(m.kept_versions)}
                                   for m in done}},
            "measured_how": "pins of the model input version: upstream() (commit records) and "
                            "upstream_by_column() (the _built_from column of every version walked), wall time; "
                            "register_s: registry.register after the pins; storage: Parquet bytes under the root"}


def report(result: dict) -> None:
    print_table([{k: r.get(k) for k in ("day", "versions_pinned", "record_s", "walk_s", "walk/record", "same",
                                        "register_s")} for r in result["registrations"] if "walk_s" in r])
    print(f"[registration] nightly writes: {result['nightly_writes_s']}")
    print(f"[registration] storage: {result['storage']}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--rows-per-day", type=int, default=500)
    p.add_argument("--retrain-every", type=int, default=7)
    p.add_argument("--keep-models", type=int, default=5)
    p.add_argument("--walk-points", type=int, default=3, help="days at which the column walk is timed too")
    args = p.parse_args(argv)
    result = run(args.days, args.rows_per_day, args.retrain_every, args.keep_models, args.walk_points)
    report(result)
    write_result("registration", result)
    return result


if __name__ == "__main__":
    main()
