"""Features of a New York flight known at its prediction time: the evening before the flight
(`prediction` in conf/base/datasets/nycflights13.yaml): calendar, route, plane, the weather last
observed before then, and the history of outcomes that had arrived by then.

Nothing here reads the flight's own actual times or delays; `arr_delay` is only the target. The
rule, "a feature uses only what was known at the row's prediction time", is checked per model
column by tests/test_gold.py with `pipelines.datasets.timing.as_known_at`.
"""
from __future__ import annotations

from datetime import date

from pipelines import catalog
from pipelines.datasets.features import categorical, numeric
from pipelines.datasets.timing import known_minutes

SOURCES = {name: catalog.silver(name) for name in ("flights", "weather", "planes")}
DATED_SOURCES = ("flights", "weather")
KEY = "flight_id"
TARGET = "arr_delay"
# The source that delivers TARGET, after the day (silver merges it into silver.flights).
OUTCOMES = "flight_outcomes"
# A flight arriving this many minutes late or more is late (the label).
LATE_MINUTES = 15
HISTORY_WINDOWS = (7, 28)
# The windows end on the last day whose outcomes were known at the prediction time: two days
# before the flight's date for the nightly product (a day's outcomes arrive the morning after it).
HISTORY_DAYS = max(HISTORY_WINDOWS) + 3
# The weather is the last observation known at the prediction time, when it is at most this many
# hours older than it; none (weather_known = 0) otherwise.
WEATHER_LOOKBACK_HOURS = 3
WEATHER = ("temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib")
# Groups whose recent late-arrival rate and mean delay are features: name → key columns.
HISTORY_GROUPS = {"route": ("origin", "dest"), "carrier": ("carrier",), "origin_hour": ("origin", "sched_hour")}


def _history_columns() -> list:
    cols = []
    for group in HISTORY_GROUPS:
        for days in HISTORY_WINDOWS:
            # Null when no flight of the group arrived in the window (a new route, the first days
            # of data); the flag tells the model so, the mean delay is null in the same rows.
            cols.append(numeric(f"{group}_late_rate_{days}d", flag=True))
            cols.append(numeric(f"{group}_mean_delay_{days}d"))
    return cols


# Missing values: the defaults below (fill with the training mean; flag where a column is often
# missing) give way to the policies conf/base/datasets/nycflights13.yaml declares for the silver
# column named in policy_from. plane_known and weather_known say whether the plane and the
# weather hour were found at all.
MODEL_COLUMNS = [
    # month and day_of_year stay in flight_features but are not model inputs: with splits by time,
    # validation and test months never occur in training, and the network extrapolates them
    # badly (validation AUC fell below the logistic regression's). Seasonality reaches the model
    # through the 7- and 28-day history columns instead.
    numeric("sched_minute_of_day"), numeric("distance"),
    numeric("plane_known"), numeric("plane_age", flag=True, policy_from="planes.year"),
    numeric("plane_seats", policy_from="planes.seats"),
    numeric("weather_known"),
    *[numeric(c, flag=c in ("wind_gust", "pressure"), policy_from=f"weather.{c}") for c in WEATHER],
    *_history_columns(),
    numeric("origin_flights_prev_day"),
    # From the day's schedule: the flight's leg in its plane's day and the minutes since the plane's
    # previous departure (null without a tail number, or for its first), and the departures its
    # airport schedules in the same hour.
    numeric("plane_leg_of_day", flag=True), numeric("plane_minutes_since_last_departure", flag=True),
    numeric("origin_hour_departures"),
    categorical("carrier"), categorical("origin"), categorical("dest"), categorical("route"),
    categorical("sched_hour"), categorical("weekday"), categorical("plane_engine"), categorical("plane_type"),
]


def build(sources: dict, dates: list[date] | None, dataset):
    """The features table from the silver sources (see `flight_features`)."""
    return flight_features(sources["flights"], sources["weather"], sources["planes"], dataset, dates=dates)


