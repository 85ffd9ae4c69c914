"""A real standalone Spark cluster on 127.0.0.1: spark-submit of a job that writes a Delta table
through the table layer, with the package shipped as the zip `scripts/make_dist.py` builds."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest

from standalone import (PROJECT_ROOT, ClusterError, StandaloneCluster, live_members,  # noqa: F401
                        standalone_cluster)

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """The zip and conf/ that `make dist` builds, in a temporary folder."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "make_dist.py"), "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    [archive] = out.glob("lakehouse_dl-*.zip")
    assert "spark-submit" in result.stdout and f"--py-files {archive}" in result.stdout
    return archive


def test_make_dist_zips_the_package_and_copies_conf(dist):
    names = zipfile.ZipFile(dist).namelist()
    assert "pipelines/__init__.py" in names and "pipelines/storage/delta_rs.py" in names and "pipelines/cli/__main__.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert (dist.parent / "conf" / "base" / "lakehouse.yaml").is_file()


def test_the_cluster_has_two_registered_workers(standalone_cluster):
    state = standalone_cluster.state()
    workers = standalone_cluster.alive_workers(state)
    assert len(workers) == 2 and all(w["cores"] == 1 for w in workers)
    assert state["url"] == standalone_cluster.master_url


def test_spark_submit_writes_a_table_the_test_reads_back(standalone_cluster, dist, tmp_path, spark):
    from pipelines.storage import Lakehouse

    root, report = tmp_path / "lakehouse", tmp_path / "smoke.json"
    result = standalone_cluster.submit(
        PROJECT_ROOT / "jobs" / "smoke.py", "--set", f"lakehouse.root={root}", "--rows", "30000",
        "--report", str(report), py_files=[dist], env={"LAKEHOUSE_DL_CONF": str(dist.parent / "conf")})
    assert result.returncode == 0, f"{result.stderr[-4000:]}\n{standalone_cluster.log_tail()}"

    ran = json.loads(report.read_text())
    assert ran["master"] == standalone_cluster.master_url
    assert ran["executors"] == 2
    # Executors imported the package from the shipped zip, not from the project folder.
    assert ran["executor_modules"] and all(f"{dist.name}/pipelines/__init__.py" in m for m in ran["executor_modules"])
    assert (ran["version"], ran["rows_read"], ran["sum_id"]) == (0, 30_000, 30_000 * 29_999 // 2)

    # The test process reads the table the cluster wrote: same log, same rows.
    # The job's tables live in the configured dataset's folder of the lakehouse.
    table = Lakehouse(root / "nycflights13", spark).table("ops.smoke")
    assert table.version() == 0 and table.partition_by() == ["date"]
    assert table.count() == 30_000 and len(table.files()) == ran["files"]
    assert table.read().where("date = '2013-01-02'").count() == 10_000
    assert table.history(1)[0]["description"] == "smoke"


def test_the_cluster_stops_even_when_the_test_fails(tmp_path):
    cluster = StandaloneCluster(tmp_path / "c", workers=1)
    with pytest.raises(RuntimeError, match="boom"):
        with cluster:
            pids = [p.pid for p in cluster.processes]
            assert cluster.state() is not None
            raise RuntimeError("boom")
    assert [live_members(pid) for pid in pids] == [[], []]
    assert cluster.state() is None


def test_a_cluster_that_cannot_start_says_why(tmp_path, monkeypatch):
    cluster = StandaloneCluster(tmp_path / "bad", workers=1, memory="not-a-size")
    with pytest.raises(ClusterError, match="worker-0.log"):
        cluster.start(timeout_s=60, attempts=1)
    assert cluster.processes == []


# A driver on the cluster kills one of its own executors, then asks which executors Spark lost.
LOSE_AN_EXECUTOR = '''
import json, os, signal, sys, time
from datetime import datetime, timezone
from pyspark.sql import SparkSession
from pipelines.storage.spark import lost_executors

spark = SparkSession.builder.appName("lose an executor").getOrCreate()
sc = spark.sparkContext
deadline = time.time() + 120
while sc._jsc.sc().getExecutorMemoryStatus().size() < 3 and time.time() < deadline:  # the driver and two
    time.sleep(0.5)
assert sc.parallelize(range(100), 2).sum() == 4950
before = datetime.now(timezone.utc)
mine = [int(p) for p in os.listdir("/proc") if p.isdigit() and sc.applicationId.encode() in
        open(f"/proc/{p}/cmdline", "rb").read() and b"CoarseGrainedExecutorBackend" in open(f"/proc/{p}/cmdline", "rb").read()]
os.kill(sorted(mine)[0], signal.SIGKILL)
lost = lost_executors(spark, before, wait_s=60)
after = datetime.now(timezone.utc)
json.dump({"executors": len(mine), "lost": lost, "lost_after": lost_executors(spark, after, wait_s=0)},
          open(sys.argv[1], "w"))
spark.stop()
'''


def test_a_killed_executor_is_named_by_the_driver(standalone_cluster, dist, tmp_path):
    app, report = tmp_path / "lose.py", tmp_path / "lost.json"
    app.write_text(LOSE_AN_EXECUTOR)
    result = standalone_cluster.submit(app, str(report), py_files=[dist], timeout_s=300,
                                       conf={"spark.ui.enabled": "true", "spark.ui.port": "0"})
    assert result.returncode == 0, f"{result.stderr[-4000:]}\n{standalone_cluster.log_tail()}"
    said = json.loads(report.read_text())
    assert said["executors"] == 2
    # Killed with SIGKILL: the worker reports exit code 137, and only that executor is named.
    [lost] = said["lost"]
    assert lost.startswith("executor ") and "127.0.0.1:" in lost and "137" in lost, lost
    # An executor removed before the time asked about is not named.
    assert said["lost_after"] == []
