"""Gold: silver → readable features, the feature spec fitted on the training window, model input.

The dataset's features module (pipelines/features/<dataset>.py) builds the features; this module
fits and applies the spec, splits by time and writes `gold.flight_features`, `gold.feature_spec`
and `gold.model_input` (contracts in docs/design.md).

    >>> summary = build_features(cfg, spark, dates=[date(2013, 3, 1)])
"""
from __future__ import annotations

import time
from datetime import date, timedelta
from typing import Callable, Sequence

from pipelines.features import ModelColumn, feature_module, with_declared_policies

FEATURES_TABLE = "gold.flight_features"
SPEC_TABLE = "gold.feature_spec"
MODEL_INPUT_TABLE = "gold.model_input"

SPEC_SCHEMA = (
    "position int, name string, kind string, transform string, source string, vocabulary array<string>, "
    "vocab_size int, mean double, std double, fill_with string, fill double, "
    "train_start date, train_end date, train_rows long"
)


class FeaturesError(RuntimeError):
    """The gold stage cannot run as asked; the message says what to run first."""


# ------------------------------------------------------------------------------------------------
# The feature spec: fitted on the training window, applied everywhere


def fit_feature_spec(features_df, train_window: tuple[date, date], columns: Sequence[ModelColumn]):
    """One row per model column, fitted on the rows of `features_df` dated inside `train_window`.

    Numeric columns get the window's mean and standard deviation and the value that fills their
    nulls (`fill_with` mean, median, mode or zero, `fill` its value), transform `standardize`;
    a column with `flag` also gets a `<name>_missing` row (`missing_flag`). Categorical columns
    get the sorted vocabulary of the values seen in the window (`vocabulary`): the i-th value is
    index i+1, anything else 0, so `vocab_size` = len(vocabulary) + 1 (an embedding's input_dim).

        >>> spec = fit_feature_spec(features, (date(2013, 1, 1), date(2013, 9, 30)), module.MODEL_COLUMNS)
    """
    from pyspark.sql import functions as F

    start, end = train_window
    train = features_df.filter(F.col("date").between(F.lit(start), F.lit(end)))
    aggregates = [F.count(F.lit(1)).alias("_rows")]
    for i, col in enumerate(columns):
        if col.kind == "numeric":
            value = F.col(col.source).cast("double")
            aggregates += [F.avg(value).alias(f"_mean{i}"), F.stddev_pop(value).alias(f"_std{i}")]
            if col.fill == "median":
                aggregates.append(F.median(value).alias(f"_fill{i}"))
        else:
            aggregates.append(F.collect_set(F.col(col.source).cast("string")).alias(f"_vocab{i}"))
    stats = train.agg(*aggregates).collect()[0]
    train_rows = int(stats["_rows"])
    if train_rows == 0:
        raise FeaturesError(f"no rows in the training window {start}..{end} to fit the feature spec on")

    rows = []
    for i, col in enumerate(columns):
        if col.kind == "numeric":
            mean, std = stats[f"_mean{i}"], stats[f"_std{i}"]
            mean = mean if mean is not None else 0.0
            # A column never seen, or constant, in the window (its std is 0 up to rounding)
            # standardises to 0 rather than to NaN or to huge values.
            std = std if std is not None and std > 1e-9 * max(1.0, abs(mean)) else 1.0
            fill = {"mean": mean, "zero": 0.0}.get(col.fill)
            if col.fill == "median":
                fill = stats[f"_fill{i}"]
            elif col.fill == "mode":
                fill = _mode(train, col.source)
            rows.append((f"num_{col.source}", "numeric", "standardize", col.source, [], 0, mean, std,
                         col.fill, fill if fill is not None else mean))
            if col.flag:
                rows.append((f"num_{col.source}_missing", "numeric", "missing_flag", col.source, [], 0,
                             0.0, 1.0, None, None))
        else:
            vocabulary = sorted(stats[f"_vocab{i}"])
            rows.append((f"cat_{col.source}", "categorical", "vocabulary", col.source, vocabulary,
                         len(vocabulary) + 1, None, None, None, None))
    # Numeric columns first, then categorical, each in declaration order: the model input's order.
    rows.sort(key=lambda r: r[1] != "numeric")
    spark = features_df.sparkSession
    return spark.createDataFrame(
        [(pos, *row, start, end, train_rows) for pos, row in enumerate(rows)], SPEC_SCHEMA).coalesce(1)


