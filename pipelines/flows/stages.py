"""The nightly job's stages: each takes the run's context, calls one stage of the library and
returns the rows it wrote (for the run record). What the stages pass on to each other (the
dates whose files changed, the report's path) is a typed field of the context.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import date, timedelta

from pipelines import catalog
from pipelines.catalog import PARTITION_COLUMN, PREDICTIONS
from pipelines.config import Config
from pipelines.config.settings import REGRESSION
from pipelines.datasets import dataset_for
from pipelines.ml import registry, results, tracking
from pipelines.ml.candidate import train_and_register
from pipelines.ml.regression_candidate import train_and_register_regression
from pipelines.ml.scoring import baseline_path, score_days
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
        """The day the nightly predicts: tomorrow, whose schedule is known today."""
        return self.run_date + timedelta(days=1)

    @property
    def as_of(self) -> int:
        """When the nightly runs, in local minutes (`pipelines.datasets.timing`): the prediction
        time of tomorrow's rows (the dataset's `prediction.time`)."""
        dataset = dataset_for(self.cfg)
        return dataset.prediction_time.minutes_on(self.feed_end)

    def scoring_days(self) -> list[date]:
        """Tomorrow; the days before it that a missed nightly left without predictions, as long as
        their outcomes are not known yet (catching up); and `nightly.rescore_days` days before it
        when asked to score them again."""
        tomorrow = self.feed_end
        days = {tomorrow - timedelta(days=i) for i in range(self.cfg.nightly.rescore_days + 1)}
        table = self.lakehouse.table(PREDICTIONS)
        predicted = [d for d, n in table.rows_per_partition(PARTITION_COLUMN).items() if n] if table.exists() else []
        if predicted:
            dataset = dataset_for(self.cfg)
            outcomes = dataset.updaters(dataset.prediction_source)
            now = self.as_of   # once, not per day: it loads the dataset's declaration
            day = max(predicted) + timedelta(days=1)
            while day < tomorrow:
                if all(landing.due(u, day) > now for u in outcomes):
                    days.add(day)
                day += timedelta(days=1)
        return sorted(days)


def stage_landing(ctx: NightlyContext) -> int:
    """Deliver the feed as it stands tonight. A dataset seeded from a package (a replay) gets
    the files due by now: the schedule up to tomorrow, the outcomes and the weather up to what is
    known. A dataset without a seed is delivered by its users into its landing folder: nothing
    to do here, ingest takes what is there."""
    dataset = dataset_for(ctx.cfg)
    if not dataset.seed_package:
        log.info(f"[nightly] landing: {dataset.name} has no seed package; ingesting what was delivered "
                 f"to {ctx.cfg.lakehouse.landing}")
        return 0
    first = min(ctx.cfg.split(name)[0] for name in ctx.cfg.pipeline.splits)
    days = [first + timedelta(days=i) for i in range((ctx.feed_end - first).days + 1)]
    return sum(r.rows for r in landing.seed(ctx.cfg, dates=days, as_of=ctx.as_of))


def stage_ingest(ctx: NightlyContext) -> int:
    ingested = bronze.ingest(ctx.cfg, ctx.spark, dates=None, run_id=ctx.run_id)
    # Only the days whose files changed go on to clean and features; every day (None) when a
    # reference file changed. When no file changed, the days ingested since silver was last
    # written (a run killed after ingest committed must still clean what it ingested), often
    # none: a night without a file (a league's weekday) rebuilds nothing.
    changed = sorted({d for r in ingested for d in r.dates})
    if changed or any(r.files_ingested for r in ingested):
        ctx.dates = changed or None
    else:
        ctx.dates = silver.days_ingested_since_cleaned(ctx.lakehouse, dataset_for(ctx.cfg))
    return sum(r.rows for r in ingested)


def stage_clean(ctx: NightlyContext) -> int:
    if ctx.dates == []:
        log.info("[nightly] clean: no file was ingested since silver was last written: nothing to clean")
        return 0
    cleaned = silver.clean(ctx.cfg, ctx.spark, dates=ctx.dates, run_id=ctx.run_id)
    ctx.dates = sorted({d for r in cleaned for d in r.dates}) if ctx.dates else None
    return sum(r.silver_rows for r in cleaned)


def stage_features(ctx: NightlyContext) -> int:
    if ctx.dates == []:
        log.info("[nightly] features: silver is unchanged tonight: nothing to build")
        return 0
    summary = gold.build_features(ctx.cfg, ctx.spark, dates=ctx.dates, lakehouse=ctx.lakehouse)
    return int(summary.get("features", 0))


def stage_train(ctx: NightlyContext) -> int:
    """Train a candidate when none was trained in the last `retrain_every_days`: the latest
    candidate's age counts, blessed or not, so a rejected candidate is not trained again every
    night until one is blessed (the blessed model, or the fallback baseline, scores meanwhile)."""
    latest = registry.latest(ctx.lakehouse)
    if latest is not None and latest.run_date is not None:
        age = (ctx.run_date - latest.run_date).days
        if 0 <= age < ctx.cfg.nightly.retrain_every_days:
            current = registry.blessed(ctx.lakehouse)
            serving = (f"blessed model {current.model_version} scores" if current is not None
                       else f"the {registry.fallback_baseline(latest)} baseline beside it scores")
            log.info(f"[nightly] train: the latest candidate, {latest.model_version} ({latest.status}), was trained "
                     f"for {latest.run_date}, {age} days old < {ctx.cfg.nightly.retrain_every_days}: no training "
                     f"tonight; {serving}")
            return 0
    register = train_and_register_regression if ctx.cfg.training.head == REGRESSION else train_and_register
    return register(ctx.cfg, ctx.spark, ctx.lakehouse, run_id=ctx.run_id, run_date=ctx.run_date).rows_trained


def stage_score(ctx: NightlyContext) -> int:
    """Score every row scheduled tomorrow (and the days `scoring_days` adds) with the blessed model,
    encoded with that model's own feature spec: a classifier's calibrated score and decision, a
    regression model's prediction of the target. Until a network is blessed, the logistic (or
    linear) regression fitted beside the latest candidate scores them: the model that candidate
    failed to beat."""
    model = registry.blessed(ctx.lakehouse)
    baseline = None
    if model is None:
        model = registry.latest(ctx.lakehouse)
        baseline = registry.fallback_baseline(model) if model is not None else registry.FALLBACK_BASELINE
        if model is None or not os.path.isdir(baseline_path(model, baseline)):
            raise StageError("no model to score with: no network is blessed and no candidate has a "
                             f"{baseline} baseline beside it (see results.models)")
        log.warning(f"[nightly] score: no network is blessed yet (the latest candidate, {model.model_version}, "
                    f"was {model.status}: {model.reason}); the {baseline} baseline fitted beside it scores")
    days = ctx.scoring_days()
    decision = registry.decision_of(model, baseline)
    scored, versions = score_days(ctx.cfg, ctx.lakehouse, model, days, decision, baseline)
    version = registry.baseline_version(model.model_version, baseline) if baseline else model.model_version
    rows = results.write_predictions(ctx.lakehouse, scored, dataset_for(ctx.cfg).key, version, ctx.run_id, versions)
    output = "the target predicted" if registry.head_of(model) == REGRESSION else decision.describe()
    log.info(f"[nightly] score: {rows:,} rows of {', '.join(d.isoformat() for d in days)} scored by model "
             f"{version} ({catalog.FEATURE_SPEC} v{versions['feature_spec_version']}, {output}, "
             f"{catalog.SERVING_INPUT} v{versions['serving_input_version']})")
    return rows


def stage_evaluate(ctx: NightlyContext) -> int:
    """Live metrics of each day whose outcomes have arrived since it was scored, once per day."""
    rows = results.live_metrics(ctx.lakehouse, dataset_for(ctx.cfg).key, ctx.run_date,
                                registry.served_thresholds(ctx.lakehouse), ctx.cfg.training.threshold,
                                since=ctx.run_date - timedelta(days=ctx.cfg.nightly.evaluate_days - 1))
    for m in rows:
        measured = (f"MAE {m['mae']:.4f}, RMSE {m['rmse']:.4f}" if m.get("mae") is not None
                    else f"AUC {m['auc']:.4f}, accuracy {m['accuracy']:.4f}")
        log.info(f"[nightly] evaluate: {m['date']} scored by {m['model_version']}, {m['rows']:,} rows "
                 f"with outcomes: {measured}")
    if rows:
        results.write_live_metrics(ctx.lakehouse, ctx.run_id, rows)
    return sum(r["rows"] for r in rows)


def stage_report(ctx: NightlyContext) -> int:
    ctx.report = str(build_report(ctx.cfg, ctx.spark, ctx.lakehouse, run_id=ctx.run_id, run_date=ctx.run_date))
    model = registry.blessed(ctx.lakehouse)
    if model is not None and model.run_id == ctx.run_id and model.mlflow_run_id:
        # The report of the night that trained the model: its plots in the model's MLflow run.
        tracking.log_report(ctx.cfg, model.mlflow_run_id, os.path.dirname(ctx.report))
    return 1
