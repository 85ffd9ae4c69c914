"""Naive forecasts of the regression target: the bars a regression network must clear besides the
baselines. Each uses only what is known when a row is predicted.

- `training_mean`: the mean target of the train split, for every row.
- `last_known`: the target of the latest day known at the row's prediction time (the dataset's
  outcome delay: a row predicted the evening before its day, whose outcome arrives the morning
  after, knows the target of two days before at the latest).
- the dataset's own (`training.naive_forecasts`): the last known target of the rows of the same
  group dated at least `lag_days` before the row: the same weekday's last known value is
  `{lag_days: 2, group: ["dayofweek(date)"]}`, the value two weeks before `{lag_days: 14, group: []}`.

A row with no such earlier row (the first days of a series) gets the training mean.

    >>> delay = outcome_delay_days(dataset)                             # 2
    >>> forecasts = naive_forecasts(model_input, key, declared, train_mean=6.67, delay=delay)

A backtest measures them on several folds, each with its own training mean: `last_known_values`
once, then `with_training_mean` per fold.
"""
from __future__ import annotations

import math

from pipelines.datasets.timing import ANCHORS, MINUTES_PER_DAY
from pipelines.stages.gold.spec import TARGET

TRAINING_MEAN, LAST_KNOWN = "training_mean", "last_known"
# How a naive forecast is named among the models of results.metrics ("naive_training_mean").
PREFIX = "naive_"


def outcome_delay_days(dataset) -> int:
    """The fewest days N such that the target of the row dated N days before a row is known when
    that row is predicted (at least 1): the outcome is known at the latest `known` time of the
    prediction source and of the sources that update it, the row is predicted at `prediction.time`.
    A time at the event counts at the start of the day for the prediction and at its end for the
    outcome, the latest either can be."""
    source = dataset.source(dataset.prediction_source)
    known = [s.known for s in (source, *dataset.updaters(source.name)) if s.known is not None]
    outcome = max((_shift(k, latest=True) for k in known), default=MINUTES_PER_DAY - 1)
    predicted = _shift(dataset.prediction_time, latest=False)
    return max(1, math.ceil((outcome - predicted) / MINUTES_PER_DAY))


def _shift(point, latest: bool) -> int:
    """Minutes from the start of a row's date to `point` (an event time at the day's last or first minute)."""
    if point.at == "event":
        return (MINUTES_PER_DAY - 1 if latest else 0) + point.offset
    return ANCHORS[point.at] * MINUTES_PER_DAY + point.time + point.offset


def declared_forecasts(naive_cfg: dict, delay: int) -> dict[str, tuple[int, list[str]]]:
    """{name: (lag in days, group expressions)}: `last_known` and the declared ones; ValueError
    naming the key when a declared lag is shorter than the outcome delay (its value would not be
    known when the row is predicted)."""
    out = {LAST_KNOWN: (delay, [])}
    for name, forecast in naive_cfg.items():
        if name in (TRAINING_MEAN, LAST_KNOWN):
            raise ValueError(f"training.naive_forecasts.{name}: {name} is measured always; give the forecast another name")
        if forecast.lag_days < delay:
            raise ValueError(f"training.naive_forecasts.{name}.lag_days is {forecast.lag_days}, but the target of a "
                             f"row is known {delay} day(s) after the day a row is predicted for at the earliest: "
                             f"a lag under {delay} reads a value not known yet. Use lag_days >= {delay}")
        out[name] = (int(forecast.lag_days), list(forecast.group))
    return out


def naive_forecasts(frame, key: str, forecasts: dict[str, tuple[int, list[str]]], train_mean: float):
    """`frame` (gold.model_input rows of every split: `key`, `day` yyyymmdd, the target, the
    columns the groups read) with one column per forecast, named `naive_<name>`, beside `key`,
    `split` (when `frame` has it) and the target; `forecasts` as `declared_forecasts` gives them.

    A forecast is the target of the latest row of its group dated at least `lag` days before the
    row (rows of one day are one step: with several a day, which of them is the latest is
    unspecified); the training mean where there is none.
    """
    return with_training_mean(last_known_values(frame, key, forecasts), forecasts, train_mean)


def last_known_values(frame, key: str, forecasts: dict[str, tuple[int, list[str]]]):
    """`naive_forecasts` without the training mean: a forecast is null where its group has no
    earlier row. The same for every fold of a backtest, so computed (and cached) once."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    df = frame.withColumn("date", F.to_date(F.col("day").cast("string"), "yyyyMMdd"))
    df = df.withColumn("_unix_day", F.unix_date(F.col("date")))
    columns = []
    for name, (lag, group) in forecasts.items():
        window = (Window.partitionBy(*[F.expr(g) for g in group]).orderBy("_unix_day")
                  .rangeBetween(Window.unboundedPreceding, -int(lag)))
        columns.append(F.last(F.col(TARGET).cast("double"), ignorenulls=True).over(window).alias(PREFIX + name))
    keep = [c for c in (key, "split") if c in frame.columns]
    return df.select(*keep, F.col(TARGET).cast("double").alias(TARGET), *columns)


def with_training_mean(known, forecasts: dict[str, tuple[int, list[str]]], train_mean: float):
    """`last_known_values`' rows with the `training_mean` forecast, and `train_mean` where a
    forecast has no earlier row."""
    from pyspark.sql import functions as F

    mean = F.lit(float(train_mean))
    filled = [F.coalesce(F.col(PREFIX + name), mean).alias(PREFIX + name) for name in forecasts]
    kept = [c for c in known.columns if not c.startswith(PREFIX)]
    return known.select(*kept, mean.alias(PREFIX + TRAINING_MEAN), *filled)
