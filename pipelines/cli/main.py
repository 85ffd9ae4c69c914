"""The `lakehouse-dl` command line: parse, load configuration, build Spark, call the library.

Every command takes `--env` (a folder of conf/) and `--set key=value`; the configuration is
validated before Spark starts. Each command is a function `run_<name>(args, cfg)` below; the logic
lives in the stage modules.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import date, timedelta

from pipelines.config import ConfigError, load_config


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


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", default="local", help="configuration environment: a folder of conf/ (default: local)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one configuration key, e.g. --set training.epochs=2 (repeatable)")


def _dates(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_mutually_exclusive_group(required=False)
    g.add_argument("--date", type=parse_date, help="one day, YYYY-MM-DD")
    p.add_argument("--from", dest="start", type=parse_date, help="first day of a range (with --to)")
    p.add_argument("--to", dest="end", type=parse_date, help="last day of a range, inclusive")


def spark_for(cfg, app: str):
    from pipelines.spark import build_spark

    return build_spark(cfg, app_name=f"lakehouse-dl {app}")


# ------------------------------------------------------------------------------------------------
# Commands


def run_tables(args, cfg) -> int:
    from pipelines.lakehouse import Lakehouse, tables_json

    infos = Lakehouse.from_config(cfg).tables()
    if args.json:
        print(tables_json(infos))
        return 0
    if not infos:
        print(f"no tables yet under {cfg.lakehouse.root}")
        return 0
    header = f"{'table':32} {'version':>7} {'rows':>12} {'files':>6} {'size':>10}  last operation"
    print(header)
    print("-" * len(header))
    for i in infos:
        print(f"{i.name:32} {i.version:>7} {i.rows:>12,} {i.files:>6} {_size(i.size_bytes):>10}  {i.last_operation} at {i.last_modified}")
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run_config(args, cfg) -> int:
    print(json.dumps(cfg.to_dict(), indent=2))
    return 0



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lakehouse-dl",
        description="Raw tables to trained TensorFlow models on a Spark + Delta lakehouse.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("tables", help="list every table: layer, version, rows, files, size, last operation")
    _common(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_tables)

    p = sub.add_parser("config", help="print the merged, validated configuration")
    _common(p)
    p.set_defaults(func=run_config)

    _add_stage_commands(sub)
    return parser


def _add_stage_commands(sub) -> None:
    """Commands of the pipeline stages; each module adds its own parser."""
    import importlib

    for module_name in STAGE_COMMAND_MODULES:
        importlib.import_module(module_name).add_commands(sub, _common, _dates)


# Modules that contribute subcommands through `add_commands(sub, common, dates)`.
STAGE_COMMAND_MODULES = [
    "pipelines.commands.data",
    "pipelines.commands.features",
    "pipelines.commands.train",
    "pipelines.commands.nightly",
    "pipelines.commands.maintain",
]


def main(argv: list[str] | None = None) -> int:
    # Before Spark starts, so its Python workers and the Horovod ranks inherit it: TensorFlow's
    # start-up notices would otherwise bury the epoch lines.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.env, args.overrides)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    started = time.time()
    try:
        return int(args.func(args, cfg) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if args.command not in ("tables", "config"):
            print(f"[lakehouse-dl {args.command}] finished in {time.time() - started:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
