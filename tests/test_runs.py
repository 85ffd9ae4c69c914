"""The lakehouse lock and the run records."""
import json
import logging
import subprocess
import sys
from datetime import date

import pytest
from log_lines import log_lines

from pipelines.storage import LakehouseLock, LockHeldError
from pipelines.ops.runs import RunRecord, finished_stages, log_stage, new_run_id, record_run


def test_second_holder_is_refused_with_the_holder_named(tmp_path):
    with LakehouseLock(tmp_path, "nightly", "run-a"):
        with pytest.raises(LockHeldError, match="held by run run-a"):
            LakehouseLock(tmp_path, "nightly", "run-b").acquire()
    # Released: the next run takes it.
    with LakehouseLock(tmp_path, "nightly", "run-b") as lock:
        assert json.loads(lock.path.read_text())["run_id"] == "run-b"


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = LakehouseLock(tmp_path, "nightly", "run-dead")
    lock.path.parent.mkdir(parents=True)
    lock.path.write_text(json.dumps({**lock.holder, "pid": int(dead.stdout)}))
    with LakehouseLock(tmp_path, "nightly", "run-new") as new:
        assert json.loads(new.path.read_text())["run_id"] == "run-new"
    assert not lock.path.exists()


def test_run_record_and_stage_log(lakehouse):
    record = RunRecord(new_run_id("nightly", date(2013, 5, 1)), "nightly", date(2013, 5, 1))
    with record.stage("ingest") as out:
        out["rows"] = 42
    log_stage(lakehouse, record, "ingest")
    record.status = "succeeded"
    record_run(lakehouse, record)
    assert finished_stages(lakehouse, date(2013, 5, 1)) == {"ingest"}
    assert finished_stages(lakehouse, date(2013, 5, 2)) == set()
    run = lakehouse.table("results.runs").read().collect()[0]
    assert run["status"] == "succeeded" and json.loads(run["stage_rows"]) == {"ingest": 42}


def test_live_metrics_are_one_row_per_date_and_model_version(lakehouse):
    """Measuring a date again (a resumed run, under a new run id) replaces its row for that model
    version, not duplicates it; other dates, other model versions and other splits stay."""
    from pipelines.ml import results

    day, other_day = date(2013, 5, 1), date(2013, 5, 2)
    live = {"model_version": "v1", "model": "dnn", "rows": 100, "positives": 20, "auc": 0.7, "log_loss": 0.5,
            "accuracy": 0.8, "precision": 0.5, "recall": 0.4, "f1": 0.44, "threshold": 0.5}
    first, resumed, other = (new_run_id("nightly", d) for d in (day, day, other_day))
    results.write_metrics(lakehouse, first, [{**live, "split": "test"}])
    results.write_live_metrics(lakehouse, first, [{**live, "date": day}, {**live, "date": day, "model_version": "v2"}])
    results.write_live_metrics(lakehouse, other, [{**live, "date": other_day}])
    results.write_live_metrics(lakehouse, resumed, [{**live, "date": day, "rows": 101}])

    rows = results.read_metrics(lakehouse)
    assert sorted((r["run_id"], r["split"], r["date"], r["model_version"], r["rows"]) for r in rows) == sorted([
        (first, "test", None, "v1", 100), (first, "live", day, "v2", 100), (other, "live", other_day, "v1", 100),
        (resumed, "live", day, "v1", 101)])


