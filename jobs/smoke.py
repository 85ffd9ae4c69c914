"""Cluster smoke job: write a small partitioned table through the table layer and read it back.

    spark-submit --master spark://host:7077 --py-files dist/lakehouse_dl-0.1.0.zip \
        jobs/smoke.py --set lakehouse.root=/shared/lakehouse --report smoke.json
"""
import argparse
import json
import sys

from pipelines.config import load_config
from pipelines.storage import Lakehouse
from pipelines.storage.spark import build_spark


def pipelines_location(_):
    """Where an executor imports the package from (the shipped zip, when --py-files works)."""
    import pipelines

    return pipelines.__file__


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="write and read back a small table on the cluster")
    parser.add_argument("--env", default="local")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--table", default="ops.smoke")
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--report", help="write what happened here as JSON")
    args = parser.parse_args(argv)

    cfg = load_config(args.env, args.overrides)
    spark = build_spark(cfg, app_name="lakehouse-dl smoke")
    table = Lakehouse.from_config(cfg, spark).table(args.table)
    rows = spark.range(0, args.rows, numPartitions=4).selectExpr(
        "id", "date_add(date'2013-01-01', cast(id % 3 as int)) as date", "cast(id as double) / 2 as value")
    version = table.write(rows, mode="overwrite", partition_by=["date"], description="smoke")
    back = table.read(version=version)
    sc = spark.sparkContext
    report = {
        "version": version,
        "rows_read": back.count(),
        "sum_id": back.agg({"id": "sum"}).first()[0],
        "files": len(table.files(version)),
        "master": sc.master,
        "executors": sc._jsc.sc().getExecutorMemoryStatus().size() - 1,  # the driver is listed too
        "executor_modules": sorted(set(sc.parallelize(range(4), 4).map(pipelines_location).collect())),
    }
    print(json.dumps(report))
    if args.report:
        with open(args.report, "w") as fh:
            json.dump(report, fh)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
