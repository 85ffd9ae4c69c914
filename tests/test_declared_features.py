"""Declared features (pipelines/datasets/features/declared.py, compiled.py) on small literal rows.

A football dataset, declared in YAML only as the Bundesliga one will be: matches known the day
before, goals delivered by an update source the morning after, a reference table of teams and
bookmakers' odds known at their hour. Predictions are made at noon the day before a match.
"""
from __future__ import annotations

from datetime import date

import pytest
import yaml

from pipelines.config import ConfigError
from pipelines.datasets import load_dataset
from pipelines.datasets.features import features_for

SOURCES = {
    "matches": {
        "path": "matches/{yyyy}/{mm}/{dd}.csv", "format": "csv", "partition_by": "date",
        "known": {"at": "day_before", "time": "00:00"},
        "columns": {"HomeTeam": "string", "AwayTeam": "string", "Round": "int", "Year": "int"},
        "primary_key": ["date", "HomeTeam"], "id_column": "match_id"},
    "results": {
        "path": "results/{yyyy}/{mm}/{dd}.csv", "format": "csv", "partition_by": "date", "updates": "matches",
        "known": {"at": "day_after", "time": "06:00"},
        "columns": {"HomeTeam": "string", "home_goals": "int", "away_goals": "int"},
        "primary_key": ["date", "HomeTeam"]},
    "odds": {
        "path": "odds/{yyyy}/{mm}/{dd}.csv", "format": "csv", "partition_by": "date",
        "known": {"at": "event"}, "event_time": {"column": "hour", "format": "hour"},
        "columns": {"team": "string", "hour": "int", "win": "double"},
        "primary_key": ["date", "team", "hour"],
        "missing": {"win": {"fill": "median", "flag": True}}},
    "teams": {
        "path": "teams/teams.csv", "format": "csv",
        "columns": {"team": "string", "capacity": "int", "city": "string"}, "primary_key": ["team"]},
}
PREDICTION = {"source": "matches", "time": {"at": "day_before", "time": "12:00"},
              "target": "home_goals - away_goals", "label": "home_goals > away_goals"}
MATCHES = "date date, match_id long, HomeTeam string, AwayTeam string, Round int, Year int, home_goals int, away_goals int"
D = lambda day: date(2024, 3, day)  # noqa: E731


def football(tmp_path, features: dict):
    path = tmp_path / "football.yaml"
    path.write_text(yaml.safe_dump({"name": "football", "description": "test", "sources": SOURCES,
                                    "prediction": PREDICTION, "features": features}, sort_keys=False))
    return load_dataset(path)


def matches(spark, rows):
    """(day, id, home, away, home_goals, away_goals) rows; Round 1, Year 2024."""
    return spark.createDataFrame([(D(d), i, h, a, 1, 2024, hg, ag) for d, i, h, a, hg, ag in rows], MATCHES)


def build(spark, dataset, sources: dict, dates=None) -> dict[int, dict]:
    df = features_for(dataset).build(sources, dates, dataset)
    return {r["match_id"]: r.asDict() for r in df.collect()}


def model_columns(dataset) -> dict[str, tuple]:
    return {c.source: (c.kind, c.fill, c.flag) for c in features_for(dataset).model_columns}


# ------------------------------------------------------------------------------------------------
# Row features


def test_columns_calendar_and_derived_are_evaluated_in_order_and_model_false_stays_readable(spark, tmp_path):
    ds = football(tmp_path, {
        "columns": {"HomeTeam": "categorical",
                    "_pair": {"expr": "concat(HomeTeam, '-', AwayTeam)", "model": False},
                    "pairing": {"expr": "lower(_pair)", "kind": "categorical"},
                    "Round": {"kind": "numeric", "fill": "zero"},
                    "Year": {"model": False}},
        "calendar": {"weekday": "categorical", "day_of_month": {"kind": "numeric", "model": False}},
        "derived": {"late_season": {"expr": "Round * 2 + day_of_month", "kind": "numeric", "flag": True}}})
    rows = build(spark, ds, {"matches": matches(spark, [(2, 1, "BVB", "FCB", 2, 1), (3, 2, "S04", "BVB", None, None)])})

    assert rows[1]["pairing"] == "bvb-fcb" and rows[1]["weekday"] == "Sat" and rows[1]["late_season"] == 4.0
    assert (rows[1]["Round"], rows[1]["Year"], rows[1]["day_of_month"]) == (1.0, 2024, 2.0)
    assert "_pair" not in rows[1] and "AwayTeam" not in rows[1]
    # label and target: from the outcome columns, both null while the outcome is unknown.
    assert (rows[1]["label"], rows[1]["target"]) == (1.0, 1.0)
    assert (rows[2]["label"], rows[2]["target"]) == (None, None)
    assert model_columns(ds) == {"HomeTeam": ("categorical", "mean", False), "pairing": ("categorical", "mean", False),
                                 "Round": ("numeric", "zero", False), "weekday": ("categorical", "mean", False),
                                 "late_season": ("numeric", "mean", True)}
    assert features_for(ds).dated_sources == ("matches",) and features_for(ds).history_days == 0


