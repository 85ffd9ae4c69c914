"""The `lakehouse-dl` command line: parse, load configuration, set up logging, call the library.

Every command takes `--env` (a folder of conf/), `--set key=value` and the logging options; the
configuration is validated before Spark starts. Each group of commands is a module of this
package with `add_commands(sub, common, dates)`; the logic lives in the library.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

from pipelines.cli.common import add_common, add_dates, log_level
from pipelines.config import ConfigError, load_config
from pipelines.console import configure_logging

# Modules that contribute subcommands through `add_commands(sub, common, dates)`, in help order.
COMMAND_MODULES = [
    "pipelines.cli.tables",
    "pipelines.cli.status",
    "pipelines.cli.data",
    "pipelines.cli.features",
    "pipelines.cli.train",
    "pipelines.cli.tune",
    "pipelines.cli.reproduce",
    "pipelines.cli.nightly",
    "pipelines.cli.maintain",
    "pipelines.cli.lineage",
    "pipelines.cli.dataset",
]
# Commands that only read: no closing "finished in" line.
QUIET_COMMANDS = ("tables", "config", "lineage", "status")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lakehouse-dl",
        description="Raw tables to trained TensorFlow models on a Spark + Delta lakehouse.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_commands(sub, add_common, add_dates)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Before Spark starts, so its Python workers and the Horovod ranks inherit it: TensorFlow's
    # start-up notices would otherwise bury the epoch lines.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(log_level(args), args.log_format)
    try:
        overrides = list(args.overrides)
        if getattr(args, "dataset", None):
            overrides.insert(0, f"pipeline.dataset={args.dataset}")
        cfg = load_config(args.env, overrides)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    started = time.time()
    try:
        return int(args.func(args, cfg) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # A full disk is one line naming the filesystem, whichever command and library met it.
        from pipelines.storage.space import disk_full

        full = disk_full(exc, cfg.lakehouse.root)
        if full is None:
            raise
        print(f"FAILED: {full}", file=sys.stderr)
        return 1
    finally:
        if args.command not in QUIET_COMMANDS:
            print(f"[lakehouse-dl {args.command}] finished in {time.time() - started:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
