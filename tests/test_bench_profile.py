"""bench.profile.StageProfile over the test session's real Spark (its web UI is on: Spark's default,
and conf/ does not turn it off): the jobs, tasks and shuffle of known work, the Delta commits of a
table written with deltalake, the CPU of Spark's Python workers, and a block with no Spark work."""
from __future__ import annotations

import time

import pyarrow as pa
from deltalake import write_deltalake
from pyspark.sql import functions as F

from bench.profile import StageProfile, line, summary


def test_profile_counts_jobs_shuffle_commits_and_python_workers(spark, tmp_path):
    root = tmp_path / "lakehouse"
    table = root / "demo" / "bronze" / "t"
    assert spark.sparkContext.uiWebUrl, "the test session's Spark has no web UI: the profile needs its REST API"

    def work(x):   # defined here so that it is pickled by value (the workers cannot import the tests)
        total = 0
        for i in range(200):
            total += (x * i) % 7
        return total

    busy = F.udf(work, "long")
    with StageProfile(spark, root) as p:
        # Two known jobs with a shuffle (AQE may add a job per shuffle stage: at least 2 in all).
        first = spark.range(20_000, numPartitions=2).groupBy((F.col("id") % 7).alias("k")).count().collect()
        second = spark.range(20_000, numPartitions=2).groupBy((F.col("id") % 5).alias("k")).count().collect()
        # A Python UDF: Spark's Python workers do the work.
        spark.range(20_000, numPartitions=2).select(F.sum(busy("id"))).collect()
        # Two Delta commits with deltalake, no Spark.
        write_deltalake(str(table), pa.table({"x": [1, 2, 3]}))
        write_deltalake(str(table), pa.table({"x": [4, 5]}), mode="append")
    assert len(first) == 7 and len(second) == 5
    f = p.figures()
    s = f["spark"]
    assert s["status"] == "ok", s
    assert s["jobs"] >= 3 and s["jobs_failed"] == 0
    assert s["stages"] >= 3 and s["tasks"] > 0 and s["tasks_failed"] == 0
    assert s["shuffle_write_bytes"] > 0 and s["shuffle_read_bytes"] > 0
    assert s["executor_run_seconds"] > 0
    assert "truncated" not in s
    assert f["delta"]["commits"] == 2 and f["delta"]["parquet_files_added"] == 2
    assert f["delta"]["commits_per_table"] == {"t": 2}
    assert f["cpu"]["python_workers_cpu_seconds"] > 0
    assert f["wall_seconds"] > 0
    assert "Delta commits" in line(f) and summary(f)["commits"] == 2


def test_profile_counts_files_read_by_spark_scans(spark, tmp_path):
    folder = tmp_path / "parquet"
    spark.range(100, numPartitions=3).write.parquet(str(folder))
    files = len(list(folder.glob("*.parquet")))
    with StageProfile(spark, tmp_path) as p:
        assert spark.read.parquet(str(folder)).count() == 100
    s = p.figures()["spark"]
    assert s["files_read_by_scans"]["parquet"] == files == s["files_read_by_scans"]["total"]
    assert p.figures()["delta"]["commits"] == 0


def test_no_spark_work_counts_no_jobs(spark, tmp_path):
    with StageProfile(spark, tmp_path) as p:
        time.sleep(0.2)
    f = p.figures()
    assert f["spark"]["status"] == "ok"
    assert f["spark"]["jobs"] == 0 and f["spark"]["tasks"] == 0 and f["spark"]["shuffle_read_bytes"] == 0
    assert f["delta"]["commits"] == 0
    assert f["cpu"]["python_workers_cpu_seconds"] < 0.5


class _NoUI:
    """A SparkSession whose web UI is off (spark.ui.enabled=false): sparkContext.uiWebUrl is None."""

    class sparkContext:
        uiWebUrl = None
        applicationId = "local-0"


def test_no_web_ui_gives_unavailable_and_the_block_goes_on(tmp_path):
    with StageProfile(_NoUI(), tmp_path) as p:
        done = True
    assert done
    f = p.figures()
    assert f["spark"]["status"].startswith("unavailable")
    assert f["delta"]["commits"] == 0 and "cpu" in f
    assert summary(f)["jobs"] is None and "unavailable" in line(f)