def flight_features(flights, weather, planes, dataset, dates: list[date] | None = None):
    """One row per flight: key, `date`, readable features, `label` and `arr_delay`.

    Each row is built from what was known at its prediction time (`dataset.prediction_time`).
    `flights` must hold the HISTORY_DAYS days before the earliest of `dates` for the history
    features to be complete; only flights on `dates` (all of them when None) are returned.
    """
    from pyspark.sql import functions as F

    flights = flights.withColumn("sched_hour", (F.col("sched_dep_time") / 100).cast("int"))
    scheduled = flights if dates is None else flights.filter(F.col("date").isin(list(dates)))
    event = dataset.source("flights").event_time.minute_of_day()
    out = scheduled.select(
        "flight_id", "date", "time_hour", "carrier", "flight", "tailnum", "origin", "dest",
        F.concat_ws("-", "origin", "dest").alias("route"),
        "sched_hour",
        (F.col("sched_hour") * 60 + F.col("sched_dep_time") % 100).alias("sched_minute_of_day"),
        F.date_format("date", "E").alias("weekday"),
        F.month("date").alias("month"),
        F.dayofyear("date").alias("day_of_year"),
        F.col("distance").cast("double").alias("distance"),
        F.year("date").alias("_year"),
        dataset.prediction_time.minutes(F.col("date"), event).alias("_predicted_at"),
        F.col(TARGET).cast("double").alias(TARGET),
    )
    out = _with_plane(out, planes)
    out = _with_schedule(out, scheduled)
    out = _with_weather(out, weather, dataset)
    out = _with_history(out, flights, dataset)
    label = F.when(F.col(TARGET).isNull(), F.lit(None)).otherwise((F.col(TARGET) >= LATE_MINUTES).cast("double"))
    return out.withColumn("label", label).select(*_ordered(out.columns))


def _ordered(columns: list[str]) -> list[str]:
    first = ["flight_id", "date", "time_hour", "carrier", "flight", "tailnum", "origin", "dest", "route"]
    last = ["label", TARGET]
    return first + [c for c in columns if c not in first + last and not c.startswith("_")] + last


def _with_plane(out, planes):
    from pyspark.sql import functions as F

    # planes.year is the build year; the age is as of the flight's year.
    attributes = planes.dropDuplicates(["tailnum"]).select(
        "tailnum", F.col("year").alias("_built"), F.col("seats").cast("double").alias("plane_seats"),
        F.col("engine").alias("plane_engine"), F.col("type").alias("plane_type"), F.lit(1.0).alias("plane_known"))
    joined = out.join(attributes, "tailnum", "left")
    return (joined
            .withColumn("plane_known", F.coalesce("plane_known", F.lit(0.0)))
            .withColumn("plane_age", (F.col("_year") - F.col("_built")).cast("double"))
            .drop("_built"))