def _mode(train, column: str) -> float | None:
    """The most frequent non-null value; the smallest one among equally frequent values."""
    from pyspark.sql import functions as F

    top = (train.filter(F.col(column).isNotNull()).groupBy(column).count()
           .orderBy(F.desc("count"), F.asc(column)).first())
    return float(top[column]) if top is not None else None


def spec_rows(spec_df) -> list[dict]:
    """The spec as a list of dicts in column order (what `apply_feature_spec` and the model use)."""
    return sorted((r.asDict() for r in spec_df.collect()), key=lambda r: r.get("position") or 0)


def apply_feature_spec(features_df, spec_df, key: str = "flight_id", target: str = "arr_delay",
                       keep: Sequence[str] = ()):
    """Fixed-width model rows: `key` int64, `day` int32 (yyyymmdd), the spec's columns, `label`, `target`.

    num_* columns are float32 `(value - mean) / std`, a null taking the spec's `fill` value;
    *_missing flags are 1.0 where the source is null; cat_* columns are int32 indices into the vocabulary, 0 for a value never
    seen in the training window or null. `label` and `target` are float32, null where unknown
    (scoring rows); `gold.model_input` keeps only rows that have them. Columns named in `keep`
    follow unchanged (the split a row belongs to, say).

        >>> model_rows = apply_feature_spec(lh.table("gold.flight_features").read(), lh.table("gold.feature_spec").read())
    """
    from pyspark.sql import functions as F

    columns = [F.col(key).cast("long").alias(key),
               (F.year("date") * 10000 + F.month("date") * 100 + F.dayofmonth("date")).cast("int").alias("day")]
    for spec in spec_rows(spec_df):
        source = F.col(spec["source"])
        if spec["transform"] == "standardize":
            filled = F.coalesce(source.cast("double"), F.lit(spec["fill"]))
            value = ((filled - F.lit(spec["mean"])) / F.lit(spec["std"])).cast("float")
        elif spec["transform"] == "missing_flag":
            value = source.isNull().cast("float")
        elif spec["transform"] == "vocabulary":
            vocabulary = spec["vocabulary"] or []
            if vocabulary:
                index = F.create_map(*[x for i, v in enumerate(vocabulary) for x in (F.lit(v), F.lit(i + 1))])
                # try_: a value missing from the map is null (then 0) under ANSI mode too.
                value = F.coalesce(F.try_element_at(index, source.cast("string")), F.lit(0)).cast("int")
            else:
                value = F.lit(0).cast("int")
        else:
            raise FeaturesError(f"{SPEC_TABLE} row {spec['name']}: unknown transform {spec['transform']!r}")
        columns.append(value.alias(spec["name"]))
    columns += [F.col("label").cast("float").alias("label"), F.col(target).cast("float").alias(target), *keep]
    return features_df.select(*columns)


def split_column(splits: dict[str, tuple[date, date]]):
    """A Column naming the split whose window holds `date`; null for a date in none of them."""
    from pyspark.sql import functions as F

    expr = None
    for name, (start, end) in splits.items():
        cond = F.col("date").between(F.lit(start), F.lit(end))
        expr = F.when(cond, F.lit(name)) if expr is None else expr.when(cond, F.lit(name))
    return expr if expr is not None else F.lit(None).cast("string")


# ------------------------------------------------------------------------------------------------
# The stage: silver tables in, gold tables out


