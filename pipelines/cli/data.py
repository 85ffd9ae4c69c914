"""`lakehouse-dl landing seed`, `ingest` and `clean`: the data commands over landing, bronze and silver."""
from __future__ import annotations

import time

from pipelines.cli.common import date_range, spark_for
from pipelines.config import ConfigError
from pipelines.datasets import dataset_for


def add_commands(sub, common, dates) -> None:
    """Add the landing, ingest and clean subcommands to the `lakehouse-dl` parser."""
    p = sub.add_parser("landing", help="the landing folder where raw files arrive")
    landing_sub = p.add_subparsers(dest="landing_command", metavar="ACTION")
    landing_sub.required = True
    s = landing_sub.add_parser("seed", help="fill the landing folder from the package the dataset names in its seed "
                                            "(one CSV per day for each daily feed; nothing is downloaded)")
    common(s)
    dates(s)
    s.set_defaults(func=run_landing_seed)

    p = sub.add_parser("ingest", help="landing files → bronze tables (new and changed files only)")
    common(p)
    dates(p)
    p.add_argument("--source", dest="sources", action="append", metavar="NAME",
                   help="ingest only this source of the dataset (repeatable; default: all)")
    p.set_defaults(func=run_ingest)

    p = sub.add_parser("clean", help="bronze → silver tables, quarantine and data-quality counts")
    common(p)
    dates(p)
    p.add_argument("--source", dest="sources", action="append", metavar="NAME",
                   help="clean only this source of the dataset (repeatable; default: all)")
    p.set_defaults(func=run_clean)


def _dates_or_none(args):
    return date_range(args) or None


def _dataset(cfg, sources: list[str] | None):
    """The configured dataset, checked before Spark starts; SystemExit with a clear message if the
    dataset file is wrong or --source names a source it does not declare."""
    try:
        dataset = dataset_for(cfg)
    except ConfigError as exc:
        raise SystemExit(f"configuration error: {exc}") from None
    unknown = [s for s in sources or [] if s not in dataset.sources]
    if unknown:
        raise SystemExit(f"error: --source {', '.join(unknown)}: dataset {dataset.name} has the sources "
                         f"{', '.join(dataset.sources)}")
    return dataset


def run_landing_seed(args, cfg) -> int:
    from pipelines.stages import landing

    results = landing.seed(cfg, dates=_dates_or_none(args), dataset=_dataset(cfg, None))
    print(f"[landing] {sum(r.files_written for r in results):,} files written, "
          f"{sum(r.files_unchanged for r in results):,} unchanged under {cfg.lakehouse.landing}")
    return 0


def run_ingest(args, cfg) -> int:
    from pipelines.stages import bronze

    days = _dates_or_none(args)
    dataset = _dataset(cfg, args.sources)
    spark = spark_for(cfg, "ingest")
    started = time.time()
    results = bronze.ingest(cfg, spark, dates=days, dataset=dataset, sources=args.sources)
    print(f"[ingest] {sum(r.rows for r in results):,} rows, {sum(r.rejected for r in results):,} rejected, "
          f"{sum(r.files_ingested for r in results):,} new or changed files in {time.time() - started:.1f}s")
    return 0


def run_clean(args, cfg) -> int:
    from pipelines.stages import silver

    days = _dates_or_none(args)
    dataset = _dataset(cfg, args.sources)
    spark = spark_for(cfg, "clean")
    started = time.time()
    results = silver.clean(cfg, spark, dates=days, dataset=dataset, sources=args.sources)
    print(f"[clean] {sum(r.silver_rows for r in results):,} silver rows, "
          f"{sum(r.quarantined for r in results):,} quarantined, {sum(r.duplicates for r in results):,} duplicates "
          f"removed in {time.time() - started:.1f}s")
    return 0
