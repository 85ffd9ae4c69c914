"""Job runs: the lakehouse lock, per-stage timing and counts, and the `results.runs` record.

A nightly run holds `<root>/_locks/<job>.lock` for its whole life, so two runs never write the same
lakehouse at once; a lock whose holder process is gone (killed) is taken over with a message.
Each finished stage is appended to `ops.stage_log`, which lets a re-run of the same date resume
after the stage that failed.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path


class LockHeldError(RuntimeError):
    """Another run holds the lakehouse."""


def run_id_prefix(job: str, run_date: date | None = None) -> str:
    """What every run id of `job` for `run_date` starts with."""
    return f"{job}-{run_date.isoformat() if run_date else 'all'}-"


def new_run_id(job: str, run_date: date | None = None) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{run_id_prefix(job, run_date)}{stamp}-{uuid.uuid4().hex[:6]}"


class LakehouseLock:
    """An exclusive lock on a lakehouse, held by one process (O_EXCL file with the holder's identity).

        >>> with LakehouseLock(root, job="nightly", run_id=run_id):
        ...     run_the_stages()
    """

    def __init__(self, root: str | Path, job: str, run_id: str):
        self.path = Path(root) / "_locks" / f"{job}.lock"
        self.holder = {"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname(),
                       "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read_holder()
                if holder and self._is_stale(holder):
                    print(f"[lock] taking over a stale lock of run {holder.get('run_id')} "
                          f"(pid {holder.get('pid')} on {holder.get('host')} is gone)")
                    self.path.unlink(missing_ok=True)
                    continue
                raise LockHeldError(
                    f"the lakehouse is held by run {holder.get('run_id', '?')} (pid {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')}, since {holder.get('started', '?')}); wait for it to finish, or "
                    f"remove {self.path} if that process is gone") from None
            with os.fdopen(fd, "w") as fh:
                json.dump(self.holder, fh)
            return
        raise LockHeldError(f"could not take {self.path}")

    def release(self) -> None:
        holder = self._read_holder()
        if holder and holder.get("run_id") == self.holder["run_id"]:
            self.path.unlink(missing_ok=True)

    def _read_holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    @staticmethod
    def _is_stale(holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            return False  # cannot tell whether a process on another host lives: keep the lock
        try:
            os.kill(int(holder.get("pid", -1)), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError):
            return False
        return False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False


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
        print(f"[{self.job}] {name} ...", flush=True)
        t0 = time.time()
        out = {"rows": 0}
        yield out
        self.stage_seconds[name] = round(time.time() - t0, 2)
        self.stage_rows[name] = int(out.get("rows") or 0)
        print(f"[{self.job}] {name}: {self.stage_rows[name]:,} rows in {self.stage_seconds[name]:.1f}s", flush=True)

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
    from pipelines.results import replace_rows

    replace_rows(lakehouse, "results.runs", RUNS_SCHEMA, [record.row()], key=("job", "run_date"))


def last_run(lakehouse, job: str, run_date: date | None) -> dict | None:
    """The row of the latest run of `job` for `run_date`, if any."""
    table = lakehouse.table("results.runs")
    if not table.exists():
        return None
    rows = [r.asDict() for r in table.read().collect() if r["job"] == job and r["run_date"] == run_date]
    return rows[0] if rows else None


def log_stage(lakehouse, record: RunRecord, stage: str) -> None:
    """Remember that `stage` finished for the run's date (what a resumed run skips)."""
    from pipelines.results import replace_rows

    row = {"run_id": record.run_id, "run_date": record.run_date, "stage": stage,
           "rows": record.stage_rows.get(stage, 0), "seconds": record.stage_seconds.get(stage, 0.0),
           "finished_at": datetime.now(timezone.utc)}
    replace_rows(lakehouse, "ops.stage_log", STAGE_LOG_SCHEMA, [row], key=("run_date", "stage"))


def forget_stages(lakehouse, run_date: date) -> None:
    """Drop the stage marks of `run_date` (a forced re-run starts from the first stage)."""
    table = lakehouse.table("ops.stage_log")
    if table.exists():
        kept = [r.asDict() for r in table.read().collect() if r["run_date"] != run_date]
        table.write(lakehouse.spark.createDataFrame(kept, STAGE_LOG_SCHEMA), mode="overwrite")


def finished_stages(lakehouse, run_date: date) -> set[str]:
    """Stages already finished for `run_date` by an earlier run."""
    table = lakehouse.table("ops.stage_log")
    if not table.exists():
        return set()
    from pyspark.sql import functions as F

    rows = table.read().filter(F.col("run_date") == F.lit(run_date)).select("stage").distinct().collect()
    return {r["stage"] for r in rows}