def test_only_the_rows_of_the_dates_asked_for_are_built(spark, tmp_path):
    ds = football(tmp_path, {"columns": {"HomeTeam": "categorical"}})
    rows = build(spark, ds, {"matches": matches(spark, [(2, 1, "BVB", "FCB", 2, 1), (3, 2, "S04", "BVB", 0, 0)])},
                 dates=[D(3)])
    assert list(rows) == [2]


# ------------------------------------------------------------------------------------------------
# Lookups


LOOKUPS = {
    "teams": {"keys": {"HomeTeam": "team"}, "found": "home_known",
              "columns": {"home_capacity": {"expr": "capacity", "kind": "numeric"},
                          "home_city": {"expr": "city", "kind": "categorical"}}},
    "home_odds": {"source": "odds", "keys": {"HomeTeam": "team"}, "as_of": {"lookback": "3h"},
                  "found": "odds_known", "columns": {"win": "numeric"}},
}


def test_a_reference_lookup_joins_on_its_keys_and_found_says_whether_a_row_was_found(spark, tmp_path):
    ds = football(tmp_path, {"lookups": {"teams": LOOKUPS["teams"]}})
    teams = spark.createDataFrame([("BVB", 81365, "Dortmund"), ("FCB", 75024, "Munich")],
                                  "team string, capacity int, city string")
    rows = build(spark, ds, {"matches": matches(spark, [(2, 1, "BVB", "FCB", 2, 1), (2, 2, "S04", "BVB", 0, 0)]),
                             "teams": teams})
    assert (rows[1]["home_known"], rows[1]["home_capacity"], rows[1]["home_city"]) == (1.0, 81365.0, "Dortmund")
    assert (rows[2]["home_known"], rows[2]["home_capacity"], rows[2]["home_city"]) == (0.0, None, None)
    assert features_for(ds).sources == {"matches": "silver.matches", "teams": "silver.teams"}


def test_an_as_of_lookup_takes_the_last_row_known_at_the_prediction_time_within_the_lookback(spark, tmp_path):
    ds = football(tmp_path, {"lookups": {"home_odds": LOOKUPS["home_odds"]}})
    # Matches on March 5: predicted at noon on March 4.
    odds = spark.createDataFrame([
        (D(4), "BVB", 10, 1.5), (D(4), "BVB", 12, 1.7),   # 12:00 is known at 12:00: the last one
        (D(4), "BVB", 13, 9.9), (D(5), "BVB", 9, 9.9),    # after the prediction time: never
        (D(4), "FCB", 11, 2.0), (D(3), "FCB", 23, 9.9),   # 11:00 wins over the day before
        (D(4), "S04", 8, 9.9),                            # 4 hours before: outside the lookback
    ], "date date, team string, hour int, win double")
    rows = build(spark, ds, {"matches": matches(spark, [(5, 1, "BVB", "S04", 0, 0), (5, 2, "FCB", "M05", 0, 0),
                                                        (5, 3, "S04", "M05", 0, 0), (5, 4, "SCF", "M05", 0, 0)]),
                             "odds": odds})
    assert [(rows[i]["odds_known"], rows[i]["win"]) for i in (1, 2, 3, 4)] == [
        (1.0, 1.7), (1.0, 2.0), (0.0, None), (0.0, None)]
    # A plain column of the source takes the source's declared missing-value policy.
    assert model_columns(ds)["win"] == ("numeric", "median", True)
    # The lookback reaches into the day before the match's date.
    assert features_for(ds).history_days == 1 and features_for(ds).dated_sources == ("matches", "odds")


# ------------------------------------------------------------------------------------------------
# History

HISTORY = {"windows": [2, 5], "groups": {"home": ["HomeTeam"]},
           "aggregates": {"played": {"count": True},
                          "goals": {"sum": "home_goals"},
                          "mean_goals": {"mean": "home_goals"},
                          "win_rate": {"rate": "home_goals > away_goals", "flag": True},
                          "last_goals": {"last": "home_goals"},
                          "since_loss": {"days_since": "home_goals < away_goals"}}}