def test_live_metrics_measure_the_days_of_their_window_from_its_files_alone(lakehouse, spark):
    """The evaluate stage measures the days from `since` (nightly.evaluate_days before the run
    date) to the run date: a day scored before the window is not read, so not measured."""
    from pipelines.ml import results

    days = [date(2013, 1, 10), date(2013, 3, 10), date(2013, 5, 10)]
    rows = [(i * 100 + n, d, (n * 37 % 20) / 20, n % 2) for i, d in enumerate(days) for n in range(20)]
    scored = spark.createDataFrame([(k, int(d.strftime("%Y%m%d")), s, int(s >= 0.5)) for k, d, s, _ in rows],
                                   "flight_id long, day int, score double, predicted_label int")
    results.write_predictions(lakehouse, scored, "flight_id", "v1", "run-1",
                              {"feature_spec_version": 0, "serving_input_version": 0})
    lakehouse.table("gold.features").write(
        spark.createDataFrame([(k, d, label) for k, d, _, label in rows], "flight_id long, date date, label int"),
        partition_by=["date"])

    measured = results.live_metrics(lakehouse, "flight_id", date(2013, 5, 31), 0.5, since=date(2013, 3, 1))
    assert [(m["date"], m["rows"]) for m in measured] == [(days[1], 20), (days[2], 20)]
    assert [m["date"] for m in results.live_metrics(lakehouse, "flight_id", date(2013, 5, 31), 0.5)] == days
    window = ("date", date(2013, 3, 1), date(2013, 5, 31))
    for name in ("results.predictions", "gold.features"):
        table = lakehouse.table(name)
        assert 0 < len(table.read(between=window).inputFiles()) < len(table.read().inputFiles())
        assert {r[0] for r in table.read(between=window).select("date").distinct().collect()} == set(days[1:])


HOLD = """
import sys, time
from pipelines.storage import LakehouseLock
lock = LakehouseLock(sys.argv[1], "nightly", "run-on-node-b", lease_seconds=float(sys.argv[2]))
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def hold_on_another_host(root, lease: float) -> subprocess.Popen:
    """A process on "another host" (its own UTS namespace, hostname node-b) that takes the lock and
    holds it, renewing the lease, until it is killed."""
    import shutil

    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) is needed to give a process another hostname")
    cmd = ["unshare", "--uts", "sh", "-c", 'hostname node-b && exec "$0" -c "$1" "$2" "$3"',
           sys.executable, HOLD, str(root), str(lease)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_holder_on_another_host_keeps_the_lock_and_a_dead_ones_lease_runs_out(tmp_path):
    import time

    holder = hold_on_another_host(tmp_path, lease=2.0)
    try:
        assert json.loads((tmp_path / "_locks" / "nightly.lock").read_text())["host"] == "node-b"
        # Its pid means nothing on this host; its heartbeat says it lives: refused, even past the lease.
        for _ in range(2):
            with pytest.raises(LockHeldError, match="held by run run-on-node-b .*on node-b"):
                LakehouseLock(tmp_path, "nightly", "run-here", lease_seconds=2.0).acquire()
            time.sleep(2.5)
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(LockHeldError):        # dead, but its lease has not run out yet
        LakehouseLock(tmp_path, "nightly", "run-here", lease_seconds=2.0).acquire()
    time.sleep(2.5)
    with log_lines(logging.WARNING) as said:
        with LakehouseLock(tmp_path, "nightly", "run-here", lease_seconds=2.0) as lock:
            assert json.loads(lock.path.read_text())["run_id"] == "run-here"
    assert any("taking over a stale lock of run run-on-node-b" in s and "sent no heartbeat" in s for s in said)


def test_of_two_processes_taking_over_the_same_dead_lock_one_wins(tmp_path):
    """Both see the dead holder's lease run out; the takeover is an atomic rename, so only one holds."""
    import threading
    import time

    stale = LakehouseLock(tmp_path, "nightly", "run-dead", lease_seconds=1.0)
    stale.path.parent.mkdir(parents=True)
    stale.path.write_text(json.dumps({**stale.holder, "host": "node-gone", "heartbeat": time.time() - 10}))
    won, lost = [], []
    barrier = threading.Barrier(2)

    def take(name):
        lock = LakehouseLock(tmp_path, "nightly", name, lease_seconds=1.0)
        barrier.wait()
        try:
            lock.acquire()
            won.append(lock)
        except LockHeldError:
            lost.append(name)

    threads = [threading.Thread(target=take, args=(n,)) for n in ("run-a", "run-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(won) == 1 and len(lost) == 1
        assert json.loads(stale.path.read_text())["run_id"] == won[0].holder["run_id"]
    finally:
        for lock in won:
            lock.release()
