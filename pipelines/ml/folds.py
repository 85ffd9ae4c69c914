"""The backtest's folds: rolling-origin windows over the train + validation splits. Fold k trains on
every day before its validation month and validates on that month, for the last `backtest.folds`
months with rows; its network stops early on the month before (`stopping`), which it does not fit
on. With `backtest.min_fold_rows`, a fold's "month" is as many whole months with rows as hold that
many rows (a league's month of about 30 matches measures a model on noise).

    >>> for f in folds((date(2013, 1, 1), date(2013, 9, 30)), (date(2013, 10, 1), date(2013, 11, 30)), 2):
    ...     print(f.name, "train", *f.train, "validate", *f.validation, "| network fits", *f.fit, "stops on", *f.stopping)
    fold_1 train 2013-01-01 2013-09-30 validate 2013-10-01 2013-10-31 | network fits 2013-01-01 2013-08-31 stops on 2013-09-01 2013-09-30
    fold_2 train 2013-01-01 2013-10-31 validate 2013-11-01 2013-11-30 | network fits 2013-01-01 2013-09-30 stops on 2013-10-01 2013-10-31
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, timedelta


@dataclass(frozen=True)
class Fold:
    """Train on `train` (inclusive dates), validate on `validation`, the month after it."""

    name: str
    train: tuple[date, date]
    validation: tuple[date, date]
    # The network's early-stopping month: the last month with rows of `train`, when another one
    # precedes it (the network fits on `fit`, the days before it); None: it fits on all of `train`
    # and keeps its best epoch by training AUC.
    stopping: tuple[date, date] | None = None

    @property
    def fit(self) -> tuple[date, date]:
        """The days the network of this fold trains on: `train` without its `stopping` month."""
        return (self.train[0], self.stopping[0] - timedelta(days=1)) if self.stopping else self.train

    def days(self, window: str) -> tuple[int, int]:
        """The window as inclusive yyyymmdd ints, as gold.model_input's `day` column holds them."""
        start, end = getattr(self, window)
        return int(f"{start:%Y%m%d}"), int(f"{end:%Y%m%d}")


def folds(train_window: tuple[date, date], validation_window: tuple[date, date], count: int,
          months_with_rows: set[date] | dict[date, int] | None = None, min_rows: int = 0) -> list[Fold]:
    """The `count` folds whose validation months are the last calendar months from train_window's
    start to validation_window's end (of those in `months_with_rows`, first days of months, when
    given: a league's summer break is no fold); each trains from that start to the day before.

    With `min_rows`, `months_with_rows` maps each month to its rows, and a fold validates on the
    fewest consecutive months (counted back from the last) that hold at least `min_rows` rows; its
    network stops early on the months before them that hold as many:

        >>> rows = {date(2004, m, 1): 30 for m in range(1, 13)}
        >>> [f.validation for f in folds((date(2004, 1, 1), date(2004, 9, 30)), (date(2004, 10, 1), date(2004, 12, 31)), 2, rows, 80)]
        [(datetime.date(2004, 7, 1), datetime.date(2004, 9, 30)), (datetime.date(2004, 10, 1), datetime.date(2004, 12, 31))]

    Raises ValueError when there are fewer than `count + 1` such blocks of months (a fold would
    train on nothing).
    """
    start, end = train_window[0], validation_window[1]
    months = []
    month = start.replace(day=1)
    while month <= end:
        if months_with_rows is None or month in months_with_rows:
            months.append(month)
        month = (month + timedelta(days=32)).replace(day=1)
    blocks = month_blocks(months, months_with_rows, min_rows)
    if len(blocks) < count + 1:
        unit = f"blocks of months with at least {min_rows} rows" if min_rows else "months with rows"
        raise ValueError(f"backtest.folds={count} needs {count + 1} {unit} from {start} to {end}, there are "
                         f"{len(blocks)}; lower backtest.folds{' or backtest.min_fold_rows' if min_rows else ''} "
                         f"or widen the windows")

    def span(block: list[date]) -> tuple[date, date]:
        return max(block[0], start), min((block[-1] + timedelta(days=32)).replace(day=1) - timedelta(days=1), end)

    out = []
    for i in range(len(blocks) - count, len(blocks)):
        first, last = span(blocks[i])
        # A block to stop on needs another one before it to fit on.
        stopping = span(blocks[i - 1]) if i >= 2 else None
        out.append(Fold(f"fold_{i - len(blocks) + count + 1}", (start, first - timedelta(days=1)), (first, last), stopping))
    return out


def month_blocks(months: list[date], rows: set[date] | dict[date, int] | None, min_rows: int) -> list[list[date]]:
    """`months` (ascending) in consecutive blocks, oldest first: one month each without `min_rows`;
    with it, blocks closed from the last month back as soon as they hold `min_rows` rows (`rows`:
    month -> rows), the oldest months that hold fewer left as one block to train on."""
    if not min_rows:
        return [[m] for m in months]
    if not isinstance(rows, dict):
        raise ValueError("backtest.min_fold_rows needs the rows of every month")
    blocks, block, held = [], [], 0
    for month in reversed(months):
        block.insert(0, month)
        held += rows[month]
        if held >= min_rows:
            blocks.insert(0, block)
            block, held = [], 0
    return ([block] if block else []) + blocks


def months_with_rows(rows) -> dict[date, int]:
    """{first day of a month: its rows} for the months `rows` (Spark, with `day` yyyymmdd) have rows in."""
    from pyspark.sql import functions as F

    found = rows.groupBy((F.col("day") / 100).cast("int").alias("m")).count().collect()
    return {date(r["m"] // 100, r["m"] % 100, 1): r["count"] for r in found}


def folds_for(cfg, present: set[date] | dict[date, int] | None = None) -> list[Fold]:
    """The folds of `cfg`: its train and validation splits, `backtest.folds` of them (among the
    months `present`, when given; of `backtest.min_fold_rows` rows each, when set)."""
    return folds(cfg.split("train"), cfg.split("validation"), cfg.backtest.folds, present, cfg.backtest.min_fold_rows)


def fold_rows(rows, fold: Fold, window: str):
    """Model-input rows (Spark) of one window of a fold, by their `day`."""
    from pyspark.sql import functions as F

    first, last = fold.days(window)
    return rows.filter((F.col("day") >= first) & (F.col("day") <= last))


def fold_windows_json(fold_list: list[Fold]) -> str:
    """The folds as JSON, for the registry's metrics field and the trials table."""
    return json.dumps([{"name": f.name, "train": [str(d) for d in f.train],
                        "validation": [str(d) for d in f.validation]} for f in fold_list])
