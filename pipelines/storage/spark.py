"""The one SparkSession builder that every job, test and notebook uses.

    >>> from pipelines.config import load_config
    >>> spark = build_spark(load_config("local"))
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from datetime import datetime, timedelta

from pipelines.config import Config


def build_spark(cfg: Config, app_name: str | None = None, master: str | None = None):
    """Return the active SparkSession configured from `cfg.spark`, creating it if needed.

    A session started by `spark-submit` keeps its own master; the config's master is used only
    when this process starts Spark itself.
    """
    from pyspark.sql import SparkSession

    if master is None and os.environ.get("LAKEHOUSE_DL_SPARK_MASTER"):
        master = os.environ["LAKEHOUSE_DL_SPARK_MASTER"]
    master = master or cfg.spark.master
    if master.startswith("local"):
        # Spark's Python workers must run this interpreter, which has pyarrow, TF and the package.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name or cfg.spark.app_name)
    if not _submitted_by_spark_submit():
        builder = builder.master(master)
    # What correctness needs, whatever the configuration says; the rest is cfg.spark.conf (conf/base).
    settings = {
        # delta-rs refuses Arrow timestamps tagged "Etc/UTC"; plain "UTC" is what Delta expects.
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(cfg.spark.shuffle_partitions),
        "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
    }
    settings.update(cfg.spark.conf)
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.spark.log_level)
    return spark


def _submitted_by_spark_submit() -> bool:
    # spark-submit starts the driver with these set; the master it was given must win.
    return "SPARK_SUBMIT" in os.environ or os.environ.get("PYSPARK_GATEWAY_PORT") is not None


def executors(spark, timeout_s: float = 15.0) -> dict[str, dict]:
    """The application's executors by id (the driver left out), from Spark's own REST API:
    `hostPort`, `isActive`, `removeTime`, `removeReason`, ... Dead executors are listed too (up to
    `spark.ui.retainedDeadExecutors`). Empty when the web UI is off (`spark.ui.enabled`) or does not
    answer within `timeout_s`."""
    import json
    import urllib.request

    sc = spark.sparkContext
    if not sc.uiWebUrl:
        return {}
    url = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/allexecutors"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            listed = json.loads(response.read())
    except (OSError, ValueError):
        return {}
    return {e["id"]: e for e in listed if e.get("id") != "driver"}


def _rest_time(value: str | None) -> datetime | None:
    # Spark's REST API writes dates as 2026-12-08T00:33:46.123GMT.
    if not value:
        return None
    return datetime.strptime(value.replace("GMT", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z")


def lost_executors(spark, since: datetime, wait_s: float = 60.0) -> list[str]:
    """Executors Spark removed at or after `since` (an aware datetime), as
    "executor 1 on 127.0.0.1:41234 (reason)".

    Spark hears of a lost executor a moment after the tasks on it fail, and on a loaded machine its
    web UI answers slowly: wait up to `wait_s` for one to be listed. Nothing is read before the
    failure, so a slow answer at the start of the work cannot hide the loss (the likely cause of two
    CI failures, 2026-12-07 and 2026-12-08, when the list was read before). Only work that failed
    calls this.
    """
    import time

    sc = spark.sparkContext
    if not sc.uiWebUrl or sc.master.startswith("local"):
        return []      # no web UI to ask, or no executor to lose (the driver runs the tasks)
    since = since - timedelta(seconds=1)  # the REST API's times are rounded to the millisecond
    deadline = time.monotonic() + wait_s
    while True:
        lost = [f"executor {i} on {e.get('hostPort', '?')} ({e.get('removeReason') or 'removed'})"
                for i, e in sorted(executors(spark).items())
                if not e.get("isActive") and (_rest_time(e.get("removeTime")) or since) >= since]
        if lost or time.monotonic() > deadline:
            return lost
        time.sleep(1.0)


@contextmanager
def session_conf(spark, settings: dict[str, str]):
    """Spark SQL settings for the queries run inside the block, restored (or unset) after it.

        >>> with session_conf(spark, {"spark.sql.shuffle.partitions": "64"}): df.collect()
    """
    before = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)
