"""The nightly job: landing → ingest → clean → features → train or reuse → score → evaluate → report.

One run per date. It holds the lakehouse lock, records every stage in `ops.stage_log` and the run
in `results.runs`, resumes after the stage that failed when run again, and does nothing when the
date already succeeded (unless forced). Every stage is idempotent on its own.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from pipelines import registry, results
from pipelines.config import Config
from pipelines.lakehouse import Lakehouse
from pipelines.runs import (LakehouseLock, RunRecord, finished_stages, forget_stages, last_run, log_stage,
                            new_run_id, record_run)

STAGES = ("landing", "ingest", "clean", "features", "train", "score", "evaluate", "report")


class StageError(RuntimeError):
    """A stage failed; the message names it and says how to resume."""


@dataclass
class NightlyContext:
    cfg: Config
    spark: object
    lakehouse: Lakehouse
    run_date: date
    run_id: str
    notes: dict = field(default_factory=dict)

    @property
    def feed_end(self) -> date:
        """The last day whose files arrive tonight: tomorrow's schedule is known today."""
        return self.run_date + timedelta(days=1)


# ------------------------------------------------------------------------------------------------
# Stages: each returns the number of rows it wrote (for the run record).


def stage_landing(ctx: NightlyContext) -> int:
    """Deliver the feed up to tomorrow (here: seed it from the dataset's package)."""
    from pipelines import landing

    first = min(ctx.cfg.split(name)[0] for name in ctx.cfg.pipeline.splits)
    days = [first + timedelta(days=i) for i in range((ctx.feed_end - first).days + 1)]
    return sum(r.rows for r in landing.seed(ctx.cfg, dates=days))


def stage_ingest(ctx: NightlyContext) -> int:
    from pipelines import bronze

    ingested = bronze.ingest(ctx.cfg, ctx.spark, dates=None, run_id=ctx.run_id)
    # Only the days whose files changed go on to clean and features. None (every day) when no
    # file changed: a run killed after ingest committed must still clean what it ingested.
    ctx.notes["dates"] = sorted({d for r in ingested for d in r.dates}) or None
    return sum(r.rows for r in ingested)


def stage_clean(ctx: NightlyContext) -> int:
    from pipelines import silver

    cleaned = silver.clean(ctx.cfg, ctx.spark, dates=ctx.notes.get("dates"), run_id=ctx.run_id)
    ctx.notes["dates"] = sorted({d for r in cleaned for d in r.dates}) if ctx.notes.get("dates") else None
    return sum(r.silver_rows for r in cleaned)


def stage_features(ctx: NightlyContext) -> int:
    from pipelines import gold

    summary = gold.build_features(ctx.cfg, ctx.spark, dates=ctx.notes.get("dates"), lakehouse=ctx.lakehouse)
    return int(summary.get("flight_features", 0))


def stage_train(ctx: NightlyContext) -> int:
    """Train a candidate when the blessed model is missing or older than `retrain_every_days`."""
    current = registry.blessed(ctx.lakehouse)
    if current is not None and current.run_date is not None:
        age = (ctx.run_date - current.run_date).days
        if 0 <= age < ctx.cfg.nightly.retrain_every_days:
            print(f"[nightly] train: reusing blessed model {current.model_version} "
                  f"(trained for {current.run_date}, {age} days old < {ctx.cfg.nightly.retrain_every_days})")
            return 0
    from pipelines.modeling import train_and_register

    entry = train_and_register(ctx.cfg, ctx.spark, ctx.lakehouse, run_id=ctx.run_id, run_date=ctx.run_date)
    return entry.rows_trained


def _scoring_days(ctx: NightlyContext) -> list[date]:
    back = ctx.cfg.nightly.score_days_back
    return [ctx.feed_end - timedelta(days=i) for i in range(back, -1, -1)]


def stage_score(ctx: NightlyContext) -> int:
    """Score the next day's flights (and the last `score_days_back` days) with the blessed model."""
    from pyspark.sql import functions as F

    from pipelines.scoring import score

    model = registry.blessed(ctx.lakehouse)
    if model is None:
        raise StageError("no blessed model to score with: the train stage rejected every candidate so far "
                         "(see results.models for the reasons)")
    table = ctx.lakehouse.table("gold.model_input")
    version = table.version()
    days = [int(d.strftime("%Y%m%d")) for d in _scoring_days(ctx)]
    rows = table.read(version=version).filter(F.col("day").isin(days))
    scored = score(rows, model.path, threshold=ctx.cfg.training.threshold)
    return results.write_predictions(ctx.lakehouse, scored, model.model_version, ctx.run_id, version)


