"""`lakehouse-dl nightly`, `backfill` and `run` (what `make run` runs)."""
from __future__ import annotations

import sys
from datetime import date, timedelta

from pipelines.cli.common import date_range, spark_for
from pipelines.config.settings import REGRESSION


def add_commands(sub, common, dates) -> None:
    p = sub.add_parser("nightly", help="the whole chain for one day: landing → … → report (idempotent, resumable)")
    common(p)
    dates(p)
    p.add_argument("--force", action="store_true", help="run again even if the date already succeeded")
    p.set_defaults(func=run_nightly_command)

    p = sub.add_parser("backfill", help="the nightly job for every day of --from A --to B, in order")
    common(p)
    dates(p)
    p.add_argument("--force", action="store_true", help="run again the dates that already succeeded")
    p.set_defaults(func=run_backfill_command)

    p = sub.add_parser("run", help="the main job on the configured default date (nightly.default_date), "
                                   "then a summary; what `make run` runs")
    common(p)
    p.add_argument("--force", action="store_true", help="run again even if the date already succeeded")
    p.set_defaults(func=run_main_command)


def run_nightly_command(args, cfg) -> int:
    from pipelines.flows.nightly import run_nightly

    days = date_range(args)
    if len(days) != 1:
        raise SystemExit("error: nightly runs one day: give --date D (backfill takes a range)")
    return _guarded(lambda: run_nightly(cfg, spark_for(cfg, "nightly"), days[0], force=args.force), cfg)


def run_backfill_command(args, cfg) -> int:
    from pipelines.flows.nightly import run_backfill

    days = date_range(args)
    if not days:
        raise SystemExit("error: backfill needs --from A --to B")
    return _guarded(lambda: run_backfill(cfg, spark_for(cfg, "backfill"), days[0], days[-1], force=args.force)[-1], cfg)


def run_main_command(args, cfg) -> int:
    from pipelines.flows.nightly import run_nightly

    day = date.fromisoformat(cfg.nightly.default_date)
    return _guarded(lambda: run_nightly(cfg, spark_for(cfg, "run"), day, force=args.force), cfg)


def _guarded(job, cfg) -> int:
    """Run the job; print the summary on success, one clear line on failure; exit code for schedulers."""
    from pipelines.flows.stages import StageError
    from pipelines.storage import LockHeldError

    try:
        record = job()
    except LockHeldError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 3
    except StageError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print_summary(cfg, record)
    return 0


def print_summary(cfg, record) -> None:
    from pipelines import catalog
    from pipelines.ml import registry, results
    from pipelines.storage import Lakehouse

    lakehouse = Lakehouse.from_config(cfg, spark_for(cfg, "summary"))
    print()
    print(f"== nightly {record.run_date}: {record.status} (run {record.run_id}) ==")
    if record.skipped and len(record.skipped) < len(record.stage_seconds) + len(record.skipped):
        print(f"resumed: skipped {', '.join(record.skipped)}")
    for stage, seconds in record.stage_seconds.items():
        print(f"  {stage:10} {record.stage_rows.get(stage, 0):>10,} rows {seconds:>8.1f}s")
    print("\ntables:")
    for t in lakehouse.tables():
        print(f"  {t.name:32} v{t.version:<5} {t.rows:>10,} rows  {t.files:>4} files")
    model = registry.blessed(lakehouse)
    if model:
        print(f"\nblessed model {model.model_version}: {model.reason}")
        metrics = [m for m in results.read_metrics(lakehouse) if m["model_version"] == model.model_version
                   and m["split"] in ("validation", "test")]
        if metrics and registry.head_of(model) == REGRESSION:
            print(f"  {'model':26} {'split':11} {'MAE':>9} {'RMSE':>9}")
            for m in sorted(metrics, key=lambda m: (m["split"], m["model"] != "dnn", m["model"])):
                print(f"  {m['model']:26} {m['split']:11} {m['mae']:>9.4f} {m['rmse']:>9.4f}")
        elif metrics:
            print(f"  {'model':8} {'split':11} {'AUC':>7} {'log loss':>9} {'accuracy':>9} {'F1':>7}")
            for m in sorted(metrics, key=lambda m: (m["split"], m["model"] != "dnn", m["model"])):
                print(f"  {m['model']:8} {m['split']:11} {m['auc']:>7.4f} {m['log_loss']:>9.4f} "
                      f"{m['accuracy']:>9.4f} {m['f1']:>7.4f}")
    predictions = lakehouse.table(catalog.PREDICTIONS)
    if predictions.exists():
        tomorrow = record.run_date + timedelta(days=1)
        scored = predictions.rows_per_partition(catalog.PARTITION_COLUMN).get(tomorrow, 0)
        print(f"\npredictions for {tomorrow}: {scored:,} scheduled rows scored before their outcomes exist")
    report = record.report or _latest_report(cfg)
    if report:
        print(f"\nreport: {report}")


def _latest_report(cfg) -> str | None:
    from pathlib import Path

    pages = sorted(Path(cfg.lakehouse.root, "reports").glob("*/index.html"), key=lambda p: p.stat().st_mtime)
    return str(pages[-1]) if pages else None
