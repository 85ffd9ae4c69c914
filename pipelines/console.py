"""What a person (or a scheduler) reads while a job runs: `logging`, configured once per process.

Library modules log through `logging.getLogger(__name__)` and never print. Entry points (the
command line, notebooks, each Horovod rank) call `configure_logging`: one line per message on
stdout, as text or as JSON lines for schedulers. The level and format reach the processes a job
starts (Horovod ranks) through the environment variables LAKEHOUSE_DL_LOG_LEVEL and
LAKEHOUSE_DL_LOG_FORMAT, which `configure_logging` sets.

    >>> configure_logging("INFO", "json")
    >>> logging.getLogger("pipelines.stages.bronze").info("[ingest] 42 rows")
    {"time": "2026-11-29T23:40:00.123Z", "level": "INFO", "logger": "pipelines.stages.bronze", "message": "[ingest] 42 rows"}
"""
from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone

LEVEL_ENV = "LAKEHOUSE_DL_LOG_LEVEL"
FORMAT_ENV = "LAKEHOUSE_DL_LOG_FORMAT"
FORMATS = ("text", "json")
PACKAGE_LOGGER = "pipelines"


class _Stdout(logging.StreamHandler):
    """A handler writing to whatever `sys.stdout` is when a line is logged (pytest and notebooks
    swap it), so lines keep their order with the command line's own output."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value):
        pass


class TextFormatter(logging.Formatter):
    """The message as it is; warnings and errors say so first."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message (and the error, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, timezone.utc)
        out = {"time": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str | int | None = None, fmt: str | None = None) -> None:
    """Send the package's log lines to stdout at `level` (default INFO) as `fmt` ("text" or "json").

    Arguments left out come from LAKEHOUSE_DL_LOG_LEVEL / LAKEHOUSE_DL_LOG_FORMAT (what the
    process that started this one chose). Calling it again replaces the earlier setting.
    """
    level = level if level is not None else os.environ.get(LEVEL_ENV, "INFO")
    fmt = fmt or os.environ.get(FORMAT_ENV, "text")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    logger = logging.getLogger(PACKAGE_LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, _Stdout)]:
        logger.removeHandler(handler)
    handler = _Stdout()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(numeric)
    # Lines are written once, here, even where another library configured the root logger.
    logger.propagate = False
    os.environ[LEVEL_ENV] = logging.getLevelName(numeric)
    os.environ[FORMAT_ENV] = fmt


def configured() -> bool:
    """True once `configure_logging` ran in this process."""
    return any(isinstance(h, _Stdout) for h in logging.getLogger(PACKAGE_LOGGER).handlers)
