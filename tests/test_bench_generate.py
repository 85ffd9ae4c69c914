"""bench.generate, the ×N landing feed of the scale benchmarks: three days of 2013 grown ×3 must be
the real feed in copy 0 (byte for byte what `landing seed` writes), vary the way the design says in
copies 1 and 2, come out the same for the same seed, and pass the real ingest without a rejected row."""
from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import date
from pathlib import Path

import pytest

from bench.generate import generate
from pipelines.config import load_config
from pipelines.datasets import dataset_for
from pipelines.stages import landing

WINDOW = (date(2013, 1, 1), date(2013, 1, 3))
DAYS = [date(2013, 1, d) for d in (1, 2, 3)]
FACTOR = 3
DAILY = ("flights", "flight_outcomes", "weather")


def config(root: Path):
    return load_config("local", [f"lakehouse.root={root}", "spark.master=local[2]"])


@pytest.fixture(scope="module")
def feeds(tmp_path_factory, spark):
    """The generated feed (seed 13), the same again, and the real feed of the three days."""
    base = tmp_path_factory.mktemp("generate")
    grown, again, real = config(base / "grown"), config(base / "again"), config(base / "real")
    counts = generate(spark, grown, FACTOR, WINDOW, rng_seed=13, log=lambda line: None)
    generate(spark, again, FACTOR, WINDOW, rng_seed=13, log=lambda line: None)
    landing.seed(real, dates=DAYS)
    return {"cfg": grown, "counts": counts, "grown": Path(grown.lakehouse.landing),
            "again": Path(again.lakehouse.landing), "real": Path(real.lakehouse.landing)}


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def rows(content: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(content.decode())))


def day_rows(feeds, source: str, copy: int, day: date) -> list[dict]:
    path = dataset_for(feeds["cfg"]).source(source).path_for(day.replace(year=day.year + copy))
    return rows((feeds["grown"] / path).read_bytes())


def test_copy_0_is_byte_for_byte_the_real_feed(feeds):
    grown, real = files(feeds["grown"]), files(feeds["real"])
    for path, content in real.items():
        if path == "planes/planes.csv":
            # The reference planes, then the new planes of the copies.
            assert grown[path].startswith(content) and len(grown[path]) > len(content)
        else:
            assert grown[path] == content, path


def test_one_file_per_source_and_day_in_the_shifted_years_and_factor_times_the_rows(feeds):
    grown, real = files(feeds["grown"]), files(feeds["real"])
    dataset = dataset_for(feeds["cfg"])
    for name in DAILY:
        source = dataset.source(name)
        expected = {source.path_for(d.replace(year=d.year + k)) for k in range(FACTOR) for d in DAYS}
        assert {p for p in grown if p.startswith(f"{name}/")} == expected
        real_rows = sum(len(rows(c)) for p, c in real.items() if p.startswith(f"{name}/"))
        grown_rows = sum(len(rows(grown[p])) for p in expected)
        assert grown_rows == FACTOR * real_rows == feeds["counts"][name]["rows"]
        assert feeds["counts"][name]["files"] == FACTOR * len(DAYS)
        shifted = (d.replace(year=d.year + k) for k in range(FACTOR) for d in DAYS)
        assert feeds["counts"][name]["days"] == sorted(d.isoformat() for d in shifted)
        for k in range(FACTOR):
            for d in DAYS:
                got = day_rows(feeds, name, k, d)
                # The header is the source's declared columns; every row carries its file's date.
                assert list(got[0]) == source.file_column_names
                assert {(r["year"], r["month"], r["day"]) for r in got} == {(str(2013 + k), str(d.month), str(d.day))}


