"""A daily feed whose columns change over time: a column added on a date (`since`), one dropped
after a date (`until`), one renamed on a date (`rename_from` + `renamed_on`). Each file is read by
the schema of its own date; bronze and silver hold the union, gold fills by the `missing:` policy.

The weather station's feed below changes twice:
  until 2024-03-02  station, hour, temp, pressure
  2024-03-03        station, hour, temp, humidity, pressure     (humidity since 03-03)
  from 2024-03-04   station, hour, celsius, humidity            (pressure until 03-03; temp renamed celsius)
"""
from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import yaml
from log_lines import log_lines

from pipelines.config import ConfigError
from pipelines.datasets import load_dataset

D = {d: date(2024, 3, d) for d in range(1, 7)}
READINGS = {
    "path": "readings/{yyyy}/{mm}/{dd}.csv",
    "format": "csv",
    "known": {"at": "day_of", "time": "00:00"},
    "columns": {
        "station": "string",
        "hour": "int",
        "celsius": {"type": "double", "rename_from": "temp", "renamed_on": "2024-03-04"},
        "humidity": {"type": "double", "since": "2024-03-03"},
        "pressure": {"type": "double", "until": "2024-03-03"},
    },
    "primary_key": ["date", "station", "hour"],
    "id_column": "reading_id",
    "rules": [{"name": "key_not_null", "check": "not_null", "columns": ["station", "hour"], "blocking": True}],
    "missing": {"humidity": {"fill": "mean", "flag": True}, "pressure": "flag"},
}
STATION = {
    "name": "station",
    "sources": {"readings": READINGS},
    "prediction": {"source": "readings", "time": {"at": "day_before", "time": "23:00"},
                   "target": "celsius", "label": "celsius > 10"},
    "features": {"columns": {"station": "categorical", "humidity": "numeric", "pressure": "numeric"}},
}
# What the station delivered: two files refused (a column before its date, the old name after the rename).
FILES = {
    1: ["station,hour,temp,pressure", "A,1,8.5,1012", "B,1,9.5,1010"],
    2: ["station,hour,temp,humidity,pressure", "A,1,7.0,80,1011"],
    3: ["station,hour,temp,humidity,pressure", "A,1,11.0,70,1013", "B,1,12.0,60,1009"],
    4: ["station,hour,celsius,humidity", "A,1,13.5,50", "B,1,14.5,40"],
    5: ["station,hour,temp,humidity", "A,1,15.0,30"],
    6: ["hour,station,humidity,celsius", "1,A,20,16.0"],       # another order: read by name
}


def declare(tmp_path: Path, **readings) -> Path:
    data = yaml.safe_load(yaml.safe_dump(STATION, sort_keys=False))
    data["sources"]["readings"].update(readings)
    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def deliver(landing: Path) -> None:
    for day, lines in FILES.items():
        path = landing / "readings" / "2024" / "03" / f"{day:02d}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")


def by_day(rows) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in sorted((r.asDict() for r in rows), key=lambda r: (r["date"], r["station"])):
        out.setdefault(r["date"].day, []).append(r)
    return out


@pytest.fixture(scope="module")
def station(spark, tmp_path_factory):
    """The station's six days ingested and cleaned once: (lakehouse, dataset, cfg, ingest result, log)."""
    from pipelines.config import load_config
    from pipelines.stages.bronze import ingest
    from pipelines.stages.silver import clean
    from pipelines.storage import Lakehouse

    tmp = tmp_path_factory.mktemp("station")
    cfg = load_config("local", [f"lakehouse.root={tmp / 'lakehouse'}", "spark.master=local[2]"])
    dataset = load_dataset(declare(tmp))
    deliver(Path(cfg.lakehouse.landing))
    with log_lines() as messages:
        [result] = ingest(cfg, spark, dataset=dataset)
        clean(cfg, spark, dataset=dataset)
    return Lakehouse.from_config(cfg, spark), dataset, cfg, result, messages


# ------------------------------------------------------------------------------------------------
# The declaration


