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
import re
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
    quiet_libraries(numeric)


def configured() -> bool:
    """True once `configure_logging` ran in this process."""
    return any(isinstance(h, _Stdout) for h in logging.getLogger(PACKAGE_LOGGER).handlers)


# Third-party loggers that speak at INFO about their own housekeeping (MLflow's database set-up,
# py4j's gateway, xgboost.spark's every fit, on the driver and in the task, which takes the
# driver's level): below `--verbose` they keep to warnings.
CHATTY_LOGGERS = ("mlflow", "py4j", "alembic", "urllib3", "XGBoost-PySpark")


def quiet_libraries(level: int) -> None:
    """Third-party chatter only at DEBUG: their loggers to WARNING, TensorFlow's C++ start-up lines
    off (TF_CPP_MIN_LOG_LEVEL, read when TensorFlow loads, here or in a Horovod rank), and Keras's
    progress bars (`1/1 [====] - ETA`, from predictions other libraries make) into logging."""
    if level <= logging.DEBUG:
        return
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or "keras" in sys.modules:
        silence_keras()


def quiet_tensorflow() -> None:
    """`silence_keras` unless the package logs at DEBUG (`--verbose`): for code that has just
    imported TensorFlow (loading a model, logging one to MLflow)."""
    if logging.getLogger(PACKAGE_LOGGER).getEffectiveLevel() > logging.DEBUG:
        silence_keras()


def silence_keras() -> None:
    """TensorFlow's Python warnings to errors only, Keras's progress bars off (already-imported TF)."""
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    try:
        tf.keras.utils.disable_interactive_logging()
    except AttributeError:   # older Keras
        pass


class RankOutput:
    """A text stream for `horovod.spark.run(stdout=..., stderr=...)`: Horovod writes each rank's
    lines as `[rank]<stdout>:line`. Stdout lines (the epoch lines, which rank 0 logs) go to this
    process's stdout without that prefix; stderr lines (TensorFlow's warnings, tracebacks) are
    logged at DEBUG, shown with `--verbose`, and the last `keep` of them are kept for the error
    message when training fails.

        >>> horovod.spark.run(fn, stdout=RankOutput("stdout"), stderr=RankOutput("stderr"))
    """

    PREFIX = re.compile(r"^(?:[^\[]*)\[(\d+)\]<(stdout|stderr)>:")

    def __init__(self, kind: str, keep: int = 60):
        self.kind, self.keep = kind, keep
        self.pending = ""
        self.tail: list[str] = []
        self.log = logging.getLogger(f"{PACKAGE_LOGGER}.ranks")

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def _line(self, line: str) -> None:
        match = self.PREFIX.match(line)
        rank, body = (match.group(1), line[match.end():]) if match else (None, line)
        if self.kind == "stdout":
            sys.stdout.write(body + "\n")
            sys.stdout.flush()
            return
        self.tail = (self.tail + [f"[rank {rank}] {body}" if rank is not None else body])[-self.keep:]
        self.log.debug(f"[rank {rank}] {body}" if rank is not None else body)

    def flush(self) -> None:
        if self.pending:
            line, self.pending = self.pending, ""
            self._line(line)
