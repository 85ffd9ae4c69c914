"""The `features:` block of a dataset's YAML, read and checked: what each feature is, before any Spark.

`pipelines.datasets.features.compiled` turns a `Declaration` into a Spark build; the keys are
documented where they are used, at the top of the features section of
conf/base/datasets/nycflights13.yaml. Every error names the YAML file and the dotted key:

    >>> declaration(dataset).columns[0]
    Feature(name='sched_hour', expr='cast(sched_dep_time / 100 as int)', kind='categorical', ...)
    >>> declaration(bad)      # features: {columns: {x: {kind: nominal}}}
    ConfigError: conf/base/datasets/x.yaml: key 'features.columns.x.kind' must be numeric or categorical, got 'nominal'
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pipelines.datasets.dataset import FILLS
from pipelines.datasets.loader import _Parser
from pipelines.datasets.timing import parse_offset

SECTIONS = ("python", "columns", "calendar", "lookups", "history", "derived")
KINDS = ("numeric", "categorical")
# The parts of the row's date a `calendar:` entry may name, and the Spark SQL that computes each.
CALENDAR = {"weekday": "date_format(date, 'E')", "month": "month(date)", "day_of_year": "dayofyear(date)",
            "day_of_month": "dayofmonth(date)", "week_of_year": "weekofyear(date)"}
# History aggregates: name → whether it takes an expression (count counts rows, it takes none).
AGGREGATES = {"count": False, "sum": True, "mean": True, "rate": True, "last": True, "days_since": True}
# The aggregates a daily sequence can hold: those with one value per day.
SEQUENCE_AGGREGATES = ("count", "sum", "mean", "rate")
# Column names the features table itself uses: no feature may take them.
RESERVED = ("date", "label", "target")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Feature:
    """One column of the features table: a Spark SQL expression and how the model sees it.

    `kind` None is a readable column only (`model: false` without a kind), kept as the expression
    gives it; a numeric feature is a double. A name starting with `_` is an intermediate: later
    expressions read it, the features table does not hold it. `policy_from` ("weather.temp") is
    the silver column whose declared `missing:` policy replaces `fill` and `flag`.
    """
    name: str
    expr: str
    kind: str | None = None
    model: bool = True
    fill: str = "mean"
    flag: bool = False
    policy_from: str | None = None
    key: str = ""

    @property
    def kept(self) -> bool:
        return not self.name.startswith("_")


@dataclass(frozen=True)
class Lookup:
    """A join to another source: `on` (YAML `keys:`) {frame column: source column}; `lookback` (minutes) makes it
    an as-of join, the last row known at the row's prediction time; `found` names a 1.0/0.0 column."""
    source: str
    on: dict[str, str]
    columns: tuple[Feature, ...]
    found: str | None = None
    lookback: int | None = None
    key: str = ""

    @property
    def name(self) -> str:
        """Its key under `features.lookups`, which names its provenance columns in gold."""
        return self.key.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Aggregate:
    """One history aggregate: `how` (count, sum, mean, rate, last, days_since) of `expr`."""
    name: str
    how: str
    expr: str | None
    model: bool = True
    fill: str = "mean"
    flag: bool = False
    key: str = ""


@dataclass(frozen=True)
class Sequence:
    """`history.sequence`: per row, the last `days` daily values of `aggregates` for `groups`,
    oldest first, ending on the day the history windows end on."""
    days: int
    groups: tuple[str, ...]
    aggregates: tuple[str, ...]
    key: str = "features.history.sequence"


@dataclass(frozen=True)
class History:
    windows: tuple[int, ...]
    groups: dict[str, tuple[str, ...]]
    aggregates: tuple[Aggregate, ...]
    key: str = "features.history"
    sequence: Sequence | None = None

    def features(self) -> list[Feature]:
        """The output columns, `<group>_<aggregate>_<window>d`, each numeric, then the sequences,
        `<group>_<aggregate>_last<days>d` (kind `sequence`, an array of daily values)."""
        out = [Feature(f"{group}_{agg.name}_{days}d", "", "numeric", agg.model, agg.fill, agg.flag, key=agg.key)
               for group in self.groups for agg in self.aggregates for days in self.windows]
        if self.sequence:
            seq = self.sequence
            out += [Feature(f"{group}_{agg}_last{seq.days}d", "", "sequence", key=seq.key)
                    for group in seq.groups for agg in seq.aggregates]
        return out