def _with_schedule(out, scheduled):
    """What the day's published schedule says about each flight: which leg of its plane's day it
    is and how long after the plane's previous departure from New York (later legs and tight
    rotations inherit the delays of earlier ones), and how many departures its airport has
    scheduled in the same hour. All known before the day: they read no outcome."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    legs = Window.partitionBy("date", "tailnum").orderBy("sched_dep_time", "flight_id")
    minute = (F.col("sched_dep_time") / 100).cast("int") * 60 + F.col("sched_dep_time") % 100
    per_plane = (scheduled.filter(F.col("tailnum").isNotNull())
                 .select("flight_id", F.row_number().over(legs).cast("double").alias("plane_leg_of_day"),
                         (minute - F.lag(minute).over(legs)).cast("double").alias("plane_minutes_since_last_departure")))
    busy = (scheduled.groupBy("date", "origin", "sched_hour")
            .agg(F.count(F.lit(1)).cast("double").alias("origin_hour_departures")))
    return out.join(per_plane, "flight_id", "left").join(busy, ["date", "origin", "sched_hour"], "left")


def _with_weather(out, weather, dataset):
    """The last weather observation at the flight's origin known at its prediction time, if it is
    at most WEATHER_LOOKBACK_HOURS older; `weather_known` says whether there was one."""
    from pyspark.sql import functions as F

    # An observation is known at its local hour; the autumn clock change repeats one local hour,
    # and the later (UTC) reading of it wins.
    observed = (weather.withColumn("_known", known_minutes(dataset.source("weather")))
                .groupBy("origin", "_known")
                .agg(F.max_by(F.struct(*[F.col(c).cast("double").alias(c) for c in WEATHER]), F.col("time_hour")).alias("w")))
    moments = out.select("origin", "_predicted_at").distinct()
    hour = (F.floor(F.col("_predicted_at") / 60) * 60).cast("long")
    candidates = (moments.withColumn("lag", F.explode(F.sequence(F.lit(0), F.lit(WEATHER_LOOKBACK_HOURS))))
                  .withColumn("_known", hour - F.col("lag") * 60))
    nearest = (candidates.join(observed, ["origin", "_known"])
               .filter(F.col("_known") <= F.col("_predicted_at"))
               .groupBy("origin", "_predicted_at")
               .agg(F.min_by(F.col("w"), F.col("lag")).alias("w"))
               .select("origin", "_predicted_at", F.lit(1.0).alias("weather_known"),
                       *[F.col(f"w.{c}").alias(c) for c in WEATHER]))
    joined = out.join(nearest, ["origin", "_predicted_at"], "left")
    return joined.withColumn("weather_known", F.coalesce("weather_known", F.lit(0.0)))


def _with_history(out, flights, dataset):
    """Late-arrival rate and mean arrival delay per group over the windows that end on the last
    day whose outcomes were known at the flight's prediction time.

    Daily aggregates per group on every day (zero where the group flew nothing), then range
    windows over the day number; each flight takes the windows ending on its `_through` day. The
    flight's own day, and the day before it, never contribute to the nightly product.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    outcomes = dataset.source(OUTCOMES).known
    out = out.withColumn("_through", outcomes.last_day_known(F.col("_predicted_at")))
    flights = flights.withColumn("_day", F.unix_date("date"))
    days = flights.agg(F.min("_day").alias("a"), F.max("_day").alias("b")) \
        .select(F.explode(F.sequence("a", "b")).alias("_day"))
    arrived = F.col(TARGET).isNotNull()
    for group, keys in HISTORY_GROUPS.items():
        counts = flights.groupBy(*keys, "_day").agg(
            F.sum(arrived.cast("long")).alias("_arrived"),
            F.sum((arrived & (F.col(TARGET) >= LATE_MINUTES)).cast("long")).alias("_late"),
            F.sum(F.col(TARGET)).alias("_delay"))
        daily = (flights.select(*keys).distinct().crossJoin(days)
                 .join(counts, [*keys, "_day"], "left").fillna(0, ["_arrived", "_late", "_delay"]))
        features = []
        for days_back in HISTORY_WINDOWS:
            window = Window.partitionBy(*keys).orderBy("_day").rangeBetween(-(days_back - 1), 0)
            n = F.sum("_arrived").over(window)
            # A window with no arrived flight gives null (nothing known), not a rate of 0.
            features.append((F.sum("_late").over(window) / F.when(n > 0, n)).alias(f"{group}_late_rate_{days_back}d"))
            features.append((F.sum("_delay").over(window) / F.when(n > 0, n)).alias(f"{group}_mean_delay_{days_back}d"))
        history = daily.select(*keys, F.col("_day").alias("_through"), *features)
        out = out.join(history, [*keys, "_through"], "left")

    # Scheduled flights of the origin the day before: the schedule is published ahead.
    previous_day = Window.partitionBy("origin").orderBy("_day").rangeBetween(-1, -1)
    traffic = (flights.groupBy("origin", "_day").agg(F.count(F.lit(1)).alias("_flights"))
               .select("origin", F.date_from_unix_date("_day").alias("date"),
                       F.coalesce(F.sum("_flights").over(previous_day), F.lit(0)).cast("double")
                       .alias("origin_flights_prev_day")))
    return out.join(traffic, ["origin", "date"], "left")