def build_features(cfg, spark, dates: Sequence[date] | None = None, refit_spec: bool = False,
                   lakehouse=None, log: Callable[[str], None] | None = print) -> dict:
    """Build gold for `dates` (every date of the primary silver table when None); return counts.

    - `gold.flight_features`: the dates' partitions are overwritten. Silver is read from
      HISTORY_DAYS before the first date to the last one, so the history features are complete
      and no later day is read.
    - `gold.feature_spec` is refitted when `refit_spec`, when it does not exist, or when it no
      longer matches: the training window in the config, the model columns or their missing-value
      policies, or the number of labelled rows in the training window changed (the window is still
      filling, or a training day was rebuilt). Otherwise it is reused as it is.
    - `gold.model_input`: the splits holding `dates` (every split after a refit) are rewritten
      from `gold.flight_features`, so each split stays a few large files and a re-run changes no count.

        >>> build_features(cfg, spark, dates=[date(2013, 12, 31)])["model_input"]["test"]
    """
    from pipelines.lakehouse import Lakehouse

    say = log or (lambda _: None)
    started = time.time()
    lh = lakehouse or Lakehouse.from_config(cfg, spark)
    module = feature_module(cfg.pipeline.dataset)
    columns = model_columns(cfg, module)
    splits = {name: cfg.split(name) for name in cfg.pipeline.splits}
    if "train" not in splits:
        raise FeaturesError("pipeline.splits has no 'train' window to fit the feature spec on")

    for source in module.SOURCES.values():
        if not lh.table(source).exists():
            raise FeaturesError(f"{source} does not exist yet: run `lakehouse-dl clean` first")
    primary_name = module.SOURCES[module.DATED_SOURCES[0]]
    # The dates silver holds, from the Delta log's partition values: no data is read.
    available = sorted(date.fromisoformat(d) for d, n in rows_by_partition(lh.table(primary_name), "date").items() if n)
    wanted = sorted(set(dates)) if dates is not None else available
    present = set(available)
    days = [d for d in wanted if d in present]
    absent = [d for d in wanted if d not in present]
    if absent:
        say(f"[features] {len(absent)} date(s) have no rows in {primary_name}, skipped: {_dates_text(absent)}")
    summary: dict = {"dates": len(days), "skipped_dates": [d.isoformat() for d in absent]}
    if not days:
        summary.update(flight_features=0, unlabelled=0, spec="unchanged", model_input={},
                       seconds=time.time() - started)
        return summary

    rows, unlabelled = _write_flight_features(lh, module, days)
    summary.update(flight_features=rows, unlabelled=unlabelled)
    say(f"[features] {FEATURES_TABLE}: {rows:,} rows for {_dates_text(days)} ({unlabelled:,} without "
        f"{module.TARGET}, left out of {MODEL_INPUT_TABLE}) in {time.time() - started:.1f}s")

    spec_started = time.time()
    labelled = _labelled(lh, module)
    reason = "asked to refit" if refit_spec else _refit_reason(lh.table(SPEC_TABLE), labelled, splits["train"], columns)
    if reason:
        spec = fit_feature_spec(labelled, splits["train"], columns)
        lh.table(SPEC_TABLE).write(spec, mode="overwrite", schema_mode="overwrite",
                                   description=f"feature spec fitted on {_window_text(splits['train'])}: {reason}")
    spec_df = lh.table(SPEC_TABLE).read()
    spec_list = spec_rows(spec_df)
    summary.update(spec="fitted" if reason else "reused", spec_columns=len(spec_list))
    fitted_on = f"{spec_list[0]['train_rows']:,} training rows of {_window_text(splits['train'])}"
    say(f"[features] {SPEC_TABLE}: {len(spec_list)} model columns "
        + (f"fitted on {fitted_on} ({reason})" if reason else f"reused (fitted on {fitted_on})")
        + f" in {time.time() - spec_started:.1f}s")

    model_started = time.time()
    outside = [d for d in days if not any(start <= d <= end for start, end in splits.values())]
    if outside:
        say(f"[features] {len(outside)} date(s) lie in no split of pipeline.splits, so not in "
            f"{MODEL_INPUT_TABLE}: {_dates_text(outside)}")
    # After a refit every split was encoded with the old spec, so all of them are rewritten.
    touched = list(splits) if reason else [
        name for name, (start, end) in splits.items() if any(start <= d <= end for d in days)]
    by_split = _write_model_input(lh, module, labelled, spec_df, {n: splits[n] for n in touched},
                                  replace_all=bool(reason), row_group_rows=cfg.lakehouse.model_input_row_group_rows)
    summary["model_input"] = by_split
    summary["seconds"] = time.time() - started
    split_text = " / ".join(f"{name} {by_split.get(name, 0):,}" for name in splits)
    say(f"[features] {MODEL_INPUT_TABLE}: {sum(by_split.values()):,} rows ({split_text}), "
        f"rewrote {', '.join(touched) or 'nothing'} in {time.time() - model_started:.1f}s; "
        f"gold total {summary['seconds']:.1f}s")
    return summary


def model_columns(cfg, module) -> list[ModelColumn]:
    """The features module's model columns with the missing-value policies of the dataset's YAML."""
    from pipelines.datasets import dataset_for

    return with_declared_policies(module.MODEL_COLUMNS, dataset_for(cfg))


