"""A checked `features:` declaration (`declared.py`) built in Spark: one row per row of the
prediction source, each from what was known at its prediction time.

The order is fixed: `columns` over every row read (history groups use them), then on the rows of
the dates asked for: `calendar`, `lookups`, `history`, the Python `extend` hook, `derived`.

    >>> frame = build(declaration(dataset), dataset, {"flights": df, ...}, [date(2013, 1, 11)])
"""
from __future__ import annotations

from datetime import date

from pipelines.config import ConfigError
from pipelines.datasets.timing import MINUTES_PER_DAY, TimePoint, known_minutes
from pipelines.lineage.columns import OWN, PROVENANCE_TYPES, provenance

_EPOCH = date(1970, 1, 1)


def build(decl, dataset, sources: dict, dates, extend=None):
    """The features table (see `pipelines.datasets.features.Features.build`)."""
    from pyspark.sql import functions as F

    source = dataset.source(dataset.prediction_source)
    event = source.event_time.minute_of_day() if source.event_time else None
    rows = sources[source.name].withColumn("_predicted_at", dataset.prediction_time.minutes(F.col("date"), event))
    # The outcome is read from the silver columns before a feature may reuse a column's name.
    target = _expr(dataset.target, dataset, "prediction.target").cast("double")
    label = _expr(dataset.label, dataset, "prediction.label").cast("double")
    rows = (rows.withColumn("__target", target)
            .withColumn("__label", F.when(F.col("__target").isNull(), F.lit(None)).otherwise(label)))
    rows = _evaluate(rows, decl.columns, dataset)
    frame = rows if dates is None else rows.filter(F.col("date").isin(list(dates)))
    frame = _evaluate(frame, decl.calendar, dataset)
    for lookup in decl.lookups:
        frame = _as_of(frame, lookup, sources, dataset) if lookup.lookback else _join(frame, lookup, sources, dataset)
    if decl.history:
        frame = _with_history(frame, rows, decl.history, dataset)
    extended: list[str] = []
    if extend is not None:
        before = set(frame.columns)
        frame = extend(frame, sources, dates, dataset)
        extended = [c for c in frame.columns if c not in before]
    frame = _evaluate(frame, decl.derived, dataset)
    readable = [f.name for f in decl.features() if f.kept] + [c for c in extended if not c.startswith("_")]
    return frame.select(F.col(dataset.key).cast("long").alias(dataset.key), "date", *readable,
                        F.col("__label").alias("label"), F.col("__target").alias("target"),
                        *_provenance_columns(frame, dataset, decl))


def _provenance_columns(frame, dataset, decl) -> list:
    """The landing file, checksum and line of the row itself, of the updates merged into it and of
    the row each lookup joined (`pipelines.lineage.columns`); null where silver has none (rows
    cleaned before silver kept them)."""
    from pyspark.sql import functions as F

    groups = [OWN, *[provenance(u.name) for u in dataset.updaters(dataset.prediction_source)],
              *[provenance(lookup.name) for lookup in decl.lookups]]
    return [F.col(name) if name in frame.columns else F.lit(None).cast(kind).alias(name)
            for group in groups for name, kind in zip(group, PROVENANCE_TYPES)]


def _own_provenance(df, name: str) -> list:
    """Columns naming the landing record of each row of `df` (a silver source), as `provenance(name)`."""
    from pyspark.sql import functions as F

    return [F.col(own).alias(mine) if own in df.columns else F.lit(None).cast(kind).alias(mine)
            for own, mine, kind in zip(OWN, provenance(name), PROVENANCE_TYPES)]