def test_history_aggregates_end_on_the_last_day_whose_outcomes_were_known(spark, tmp_path):
    ds = football(tmp_path, {"history": HISTORY})
    rows = build(spark, ds, {"matches": matches(spark, [
        (1, 1, "BVB", "FCB", 0, 1),        # a loss
        (3, 2, "BVB", "S04", 3, 1),
        (4, 3, "BVB", "M05", None, None),  # cancelled: counted as a row, no outcome
        # Day 6: its goals arrive the morning of day 7, after the noon-of-day-6 prediction for day 7.
        (6, 4, "BVB", "SCF", 9, 0),
        (7, 5, "BVB", "FCB", 1, 1),        # the row predicted: windows end on day 5
        (7, 6, "FCB", "BVB", 2, 2),        # FCB never played at home before
        (1, 7, "S04", "SCF", 1, 0),        # S04: nothing in the 2 days ending on day 5
        (7, 8, "S04", "M05", 0, 0),
    ])}, dates=[D(7)])
    bvb, fcb, s04 = rows[5], rows[6], rows[8]

    # 2 days ending on day 5: days 4 and 5 hold the cancelled match only.
    assert bvb["home_played_2d"] == 1.0
    assert (bvb["home_goals_2d"], bvb["home_mean_goals_2d"], bvb["home_win_rate_2d"]) == (None, None, None)
    assert (bvb["home_last_goals_2d"], bvb["home_since_loss_2d"]) == (None, None)
    # 5 days ending on day 5: days 1..5; day 6's 9 goals are not known yet.
    assert (bvb["home_played_5d"], bvb["home_goals_5d"], bvb["home_mean_goals_5d"]) == (3.0, 3.0, 1.5)
    assert (bvb["home_win_rate_5d"], bvb["home_last_goals_5d"], bvb["home_since_loss_5d"]) == (0.5, 3.0, 4.0)
    # A group with no row in a window: every aggregate is null, the count included.
    assert all(fcb[f"home_{a}_{w}d"] is None for a in HISTORY["aggregates"] for w in (2, 5))
    assert s04["home_played_2d"] is None and s04["home_played_5d"] == 1.0 and s04["home_since_loss_5d"] is None

    features = features_for(ds)
    # 5 days ending two days before the date.
    assert features.history_days == 6
    assert model_columns(ds)["home_win_rate_5d"] == ("numeric", "mean", True)
    assert len(features.model_columns) == 12


def test_rows_known_later_change_no_history_value(spark, tmp_path):
    """The no-leakage rule: built from the rows as known at the prediction time, the same values."""
    from pipelines.datasets.timing import as_known_at

    ds = football(tmp_path, {"history": HISTORY})
    full = matches(spark, [(1, 1, "BVB", "FCB", 0, 1), (3, 2, "BVB", "S04", 3, 1), (6, 4, "BVB", "SCF", 9, 0),
                           (7, 5, "BVB", "FCB", 1, 1), (8, 9, "BVB", "FCB", 4, 0)])
    cut = as_known_at(ds, {"matches": full}, ds.prediction_time.minutes_on(D(7)))
    as_built = build(spark, ds, {"matches": full}, dates=[D(7)])[5]
    as_known = build(spark, ds, {"matches": cut["matches"]}, dates=[D(7)])[5]
    assert {k: v for k, v in as_built.items() if k not in ("label", "target")} == \
        {k: v for k, v in as_known.items() if k not in ("label", "target")}
    assert as_known["label"] is None and as_built["label"] == 0.0


SEQUENCE = {**HISTORY, "sequence": {"days": 5, "aggregates": ["played", "mean_goals"]}}


def test_history_sequences_hold_the_daily_values_of_the_days_known_at_the_prediction_time(spark, tmp_path):
    """Oldest day first, ending on the day the windows end on; day 6 (known after the prediction)
    is in no array, and rows known later change none."""
    from pipelines.datasets.timing import as_known_at
    from pipelines.stages.gold.spec import apply_feature_spec, fit_feature_spec

    ds = football(tmp_path, {"history": SEQUENCE})
    full = matches(spark, [(1, 1, "BVB", "FCB", 0, 1), (3, 2, "BVB", "S04", 3, 1), (4, 3, "BVB", "M05", None, None),
                           (6, 4, "BVB", "SCF", 9, 0), (7, 5, "BVB", "FCB", 1, 1), (7, 6, "FCB", "BVB", 2, 2),
                           (8, 9, "BVB", "FCB", 4, 0)])
    features = features_for(ds)
    rows = build(spark, ds, {"matches": full}, dates=[D(7)])
    bvb, fcb = rows[5], rows[6]
    assert bvb["home_played_last5d"] == [1.0, None, 1.0, 1.0, None]          # days 1..5
    assert bvb["home_mean_goals_last5d"] == [0.0, None, 3.0, None, None]     # day 4 had no outcome
    assert fcb["home_played_last5d"] == [None] * 5
    cut = as_known_at(ds, {"matches": full}, ds.prediction_time.minutes_on(D(7)))
    as_known = build(spark, ds, {"matches": cut["matches"]}, dates=[D(7)])[5]
    assert all(as_known[c] == bvb[c] for c in ("home_played_last5d", "home_mean_goals_last5d"))
    assert features.history_days == 6
    assert {c.source: (c.kind, c.length) for c in features.model_columns if c.kind == "sequence"} == {
        "home_played_last5d": ("sequence", 5), "home_mean_goals_last5d": ("sequence", 5)}

    # The feature spec standardises every day with the window's one mean and std; a missing day is 0.
    frame = features.build({"matches": full}, None, ds)
    spec = fit_feature_spec(frame, (D(1), D(8)), features.model_columns)
    played = {r["name"]: r for r in spec.collect()}["seq_home_played_last5d"]
    values = [v for r in frame.collect() for v in r["home_played_last5d"] if v is not None]
    assert played["vocab_size"] == 5 and played["transform"] == "standardize_sequence"
    assert played["mean"] == pytest.approx(sum(values) / len(values))
    model_rows = {r["match_id"]: r for r in apply_feature_spec(frame, spec, key="match_id").collect()}
    encoded = model_rows[5]["seq_home_played_last5d"]
    assert len(encoded) == 5 and encoded[1] == 0.0
    assert encoded[0] == pytest.approx((1.0 - played["mean"]) / played["std"], rel=1e-6)


