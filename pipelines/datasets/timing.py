"""When things are known: a row's prediction time, and when each source's values become available.

Every time here is local wall-clock time counted in minutes since 1970-01-01 00:00 (`unix_date *
1440 + minute of day`), so comparing two of them needs no time zone: the dataset's clock is the
one its dates and times are written in. A `TimePoint` is declared relative to a row:

    {at: day_before, time: "23:00"}     23:00 on the day before the row's date (the nightly product)
    {at: day_of, time: "00:00"}         on the row's own date
    {at: day_after, time: "06:00"}      the morning after it (outcomes of the day, say)
    {at: event, offset: "-2h"}          relative to the row's own event time (intraday products)

`as_known_at` applies the rule the features must obey: from silver as it is, it keeps only what
was known at a given time, so a test can build a day's features from that alone and compare.

    >>> prediction = dataset.prediction_time                   # TimePoint(at="day_before", ...)
    >>> df.withColumn("_predicted_at", prediction.minutes(F.col("date"), event_minutes))
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

MINUTES_PER_DAY = 1440
ANCHORS = {"day_before": -1, "day_of": 0, "day_after": 1, "event": None}
TIME_FORMATS = ("hhmm", "hour")
_OFFSET = re.compile(r"^([+-]?)(\d+)(m|h|d)$")


def parse_clock(text: str) -> int:
    """"23:00" → 1380 (minutes after midnight); raises ValueError on anything else."""
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", str(text))
    if not m or int(m[1]) > 23 or int(m[2]) > 59:
        raise ValueError(f"a time of day is written HH:MM (00:00 to 23:59), got {text!r}")
    return int(m[1]) * 60 + int(m[2])


def parse_offset(text: str) -> int:
    """"-2h" → -120, "30m" → 30, "1d" → 1440; raises ValueError on anything else."""
    m = _OFFSET.fullmatch(str(text).strip())
    if not m:
        raise ValueError(f"an offset is a whole number of minutes, hours or days: '-2h', '30m', '1d'; got {text!r}")
    value = int(m[2]) * {"m": 1, "h": 60, "d": MINUTES_PER_DAY}[m[3]]
    return -value if m[1] == "-" else value


@dataclass(frozen=True)
class EventTime:
    """Where a row's local time of day is: `column`, written as `hhmm` (1530) or as an `hour` (15)."""
    column: str
    format: str = "hhmm"

    def minute_of_day(self):
        """A Column: the minutes after midnight of the row's event."""
        from pyspark.sql import functions as F

        value = F.col(self.column).cast("int")
        if self.format == "hour":
            return value * 60
        return (value / 100).cast("int") * 60 + value % 100

    @property
    def last_minute(self) -> int:
        """The latest minute of a day this format can write (23:59, or 23:00 for whole hours)."""
        return 23 * 60 if self.format == "hour" else MINUTES_PER_DAY - 1