def history_days(decl, dataset) -> int:
    """Days before a date whose rows the build reads: the longest history window ending on the
    last day known at the earliest prediction time of the date, and the reach of as-of lookbacks."""
    day = date(2000, 1, 1)
    predicted_at = _earliest_prediction(dataset, day)
    days = 0
    if decl.history:
        through = min(_last_day_known_on(s, predicted_at) for s in _history_sources(dataset))
        longest = max(*decl.history.windows, decl.history.sequence.days if decl.history.sequence else 0)
        days = longest - 1 + (day - _EPOCH).days - through
    for lookup in decl.lookups:
        if lookup.lookback:
            days = max(days, (day - _EPOCH).days - (predicted_at - lookup.lookback) // MINUTES_PER_DAY)
    return days


# ------------------------------------------------------------------------------------------------
# Expressions


def _expr(text: str, dataset, key: str):
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    try:
        return F.expr(text)
    except AnalysisException as exc:
        raise ConfigError(f"{dataset.file}: key '{key}' is not valid Spark SQL ({text!r}): {_first_line(exc)}") from None


def _first_line(exc) -> str:
    return str(exc).strip().splitlines()[0][:300]


def _typed(feature, dataset, key_suffix: str = ".expr"):
    column = _expr(feature.expr, dataset, feature.key + key_suffix)
    # A numeric feature is a double in the features table, whatever type its expression gives.
    return column.cast("double") if feature.kind == "numeric" else column


def _evaluate(df, features, dataset):
    """`features` added to `df` in order, so a later one may read an earlier one."""
    from pyspark.errors import AnalysisException

    for feature in features:
        try:
            df = df.withColumn(feature.name, _typed(feature, dataset))
        except AnalysisException as exc:
            raise ConfigError(f"{dataset.file}: key '{feature.key}.expr' ({feature.expr!r}) cannot be "
                              f"evaluated: {_first_line(exc)}") from None
    return df


def _checked(build_df, key: str, dataset):
    """`build_df()`, with a Spark analysis error turned into one naming the YAML key."""
    from pyspark.errors import AnalysisException

    try:
        return build_df()
    except AnalysisException as exc:
        raise ConfigError(f"{dataset.file}: key '{key}' cannot be evaluated: {_first_line(exc)}") from None


# ------------------------------------------------------------------------------------------------
# Lookups


def _join(frame, lookup, sources: dict, dataset):
    """A reference source joined on its keys: a row found adds its columns, none leaves them null."""
    from pyspark.sql import functions as F

    keys = list(lookup.on)
    reference = sources[lookup.source]
    table = _checked(lambda: reference.dropDuplicates(list(lookup.on.values())).select(
        *[F.col(src).alias(f"__on_{col}") for col, src in lookup.on.items()],
        *[_typed(f, dataset).alias(f.name) for f in lookup.columns],
        *([F.lit(1.0).alias(lookup.found)] if lookup.found else []),
        *_own_provenance(reference, lookup.name)), f"{lookup.key}.columns", dataset)
    table = table.toDF(*[c[len("__on_"):] if c.startswith("__on_") else c for c in table.columns])
    joined = frame.join(table, keys, "left")
    return joined.withColumn(lookup.found, F.coalesce(lookup.found, F.lit(0.0))) if lookup.found else joined


def _as_of(frame, lookup, sources: dict, dataset):
    """The last row of a time-dependent source, per key, known at the row's prediction time and
    at most `lookback` minutes older than it; none (found 0.0) otherwise.

    Rows known at the same minute (the local hour that repeats at the autumn clock change): the
    one with the greatest primary key wins (for weather, the later UTC reading). Observations and
    prediction times meet in buckets of `lookback` minutes, so the range join stays an equi-join.
    """
    from pyspark.sql import functions as F

    source = dataset.source(lookup.source)
    keys = list(lookup.on)
    span = lookup.lookback
    tie = [c for c in source.primary_key if c not in lookup.on.values()]
    known = F.col("_known")
    feed = sources[lookup.source]
    lineage = _own_provenance(feed, lookup.name)
    lineage_names = list(provenance(lookup.name))
    observed = _checked(lambda: feed.select(
        *[F.col(src).alias(col) for col, src in lookup.on.items()],
        known_minutes(source).alias("_known"),
        F.struct(known, *[F.col(c) for c in tie]).alias("_order"),
        F.struct(*[_typed(f, dataset).alias(f.name) for f in lookup.columns], *lineage).alias("_values")),
        f"{lookup.key}.columns", dataset)
    bucket = F.floor(known / span)
    observed = observed.withColumn("_bucket", F.explode(F.array(bucket, bucket + 1)))
    moments = (frame.select(*keys, "_predicted_at").distinct()
               .withColumn("_bucket", F.floor(F.col("_predicted_at") / span)))
    nearest = (moments.join(observed, [*keys, "_bucket"])
               .filter((known <= F.col("_predicted_at")) & (known >= F.col("_predicted_at") - span))
               .groupBy(*keys, "_predicted_at")
               .agg(F.max_by("_values", "_order").alias("_values"))
               .select(*keys, "_predicted_at", *([F.lit(1.0).alias(lookup.found)] if lookup.found else []),
                       *[F.col(f"_values.{f.name}").alias(f.name) for f in lookup.columns],
                       *[F.col(f"_values.{c}").alias(c) for c in lineage_names]))
    joined = frame.join(nearest, [*keys, "_predicted_at"], "left")
    return joined.withColumn(lookup.found, F.coalesce(lookup.found, F.lit(0.0))) if lookup.found else joined


# ------------------------------------------------------------------------------------------------
# History


def _history_sources(dataset) -> list:
    """The prediction source and the sources that update its rows: a day counts in a history
    window once its rows and their updates (the outcomes) are all known."""
    source = dataset.source(dataset.prediction_source)
    return [s for s in (source, *dataset.updaters(source.name)) if s.known is not None]


def _day_point(source) -> TimePoint:
    """When a whole day of `source` is known, as a day-anchored TimePoint: a source known at its
    events is known for the day at its last possible event."""
    known = source.known
    if known.at != "event":
        return known
    last = source.event_time.last_minute if source.event_time else MINUTES_PER_DAY - 1
    return TimePoint("day_of", 0, known.offset + last)


def _last_day_known_on(source, predicted_at: int) -> int:
    """`TimePoint.last_day_known` on the driver: a unix day."""
    return (predicted_at - _day_point(source).minutes_on(_EPOCH)) // MINUTES_PER_DAY


def _earliest_prediction(dataset, day: date) -> int:
    return dataset.prediction_time.minutes_on(day, 0 if dataset.prediction_time.at == "event" else None)


def _through(dataset):
    """A Column: the unix day the row's history windows end on, from its `_predicted_at`."""
    from pyspark.sql import functions as F

    sources = _history_sources(dataset)
    if not sources:
        raise ConfigError(f"{dataset.file}: key 'features.history' needs the prediction source to declare "
                          f"`known` (when its rows and outcomes become known)")
    days = [_day_point(s).last_day_known(F.col("_predicted_at")) for s in sources]
    return days[0] if len(days) == 1 else F.least(*days)


def _daily(agg, dataset):
    """The per-day partial aggregates of `agg`: {column name: aggregate Column}."""
    from pyspark.sql import functions as F

    value = _expr(agg.expr, dataset, f"{agg.key}.{agg.how}") if agg.expr else None
    p = f"_{agg.name}"
    if agg.how == "count":
        return {f"{p}_n": F.count(F.lit(1))}
    if agg.how in ("sum", "mean"):
        return {f"{p}_n": F.count(value), f"{p}_s": F.sum(value)}
    if agg.how == "rate":
        return {f"{p}_n": F.count(value), f"{p}_s": F.sum(value.cast("long"))}
    if agg.how == "last":
        # The day's last non-null value, in the order of the rows' prediction times and keys.
        order = F.when(value.isNotNull(), F.struct("_predicted_at", dataset.key))
        return {f"{p}_v": F.max_by(value, order)}
    return {f"{p}_d": F.max(F.when(value, F.col("_day")))}   # days_since: the day it last held


def _windowed(agg, window):
    """The aggregate over a window of daily partials; null when the window counted no row."""
    from pyspark.sql import functions as F

    p = f"_{agg.name}"
    if agg.how in ("count", "sum", "mean", "rate"):
        n = F.sum(f"{p}_n").over(window)
        if agg.how == "count":
            return F.when(n > 0, n)
        total = F.sum(f"{p}_s").over(window)
        return F.when(n > 0, total) if agg.how == "sum" else total / F.when(n > 0, n)
    if agg.how == "last":
        return F.last(f"{p}_v", ignorenulls=True).over(window)
    return F.col("_day") - F.max(f"{p}_d").over(window)


def _with_history(frame, rows, history, dataset):
    """Each group's aggregates over the windows ending on the row's `_through` day.

    Daily partials per group, plus an empty day at every `_through` some row needs (a window may
    end on a day the group had no row), then range windows over the day number: a missing day
    adds nothing to a sum, so only the days that hold rows or end a window are computed, however
    sparse the feed (a football club plays one day a week, 46 seasons long). A row takes the
    windows ending on its `_through` day, the last day whose rows and outcomes were known at its
    prediction time. A declared `sequence` reads the same daily partials over the same kind of
    window ending on `_through`: the arrays hold no later day than the windows do.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    frame = frame.withColumn("_through", _through(dataset))
    rows = rows.withColumn("_day", F.unix_date("date"))
    partials = {}
    for agg in history.aggregates:
        partials.update(_daily(agg, dataset))
    counters = [c for c in partials if c.endswith(("_n", "_s"))]
    for group, keys in history.groups.items():
        daily = _checked(lambda: rows.groupBy(*keys, "_day").agg(*[c.alias(n) for n, c in partials.items()]),
                         f"features.history.groups.{group}", dataset)
        ends = frame.select(*keys, F.col("_through").alias("_day")).distinct()
        days = daily.join(ends, [*keys, "_day"], "full").fillna(0, counters)
        features = []
        for days_back in history.windows:
            window = Window.partitionBy(*keys).orderBy("_day").rangeBetween(-(days_back - 1), 0)
            features += [_windowed(agg, window).cast("double").alias(f"{group}_{agg.name}_{days_back}d")
                         for agg in history.aggregates]
        if history.sequence and group in history.sequence.groups:
            days, arrays = _sequences(days, group, keys, history)
            features += arrays
        frame = frame.join(days.select(*keys, F.col("_day").alias("_through"), *features), [*keys, "_through"], "left")
    return frame


def _sequences(days, group: str, keys, history):
    """(`days` with a helper column per aggregate, the Columns `<group>_<aggregate>_last<N>d`): the
    group's value on each of the N days ending on the row's `_day` (its `_through`), oldest first;
    null on a day that counted no row."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    seq = history.sequence
    window = Window.partitionBy(*keys).orderBy("_day").rangeBetween(-(seq.days - 1), 0)
    by_name = {agg.name: agg for agg in history.aggregates}
    columns = []
    for name in seq.aggregates:
        agg, p = by_name[name], f"_{name}"
        n = F.col(f"{p}_n")
        value = (F.when(n > 0, n) if agg.how == "count" else F.when(n > 0, F.col(f"{p}_s")) if agg.how == "sum"
                 else F.col(f"{p}_s") / F.when(n > 0, n))
        # The window's days that had a value, as a map day → value, read at each of the N days.
        days = days.withColumn(f"_seq{p}", F.map_from_entries(
            F.collect_list(F.struct(F.col("_day"), value.cast("double"))).over(window)))
        span = F.sequence(F.col("_day") - (seq.days - 1), F.col("_day"))
        columns.append(F.transform(span, _value_on(f"_seq{p}")).alias(f"{group}_{name}_last{seq.days}d"))
    return days, columns


def _value_on(daily: str):
    """The lambda `transform` calls for each day: the day's value in the map column `daily`, or null."""
    from pyspark.sql import functions as F

    return lambda day: F.try_element_at(F.col(daily), day)
