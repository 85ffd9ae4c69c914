"""The benchmarks' report: the ×100 / ×10 ratio per stage with its goal, the training input table
against the smallest factor's in-memory rate, and the largest single process's memory."""
from __future__ import annotations

import subprocess
import sys
import time

from bench.common import PeakMemory, parse_window
from bench.run_all import figures
from bench.scale import growth, input_table


def factor(seconds: dict[str, float], petastorm: float, in_memory: float) -> dict:
    return {"stages": {s: {"seconds": v, "rows_per_sec": 1} for s, v in seconds.items()},
            "spark_start_seconds": 1.0,
            "memory": {"total_peak_mib": 100, "largest_worker_peak_mib": 50},
            "input": {"table_rows": 1000, "row_groups": 3, "steps_per_epoch": 9, "batch_size": 64, "epochs": 4,
                      "petastorm": {"samples_per_sec": petastorm}, "in_memory": {"samples_per_sec": in_memory},
                      "ratio_petastorm_to_in_memory": round(petastorm / in_memory, 3)}}


RESULTS = {1: factor({"ingest": 10, "clean": 10, "features": 10, "train": 10}, 50, 100),
           10: factor({"ingest": 20, "clean": 30, "features": 40, "train": 20}, 90, 100),
           100: factor({"ingest": 150, "clean": 350, "features": 200, "train": 60}, 95, 100)}


def test_each_stage_is_judged_on_its_two_largest_factors():
    r = {"growth": growth(RESULTS), "factors": {f"x{f}": v for f, v in RESULTS.items()}, "input": input_table(RESULTS)}

    rows = {row["figure"]: row for row in figures("scale", r)}

    assert rows["ingest: time x100 / time x10"]["ratio"] == 7.5
    assert rows["ingest: time x100 / time x10"]["goal"] == "<= 10 met"
    assert rows["clean: time x100 / time x10"]["ratio"] == 11.667
    assert rows["clean: time x100 / time x10"]["goal"] == "<= 10 missed"
    # The total is Spark's start-up plus every stage: 761 s against 111 s.
    assert rows["total: time x100 / time x10"]["value"] == "761.0 / 111.0"


def test_the_input_table_sets_petastorm_against_the_smallest_factors_in_memory_rate():
    table = {row["factor"]: row for row in input_table(RESULTS)}

    assert table["x100"]["Petastorm / in-memory x1"] == 0.95
    assert table["x1"]["Petastorm / in-memory"] == 0.5
    assert table["x100"]["steps"] == "4 x 9 of 64"


def test_peak_memory_names_the_largest_single_process():
    code = "import time; block = bytearray(300 * 2**20); time.sleep(3)"
    with PeakMemory(interval=0.1) as mem:
        child = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(2)
        child.wait()

    result = mem.result()
    assert result["largest_worker_peak_mib"] >= 250
    assert result["workers_peak_mib"] >= result["largest_worker_peak_mib"]
    assert result["total_peak_mib"] >= result["driver_python_peak_mib"] + result["largest_worker_peak_mib"] - 1


def test_a_window_is_two_days_in_order():
    from datetime import date

    assert parse_window("2013-01-01,2013-01-31") == (date(2013, 1, 1), date(2013, 1, 31))
    assert parse_window(None) is None
    try:
        parse_window("2013-02-01,2013-01-01")
    except ValueError as exc:
        assert "before the first" in str(exc)
    else:
        raise AssertionError("a reversed window was accepted")
