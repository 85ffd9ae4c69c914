"""The `lakehouse-dl` command line (`main`), one module per group of subcommands."""
from pipelines.cli.main import build_parser, main

__all__ = ["main", "build_parser"]
