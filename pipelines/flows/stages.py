"""The nightly job's stages: each takes the run's context, calls one stage of the library and
returns the rows it wrote (for the run record). What the stages pass on to each other (the
dates whose files changed, the report's path) is a typed field of the context.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, timedelta

from pipelines.config import Config
from pipelines.ml import registry, results
from pipelines.ml.candidate import train_and_register
from pipelines.ml.scoring import score_days
from pipelines.report import build_report
from pipelines.stages import bronze, gold, landing, silver
from pipelines.storage import Lakehouse

log = logging.getLogger(__name__)


class StageError(RuntimeError):
    """A stage failed; the message names it and says how to resume."""


@dataclass
class NightlyContext:
    cfg: Config
    spark: object
    lakehouse: Lakehouse
    run_date: date
    run_id: str
    # The days whose files changed tonight, which clean and features rebuild (None: every day).
    dates: list[date] | None = None
    report: str | None = None

    @property
    def feed_end(self) -> date:
        """The last day whose files arrive tonight: tomorrow's schedule is known today."""
        return self.run_date + timedelta(days=1)

    @property
    def scoring_days(self) -> list[date]:
        """Tomorrow and the `score_days_back` days before it."""
        back = self.cfg.nightly.score_days_back
        return [self.feed_end - timedelta(days=i) for i in range(back, -1, -1)]


def stage_landing(ctx: NightlyContext) -> int:
    """Deliver the feed up to tomorrow (here: seed it from the dataset's package)."""
    first = min(ctx.cfg.split(name)[0] for name in ctx.cfg.pipeline.splits)
    days = [first + timedelta(days=i) for i in range((ctx.feed_end - first).days + 1)]
    return sum(r.rows for r in landing.seed(ctx.cfg, dates=days))


def stage_ingest(ctx: NightlyContext) -> int:
    ingested = bronze.ingest(ctx.cfg, ctx.spark, dates=None, run_id=ctx.run_id)
    # Only the days whose files changed go on to clean and features. None (every day) when no
    # file changed: a run killed after ingest committed must still clean what it ingested.
    ctx.dates = sorted({d for r in ingested for d in r.dates}) or None
    return sum(r.rows for r in ingested)


def stage_clean(ctx: NightlyContext) -> int:
    cleaned = silver.clean(ctx.cfg, ctx.spark, dates=ctx.dates, run_id=ctx.run_id)
    ctx.dates = sorted({d for r in cleaned for d in r.dates}) if ctx.dates else None
    return sum(r.silver_rows for r in cleaned)


def stage_features(ctx: NightlyContext) -> int:
    summary = gold.build_features(ctx.cfg, ctx.spark, dates=ctx.dates, lakehouse=ctx.lakehouse)
    return int(summary.get("flight_features", 0))


def stage_train(ctx: NightlyContext) -> int:
    """Train a candidate when the blessed model is missing or older than `retrain_every_days`."""
    current = registry.blessed(ctx.lakehouse)
    if current is not None and current.run_date is not None:
        age = (ctx.run_date - current.run_date).days
        if 0 <= age < ctx.cfg.nightly.retrain_every_days:
            log.info(f"[nightly] train: reusing blessed model {current.model_version} "
                     f"(trained for {current.run_date}, {age} days old < {ctx.cfg.nightly.retrain_every_days})")
            return 0
    return train_and_register(ctx.cfg, ctx.spark, ctx.lakehouse, run_id=ctx.run_id, run_date=ctx.run_date).rows_trained


def stage_score(ctx: NightlyContext) -> int:
    """Score the next day's flights (and the last `score_days_back` days) with the blessed model."""
    model = registry.blessed(ctx.lakehouse)
    if model is None:
        raise StageError("no blessed model to score with: the train stage rejected every candidate so far "
                         "(see results.models for the reasons)")
    scored, version = score_days(ctx.lakehouse, model.path, ctx.scoring_days, ctx.cfg.training.threshold)
    return results.write_predictions(ctx.lakehouse, scored, model.model_version, ctx.run_id, version)


def stage_evaluate(ctx: NightlyContext) -> int:
    """Metrics of the scores whose outcomes have arrived (days up to the run date)."""
    first = ctx.run_date - timedelta(days=ctx.cfg.nightly.score_days_back)
    rows = results.live_metrics(ctx.lakehouse, first, ctx.run_date, ctx.cfg.training.threshold)
    for m in rows:
        log.info(f"[nightly] evaluate: {m['model_version']} on {m['rows']:,} scored flights up to {ctx.run_date}: "
                 f"AUC {m['auc']:.4f}, accuracy {m['accuracy']:.4f}")
    if rows:
        results.write_live_metrics(ctx.lakehouse, ctx.run_id, ctx.run_date, rows)
    return sum(r["rows"] for r in rows)


def stage_report(ctx: NightlyContext) -> int:
    ctx.report = str(build_report(ctx.cfg, ctx.spark, ctx.lakehouse, run_id=ctx.run_id, run_date=ctx.run_date))
    return 1