def test_flight_numbers_differ_in_copies_and_stay_injective_per_carrier_and_day(feeds):
    for k in (1, 2):
        for d in DAYS:
            real, copy = day_rows(feeds, "flights", 0, d), day_rows(feeds, "flights", k, d)
            assert len(real) == len(copy)
            renumbered = defaultdict(dict)
            for r, c in zip(real, copy):
                key = ("carrier", "origin", "sched_dep_time")
                assert [r[name] for name in key] == [c[name] for name in key]
                renumbered[r["carrier"]].setdefault(r["flight"], c["flight"])
                assert renumbered[r["carrier"]][r["flight"]] == c["flight"]     # one new number per old one
            for carrier, numbers in renumbered.items():
                assert len(set(numbers.values())) == len(numbers), carrier     # injective
            changed = sum(r["flight"] != c["flight"] for r, c in zip(real, copy))
            assert changed > 0.95 * len(real)


def test_a_share_of_the_tails_are_new_planes_listed_in_planes(feeds):
    planes = {r["tailnum"]: r for r in rows((feeds["grown"] / "planes/planes.csv").read_bytes())}
    real_planes = {r["tailnum"] for r in rows((feeds["real"] / "planes/planes.csv").read_bytes())}
    real_tails = {r["tailnum"] for d in DAYS for r in day_rows(feeds, "flights", 0, d)} - {"NA"}
    for k in (1, 2):
        pairs = {(r["tailnum"], c["tailnum"]) for d in DAYS
                 for r, c in zip(day_rows(feeds, "flights", 0, d), day_rows(feeds, "flights", k, d))}
        new = {(old, tail) for old, tail in pairs if tail != old}
        assert all(tail == f"{old}{k:02d}" and tail not in real_tails for old, tail in new)
        share = len({old for old, _ in new}) / len(real_tails)
        assert 0.3 < share < 0.37
        for old, tail in new:
            if old in real_planes:
                # Same attributes, a new registration.
                assert {**planes[tail], "tailnum": old} == planes[old]
        assert sum(old in real_planes for old, _ in new) > 0


def test_the_delays_of_a_copy_come_from_the_same_route_and_month(feeds):
    pool = defaultdict(set)
    for d in DAYS:
        for r, o in zip(day_rows(feeds, "flights", 0, d), day_rows(feeds, "flight_outcomes", 0, d)):
            pool[(r["origin"], r["dest"], r["month"])].add((o["dep_delay"], o["arr_delay"], o["air_time"]))
    for k in (1, 2):
        drawn = []
        for d in DAYS:
            for r, o in zip(day_rows(feeds, "flights", k, d), day_rows(feeds, "flight_outcomes", k, d)):
                delays = (o["dep_delay"], o["arr_delay"], o["air_time"])
                assert delays in pool[(r["origin"], r["dest"], r["month"])]
                if o["dep_delay"] != "NA":
                    # The actual departure follows from the schedule and the drawn delay.
                    sched = int(o["sched_dep_time"])
                    minutes = sched // 100 * 60 + sched % 100 + int(o["dep_delay"])
                    minutes = (minutes - 1) % 1440 + 1
                    assert int(o["dep_time"]) == minutes // 60 * 100 + minutes % 60
                drawn.append(delays)
        real = [(o["dep_delay"], o["arr_delay"], o["air_time"])
                for d in DAYS for o in day_rows(feeds, "flight_outcomes", 0, d)]
        assert drawn != real     # drawn again, not copied row by row


def test_the_same_seed_writes_the_same_files(feeds):
    assert files(feeds["grown"]) == files(feeds["again"])


@pytest.mark.slow
def test_the_real_ingest_reads_the_generated_feed_without_a_rejected_row(feeds, spark):
    from pipelines.stages import bronze

    # The sources the generator changes (airports and airlines are the package's files as they are).
    results = bronze.ingest(feeds["cfg"], spark, sources=[*DAILY, "planes"])
    by_table = {r.table: r for r in results}
    assert all(r.rejected == 0 for r in results), [(r.table, r.rejected) for r in results]
    for name in (*DAILY, "planes"):
        assert by_table[f"bronze.{name}"].rows == feeds["counts"][name]["rows"]
