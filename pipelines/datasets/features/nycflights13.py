"""What the features of a New York flight need beyond its YAML (`features:` in
conf/base/datasets/nycflights13.yaml declares the rest): features of the day's published schedule.

They count and order other flights of the same day (a plane's legs, an airport's departures in an
hour) or of the day before, which the declared sections cannot: `columns` see one row, `history`
windows end on the last day whose outcomes were known, two days before the flight. The schedule
of a day is published before it (`known: day_before 00:00`), so these read no outcome; the rule
is checked per model column by tests/test_gold.py with `pipelines.datasets.timing.as_known_at`.

    >>> frame = extend(frame, {"flights": silver_flights, ...}, [date(2013, 1, 11)], dataset)
"""
from __future__ import annotations

from datetime import date

from pipelines.datasets.features import numeric

# The day before a flight's date is read (origin_flights_prev_day).
HISTORY_DAYS = 1

MODEL_COLUMNS = [
    # The flight's leg in its plane's day and the minutes since the plane's previous departure
    # (null without a tail number, or for its first), and the departures its airport schedules in
    # the same hour and the day before.
    numeric("plane_leg_of_day", flag=True), numeric("plane_minutes_since_last_departure", flag=True),
    numeric("origin_hour_departures"), numeric("origin_flights_prev_day"),
]


def extend(frame, sources: dict, dates: list[date] | None, dataset):
    """`frame` (the flights of `dates` with their declared features) with the schedule features.

    Later legs and tight rotations inherit the delays of earlier ones; a busy hour queues.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    flights = sources["flights"]
    scheduled = flights if dates is None else flights.filter(F.col("date").isin(list(dates)))
    key = dataset.key
    legs = Window.partitionBy("date", "tailnum").orderBy("sched_dep_time", key)
    minute = (F.col("sched_dep_time") / 100).cast("int") * 60 + F.col("sched_dep_time") % 100
    per_plane = (scheduled.filter(F.col("tailnum").isNotNull())
                 .select(key, F.row_number().over(legs).cast("double").alias("plane_leg_of_day"),
                         (minute - F.lag(minute).over(legs)).cast("double").alias("plane_minutes_since_last_departure")))
    hour = (F.col("sched_dep_time") / 100).cast("int")
    busy = (scheduled.groupBy("date", "origin", hour.alias("_hour"))
            .agg(F.count(F.lit(1)).cast("double").alias("origin_hour_departures")))

    # Scheduled flights of the origin the day before (0 when it had none).
    day = F.unix_date("date")
    previous_day = Window.partitionBy("origin").orderBy("_day").rangeBetween(-1, -1)
    traffic = (flights.groupBy("origin", day.alias("_day")).agg(F.count(F.lit(1)).alias("_flights"))
               .select("origin", F.date_from_unix_date("_day").alias("date"),
                       F.coalesce(F.sum("_flights").over(previous_day), F.lit(0)).cast("double")
                       .alias("origin_flights_prev_day")))
    return (frame.withColumn("_hour", hour)
            .join(per_plane, key, "left")
            .join(busy, ["date", "origin", "_hour"], "left")
            .join(traffic, ["origin", "date"], "left"))
