"""Collect the lines the package logs while a block runs (fixtures of any scope can use it)."""
from __future__ import annotations

import logging
from contextlib import contextmanager


@contextmanager
def log_lines(level: int = logging.INFO):
    """Yield a list that receives the message of every record the `pipelines` loggers emit."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("pipelines")
    handler, before = Collect(level), logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level, before or level))
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)
