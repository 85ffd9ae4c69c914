"""Features of a New York flight known at scheduling time: calendar, route, plane, weather, history.

Nothing here reads the flight's own actual times or delays; `arr_delay` is only the target.
"""
from __future__ import annotations

from datetime import date

from pipelines import catalog
from pipelines.datasets.features import categorical, numeric

SOURCES = {name: catalog.silver(name) for name in ("flights", "weather", "planes")}
DATED_SOURCES = ("flights", "weather")
KEY = "flight_id"
TARGET = "arr_delay"
# A flight arriving this many minutes late or more is late (the label).
LATE_MINUTES = 15
HISTORY_WINDOWS = (7, 28)
HISTORY_DAYS = max(HISTORY_WINDOWS)
# The weather observation used is the one at the scheduled hour or, when that hour is missing,
# the latest of the hours before it, up to this many; never one after the scheduled hour.
WEATHER_LOOKBACK_HOURS = 2
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
    categorical("carrier"), categorical("origin"), categorical("dest"), categorical("route"),
    categorical("sched_hour"), categorical("weekday"), categorical("plane_engine"), categorical("plane_type"),
]


def build(sources: dict, dates: list[date] | None = None):
    """The features table from the silver sources (see `flight_features`)."""
    return flight_features(sources["flights"], sources["weather"], sources["planes"], dates=dates)


def flight_features(flights, weather, planes, dates: list[date] | None = None):
    """One row per flight: key, `date`, readable features, `label` and `arr_delay`.

    `flights` must hold the HISTORY_DAYS days before the earliest of `dates` for the history
    features to be complete; only flights on `dates` (all of them when None) are returned.
    """
    from pyspark.sql import functions as F

    flights = flights.withColumn("sched_hour", (F.col("sched_dep_time") / 100).cast("int"))
    scheduled = flights if dates is None else flights.filter(F.col("date").isin(list(dates)))
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
        F.col(TARGET).cast("double").alias(TARGET),
    )
    out = _with_plane(out, planes)
    out = _with_weather(out, weather)
    out = _with_history(out, flights)
    label = F.when(F.col(TARGET).isNull(), F.lit(None)).otherwise((F.col(TARGET) >= LATE_MINUTES).cast("double"))
    return out.withColumn("label", label).drop("_year").select(*_ordered(out.columns))


def _ordered(columns: list[str]) -> list[str]:
    first = ["flight_id", "date", "time_hour", "carrier", "flight", "tailnum", "origin", "dest", "route"]
    last = ["label", TARGET]
    return first + [c for c in columns if c not in first + last + ["_year"]] + last


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


def _with_weather(out, weather):
    from pyspark.sql import functions as F

    # time_hour is UTC and unique per origin and hour, where the local hour repeats at the autumn
    # clock change; joining on it puts each flight with the weather of its real scheduled hour.
    observed = weather.select("origin", F.col("time_hour").alias("observed_hour"),
                              *[F.col(c).cast("double").alias(c) for c in WEATHER]).dropDuplicates(["origin", "observed_hour"])
    hours = out.select("origin", "time_hour").distinct()
    candidates = hours.withColumn("lag", F.explode(F.sequence(F.lit(0), F.lit(WEATHER_LOOKBACK_HOURS)))) \
        .withColumn("observed_hour", F.col("time_hour") - F.make_interval(hours=F.col("lag")))
    nearest = (candidates.join(observed, ["origin", "observed_hour"])
               .groupBy("origin", "time_hour")
               .agg(F.min_by(F.struct(*WEATHER), F.col("lag")).alias("w"))
               .select("origin", "time_hour", F.lit(1.0).alias("weather_known"), *[F.col(f"w.{c}").alias(c) for c in WEATHER]))
    joined = out.join(nearest, ["origin", "time_hour"], "left")
    return joined.withColumn("weather_known", F.coalesce("weather_known", F.lit(0.0)))


def _with_history(out, flights):
    """Late-arrival rate and mean arrival delay per group over the days before the flight's date.

    Daily aggregates per group first, then range windows over the day number that end the day
    before: the flight's own day, the flight itself included, never contributes.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    flights = flights.withColumn("_day", F.unix_date("date"))
    arrived = F.col(TARGET).isNotNull()
    for group, keys in HISTORY_GROUPS.items():
        daily = flights.groupBy(*keys, "_day").agg(
            F.sum(arrived.cast("long")).alias("_arrived"),
            F.sum((arrived & (F.col(TARGET) >= LATE_MINUTES)).cast("long")).alias("_late"),
            F.sum(F.col(TARGET)).alias("_delay"))
        features = []
        for days in HISTORY_WINDOWS:
            window = Window.partitionBy(*keys).orderBy("_day").rangeBetween(-days, -1)
            n = F.sum("_arrived").over(window)
            # A window with no arrived flight gives null (nothing known), not a rate of 0.
            features.append((F.sum("_late").over(window) / F.when(n > 0, n)).alias(f"{group}_late_rate_{days}d"))
            features.append((F.sum("_delay").over(window) / F.when(n > 0, n)).alias(f"{group}_mean_delay_{days}d"))
        history = daily.select(*keys, F.date_from_unix_date("_day").alias("date"), *features)
        out = out.join(history, [*keys, "date"], "left")

    previous_day = Window.partitionBy("origin").orderBy("_day").rangeBetween(-1, -1)
    traffic = (flights.groupBy("origin", "_day").agg(F.count(F.lit(1)).alias("_flights"))
               .select("origin", F.date_from_unix_date("_day").alias("date"),
                       F.coalesce(F.sum("_flights").over(previous_day), F.lit(0)).cast("double")
                       .alias("origin_flights_prev_day")))
    return out.join(traffic, ["origin", "date"], "left")
