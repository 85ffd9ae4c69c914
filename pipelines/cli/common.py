"""What every `lakehouse-dl` subcommand shares: the --env / --set / logging options, the date
options and their parsing, and the one way a command starts Spark."""
from __future__ import annotations

import argparse
from datetime import date, timedelta

from pipelines.console import FORMATS


def parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (expected YYYY-MM-DD, a day that exists)") from None


def date_range(args) -> list[date]:
    """The dates a command was given: --date D, or --from A --to B (inclusive)."""
    if getattr(args, "date", None):
        return [args.date]
    start, end = getattr(args, "start", None), getattr(args, "end", None)
    if start and end:
        if start > end:
            raise SystemExit(f"error: --from {start} is after --to {end}")
        return [start + timedelta(days=i) for i in range((end - start).days + 1)]
    if start or end:
        raise SystemExit("error: give both --from and --to, or --date")
    return []


def add_common(p: argparse.ArgumentParser) -> None:
    """--env, --set and the logging options, which every subcommand takes."""
    p.add_argument("--env", default="local", help="configuration environment: a folder of conf/ (default: local)")
    p.add_argument("--dataset", metavar="NAME",
                   help="the dataset to work on: conf/base/datasets/NAME.yaml (default: pipeline.dataset of "
                        "conf/base/pipeline.yaml); each dataset has its own tables, models and reports")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one configuration key, e.g. --set training.epochs=2 (repeatable)")
    loudness = p.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true", help="log debug lines too")
    loudness.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    p.add_argument("--log-format", choices=FORMATS, default="text",
                   help="text (default), or json: one JSON object per line, for schedulers")


def add_dates(p: argparse.ArgumentParser) -> None:
    """--date D, or --from A --to B."""
    g = p.add_mutually_exclusive_group(required=False)
    g.add_argument("--date", type=parse_date, help="one day, YYYY-MM-DD")
    p.add_argument("--from", dest="start", type=parse_date, help="first day of a range (with --to)")
    p.add_argument("--to", dest="end", type=parse_date, help="last day of a range, inclusive")


def log_level(args) -> str:
    """The level the logging options ask for."""
    if getattr(args, "verbose", False):
        return "DEBUG"
    if getattr(args, "quiet", False):
        return "WARNING"
    return "INFO"


def spark_for(cfg, app: str):
    """The command's SparkSession, named `lakehouse-dl <app>`."""
    from pipelines.storage.spark import build_spark

    return build_spark(cfg, app_name=f"lakehouse-dl {app}")
