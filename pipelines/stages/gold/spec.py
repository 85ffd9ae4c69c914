"""The feature spec: how every model column is encoded, fitted on the training window only and
applied to every row (training, validation, test, scoring). Pure transforms: DataFrames in,
DataFrames out; `pipelines.stages.gold.build` does the reading and writing.

    >>> spec = fit_feature_spec(features, (date(2013, 1, 1), date(2013, 9, 30)), columns)
    >>> rows = apply_feature_spec(features, spec)
"""
from __future__ import annotations

from datetime import date
from typing import Sequence

from pipelines import catalog
from pipelines.datasets.features import ModelColumn

# The outcome columns of gold.features and gold.model_input, whatever the dataset: the binary
# label (the classification head's) and the numeric target (the regression head's), both null
# until the outcome is known (the dataset's `prediction.label` and `prediction.target`).
LABEL, TARGET = "label", "target"

SPEC_SCHEMA = (
    "position int, name string, kind string, transform string, source string, vocabulary array<string>, "
    "vocab_size int, mean double, std double, fill_with string, fill double, "
    "train_start date, train_end date, train_rows long, fitted_on string"
)


class FeaturesError(RuntimeError):
    """The gold stage cannot run as asked; the message says what to run first."""


def fit_feature_spec(features_df, train_window: tuple[date, date], columns: Sequence[ModelColumn],
                     fitted_on: str | None = None):
    """One row per model column, fitted on the rows of `features_df` dated inside `train_window`.

    Numeric columns get the window's mean and standard deviation and the value that fills their
    nulls (`fill_with` mean, median, mode or zero, `fill` its value), transform `standardize`;
    a column with `flag` also gets a `<name>_missing` row (`missing_flag`). Categorical columns
    get the sorted vocabulary of the values seen in the window (`vocabulary`): the i-th value is
    index i+1, anything else 0, so `vocab_size` = len(vocabulary) + 1 (an embedding's input_dim).
    Sequence columns get one mean and standard deviation over every daily value of the window's
    arrays (the days of a sequence share one scale), transform `standardize_sequence`, and their
    length in `vocab_size`.

        >>> spec = fit_feature_spec(features, (date(2013, 1, 1), date(2013, 9, 30)), features.model_columns)
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
        elif col.kind == "sequence":
            values = F.filter(F.col(col.source), lambda v: v.isNotNull())
            total = lambda f: F.aggregate(values, F.lit(0.0), lambda acc, v: acc + f(v))  # noqa: E731
            aggregates += [F.sum(F.size(values)).alias(f"_n{i}"), F.sum(total(lambda v: v)).alias(f"_s{i}"),
                           F.sum(total(lambda v: v * v)).alias(f"_ss{i}")]
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
        elif col.kind == "sequence":
            n = stats[f"_n{i}"] or 0
            mean = stats[f"_s{i}"] / n if n else 0.0
            variance = stats[f"_ss{i}"] / n - mean * mean if n else 0.0
            std = variance ** 0.5 if variance > 1e-18 * max(1.0, mean * mean) else 1.0
            rows.append((f"seq_{col.source}", "sequence", "standardize_sequence", col.source, [], col.length,
                         mean, std, None, mean))
        else:
            vocabulary = sorted(stats[f"_vocab{i}"])
            rows.append((f"cat_{col.source}", "categorical", "vocabulary", col.source, vocabulary,
                         len(vocabulary) + 1, None, None, None, None))
    # Numeric columns first, then categorical, then sequences, each in declaration order: the model input's order.
    rows.sort(key=lambda r: ("numeric", "categorical", "sequence").index(r[1]))
    spark = features_df.sparkSession
    return spark.createDataFrame(
        [(pos, *row, start, end, train_rows, fitted_on) for pos, row in enumerate(rows)], SPEC_SCHEMA).coalesce(1)


def _mode(train, column: str) -> float | None:
    """The most frequent non-null value; the smallest one among equally frequent values."""
    from pyspark.sql import functions as F

    top = (train.filter(F.col(column).isNotNull()).groupBy(column).count()
           .orderBy(F.desc("count"), F.asc(column)).first())
    return float(top[column]) if top is not None else None


def spec_rows(spec_df) -> list[dict]:
    """The spec as a list of dicts in column order (what `apply_feature_spec` and the model use)."""
    return sorted((r.asDict() for r in spec_df.collect()), key=lambda r: r.get("position") or 0)


def apply_feature_spec(features_df, spec_df, key: str, keep: Sequence[str] = ()):
    """Fixed-width model rows: `key` int64, `day` int32 (yyyymmdd), the spec's columns, `label`, `target`.

    num_* columns are float32 `(value - mean) / std`, a null taking the spec's `fill` value;
    *_missing flags are 1.0 where the source is null; cat_* columns are int32 indices into the vocabulary, 0 for a value never
    seen in the training window or null; seq_* columns are array<float> of the spec's length, each
    day standardised like a numeric column, a null day (or array) as the mean, so 0. `label` and `target` are float32, null where unknown
    (scoring rows); `gold.model_input` keeps only rows that have them. Columns named in `keep`
    follow unchanged (the split a row belongs to, say).

        >>> model_rows = apply_feature_spec(lh.table("gold.features").read(), lh.table("gold.feature_spec").read(),
        ...                                 key=dataset.key)
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
        elif spec["transform"] == "standardize_sequence":
            mean, std = F.lit(spec["mean"]), F.lit(spec["std"])
            days = F.coalesce(source, F.array_repeat(F.lit(None).cast("double"), spec["vocab_size"]))
            value = F.transform(days, lambda v: ((F.coalesce(v.cast("double"), mean) - mean) / std).cast("float"))
        else:
            raise FeaturesError(f"{catalog.FEATURE_SPEC} row {spec['name']}: unknown transform {spec['transform']!r}")
        columns.append(value.alias(spec["name"]))
    columns += [F.col(LABEL).cast("float").alias(LABEL), F.col(TARGET).cast("float").alias(TARGET), *keep]
    return features_df.select(*columns)


def split_column(splits: dict[str, tuple[date, date]]):
    """A Column naming the split whose window holds `date`; null for a date in none of them."""
    from pyspark.sql import functions as F

    expr = None
    for name, (start, end) in splits.items():
        cond = F.col("date").between(F.lit(start), F.lit(end))
        expr = F.when(cond, F.lit(name)) if expr is None else expr.when(cond, F.lit(name))
    return expr if expr is not None else F.lit(None).cast("string")
