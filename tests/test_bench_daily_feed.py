"""bench.daily_feed on 40 days: the generated declaration loads, the same seed gives the same files,
and the feed goes through ingest, clean and features with every landed row accounted for in silver,
no table in more than one file per month, and a result file with the figures the README takes."""
from __future__ import annotations

import json
from datetime import date, timedelta

import pytest

from bench import common, daily_feed
from pipelines.datasets import load_dataset

DAYS = 40


@pytest.fixture(scope="module")
def feed(tmp_path_factory, spark):
    """The benchmark run once on 40 days with the session's Spark, and the result file it writes
    (into the test's folder, not bench/results)."""
    root = tmp_path_factory.mktemp("daily_feed")
    result = daily_feed.run(DAYS, root, seed=7, spark=spark, log=lambda line: None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(common, "RESULTS", root / "results")
        mp.setattr(common, "REPO", root)
        daily_feed.report(result)
        path = common.write_result(daily_feed.NAME, result, command=f"python -m bench.daily_feed --days {DAYS}")
    return result, json.loads(path.read_text())


def test_the_generated_declaration_loads_as_a_dataset_with_an_update_source_and_features(tmp_path):
    days = [daily_feed.FIRST_DAY + timedelta(days=i) for i in range(DAYS)]
    conf = daily_feed.write_conf(tmp_path, days)
    dataset = load_dataset(conf / "base" / "datasets" / f"{daily_feed.NAME}.yaml")
    assert [s.name for s in dataset.daily_sources] == ["schedule", "outcomes"]
    assert dataset.source("outcomes").updates == "schedule" and dataset.prediction_source == "schedule"
    assert dataset.source("schedule").path_for(date(2010, 1, 2)) == "schedule/2010/01/02.csv"
    assert set(dataset.features) == {"columns", "calendar", "history"}


def test_the_same_seed_gives_the_same_rows_and_another_seed_others():
    days = [daily_feed.FIRST_DAY + timedelta(days=i) for i in range(DAYS)]
    first = list(daily_feed.feed_rows(days, 1))
    assert first == list(daily_feed.feed_rows(days, 1)) != list(daily_feed.feed_rows(days, 2))
    assert len(first) == DAYS and [plan[0] for plan, _ in first] == [d.isoformat() for d in days]


@pytest.mark.slow
def test_every_landed_row_reaches_silver_with_its_outcome(feed):
    result, _ = feed
    assert result["landing"] == {"schedule": {"files": DAYS, "rows": DAYS}, "outcomes": {"files": DAYS, "rows": DAYS}}
    assert result["stages"]["ingest"]["rows"] == 2 * DAYS and result["stages"]["ingest"]["rejected"] == 0
    for counts in result["stages"]["clean"]["tables"].values():
        assert counts["bronze_rows"] == DAYS == counts["silver_rows"] + counts["quarantined"] + counts["duplicates"]
    accounted = result["accounting"]
    assert accounted["silver_schedule_rows"] == accounted["silver_rows_with_outcome"] == DAYS
    assert accounted["quarantined"] == accounted["duplicates"] == {}
    assert result["stages"]["features"]["rows"] == DAYS
    assert result["peer"]["rows_joined"] == result["peer"]["rows_with_outcome"] == DAYS


@pytest.mark.slow
def test_no_table_holds_more_than_one_file_per_month(feed):
    result, _ = feed
    tables = {t["table"]: t for t in result["tables"]}
    assert {"bronze.schedule", "bronze.outcomes", "silver.schedule", "gold.features", "gold.model_input",
            "ops.data_quality"} <= set(tables)
    for name in ("bronze.schedule", "bronze.outcomes", "silver.schedule", "gold.features"):
        t = tables[name]
        assert t["partition_by"] == "date_month" and t["months"] == result["months"] == 2
        assert t["files"] <= t["months"] and t["most_files_in_a_partition"] == 1, t
    assert all(t["files_per_month_met"] for t in tables.values()), [t for t in tables.values()
                                                                     if not t["files_per_month_met"]]
    assert result["goal_files_met"]


@pytest.mark.slow
def test_the_result_file_holds_the_stage_times_the_files_the_peer_and_the_goals(feed):
    _, saved = feed
    assert saved["benchmark"] == "daily_feed" and saved["days"] == DAYS
    assert len(saved["machine"]["load_average_1m_5m_15m"]) == 3
    for stage in daily_feed.STAGES:
        assert saved["stages"][stage]["seconds"] > 0 and saved["stages"][stage]["rows_per_sec"] >= 0
    assert saved["total_seconds"] == pytest.approx(sum(saved["stages"][s]["seconds"] for s in daily_feed.STAGES))
    assert saved["peer"]["seconds"] > 0
    assert saved["ratio_pipeline_to_peer"] == pytest.approx(saved["total_seconds"] / saved["peer"]["seconds"], rel=1e-2)
    assert saved["goal"] == {"total_seconds_at_most": 60.0, "files_per_month_at_most": 1, "days": 5000}
    assert isinstance(saved["goal_seconds_met"], bool) and isinstance(saved["goal_files_met"], bool)
    assert set(saved["load_average_during_run"]) == {"before_1m_5m_15m", "after_1m_5m_15m"}
    assert {"table", "rows", "files", "months", "partitions", "most_files_in_a_partition",
            "files_per_month_met"} <= set(saved["tables"][0])