def test_each_date_has_its_own_schema_and_a_file_is_read_by_its_dates(tmp_path):
    readings = load_dataset(declare(tmp_path)).source("readings")
    assert [s.label for s in readings.schemas()] == ["until 2024-03-02", "2024-03-03", "from 2024-03-04"]
    assert readings.on(D[1]).file_column_names == ["station", "hour", "temp", "pressure"]
    assert readings.on(D[3]).file_column_names == ["station", "hour", "temp", "humidity", "pressure"]
    assert readings.on(D[6]).file_column_names == ["station", "hour", "celsius", "humidity"]
    assert readings.on(D[6]).column_names == ["station", "hour", "celsius", "humidity"]
    assert readings.schemas()[0].differences(readings.columns) == ["temp as celsius", "without humidity"]
    # The tables hold the union, under the declared names.
    assert readings.column_names == ["station", "hour", "celsius", "humidity", "pressure"]


@pytest.mark.parametrize("column, spec, key, words", [
    ("humidity", {"type": "double", "since": "2024-03-05", "until": "2024-03-02"}, "humidity.since",
     "is 2024-03-05, after until 2024-03-02"),
    ("celsius", {"type": "double", "rename_from": "station", "renamed_on": "2024-03-04"}, "celsius.rename_from",
     "names 'station', which the files already carry as column station"),
    ("celsius", {"type": "double", "rename_from": "temp"}, "celsius.renamed_on", "is required with rename_from"),
    ("celsius", {"type": "double", "renamed_on": "2024-03-04"}, "celsius.rename_from", "is required with renamed_on"),
    ("celsius", {"type": "double", "rename_from": "temp", "renamed_on": "2024-03-04", "since": "2024-03-05"},
     "celsius.renamed_on", "outside the column's own dates"),
    ("celsius", {"type": "double", "rename_from": "9temp", "renamed_on": "2024-03-04"}, "celsius.rename_from",
     "must be a column name"),
    ("humidity", {"type": "double", "since": "March"}, "humidity.since", "must be a date YYYY-MM-DD"),
    ("station", {"type": "string", "since": "2024-03-02"}, "station.since", "a column of the primary key"),
])
def test_a_schema_change_that_cannot_hold_is_refused_naming_the_key(tmp_path, column, spec, key, words):
    columns = {**READINGS["columns"], column: spec}
    with pytest.raises(ConfigError) as err:
        load_dataset(declare(tmp_path, columns=columns))
    assert f"key 'sources.readings.columns.{key}'" in str(err.value) and words in str(err.value), str(err.value)


