"""Shared fixtures: one SparkSession for the whole test session, a fresh lakehouse per test."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import pytest

from standalone import standalone_cluster  # noqa: F401  (the real standalone cluster fixture)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
# The JVMs the tests start as child processes (`lakehouse-dl run`, spark-submit) live a minute or two:
# tests/spark-conf/spark-defaults.conf tunes their JIT compiler for that. The suite's own session
# (the `spark` fixture) starts without it.
SPARK_CONF_DIR = os.path.join(os.path.dirname(__file__), "spark-conf")
os.environ["SPARK_CONF_DIR"] = SPARK_CONF_DIR


def pytest_collection_modifyitems(config, items):
    """Modules with the most slow tests first, each module's tests in their own order. `make test`
    runs the suite on two workers, each module on one of them (`--dist loadfile`, so a module's
    shared fixtures are built once), handed out in this order: the longest modules start first
    instead of being the last to finish."""
    from collections import Counter

    slow = Counter(item.module.__name__ for item in items if item.get_closest_marker("slow"))
    # sort() is stable: modules with as many slow tests keep their order, and so do a module's tests.
    items.sort(key=lambda item: -slow[item.module.__name__])


@pytest.fixture(autouse=True)
def logging_as_it_was():
    """A test that runs the command line in-process (which configures logging and exports the level
    and format for child processes) leaves logging as it found it for the next test."""
    from pipelines.console import FORMAT_ENV, LEVEL_ENV

    logger = logging.getLogger("pipelines")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    env = {name: os.environ.get(name) for name in (LEVEL_ENV, FORMAT_ENV)}
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def spark():
    """The session-wide local SparkSession, built by the project's own builder."""
    from pipelines.config import load_config
    from pipelines.storage.spark import build_spark

    # One driver serves the whole suite (thousands of queries): a larger heap, and the SQL UI keeps
    # the last 50 queries' plans instead of 1,000 (with them all, the old generation filled up and a
    # collect in test_gold's full year hung once the suite had grown). Jobs and stages keep Spark's
    # defaults: bench.profile's tests read them from the REST API.
    cfg = load_config("local", ["spark.master=local[2]", "spark.shuffle_partitions=2",
                                "spark.conf.spark.ui.showConsoleProgress=false",
                                "spark.conf.spark.driver.memory=3g",
                                "spark.conf.spark.sql.ui.retainedExecutions=50"])
    # It runs for the whole suite, where HotSpot's own compiler thresholds pay back.
    del os.environ["SPARK_CONF_DIR"]
    try:
        session = build_spark(cfg, app_name="lakehouse-dl tests")
    finally:
        os.environ["SPARK_CONF_DIR"] = SPARK_CONF_DIR
    yield session
    session.stop()


@pytest.fixture
def cfg(tmp_path):
    """The local configuration with the lakehouse in a fresh temporary folder."""
    from pipelines.config import load_config

    return load_config("local", [f"lakehouse.root={tmp_path / 'lakehouse'}", "spark.master=local[2]"])


@pytest.fixture
def lakehouse(cfg, spark):
    """An empty lakehouse under tmp_path, with the test session's Spark."""
    from pipelines.storage import Lakehouse

    return Lakehouse.from_config(cfg, spark)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs mounted for the test (a disk to fill: tests/test_disk_full.py,
    tests/test_tracking.py); skipped where this machine cannot mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