def stage_evaluate(ctx: NightlyContext) -> int:
    """Metrics of the scores whose outcomes have arrived (days up to the run date)."""
    from pyspark.sql import functions as F

    from pipelines.evaluation import binary_metrics

    preds = ctx.lakehouse.table(results.PREDICTIONS)
    if not preds.exists():
        return 0
    outcomes = ctx.lakehouse.table("gold.model_input").read().select("flight_id", "label")
    last_day = int(ctx.run_date.strftime("%Y%m%d"))
    first_day = int((ctx.run_date - timedelta(days=ctx.cfg.nightly.score_days_back)).strftime("%Y%m%d"))
    scored = (preds.read().filter((F.col("day") >= first_day) & (F.col("day") <= last_day))
              .join(outcomes, "flight_id"))
    rows = []
    for (model_version,) in scored.select("model_version").distinct().collect():
        subset = scored.filter(F.col("model_version") == model_version)
        if subset.limit(1).count() == 0:
            continue
        m = binary_metrics(subset, threshold=ctx.cfg.training.threshold)
        rows.append({"model_version": model_version, "model": "dnn", **m.as_dict()})
        print(f"[nightly] evaluate: {model_version} on {m.rows:,} scored flights up to {ctx.run_date}: "
              f"AUC {m.auc:.4f}, accuracy {m.accuracy:.4f}")
    if rows:
        results.write_live_metrics(ctx.lakehouse, ctx.run_id, ctx.run_date, rows)
    return sum(r["rows"] for r in rows)


def stage_report(ctx: NightlyContext) -> int:
    from pipelines.reporting import build_report

    page = build_report(ctx.cfg, ctx.spark, ctx.lakehouse, run_id=ctx.run_id, run_date=ctx.run_date)
    ctx.notes["report"] = str(page)
    return 1


STAGE_FUNCTIONS = {
    "landing": stage_landing, "ingest": stage_ingest, "clean": stage_clean, "features": stage_features,
    "train": stage_train, "score": stage_score, "evaluate": stage_evaluate, "report": stage_report,
}


# ------------------------------------------------------------------------------------------------


def run_nightly(cfg: Config, spark, run_date: date, force: bool = False) -> RunRecord:
    """Run (or resume) the nightly job for `run_date`; raises on failure after recording it."""
    lakehouse = Lakehouse.from_config(cfg, spark)
    run_id = new_run_id("nightly", run_date)
    record = RunRecord(run_id, "nightly", run_date)
    with LakehouseLock(cfg.lakehouse.root, "nightly", run_id):
        previous = last_run(lakehouse, "nightly", run_date)
        if previous and previous["status"] == "succeeded" and not force:
            print(f"[nightly] {run_date} already succeeded in run {previous['run_id']}: nothing to do "
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
            print(f"[nightly] resuming {run_date}: skipping finished stages {', '.join(s for s in STAGES if s in done)}")
        ctx = NightlyContext(cfg, spark, lakehouse, run_date, run_id)
        try:
            for stage in STAGES:
                if stage in done:
                    record.skipped.append(stage)
                    continue
                try:
                    with record.stage(stage) as out:
                        out["rows"] = STAGE_FUNCTIONS[stage](ctx)
                except Exception as exc:
                    raise StageError(f"stage '{stage}' of the nightly run for {run_date} failed: "
                                     f"{type(exc).__name__}: {exc}. Run the same command again to resume "
                                     f"from this stage.") from exc
                log_stage(lakehouse, record, stage)
            record.status = "succeeded"
            record.report = ctx.notes.get("report")
        except BaseException as exc:
            record.status = "failed"
            record.error = str(exc)[:2000]
            raise
        finally:
            record_run(lakehouse, record)
    return record


def run_backfill(cfg: Config, spark, start: date, end: date, force: bool = False) -> list[RunRecord]:
    """The nightly job for each day from `start` to `end`, in order; stops at the first failure."""
    out = []
    day = start
    while day <= end:
        out.append(run_nightly(cfg, spark, day, force=force))
        day += timedelta(days=1)
    return out