# ------------------------------------------------------------------------------------------------
# Bad declarations


@pytest.mark.parametrize("features, key, message", [
    ({"colums": {}}, "features.colums", "is not a known key"),
    ({"columns": {"x": {"expr": "Round", "kind": "nominal"}}}, "features.columns.x.kind", "must be numeric or categorical"),
    ({"columns": {"x": {"expr": "Round"}}}, "features.columns.x.kind", "is required"),
    ({"columns": {"x": {"expr": "Round", "kind": "numeric", "fil": "mean"}}}, "features.columns.x.fil", "is not a known key"),
    ({"columns": {"x": {"kind": "numeric", "fill": "average"}}}, "features.columns.x.fill", "must be one of"),
    ({"lookups": {"stadiums": {"keys": {"HomeTeam": "team"}, "columns": {}}}}, "features.lookups.stadiums",
     "names source 'stadiums'"),
    ({"lookups": {"teams": {"keys": {"HomeTeam": "name"}, "columns": {}}}}, "features.lookups.teams.keys.HomeTeam",
     "names column 'name'"),
    ({"lookups": {"odds": {"keys": {"HomeTeam": "team"}, "columns": {}}}}, "features.lookups.odds", "declare as_of"),
    ({"lookups": {"teams": {"on": {"HomeTeam": "team"}, "columns": {}}}}, "features.lookups.teams.on", "with `keys:`"),
    ({"calendar": {"weekday_name": "categorical"}}, "features.calendar.weekday_name", "is not a known key"),
    ({"history": {**HISTORY, "aggregates": {"x": {"median": "home_goals"}}}}, "features.history.aggregates.x.median",
     "is not a known key"),
    ({"history": {**HISTORY, "groups": {"coach": ["Coach"]}}}, "features.history.groups.coach[0]", "names 'Coach'"),
    ({"history": {**HISTORY, "windows": [0]}}, "features.history.windows", "positive day counts"),
    ({"history": {**HISTORY, "sequence": {"days": 5, "aggregates": ["last_goals"]}}},
     "features.history.sequence.aggregates[0]", "a sequence holds count, sum, mean, rate"),
    ({"history": {**HISTORY, "sequence": {"days": 1}}}, "features.history.sequence.days", "from 2 to 366"),
    ({"columns": {"label": {"expr": "Round", "kind": "numeric"}}}, "features.columns.label", "keeps for itself"),
    ({"columns": {"Round": "numeric"}, "derived": {"Round": {"expr": "1", "kind": "numeric"}}},
     "features.derived.Round", "declares 'Round' again"),
    ({"python": "no_such_module"}, "features.python", "there is no"),
])
def test_a_bad_declaration_is_an_error_naming_the_file_and_key(tmp_path, features, key, message):
    with pytest.raises(ConfigError, match="football.yaml") as err:
        features_for(football(tmp_path, features))
    assert f"key '{key}'" in str(err.value) and message in str(err.value), str(err.value)


def test_an_expression_spark_cannot_read_names_its_key(spark, tmp_path):
    ds = football(tmp_path, {"columns": {"x": {"expr": "Rounds + 1", "kind": "numeric"}}})
    with pytest.raises(ConfigError, match=r"football.yaml: key 'features.columns.x.expr' \('Rounds \+ 1'\)"):
        features_for(ds).build({"matches": matches(spark, [(2, 1, "BVB", "FCB", 2, 1)])}, None, ds)
