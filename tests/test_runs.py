"""The lakehouse lock and the run records."""
import json
import subprocess
import sys
from datetime import date

import pytest

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


def test_evaluating_a_date_again_replaces_its_live_metrics(lakehouse):
    """A run killed after evaluate wrote its metrics is resumed under a new run id: the live metrics
    of that date are replaced, not duplicated, while other dates' and other splits' rows stay."""
    from pipelines.ml import results

    day, other_day = date(2013, 5, 1), date(2013, 5, 2)
    live = {"model_version": "v1", "model": "dnn", "rows": 100, "positives": 20, "auc": 0.7, "log_loss": 0.5,
            "accuracy": 0.8, "precision": 0.5, "recall": 0.4, "f1": 0.44, "threshold": 0.5}
    first, resumed, other = (new_run_id("nightly", d) for d in (day, day, other_day))
    results.write_metrics(lakehouse, first, [{**live, "split": "test"}])
    results.write_live_metrics(lakehouse, first, day, [live])
    results.write_live_metrics(lakehouse, other, other_day, [live])
    results.write_live_metrics(lakehouse, resumed, day, [{**live, "rows": 101}])

    rows = results.read_metrics(lakehouse)
    assert sorted((r["run_id"], r["split"], r["rows"]) for r in rows) == sorted([
        (first, "test", 100), (other, "live", 100), (resumed, "live", 101)])