def test_dates_on_a_reference_table_and_a_blocking_not_null_on_a_dated_column_are_refused(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(STATION, sort_keys=False))
    data["sources"]["stations"] = {"path": "stations.csv", "format": "csv", "primary_key": ["station"],
                                   "columns": {"station": "string", "opened": {"type": "date", "since": "2024-01-01"}}}
    (tmp_path / "ref.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError, match=r"columns.opened.since' applies to a daily feed's columns"):
        load_dataset(tmp_path / "ref.yaml")
    rules = [{"name": "humid", "check": "not_null", "columns": ["humidity"], "blocking": True}]
    with pytest.raises(ConfigError, match=r"rules\[0\]' humid is a blocking not_null rule on humidity, which files "
                                          r"dated outside 2024-03-03..the last lack"):
        load_dataset(declare(tmp_path, rules=rules))


def test_a_seeded_day_carries_the_columns_and_names_of_its_date(tmp_path):
    from pipelines.stages.landing import as_delivered_on

    readings = load_dataset(declare(tmp_path)).source("readings")
    package = b"station,hour,celsius,humidity,pressure\nA,1,8.5,NA,1012\n"
    assert as_delivered_on(package, readings, D[1]) == b"station,hour,temp,pressure\nA,1,8.5,1012\n"
    assert as_delivered_on(package, readings, D[5]) == b"station,hour,celsius,humidity\nA,1,8.5,NA\n"


# ------------------------------------------------------------------------------------------------
# Ingest, silver and gold (Spark, Delta)


def test_a_column_added_on_a_date_is_null_in_older_files_and_valued_in_newer_ones(station):
    lh, _, _, _, _ = station
    bronze = by_day(lh.table("bronze.readings").read().collect())
    assert [r["humidity"] for r in bronze[1]] == [None, None]
    assert [r["humidity"] for r in bronze[3]] == [70.0, 60.0]
    assert [r["humidity"] for r in bronze[4] + bronze[6]] == [50.0, 40.0, 20.0]


def test_a_column_dropped_after_a_date_is_null_in_newer_files_and_flagged_in_silver(station):
    lh, _, _, _, _ = station
    silver = by_day(lh.table("silver.readings").read().collect())
    assert [r["pressure"] for r in silver[1] + silver[3]] == [1012.0, 1010.0, 1013.0, 1009.0]
    assert [(r["pressure"], r["pressure_missing"]) for r in silver[4] + silver[6]] == [(None, True)] * 3
    assert not any(r["pressure_missing"] for r in silver[1] + silver[3])


def test_a_renamed_column_is_one_column_in_bronze_and_silver(station):
    lh, _, _, _, _ = station
    for table in ("bronze.readings", "silver.readings"):
        df = lh.table(table).read()
        assert "celsius" in df.columns and "temp" not in df.columns
        rows = by_day(df.collect())
        assert {d: [r["celsius"] for r in rows[d]] for d in rows} == {1: [8.5, 9.5], 3: [11.0, 12.0],
                                                                    4: [13.5, 14.5], 6: [16.0]}


def test_a_header_that_matches_no_schema_of_its_date_is_refused_by_name(station):
    lh, _, _, result, messages = station
    assert result.refused_files == ["readings/2024/03/02.csv", "readings/2024/03/05.csv"]
    assert result.rows == 7 and result.rejected == 2
    reasons = {r["_source_file"]: r["reason"] for r in lh.table("bronze.readings_rejected").read().collect()}
    assert reasons == {
        "readings/2024/03/02.csv": "header does not match the declared columns of files dated until 2024-03-02: "
                                   "extra column humidity",
        "readings/2024/03/05.csv": "header does not match the declared columns of files dated from 2024-03-04: "
                                   "extra column temp; missing column celsius"}
    assert any(m.startswith("[ingest] bronze.readings: readings/2024/03/05.csv: header does not match") for m in messages)


def test_gold_fills_a_column_missing_for_part_of_the_training_window_by_its_policy(station):
    from pipelines.datasets.features import features_for
    from pipelines.stages.gold.spec import apply_feature_spec, fit_feature_spec, spec_rows

    lh, dataset, _, _, _ = station
    features = features_for(dataset)
    built = features.build({"readings": lh.table("silver.readings").read()}, None, dataset)
    spec = fit_feature_spec(built, (D[1], D[6]), features.model_columns)
    humidity = next(r for r in spec_rows(spec) if r["name"] == "num_humidity")
    assert (humidity["fill_with"], humidity["fill"]) == ("mean", pytest.approx(48.0))   # of 70, 60, 50, 40, 20
    rows = by_day(apply_feature_spec(built, spec, key=dataset.key, keep=["date", "station"]).collect())
    assert [r["num_humidity_missing"] for r in rows[1]] == [1.0, 1.0]
    assert [r["num_humidity"] for r in rows[1]] == [0.0, 0.0]      # the training mean, standardised
    assert [r["num_humidity_missing"] for r in rows[3]] == [0.0, 0.0]


def test_dataset_check_names_the_schema_each_file_matched(station, spark):
    from pipelines.stages.check import check_dataset, render_check

    _, dataset, cfg, _, _ = station
    report = check_dataset(cfg, spark, dataset)
    [readings] = report["sources"]
    assert [(s["schema"], s["files"]) for s in readings["schemas"]] == [
        ("until 2024-03-02", ["readings/2024/03/01.csv"]),
        ("2024-03-03", ["readings/2024/03/03.csv"]),
        ("from 2024-03-04", ["readings/2024/03/04.csv", "readings/2024/03/06.csv"])]
    assert readings["schemas"][2]["columns"] == ["station", "hour", "celsius", "humidity"]
    assert not report["ok"] and report["problems"] == [
        "readings: readings/2024/03/02.csv is refused whole: header does not match the declared columns of files "
        "dated until 2024-03-02: extra column humidity",
        "readings: readings/2024/03/05.csv is refused whole: header does not match the declared columns of files "
        "dated from 2024-03-04: extra column temp; missing column celsius"]
    text = render_check(report)
    assert ("  schemas      until 2024-03-02 (temp as celsius; without humidity): matched by 1 file: "
            "readings/2024/03/01.csv") in text, text
    assert "               2024-03-03 (temp as celsius): matched by 1 file: readings/2024/03/03.csv" in text, text
    assert ("               from 2024-03-04 (without pressure): matched by 2 files: "
            "readings/2024/03/04.csv..readings/2024/03/06.csv") in text, text
