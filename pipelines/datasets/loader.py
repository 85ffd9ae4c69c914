"""A dataset declared in `conf/base/datasets/<name>.yaml`, loaded into typed, validated objects.

The stages (landing, bronze, silver, gold) read everything they need about a raw table from here:
where its files land, how they parse, its schema, key, partition column, quality rules and what to
do with missing values. Adding a dataset is a new YAML file; no stage code changes.

    >>> ds = load_dataset("nycflights13")
    >>> ds.source("flights").primary_key
    ['date', 'carrier', 'flight', 'origin', 'sched_dep_time']
"""
from __future__ import annotations

import re
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from pipelines.catalog import PARTITION_COLUMN
from pipelines.config import ConfigError
from pipelines.config.loader import dataset_path
from pipelines.config.settings import HEADS
from pipelines.datasets.dataset import (CALENDARS, CHECKS, COLUMN_TYPES, DATE_PLACEHOLDERS, FILLS, FORMATS,
                                        Column, CsvOptions, Dataset, DecisionRule, MissingPolicy, Rule, Source)
from pipelines.datasets.schemas import check_dated_columns
from pipelines.datasets.timing import TIME_FORMATS, EventTime, time_point
from pipelines.datasets.yaml_checks import YamlChecks
from pipelines.storage.layout import LAYOUTS, MONTH_COLUMN

# A column's keys for a schema that changes over time (`Column` has a field of each name).
DATED = ("since", "until", "rename_from", "renamed_on")

# --------------------------------------------------------------------------------------------
# Loading


def dataset_for(cfg) -> Dataset:
    """The dataset the configuration's `pipeline.dataset` names."""
    return load_dataset(cfg.pipeline.dataset)