@dataclass(frozen=True)
class Declaration:
    python: str | None
    columns: tuple[Feature, ...]
    calendar: tuple[Feature, ...]
    lookups: tuple[Lookup, ...]
    history: History | None
    derived: tuple[Feature, ...]

    def features(self) -> list[Feature]:
        """Every declared feature in the order the features table holds them."""
        out = [*self.columns, *self.calendar]
        for lookup in self.lookups:
            if lookup.found:
                out.append(Feature(lookup.found, "", "numeric", key=f"{lookup.key}.found"))
            out += lookup.columns
        out += self.history.features() if self.history else []
        return out + list(self.derived)


def declaration(dataset) -> Declaration:
    """The dataset's `features:` mapping, checked; ConfigError naming the file and key otherwise."""
    return _Reader(dataset).declaration(dataset.features or {})


class _Reader(_Parser):
    """The dataset loader's parser (its errors, `boolean`), reading the `features:` block."""

    def __init__(self, dataset):
        super().__init__(dataset.file)
        self.dataset = dataset

    def mapping(self, value: Any, key: str, allowed=None, required=()) -> dict:
        if not isinstance(value, dict):
            self.fail(key, f"must be a mapping, got {type(value).__name__}")
        if allowed is not None:
            unknown = sorted(set(map(str, value)) - set(allowed))
            if unknown:
                self.fail(f"{key}.{unknown[0]}" if key else unknown[0],
                          f"is not a known key (allowed here: {', '.join(allowed)})")
        for name in required:
            if name not in value:
                self.fail(f"{key}.{name}", "is required")
        return value

    def name(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not _NAME.match(value):
            self.fail(key, f"must be a column name (letters, digits, _), got {value!r}")
        return value

    def text(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"must be a Spark SQL expression (a non-empty string), got {value!r}")
        return value

    # -- the block ------------------------------------------------------------------------------
    def declaration(self, data: Any) -> Declaration:
        data = self.mapping(data, "features", SECTIONS)
        if not self.dataset.prediction_source:
            self.fail("prediction", "must be declared for features to be built (the rows they describe)")
        python = data.get("python")
        if python is not None:
            python = self.name(python, "features.python")
        columns = self.features(data.get("columns", {}), "features.columns",
                                policy_source=self.dataset.prediction_source)
        calendar = self.calendar(data.get("calendar", {}))
        lookups = tuple(self.lookup(str(n), v, f"features.lookups.{n}")
                        for n, v in self.mapping(data.get("lookups", {}), "features.lookups").items())
        history = self.history(data["history"]) if data.get("history") is not None else None
        derived = self.features(data.get("derived", {}), "features.derived")
        out = Declaration(python, columns, calendar, lookups, history, derived)
        self.check_lookup_keys(out)
        self.check_unique(out)
        return out

    def features(self, data: Any, key: str, policy_source: str | None = None) -> tuple[Feature, ...]:
        data = self.mapping(data, key)
        return tuple(self.feature(self.name(n, f"{key}.{n}"), spec, f"{key}.{n}", policy_source)
                     for n, spec in data.items())

    def feature(self, name: str, spec: Any, key: str, policy_source: str | None = None,
                default_expr: str | None = None) -> Feature:
        spec = {} if spec is None else spec
        if isinstance(spec, str):       # `weekday: categorical`
            spec = {"kind": spec}
        spec = self.mapping(spec, key, ("expr", "kind", "model", "fill", "flag"))
        expr = self.text(spec["expr"], f"{key}.expr") if "expr" in spec else (default_expr or name)
        model = self.boolean(spec.get("model", True), f"{key}.model")
        kind = spec.get("kind")
        if kind is None and model:
            self.fail(f"{key}.kind", f"is required for a model input: one of {', '.join(KINDS)} "
                                     "(or set model: false for a readable column)")
        if kind is not None and kind not in KINDS:
            self.fail(f"{key}.kind", f"must be {' or '.join(KINDS)}, got {kind!r}")
        fill, flag = self.policy(spec, key, kind)
        # A plain column of a source reads that source's declared missing-value policy.
        source = self.dataset.sources.get(policy_source) if policy_source else None
        policy_from = f"{policy_source}.{expr}" if source and expr in source.column_names else None
        return Feature(name, expr, kind, model, fill, flag, policy_from, key)

    def policy(self, spec: dict, key: str, kind: str | None) -> tuple[str, bool]:
        if kind != "numeric" and ("fill" in spec or "flag" in spec):
            self.fail(f"{key}.{'fill' if 'fill' in spec else 'flag'}",
                      "applies to numeric features only (a missing category is index 0)")
        fill = spec.get("fill", "mean")
        if fill not in FILLS:
            self.fail(f"{key}.fill", f"must be one of {', '.join(FILLS)}, got {fill!r}")
        return fill, self.boolean(spec.get("flag", False), f"{key}.flag")

    def calendar(self, data: Any) -> tuple[Feature, ...]:
        data = self.mapping(data, "features.calendar", tuple(CALENDAR))
        return tuple(self.feature(n, spec, f"features.calendar.{n}", default_expr=CALENDAR[n])
                     for n, spec in data.items())

    def lookup(self, name: str, data: Any, key: str) -> Lookup:
        if isinstance(data, dict) and (True in data or "on" in data):
            self.fail(f"{key}.on", "is not a key here (YAML reads a bare `on` as true): name the join columns with `keys:`")
        data = self.mapping(data, key, ("source", "keys", "as_of", "found", "columns"), ("keys", "columns"))
        source_name = data.get("source", name)
        if source_name not in self.dataset.sources:
            self.fail(f"{key}.source" if "source" in data else key,
                      f"names source {source_name!r}, which this dataset does not declare "
                      f"(it has: {', '.join(self.dataset.sources)})")
        source = self.dataset.sources[source_name]
        on = self.mapping(data["keys"], f"{key}.keys")
        if not on:
            self.fail(f"{key}.keys", "must map at least one frame column to a column of the source")
        for frame_col, source_col in on.items():
            self.name(frame_col, f"{key}.keys.{frame_col}")
            if source_col not in source.column_names:
                self.fail(f"{key}.keys.{frame_col}", f"names column {source_col!r}, which source {source_name} "
                                                   f"does not have")
        lookback = None
        if "as_of" in data:
            as_of = self.mapping(data["as_of"], f"{key}.as_of", ("lookback",), ("lookback",))
            try:
                lookback = parse_offset(as_of["lookback"])
            except ValueError as exc:
                self.fail(f"{key}.as_of.lookback", str(exc))
            if lookback <= 0:
                self.fail(f"{key}.as_of.lookback", f"must be a positive duration, got {as_of['lookback']!r}")
            if source.known is None:
                self.fail(f"{key}.as_of", f"needs a source whose rows become known over time; "
                                          f"{source_name} declares no `known`")
        elif source.known is not None:
            # An equi-join to a source that grows over time would read rows not known yet.
            self.fail(key, f"joins {source_name}, whose rows become known over time (`known`): "
                           f"declare as_of: {{lookback: ...}} for the last row known at the prediction time")
        found = self.name(data["found"], f"{key}.found") if data.get("found") is not None else None
        columns = self.features(data["columns"], f"{key}.columns", policy_source=source_name)
        return Lookup(source_name, dict(on), columns, found, lookback, key)

    def history(self, data: Any) -> History:
        key = "features.history"
        data = self.mapping(data, key, ("windows", "groups", "aggregates", "sequence"), ("windows", "groups", "aggregates"))
        windows = data["windows"]
        if not isinstance(windows, list) or not windows or not all(
                isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in windows):
            self.fail(f"{key}.windows", f"must be a non-empty list of positive day counts, got {windows!r}")
        groups = {}
        for group, cols in self.mapping(data["groups"], f"{key}.groups").items():
            gkey = f"{key}.groups.{group}"
            self.name(group, gkey)
            cols = [cols] if isinstance(cols, str) else cols
            if not isinstance(cols, list) or not cols:
                self.fail(gkey, f"must be a list of columns, got {cols!r}")
            groups[group] = tuple(self.name(c, f"{gkey}[{i}]") for i, c in enumerate(cols))
        if not groups:
            self.fail(f"{key}.groups", "must declare at least one group")
        aggregates = []
        for name, spec in self.mapping(data["aggregates"], f"{key}.aggregates").items():
            akey = f"{key}.aggregates.{name}"
            self.name(name, akey)
            spec = {"count": True} if spec == "count" else spec
            spec = self.mapping(spec, akey, (*AGGREGATES, "model", "fill", "flag"))
            hows = [h for h in AGGREGATES if h in spec]
            if len(hows) != 1:
                self.fail(akey, f"must name exactly one of {', '.join(AGGREGATES)}, got {hows or 'none'}")
            how = hows[0]
            expr = self.text(spec[how], f"{akey}.{how}") if AGGREGATES[how] else None
            fill, flag = self.policy(spec, akey, "numeric")
            aggregates.append(Aggregate(name, how, expr, self.boolean(spec.get("model", True), f"{akey}.model"),
                                        fill, flag, akey))
        if not aggregates:
            self.fail(f"{key}.aggregates", "must declare at least one aggregate")
        sequence = self.sequence(data["sequence"], groups, aggregates) if data.get("sequence") is not None else None
        return History(tuple(windows), groups, tuple(aggregates), sequence=sequence)

    def sequence(self, data: Any, groups: dict, aggregates: list[Aggregate]) -> Sequence:
        key = "features.history.sequence"
        data = self.mapping(data, key, ("days", "groups", "aggregates"), ("days",))
        days = data["days"]
        if isinstance(days, bool) or not isinstance(days, int) or not 1 < days <= 366:
            self.fail(f"{key}.days", f"must be a day count from 2 to 366, got {days!r}")
        usable = [a.name for a in aggregates if a.how in SEQUENCE_AGGREGATES]
        chosen = {}
        for part, known in (("groups", list(groups)), ("aggregates", usable)):
            names = data.get(part, known)
            if not isinstance(names, list) or not names:
                self.fail(f"{key}.{part}", f"must be a non-empty list, got {names!r}")
            for i, name in enumerate(names):
                if name not in known:
                    self.fail(f"{key}.{part}[{i}]", f"names {name!r}, not one of {', '.join(known) or 'none'}"
                              + (f" (a sequence holds {', '.join(SEQUENCE_AGGREGATES)} aggregates)"
                                 if part == "aggregates" else ""))
            chosen[part] = tuple(names)
        return Sequence(days, chosen["groups"], chosen["aggregates"])

    # -- across sections ------------------------------------------------------------------------
    def check_lookup_keys(self, decl: Declaration) -> None:
        """Lookup keys and history groups name a column the frame has when they are evaluated."""
        frame = set(self.dataset.source(self.dataset.prediction_source).column_names) | {"date"}
        frame |= {f.name for f in (*decl.columns, *decl.calendar)}
        for lookup in decl.lookups:
            for col in lookup.on:
                if col not in frame:
                    self.fail(f"{lookup.key}.keys.{col}", "is not a column of the prediction source, nor a "
                                                        "feature declared before it (columns, calendar)")
            frame |= {f.name for f in lookup.columns} | ({lookup.found} if lookup.found else set())
        if decl.history:
            rows = set(self.dataset.source(self.dataset.prediction_source).column_names) | {"date"}
            rows |= {f.name for f in decl.columns}
            for group, cols in decl.history.groups.items():
                for i, col in enumerate(cols):
                    if col not in rows:
                        self.fail(f"features.history.groups.{group}[{i}]",
                                  f"names {col!r}: not a column of the prediction source nor of `columns`")

    def check_unique(self, decl: Declaration) -> None:
        seen: dict[str, str] = {}
        for feature in decl.features():
            if feature.name in RESERVED or feature.name == self.dataset.key:
                self.fail(feature.key, f"uses the name {feature.name!r}, which the features table keeps for itself")
            if feature.name in seen:
                self.fail(feature.key, f"declares {feature.name!r} again (first at '{seen[feature.name]}')")
            seen[feature.name] = feature.key
