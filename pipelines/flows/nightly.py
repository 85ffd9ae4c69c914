"""The nightly job: landing → ingest → clean → features → train or reuse → score → evaluate → report.

One run per date. It holds the lakehouse lock, records every stage in `ops.stage_log` and the run
in `results.runs`, resumes after the stage that failed when run again, and does nothing when the
date already succeeded (unless forced). Every stage is idempotent on its own. A full disk ends the
run with one line naming the filesystem and its free space, once the files its stopped writes
left are removed; the tables stay at their last versions and the same command resumes.
"""
from __future__ import annotations

import json
import logging
from datetime import date, timedelta

from pipelines import catalog
from pipelines.config import Config
from pipelines.flows.stages import (NightlyContext, StageError, stage_clean, stage_evaluate, stage_features,
                                    stage_ingest, stage_landing, stage_report, stage_score, stage_train)
from pipelines.ops.maintenance import compact_small_files
from pipelines.ops.runs import RunRecord, finished_stages, forget_stages, last_run, log_stage, new_run_id, record_run
from pipelines.storage import Lakehouse, LakehouseLock, disk_full, remove_orphans

log = logging.getLogger(__name__)

# The nightly job, in order.
STAGES = {
    "landing": stage_landing, "ingest": stage_ingest, "clean": stage_clean, "features": stage_features,
    "train": stage_train, "score": stage_score, "evaluate": stage_evaluate, "report": stage_report,
}


def run_nightly(cfg: Config, spark, run_date: date, force: bool = False) -> RunRecord:
    """Run (or resume) the nightly job for `run_date`; raises on failure after recording it."""
    lakehouse = Lakehouse.from_config(cfg, spark)
    run_id = new_run_id("nightly", run_date)
    record = RunRecord(run_id, "nightly", run_date)
    with LakehouseLock(cfg.lakehouse.root, "nightly", run_id, cfg.lakehouse.lock_lease_seconds):
        previous = last_run(lakehouse, "nightly", run_date)
        if previous and previous["status"] == "succeeded" and not force:
            log.info(f"[nightly] {run_date} already succeeded in run {previous['run_id']}: nothing to do "
                     f"(--force runs it again)")
            record.status, record.skipped = "succeeded", list(STAGES)
            record.stage_rows = json.loads(previous["stage_rows"])
            record.stage_seconds = json.loads(previous["stage_seconds"])
            record.run_id = previous["run_id"]
            return record
        if force:
            forget_stages(lakehouse, run_date)
        done = finished_stages(lakehouse, run_date)
        if done:
            log.info(f"[nightly] resuming {run_date}: skipping finished stages {', '.join(s for s in STAGES if s in done)}")
        ctx = NightlyContext(cfg, spark, lakehouse, run_date, run_id)
        try:
            for stage in STAGES:
                if stage in done:
                    record.skipped.append(stage)
                    continue
                try:
                    with record.stage(stage) as out:
                        out["rows"] = STAGES[stage](ctx)
                    log_stage(lakehouse, record, stage)
                except Exception as exc:
                    raise _stage_error(f"stage '{stage}' of the nightly run for {run_date}", exc, cfg, record) from exc
            try:
                _compact(lakehouse, cfg)
            except Exception as exc:
                raise _stage_error(f"the compaction after the nightly run for {run_date}", exc, cfg, record) from exc
            record.status = "succeeded"
            record.report = ctx.report
        except BaseException as exc:
            record.status = "failed"
            record.error = str(exc)[:2000]
            raise
        finally:
            _record(lakehouse, record, cfg)
    return record


def _stage_error(what: str, exc: Exception, cfg: Config, record: RunRecord) -> StageError:
    """The one line a failed stage ends the run with. A full disk is said as such, naming the
    filesystem and its free space, after the files the stopped writes left are removed (the
    lock is held: no other writer's files are in flight)."""
    full = disk_full(exc, cfg.lakehouse.root)
    if full is None:
        return StageError(f"{what} failed: {type(exc).__name__}: {str(exc).rstrip('.')}. Run the same command "
                          f"again to resume from this stage.")
    removed = remove_orphans(cfg.lakehouse.root, since=record.started)
    if removed:
        log.info(f"[nightly] removed {len(removed)} file(s) that the stopped writes left and no table version holds")
    return StageError(f"{what} failed: {str(full).replace('and run again', 'and run the same command again')} "
                      f"(it resumes from this stage)")


def _record(lakehouse: Lakehouse, record: RunRecord, cfg: Config) -> None:
    """The run's row of results.runs. A failed run whose row cannot be written either (the disk is
    still full) ends with its own error, the row's failure a warning beside it."""
    try:
        record_run(lakehouse, record)
    except Exception as exc:
        full = disk_full(exc, cfg.lakehouse.root)
        if full is not None:
            remove_orphans(cfg.lakehouse.root, since=record.started)
        if record.status == "failed":
            log.warning(f"[nightly] the failure could not be recorded in {catalog.RUNS}: "
                        f"{full or f'{type(exc).__name__}: {exc}'}")
            return
        if full is None:
            raise
        raise StageError(f"recording the nightly run for {record.run_date} in {catalog.RUNS} failed: {full}") from exc


def _compact(lakehouse: Lakehouse, cfg: Config) -> None:
    """Fold the small files this run appended (bookkeeping tables, a new day of a month) into one
    per partition, so no table grows a file per run."""
    import time

    started = time.time()
    done = compact_small_files(lakehouse, cfg.lakehouse.target_file_bytes)
    if done:
        log.info(f"[nightly] compact: {len(done)} table{'s' if len(done) > 1 else ''}, "
                 f"{sum(b for _, b, _ in done):,} → {sum(a for _, _, a in done):,} files in {time.time() - started:.1f}s")


def run_backfill(cfg: Config, spark, start: date, end: date, force: bool = False) -> list[RunRecord]:
    """The nightly job for each day from `start` to `end`, in order; stops at the first failure."""
    out = []
    day = start
    while day <= end:
        out.append(run_nightly(cfg, spark, day, force=force))
        day += timedelta(days=1)
    return out