def load_dataset(name_or_path: str | Path, conf_root: Path | None = None) -> Dataset:
    """Load and validate a dataset from `conf/base/datasets/<name>.yaml`, or from a YAML path.

    Raises ConfigError naming the file and the key of the first problem found.
    """
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = dataset_path(str(name_or_path), conf_root)
    if not path.is_file():
        folder = path.parent
        known = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        raise ConfigError(f"no dataset file {path} (datasets declared: {', '.join(known) or 'none'})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return _Parser(str(path)).dataset(data)


class _Parser(YamlChecks):
    """Builds the dataclasses from YAML, naming the file and the dotted key in every error."""

    # -- the dataset --------------------------------------------------------------------------
    def dataset(self, data: Any) -> Dataset:
        data = self.mapping(data, "", {"name", "description", "seed", "max_string_length", "sources", "prediction",
                                       # `training` and `backtest` (and the splits and run date,
                                       # as defaults) are the configuration's: pipelines.config reads them.
                                       "splits", "default_run_date", "features", "training", "backtest",
                                       "evaluation"},
                            {"name", "sources"})
        name = self.string(data["name"], "name")
        max_length = self.length(data.get("max_string_length"), "max_string_length")
        seed = self.mapping(data.get("seed", {}), "seed", {"package", "folder", "archive"})
        sources_raw = self.mapping(data["sources"], "sources", set(data["sources"] or {}))
        if not sources_raw:
            self.fail("sources", "must declare at least one source")
        sources = {n: self.source(str(n), v, f"sources.{n}", max_length) for n, v in sources_raw.items()}
        for src in sources.values():
            for i, rule in enumerate(src.rules):
                if rule.reference:
                    key = f"sources.{src.name}.rules[{i}].reference"
                    ref = sources.get(rule.reference_source)
                    if ref is None:
                        self.fail(key, f"names source {rule.reference_source!r}, which this dataset does not declare")
                    if rule.reference_column not in ref.column_names:
                        self.fail(key, f"names column {rule.reference_column!r}, which source {ref.name} does not have")
                    if ref.daily:
                        self.fail(key, f"must name a reference source, not the daily feed {ref.name}")
        for name_, src in list(sources.items()):
            if src.updates:
                sources[name_] = self.update_source(src, sources)
        prediction = self.prediction(data.get("prediction"), sources)
        features = data.get("features") or {}
        if not isinstance(features, dict):
            self.fail("features", f"must be a mapping, got {type(features).__name__}")
        evaluation = self.mapping(data.get("evaluation") or {}, "evaluation", {"slices", "decision"})
        slices = self.mapping(evaluation.get("slices") or {}, "evaluation.slices", set(evaluation.get("slices") or {}))
        ds = Dataset(name=name, description=str(data.get("description", "")).strip(), sources=sources,
                     file=self.file, seed_package=seed.get("package"), seed_folder=seed.get("folder", "data"),
                     seed_archive=seed.get("archive"), **prediction,
                     splits=self.splits(data.get("splits")),
                     default_run_date=self.day(data["default_run_date"], "default_run_date")
                     if "default_run_date" in data else None,
                     features=features, slices={str(k): self.string(v, f"evaluation.slices.{k}") for k, v in slices.items()},
                     decision=self.decision(evaluation.get("decision")))
        ds.clean_order()
        return ds

    def decision(self, value: Any) -> DecisionRule:
        """`evaluation.decision` (DecisionRule's fields; its defaults when not declared)."""
        value = self.mapping(value or {}, "evaluation.decision", set(DecisionRule.__dataclass_fields__))
        try:
            return DecisionRule.declared(value, self.number)
        except ValueError as exc:
            self.fail("evaluation.decision", str(exc))

    def prediction(self, value: Any, sources: dict[str, Source]) -> dict:
        """The Dataset fields of `prediction: {source, time, target, label, head}` ({} when not
        declared; `head`, the one the nightly trains and serves, is optional)."""
        if value is None:
            return {}
        data = self.mapping(value, "prediction", {"source", "time", "target", "label", "head"},
                            {"source", "time", "target", "label"})
        name = self.string(data["source"], "prediction.source")
        source = sources.get(name)
        if source is None or not source.daily:
            self.fail("prediction.source", f"must name a daily feed of this dataset, got {name!r}")
        if not source.id_column:
            self.fail("prediction.source", f"{name} needs an id_column: it is the key of every prediction")
        at = self.when(data["time"], "prediction.time")
        if at.at == "event" and source.event_time is None:
            self.fail("prediction.time", f"is declared at the event, but source {name} declares no event_time")
        return dict(prediction_source=name, prediction_time=at,
                    target=self.string(data["target"], "prediction.target"),
                    label=self.string(data["label"], "prediction.label"),
                    head=self.choice(data.get("head", HEADS[0]), "prediction.head", HEADS))

    def splits(self, value: Any) -> dict[str, tuple[date, date]]:
        """`splits: {train: [start, end], validation: [...], test: [...]}`, inclusive dates."""
        if value is None:
            return {}
        data = self.mapping(value, "splits", {"train", "validation", "test"}, {"train", "validation", "test"})
        out = {}
        for name, window in data.items():
            if not isinstance(window, list) or len(window) != 2:
                self.fail(f"splits.{name}", f"must be [start, end], got {window!r}")
            start, end = (self.day(v, f"splits.{name}") for v in window)
            if start > end:
                self.fail(f"splits.{name}", f"starts after it ends: {window}")
            out[name] = (start, end)
        if not out["train"][1] < out["validation"][0] <= out["validation"][1] < out["test"][0]:
            self.fail("splits", "must follow each other in time: train, then validation, then test")
        return out

    def when(self, value: Any, key: str):
        try:
            return time_point(value, key)
        except ValueError as exc:
            raise ConfigError(f"{self.file}: {exc}") from None

    def event_time(self, value: Any, key: str, names: set[str]) -> EventTime | None:
        if value is None:
            return None
        data = self.mapping(value, key, {"column", "format"}, {"column"})
        column = self.string(data["column"], f"{key}.column")
        if column not in names:
            self.fail(f"{key}.column", f"names {column!r}, which is not a declared column")
        fmt = data.get("format", "hhmm")
        if fmt not in TIME_FORMATS:
            self.fail(f"{key}.format", f"must be one of {', '.join(TIME_FORMATS)}, got {fmt!r}")
        return EventTime(column, fmt)

    def update_source(self, src: Source, sources: dict[str, Source]) -> Source:
        """An update source must match its target row for row: same key, both daily, a day anchor.
        Returned with the blocking rule that quarantines an update of a row its target lacks."""
        key = f"sources.{src.name}.updates"
        target = sources.get(src.updates)
        if target is None or target.name == src.name:
            self.fail(key, f"must name another source of this dataset, got {src.updates!r}")
        if not (src.daily and target.daily):
            self.fail(key, "an update source and the source it updates must both be daily feeds")
        if target.updates:
            self.fail(key, f"{target.name} is itself an update source")
        if tuple(src.primary_key) != tuple(target.primary_key):
            self.fail(f"sources.{src.name}.primary_key", f"must equal {target.name}'s primary key "
                                                         f"{list(target.primary_key)}: it names the rows it updates")
        if not target.id_column:
            self.fail(key, f"{target.name} needs an id_column: updates are merged on it")
        if src.known is None or src.known.at == "event":
            self.fail(f"sources.{src.name}.known", "an update source declares when it arrives relative to "
                                                   "the day (day_of, day_after), e.g. {at: day_after, time: '06:00'}")
        for c in src.columns:
            if c.name in target.column_names and target.column(c.name).type != c.type:
                self.fail(f"sources.{src.name}.columns.{c.name}", f"is {c.type} here but {target.column(c.name).type} in {target.name}")
        if not [c for c in src.column_names if c not in target.column_names]:
            self.fail(f"sources.{src.name}.columns", f"declares no column that {target.name} does not: nothing to update")
        exists = Rule(name=f"{target.name}_row_exists", check="reference", blocking=True,
                      columns=(target.id_column,), reference=f"{target.name}.{target.id_column}")
        if exists.name in {r.name for r in src.rules}:
            self.fail(f"sources.{src.name}.rules", f"{exists.name!r} is the name of the rule updates get")
        return replace(src, rules=(*src.rules, exists))

    def source(self, name: str, data: Any, key: str, max_length: int | None = None) -> Source:
        data = self.mapping(data, key, {"path", "format", "csv", "columns", "primary_key", "partition_by",
                                        "calendar", "id_column", "rules", "missing", "seed", "known",
                                        "event_time", "updates"},
                            {"path", "format", "columns", "primary_key"})
        path = self.string(data["path"], f"{key}.path")
        if path.startswith("/") or ".." in Path(path).parts:
            self.fail(f"{key}.path", f"must be relative to the landing folder, got {path!r}")
        fmt = data["format"]
        if fmt not in FORMATS:
            self.fail(f"{key}.format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
        columns = self.columns(data["columns"], f"{key}.columns", max_length)
        names = [c.name for c in columns]
        # A daily feed's path names its file's date; `partition_by` is its tables' layout.
        layout = data.get("partition_by")
        daily = any(p in path for p in DATE_PLACEHOLDERS)
        if layout is not None and layout not in LAYOUTS:
            self.fail(f"{key}.partition_by", f"must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if layout is not None and not daily:
            self.fail(f"{key}.path", f"holds no {'/'.join(DATE_PLACEHOLDERS)}: partition_by applies to a daily feed")
        partition_by = PARTITION_COLUMN if daily else None
        if daily:
            for added in [c for c in (PARTITION_COLUMN, MONTH_COLUMN) if c in names]:
                self.fail(f"{key}.columns", f"declares '{added}', which the lakehouse adds to a daily feed's rows")
            if missing := [p for p in DATE_PLACEHOLDERS if p not in path]:
                self.fail(f"{key}.path", f"of a daily feed must hold {', '.join(DATE_PLACEHOLDERS)}; {', '.join(missing)} missing in {path!r}")
        calendar = data.get("calendar", "daily")
        if calendar not in CALENDARS:
            self.fail(f"{key}.calendar", f"must be one of {', '.join(CALENDARS)}, got {calendar!r}")
        if "calendar" in data and not partition_by:
            self.fail(f"{key}.calendar", "applies to a daily feed (a path with {yyyy}/{mm}/{dd}), not a reference table")
        known = set(names) | ({partition_by} if partition_by else set())
        primary_key = self.strings(data["primary_key"], f"{key}.primary_key")
        for i, col in enumerate(primary_key):
            if col not in known:
                self.fail(f"{key}.primary_key[{i}]", f"names {col!r}, which is not a column of {name}")
        id_column = data.get("id_column")
        if id_column is not None:
            id_column = self.string(id_column, f"{key}.id_column")
            if id_column in known:
                self.fail(f"{key}.id_column", f"{id_column!r} is already a column of {name}")
        csv = self.csv_options(data.get("csv", {}), f"{key}.csv")
        rules = tuple(self.rule(r, f"{key}.rules[{i}]", known) for i, r in enumerate(data.get("rules") or []))
        # A string longer than its column allows is quarantined, with its length as the reason.
        rules += tuple(Rule(name=f"{c.name}_max_length", check="max_length", blocking=True, columns=(c.name,),
                            max=float(c.max_length)) for c in columns if c.max_length)
        seen: set[str] = set()
        for i, rule in enumerate(rules):
            if rule.name in seen:
                self.fail(f"{key}.rules[{i}].name", f"{rule.name!r} is used by two rules of {name}")
            seen.add(rule.name)
        missing_policies = self.missing(data.get("missing") or {}, f"{key}.missing", set(names))
        seed = self.mapping(data.get("seed", {}), f"{key}.seed", {"file", "date_columns"})
        seed_dates = tuple(seed.get("date_columns") or ())
        if partition_by and seed and len(seed_dates) not in (1, 3):
            self.fail(f"{key}.seed.date_columns", "must name the year, month and day columns a daily feed is split "
                                                  "by, or the one column whose text starts with the date (YYYY-MM-DD)")
        event_time = self.event_time(data.get("event_time"), f"{key}.event_time", set(names))
        check_dated_columns(self.fail, key, columns, daily=daily, rules=rules,
                            required={**{c: "a column of the primary key" for c in primary_key},
                                      **({event_time.column: "the event_time"} if event_time else {})})
        known_at = self.when(data["known"], f"{key}.known") if "known" in data else None
        if known_at is not None and not partition_by:
            self.fail(f"{key}.known", "applies to a daily feed; a reference table is known all along")
        if known_at is not None and known_at.at == "event" and event_time is None:
            self.fail(f"{key}.known", "is declared at the event, but the source declares no event_time")
        updates = self.string(data["updates"], f"{key}.updates") if "updates" in data else None
        src = Source(name=name, path=path, format=fmt, columns=columns, primary_key=primary_key,
                     partition_by=partition_by, layout=layout, id_column=id_column, csv=csv, rules=rules,
                     missing=missing_policies, seed_file=seed.get("file"), seed_date_columns=seed_dates,
                     calendar=calendar, known=known_at, event_time=event_time, updates=updates)
        flags = src.flag_columns
        clash = sorted({f for f in flags if flags.count(f) > 1 or f in known or f == id_column})
        if clash:
            self.fail(f"{key}.rules", f"adds flag columns that clash with other columns: {', '.join(clash)}")
        self.case_clashes(key, names, [("the partition column", partition_by), ("the id column", id_column),
                                       *[("the flag column", f) for f in flags]])
        return src

    def case_clashes(self, key: str, names: list[str], added: list[tuple[str, str | None]]) -> None:
        """Spark compares column names ignoring case: two names that differ only in case would fail
        the first write (AMBIGUOUS_REFERENCE) after its files are written. Refuse them here."""
        seen: dict[str, str] = {}
        for name in names:
            other = seen.setdefault(name.lower(), name)
            if other != name:
                self.fail(f"{key}.columns.{name}", f"and the column '{other}' differ only in case, which Spark "
                                                   "does not tell apart; rename one in the files")
        for role, name in added:
            if name and name.lower() in seen and seen[name.lower()] != name:
                self.fail(f"{key}.columns.{seen[name.lower()]}", f"and {role} '{name}' differ only in case, which "
                                                                "Spark does not tell apart; rename the column")

    def columns(self, value: Any, key: str, max_length: int | None = None) -> tuple[Column, ...]:
        # A mapping keeps the file's column order (YAML mappings are ordered): `year: int`, or
        # `tailnum: {type: string, max_length: 20}` for a string column with its own limit, or
        # `Date: {type: date, rename: order_date}` for a column the tables call otherwise, or
        # `gate: {type: string, since: 2013-06-01}` for one the files carry from a date on
        # (`until`: up to a date; `rename_from: old, renamed_on: date`: under another name before).
        value = self.mapping(value, key, set(value) if isinstance(value, dict) else set())
        if not value:
            self.fail(key, "must declare at least one column")
        out = []
        for name, typ in value.items():
            limit, renamed, dated = max_length, None, {}
            if isinstance(typ, dict):
                spec = self.mapping(typ, f"{key}.{name}", {"type", "max_length", "rename", *DATED}, {"type"})
                typ = spec["type"]
                for k in ("rename", "rename_from"):
                    if k in spec and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", self.string(spec[k], f"{key}.{name}.{k}")):
                        self.fail(f"{key}.{name}.{k}", f"must be a column name, got {spec[k]!r}")
                renamed = spec.get("rename")
                # The schema over time (pipelines.datasets.schemas checks how the keys fit together).
                dated = {k: spec[k] if k == "rename_from" else self.day(spec[k], f"{key}.{name}.{k}")
                         for k in DATED if k in spec}
                if "max_length" in spec:
                    if typ != "string":
                        self.fail(f"{key}.{name}.max_length", f"applies to string columns, not {typ}")
                    limit = self.length(spec["max_length"], f"{key}.{name}.max_length")
            if typ not in COLUMN_TYPES:
                self.fail(f"{key}.{name}", f"must be one of {', '.join(COLUMN_TYPES)}, got {typ!r}")
            if str(name).startswith("_"):
                self.fail(f"{key}.{name}", "may not start with '_' (kept for lineage columns)")
            out.append(Column(renamed or str(name), typ, limit if typ == "string" else None,
                              str(name) if renamed else None, **dated))
        return tuple(out)

    def csv_options(self, value: Any, key: str) -> CsvOptions:
        value = self.mapping(value, key, {"header", "delimiter", "quote", "null_values", "encoding"})
        kwargs: dict[str, Any] = {}
        if "header" in value:
            kwargs["header"] = self.boolean(value["header"], f"{key}.header")
        for k in ("delimiter", "quote"):
            if k in value:
                if not isinstance(value[k], str) or len(value[k]) != 1:
                    self.fail(f"{key}.{k}", f"must be one character, got {value[k]!r}")
                kwargs[k] = value[k]
        if "null_values" in value:
            nv = value["null_values"]
            if not isinstance(nv, list) or not all(isinstance(v, str) for v in nv):
                self.fail(f"{key}.null_values", f"must be a list of strings, got {nv!r}")
            kwargs["null_values"] = tuple(nv)
        if "encoding" in value:
            import codecs

            try:
                codecs.lookup(value["encoding"])
            except (LookupError, TypeError):
                self.fail(f"{key}.encoding", f"is not an encoding Python knows: {value['encoding']!r}")
            kwargs["encoding"] = value["encoding"]
        return CsvOptions(**kwargs)

    def rule(self, value: Any, key: str, known: set[str]) -> Rule:
        value = self.mapping(value, key, {"name", "check", "blocking", "columns", "column", "min", "max",
                                          "values", "reference", "expr", "flag", "description"},
                             {"name", "check", "blocking"})
        name = self.string(value["name"], f"{key}.name")
        check = value["check"]
        if check not in CHECKS:
            self.fail(f"{key}.check", f"must be one of {', '.join(CHECKS)}, got {check!r}")
        blocking = self.boolean(value["blocking"], f"{key}.blocking")
        kwargs: dict[str, Any] = {}
        if check == "expression":
            kwargs["expr"] = self.string(value.get("expr"), f"{key}.expr")
        else:
            cols = value.get("columns", value.get("column"))
            if cols is None:
                self.fail(f"{key}.column", f"is required by a {check} rule")
            cols = self.strings(cols, f"{key}.column")
            if check != "not_null" and len(cols) != 1:
                self.fail(f"{key}.column", f"a {check} rule checks one column, got {list(cols)}")
            for c in cols:
                if c not in known:
                    self.fail(f"{key}.column", f"names {c!r}, which is not a column of this source")
            kwargs["columns"] = cols
        if check == "range":
            if "min" not in value and "max" not in value:
                self.fail(f"{key}.min", "a range rule needs min, max or both")
            kwargs["min"] = self.number(value["min"], f"{key}.min") if "min" in value else None
            kwargs["max"] = self.number(value["max"], f"{key}.max") if "max" in value else None
        if check == "allowed_values":
            vals = value.get("values")
            if not isinstance(vals, list) or not vals:
                self.fail(f"{key}.values", f"must be a non-empty list, got {vals!r}")
            kwargs["values"] = tuple(vals)
        if check == "reference":
            ref = self.string(value.get("reference"), f"{key}.reference")
            if ref.count(".") != 1:
                self.fail(f"{key}.reference", f"must be '<source>.<column>', got {ref!r}")
            kwargs["reference"] = ref
        if "flag" in value:
            if blocking:
                self.fail(f"{key}.flag", "only a non-blocking rule can flag rows (a blocking one quarantines them)")
            flag = self.string(value["flag"], f"{key}.flag")
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", flag):
                self.fail(f"{key}.flag", f"must be a column name, got {flag!r}")
            kwargs["flag"] = flag
        return Rule(name=name, check=check, blocking=blocking, **kwargs)

    def missing(self, value: Any, key: str, names: set[str]) -> dict[str, MissingPolicy]:
        value = self.mapping(value, key, names)
        out = {}
        for col, policy in value.items():
            k = f"{key}.{col}"
            if policy == "keep":
                out[col] = MissingPolicy()
            elif policy == "flag":
                out[col] = MissingPolicy(flag=True)
            elif isinstance(policy, dict):
                policy = self.mapping(policy, k, {"fill", "flag"})
                fill = policy.get("fill")
                if fill is not None and fill not in FILLS:
                    self.fail(f"{k}.fill", f"must be one of {', '.join(FILLS)}, got {fill!r}")
                out[col] = MissingPolicy(fill=fill, flag=self.boolean(policy.get("flag", False), f"{k}.flag"))
            else:
                self.fail(k, f"must be keep, flag or a mapping {{fill: mean|median|mode|zero, flag: true|false}}, got {policy!r}")
        return out
