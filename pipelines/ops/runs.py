"""Job runs: run ids, per-stage timing and counts, `results.runs` and `ops.stage_log`.

Every run of every job has one id format, `<job>-<run date or "all">-<UTC time>-<random>`, which
sorts by time within a job and date. Each finished stage of a nightly run is recorded in
`ops.stage_log`, which lets a re-run of the same date resume after the stage that failed; the
run itself ends as one row of `results.runs`. (The lock that keeps two runs apart is
`pipelines.storage.LakehouseLock`.)

    >>> new_run_id("nightly", date(2013, 12, 30))
    'nightly-2013-12-30-20261129T234000-1a2b3c'
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

from pipelines import catalog

log = logging.getLogger(__name__)


def run_id_prefix(job: str, run_date: date | None = None) -> str:
    """What every run id of `job` for `run_date` starts with."""
    return f"{job}-{run_date.isoformat() if run_date else 'all'}-"


def new_run_id(job: str, run_date: date | None = None) -> str:
    """A new run id of `job` (for `run_date`, or "all" for a run over every date)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{run_id_prefix(job, run_date)}{stamp}-{uuid.uuid4().hex[:6]}"


@dataclass
class RunRecord:
    """What one job run did: stages with seconds and rows, status, error."""

    run_id: str
    job: str
    run_date: date | None
    started: float = field(default_factory=time.time)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stage_rows: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    status: str = "running"
    error: str | None = None
    report: str | None = None

    @contextmanager
    def stage(self, name: str):
        """Time a stage; the body sets `rows` on the yielded dict."""
        log.info(f"[{self.job}] {name} ...")
        t0 = time.time()
        out = {"rows": 0}
        yield out
        self.stage_seconds[name] = round(time.time() - t0, 2)
        self.stage_rows[name] = int(out.get("rows") or 0)
        log.info(f"[{self.job}] {name}: {self.stage_rows[name]:,} rows in {self.stage_seconds[name]:.1f}s")

    def row(self) -> dict:
        return {
            "run_id": self.run_id, "job": self.job, "run_date": self.run_date, "status": self.status,
            "started_at": datetime.fromtimestamp(self.started, timezone.utc),
            "ended_at": datetime.now(timezone.utc),
            "seconds": round(time.time() - self.started, 2),
            "stage_seconds": json.dumps(self.stage_seconds), "stage_rows": json.dumps(self.stage_rows),
            "skipped_stages": ",".join(self.skipped), "error": self.error,
        }


RUNS_SCHEMA = ("run_id string, job string, run_date date, status string, started_at timestamp, "
               "ended_at timestamp, seconds double, stage_seconds string, stage_rows string, "
               "skipped_stages string, error string")
STAGE_LOG_SCHEMA = "run_id string, run_date date, stage string, rows long, seconds double, finished_at timestamp"


def record_run(lakehouse, record: RunRecord) -> None:
    """Write the run's row to `results.runs`: one row per job and date, the latest attempt's."""
    lakehouse.table(catalog.RUNS).replace_rows([record.row()], RUNS_SCHEMA, key=("job", "run_date"))


def last_run(lakehouse, job: str, run_date: date | None) -> dict | None:
    """The row of the latest run of `job` for `run_date`, if any."""
    table = lakehouse.table(catalog.RUNS)
    if not table.exists():
        return None
    # One row per job and date, read on the driver: no Spark job for a table that grows nightly.
    rows = [r for r in table.to_arrow().to_pylist() if r["job"] == job and r["run_date"] == run_date]
    return rows[0] if rows else None


def log_stage(lakehouse, record: RunRecord, stage: str) -> None:
    """Remember that `stage` finished for the run's date (what a resumed run skips). An append: the
    nightly logs a stage only when no row of its date says it finished (`finished_stages`), under
    the lakehouse lock, and `forget_stages` drops a date's rows before a forced run; so the
    table's rows are not read and rewritten at every stage of every night."""
    row = {"run_id": record.run_id, "run_date": record.run_date, "stage": stage,
           "rows": record.stage_rows.get(stage, 0), "seconds": record.stage_seconds.get(stage, 0.0),
           "finished_at": datetime.now(timezone.utc)}
    lakehouse.table(catalog.STAGE_LOG).append_rows([row], STAGE_LOG_SCHEMA)


def forget_stages(lakehouse, run_date: date) -> None:
    """Drop the stage marks of `run_date` (a forced re-run starts from the first stage)."""
    table = lakehouse.table(catalog.STAGE_LOG)
    if table.exists():
        kept = [r.asDict() for r in table.read().collect() if r["run_date"] != run_date]
        table.write(lakehouse.spark.createDataFrame(kept, STAGE_LOG_SCHEMA), mode="overwrite")


def finished_stages(lakehouse, run_date: date) -> set[str]:
    """Stages already finished for `run_date` by an earlier run."""
    table = lakehouse.table(catalog.STAGE_LOG)
    if not table.exists():
        return set()
    from pyspark.sql import functions as F

    rows = table.read().filter(F.col("run_date") == F.lit(run_date)).select("stage").distinct().collect()
    return {r["stage"] for r in rows}