@dataclass(frozen=True)
class TimePoint:
    """A time relative to a row: a day (before, of, after the row's date) at a time of day, or the
    row's own event time shifted by `offset` minutes."""
    at: str
    time: int = 0       # minutes after midnight (day anchors)
    offset: int = 0     # minutes added (every anchor)

    def __post_init__(self):
        if self.at not in ANCHORS:
            raise ValueError(f"'at' must be one of {', '.join(ANCHORS)}, got {self.at!r}")

    def minutes(self, date_col, event_minute=None):
        """A Column: this time for each row, in local minutes since 1970 (see the module doc).

        `date_col` is the row's date Column; `event_minute` its event's minute of day (a Column),
        needed when `at` is `event`.
        """
        from pyspark.sql import functions as F

        day = F.unix_date(date_col).cast("long") * MINUTES_PER_DAY
        if self.at == "event":
            if event_minute is None:
                raise ValueError("a time declared at the event needs the row's event time (event_time)")
            return day + event_minute + F.lit(self.offset)
        return day + F.lit(ANCHORS[self.at] * MINUTES_PER_DAY + self.time + self.offset)

    def minutes_on(self, day: date, event_minute: int | None = None) -> int:
        """The same for one date on the driver (the latest event of the day when `at` is `event`)."""
        base = (day - date(1970, 1, 1)).days * MINUTES_PER_DAY
        if self.at == "event":
            return base + (event_minute if event_minute is not None else MINUTES_PER_DAY - 1) + self.offset
        return base + ANCHORS[self.at] * MINUTES_PER_DAY + self.time + self.offset

    def last_day_known(self, cutoff):
        """A Column: the unix day of the latest date whose values (at this time point, day anchors
        only) are known by `cutoff` (a Column of local minutes)."""
        from pyspark.sql import functions as F

        if self.at == "event":
            raise ValueError("last_day_known needs a day anchor (day_before, day_of, day_after)")
        # Known when date * 1440 + shift <= cutoff, so the latest such date is floor((cutoff - shift) / 1440).
        shift = ANCHORS[self.at] * MINUTES_PER_DAY + self.time + self.offset
        return F.floor((cutoff - F.lit(shift)) / F.lit(MINUTES_PER_DAY)).cast("int")

    def describe(self) -> str:
        clock = f"{self.time // 60:02d}:{self.time % 60:02d}"
        if self.at == "event":
            return "at the event" if not self.offset else f"{_offset_text(self.offset)} the event"
        day = {"day_before": "the day before", "day_of": "the day", "day_after": "the day after"}[self.at]
        return f"{day} at {clock}" + (f" {_offset_text(self.offset)}" if self.offset else "")


def _offset_text(minutes: int) -> str:
    size = abs(minutes)
    text = f"{size // 60} h" if size % 60 == 0 else f"{size} min"
    return f"{text} {'before' if minutes < 0 else 'after'}"


def time_point(data, key: str) -> TimePoint:
    """A TimePoint from its YAML mapping ({at, time, offset}); ValueError naming what is wrong."""
    if not isinstance(data, dict) or "at" not in data or set(data) - {"at", "time", "offset"}:
        raise ValueError(f"{key} must be a mapping with 'at' and optionally 'time' and 'offset', got {data!r}")
    at = data["at"]
    if at not in ANCHORS:
        raise ValueError(f"{key}.at must be one of {', '.join(ANCHORS)}, got {at!r}")
    if at == "event" and "time" in data:
        raise ValueError(f"{key}: a time at the event takes an offset, not a time of day")
    return TimePoint(at, parse_clock(data.get("time", "00:00")) if at != "event" else 0,
                     parse_offset(data["offset"]) if "offset" in data else 0)


# --------------------------------------------------------------------------------------------
# The rule, applied to data


def known_minutes(source, date_col=None):
    """A Column: when each row of `source` (a `Source` with `known`) became known; None when the
    source is known all along (a reference table)."""
    from pyspark.sql import functions as F

    if source.known is None:
        return None
    event = source.event_time.minute_of_day() if source.event_time else None
    return source.known.minutes(date_col if date_col is not None else F.col("date"), event)


def as_known_at(dataset, sources: dict, cutoff: int) -> dict:
    """The silver DataFrames `sources` ({source name: DataFrame}) as they were at local minute
    `cutoff`: rows known later are dropped, and columns that an update source delivers later
    (the outcomes of a day) are null where that update was not known yet. Reference tables
    (no `known`) are kept whole.

    The features of a row must come out the same from this as from silver as it is, with the
    cutoff at the row's prediction time: that is the no-leakage rule, checked per column.
    """
    from pyspark.sql import functions as F

    out = {}
    for name, df in sources.items():
        source = dataset.source(name)
        known = known_minutes(source)
        if known is not None:
            df = df.filter(known <= F.lit(cutoff))
        for update in dataset.updaters(name):
            arrived = update.known.minutes(F.col("date")) <= F.lit(cutoff)
            for column in dataset.update_columns(update):
                df = df.withColumn(column, F.when(arrived, F.col(column)))
        out[name] = df
    return out