def _write_flight_features(lh, module, days: list[date]) -> tuple[int, int]:
    """Compute the features of `days` from silver, overwrite their partitions; (rows, unlabelled)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    # History windows look back HISTORY_DAYS before the first date; later days are never read.
    first = days[0] - timedelta(days=module.HISTORY_DAYS)
    sources = {}
    for name, table in module.SOURCES.items():
        df = lh.table(table).read()
        if name in module.DATED_SOURCES:
            df = df.filter(F.col("date").between(F.lit(first), F.lit(days[-1])))
        sources[name] = df
    # The table layer checks the rows before writing them: computed once, not twice.
    features = module.build(sources, days).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        lh.table(FEATURES_TABLE).write(features, mode="overwrite", partition_by=["date"],
                                       partitions={"date": days}, description=f"features for {_dates_text(days)}")
        counts = features.agg(F.count(F.lit(1)).alias("rows"),
                              F.sum(F.col(module.TARGET).isNull().cast("long")).alias("unlabelled")).first()
    finally:
        features.unpersist()
    return int(counts["rows"]), int(counts["unlabelled"] or 0)


def _labelled(lh, module):
    """Every row of gold.flight_features that has the target: what the spec and the model see."""
    from pyspark.sql import functions as F

    return lh.table(FEATURES_TABLE).read().filter(F.col(module.TARGET).isNotNull())


def _write_model_input(lh, module, labelled, spec_df, splits: dict[str, tuple[date, date]],
                       replace_all: bool, row_group_rows: int) -> dict[str, int]:
    """Rewrite the `splits` of gold.model_input (the whole table when `replace_all`) in row groups of
    `row_group_rows`, the unit Petastorm shards training by; rows per split."""
    from pyspark.sql import functions as F

    table = lh.table(MODEL_INPUT_TABLE)
    if splits:
        windows = F.lit(False)
        for start, end in splits.values():
            windows = windows | F.col("date").between(F.lit(start), F.lit(end))
        rows = labelled.filter(windows).withColumn("split", split_column(splits))
        rows = apply_feature_spec(rows, spec_df, key=module.KEY, target=module.TARGET, keep=["split"])
        description = f"model input for {', '.join(splits)}"
        if replace_all:
            # A new spec may bring other columns: the whole table is replaced, schema included.
            table.write(rows, mode="overwrite", partition_by=["split"], schema_mode="overwrite",
                        description=description, row_group_rows=row_group_rows)
        else:
            table.write(rows, mode="overwrite", partition_by=["split"], partitions={"split": list(splits)},
                        description=description, row_group_rows=row_group_rows)
    return rows_by_partition(table, "split") if table.exists() else {}


def _refit_reason(spec_table, labelled, train_window, columns) -> str | None:
    """Why the stored spec no longer holds, or None when it does."""
    from pyspark.sql import functions as F

    if not spec_table.exists():
        return "no spec yet"
    stored = spec_rows(spec_table.read())
    if not stored:
        return "the stored spec is empty"
    start, end = train_window
    if (stored[0]["train_start"], stored[0]["train_end"]) != (start, end):
        return (f"training window changed from {_window_text((stored[0]['train_start'], stored[0]['train_end']))} "
                f"to {_window_text(train_window)}")
    if _declared(columns) != {(r.get("source"), r.get("transform"), r.get("fill_with")) for r in stored}:
        return "the model columns or their missing-value policies changed"
    # A spec fitted while the training window was still filling would otherwise stay frozen.
    rows = labelled.filter(F.col("date").between(F.lit(start), F.lit(end))).count()
    if rows != stored[0]["train_rows"]:
        return f"training rows changed from {stored[0]['train_rows']:,} to {rows:,}"
    return None


def _declared(columns: Sequence[ModelColumn]) -> set[tuple]:
    declared = set()
    for c in columns:
        if c.kind == "categorical":
            declared.add((c.source, "vocabulary", None))
        else:
            declared.add((c.source, "standardize", c.fill))
            if c.flag:
                declared.add((c.source, "missing_flag", None))
    return declared


def rows_by_partition(table, column: str) -> dict[str, int]:
    """Rows per value of a partition column, from the Delta log's statistics (no data is read)."""
    import pyarrow as pa

    actions = pa.table(table.delta().get_add_actions(flatten=True))
    counts: dict[str, int] = {}
    if actions.num_rows == 0:
        return counts
    for value, rows in zip(actions.column(f"partition.{column}").to_pylist(), actions.column("num_records").to_pylist()):
        counts[str(value)] = counts.get(str(value), 0) + int(rows or 0)
    return counts


def _dates_text(days: Sequence[date]) -> str:
    if not days:
        return "none"
    if len(days) == 1:
        return days[0].isoformat()
    return f"{days[0].isoformat()}..{days[-1].isoformat()} ({len(days)} days)"


def _window_text(window: tuple[date, date]) -> str:
    return f"{window[0].isoformat()}..{window[1].isoformat()}"
