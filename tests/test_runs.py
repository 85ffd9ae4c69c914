"""The lakehouse lock and the run records."""
import json
import subprocess
import sys
from datetime import date

import pytest

from pipelines.runs import (LakehouseLock, LockHeldError, RunRecord, finished_stages, log_stage, new_run_id,
                            record_run)


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
