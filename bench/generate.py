"""The ×N landing feed of the scale benchmarks, written by a Spark job in bounded memory.

`bench.scale` and `bench.peer` time the pipeline on the 2013 flights grown ×N. This module writes
that growth as landing files, in the layout and format `lakehouse-dl landing seed` writes (one CSV
per daily source and day at `source.path_for(day)`, the declared columns of each source, values
as the package writes them, "NA" for missing; reference CSVs whole), so the real ingest reads them.

The variation: copy k (k = 0..N-1) of the year is shifted by k whole years (2013, 2014, ...); copy 0
is the real data, byte for byte what `landing seed` writes. In copies k >= 1 the flight numbers
are renumbered (a different injective map per copy), a third of the tail numbers become new
planes (appended to planes.csv with the attributes of the plane they copy), and each flight's
delays and air time are drawn again from the real flights of the same route (origin, dest) and
month; the actual times follow from the new delays. Weather is shifted with its copy. The draws
are seeded per (seed, copy, day), so a seed gives the same files however Spark splits the work.

How it stays bounded: the driver reads the 2013 seed once (the ×1 tables, about 35 MB of lines)
and broadcasts it; the Spark job's items are (copy, day) pairs, and a task builds and writes one
day's file per source at a time from the seed, rows in the seed file's order (each file
atomically: a temporary name, then a rename), returning only counts. No ×N table exists
anywhere, and no shuffle is needed: a day of copy k depends only on the seed. Every value stays
the text the package wrote, so integers never gain a ".0" and copy 0 keeps its bytes.

    python -m bench.generate --factor 10 --root /tmp/lh [--window 2013-01-01,2013-01-31] [--seed 13]
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

NEW_PLANE_SHARE = 1 / 3
# Flight numbers of copy k: (a*x + 37k) mod 9999 + 1 with a coprime with 9999, so each copy's map
# is injective on 1..9999 (every 2013 flight number is below 9999) and keeps the key unique.
FLIGHT_MULTIPLIERS = (2, 4, 5, 7, 8, 10, 13, 14, 16, 17)
# About this many rows per Spark task. A task holds one day at a time whatever its size, so the
# size only trades scheduling cost (a week per task made the ×10 weather all overhead) for balance.
TASK_ROWS = 50_000
LOCAL = ZoneInfo("America/New_York")
NA = b"NA"
SEP = b","
# The columns the flights' variation rewrites; a seed file holding them all is a flights file.
FLIGHT_COLUMNS = ("month", "origin", "dest", "flight", "tailnum", "sched_dep_time", "sched_arr_time",
                  "dep_time", "arr_time", "dep_delay", "arr_delay", "air_time")


# ------------------------------------------------------------------------------------------------
# The seed, parsed once in the driver and broadcast


@dataclass
class SeedFile:
    """One daily seed file: its header, its lines in file order, and each 2013 day's lines."""
    name: str
    header: list[bytes]
    lines: list[bytes]
    days: dict[date, np.ndarray]          # line numbers of each day, in file order
    # The flights file only: each line's (route, month) group, and the groups' members (line
    # numbers) concatenated, with each group's start and size.
    group: np.ndarray | None = None
    members: np.ndarray | None = None
    group_start: np.ndarray | None = None
    group_size: np.ndarray | None = None
    tails: tuple[bytes, ...] = ()         # the distinct tail numbers flown, sorted

    def column(self, name: str) -> int:
        return self.header.index(name.encode())

    @property
    def is_flights(self) -> bool:
        names = {h.decode() for h in self.header}
        return all(c in names for c in FLIGHT_COLUMNS)


def read_seed_file_lines(raw: bytes, name: str, date_columns: tuple[str, ...],
                         window: tuple[date, date] | None) -> SeedFile:
    """Parse a daily seed file into a SeedFile (only the days in `window` when given)."""
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    header = lines[0].split(SEP)
    idx = [header.index(c.encode()) for c in date_columns]
    kept: list[bytes] = []
    by_day: dict[date, list[int]] = {}
    known: dict[tuple, date] = {}
    for line in lines[1:]:
        fields = line.split(SEP, max(idx) + 1)
        key = tuple(fields[i] for i in idx)
        day = known.get(key)
        if day is None:
            day = known[key] = date(*(int(v) for v in key))
        if window and not window[0] <= day <= window[1]:
            continue
        by_day.setdefault(day, []).append(len(kept))
        kept.append(line)
    seed = SeedFile(name, header, kept, {d: np.array(v, dtype=np.int64) for d, v in sorted(by_day.items())})
    if seed.is_flights:
        _index_routes(seed)
    return seed


def _index_routes(seed: SeedFile) -> None:
    """Group the flights by (origin, dest, month), the pool a copy's delays are drawn from."""
    o, d, m, t = (seed.column(c) for c in ("origin", "dest", "month", "tailnum"))
    keys: dict[tuple, int] = {}
    group = np.empty(len(seed.lines), dtype=np.int64)
    tails = set()
    for i, line in enumerate(seed.lines):
        f = line.split(SEP)
        group[i] = keys.setdefault((f[o], f[d], f[m]), len(keys))
        if f[t] != NA:
            tails.add(f[t])
    order = np.argsort(group, kind="stable")
    sizes = np.bincount(group, minlength=len(keys))
    seed.group, seed.members, seed.group_size = group, order, sizes
    seed.group_start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    seed.tails = tuple(sorted(tails))


def new_tails(seed: SeedFile, copy: int, rng_seed: int) -> dict[bytes, bytes]:
    """The tails that are new planes in `copy`: old tail → its new registration (tail + copy)."""
    rng = np.random.default_rng([rng_seed, copy])
    chosen = rng.choice(len(seed.tails), size=int(len(seed.tails) * NEW_PLANE_SHARE), replace=False)
    return {seed.tails[i]: seed.tails[i] + b"%02d" % copy for i in chosen}


# ------------------------------------------------------------------------------------------------
# One day of one copy


def shift_years(day: date, years: int) -> date:
    """The same calendar day `years` later (29 February, never in 2013, would become the 28th)."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return day.replace(year=day.year + years, day=28)


def shift_time_hour(text: bytes, years: int) -> bytes:
    """A UTC `time_hour` whose local (New York) time moved `years` later: the same local clock time,
    with the original's daylight-saving choice for an hour that exists twice and, for an hour the
    clocks skip, the first instant after the gap."""
    utc = datetime.strptime(text.decode(), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    local = utc.astimezone(LOCAL)
    naive = local.replace(tzinfo=None)
    naive = datetime.combine(shift_years(naive.date(), years), naive.time())
    moved = naive.replace(tzinfo=LOCAL, fold=0 if local.dst() else 1)
    if moved.astimezone(timezone.utc).astimezone(LOCAL).replace(tzinfo=None) != naive:
        moved = naive.replace(minute=0, second=0, tzinfo=LOCAL, fold=0) + timedelta(hours=1)
    return moved.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ").encode()


def clock_plus(hhmm: bytes, minutes: bytes) -> bytes:
    """A clock time hhmm plus minutes, as hhmm in 1..2400 (the files' convention); NA stays NA."""
    if hhmm == NA or minutes == NA:
        return NA
    h = int(hhmm)
    total = (h // 100) * 60 + h % 100 + int(minutes)
    total = (total - 1) % 1440 + 1
    return b"%d" % ((total // 60) * 100 + total % 60)


def grow_day(seed: SeedFile, day: date, copy: int, rng_seed: int, renamed: dict[bytes, bytes],
             shifted: dict[bytes, bytes]) -> list[list[bytes]]:
    """The rows (split fields) of `copy` of the seed's `day`, in the file's order. `renamed` is the
    copy's new tails, `shifted` a cache of its time_hour shifts."""
    rows = [seed.lines[i].split(SEP) for i in seed.days[day]]
    if copy == 0:
        return rows
    year, time_hour = seed.column("year"), seed.column("time_hour")
    for f in rows:
        f[year] = b"%d" % (int(f[year]) + copy)
        th = f[time_hour]
        f[time_hour] = shifted.get(th) or shifted.setdefault(th, shift_time_hour(th, copy))
    if not seed.is_flights:
        return rows
    c = {name: seed.column(name) for name in FLIGHT_COLUMNS}
    a, b = FLIGHT_MULTIPLIERS[copy % len(FLIGHT_MULTIPLIERS)], 37 * copy
    groups = seed.group[seed.days[day]]
    draws = np.random.default_rng([rng_seed, copy, day.toordinal()]).random(len(rows))
    donors = seed.members[seed.group_start[groups] + (draws * seed.group_size[groups]).astype(np.int64)]
    for f, donor in zip(rows, donors.tolist()):
        # Delays, cancellations and air time of a real flight of the same route and month.
        d = seed.lines[donor].split(SEP)
        for name in ("dep_delay", "arr_delay", "air_time"):
            f[c[name]] = d[c[name]]
        f[c["dep_time"]] = clock_plus(f[c["sched_dep_time"]], f[c["dep_delay"]])
        f[c["arr_time"]] = clock_plus(f[c["sched_arr_time"]], f[c["arr_delay"]])
        f[c["flight"]] = b"%d" % ((a * int(f[c["flight"]]) + b) % 9999 + 1)
        f[c["tailnum"]] = renamed.get(f[c["tailnum"]], f[c["tailnum"]])
    return rows


def write_days(items, seed_bc, outputs: list[tuple[str, str, list[int]]], landing: str, rng_seed: int):
    """Executor side: for each (copy, 2013 day) of the partition, grow the day and write one file
    per source fed by this seed file; yields (source, files, rows, bytes) per source."""
    from pipelines.stages.landing import SeedResult, _deliver

    seed = seed_bc.value
    results = {name: SeedResult(name) for name, _, _ in outputs}
    renamed: dict[int, dict] = {}
    shifted: dict[int, dict] = {}
    for copy, ordinal in items:
        day = date.fromordinal(ordinal)
        if copy not in renamed:
            renamed[copy] = new_tails(seed, copy, rng_seed) if copy and seed.is_flights else {}
            shifted[copy] = {}
        rows = grow_day(seed, day, copy, rng_seed, renamed[copy], shifted[copy])
        target_day = shift_years(day, copy)
        for name, path, idx in outputs:
            header = SEP.join(seed.header[i] for i in idx)
            content = b"\n".join([header, *(SEP.join(f[i] for i in idx) for f in rows)]) + b"\n"
            _deliver(Path(landing) / path.replace("{yyyy}", f"{target_day.year:04d}")
                     .replace("{mm}", f"{target_day.month:02d}").replace("{dd}", f"{target_day.day:02d}"),
                     content, results[name])
            results[name].rows += len(rows)
    for r in results.values():
        yield r.source, r.files_written + r.files_unchanged, r.rows, r.bytes


# ------------------------------------------------------------------------------------------------
# The job


def generate(spark, cfg, factor: int, window: tuple[date, date] | None = None, rng_seed: int = 13,
             log=print) -> dict:
    """Write the ×`factor` landing feed of cfg's dataset into cfg's landing folder.

    Returns per source {"files", "rows", "seconds"} and, for a daily source, "days" (the ISO dates
    of its files, sorted): what `bench.scale` cuts its splits from.
    """
    from pipelines.datasets import dataset_for
    from pipelines.stages.landing import SeedResult, _deliver, package_data_folder, read_seed_file

    dataset = dataset_for(cfg)
    folder = package_data_folder(dataset)
    landing = Path(cfg.lakehouse.landing)
    counts: dict[str, dict] = {}
    seeds: dict[str, SeedFile] = {}
    daily = [s for s in dataset.sources.values() if s.daily and s.seed_file]
    for file in dict.fromkeys(s.seed_file for s in daily):
        started = time.perf_counter()
        fed = [s for s in daily if s.seed_file == file]
        raw = read_seed_file(folder, file, dataset.seed_archive)
        seed = seeds[file] = read_seed_file_lines(raw, file, fed[0].seed_date_columns, window)
        del raw
        outputs = [(s.name, s.path, [seed.column(c) for c in s.file_column_names]) for s in fed]
        items = [(k, d.toordinal()) for k in range(factor) for d in seed.days]
        rows_per_day = len(seed.lines) / max(1, len(seed.days))
        slices = max(spark.sparkContext.defaultParallelism, int(len(items) * rows_per_day // TASK_ROWS) + 1)
        seed_bc = spark.sparkContext.broadcast(seed)
        try:
            done = (spark.sparkContext.parallelize(items, slices)
                    .mapPartitions(lambda part: write_days(part, seed_bc, outputs, str(landing), rng_seed))
                    .collect())
        finally:
            seed_bc.destroy()
        seconds = time.perf_counter() - started
        days = sorted({shift_years(d, k).isoformat() for k in range(factor) for d in seed.days})
        for s in fed:
            files = sum(n for name, n, _, _ in done if name == s.name)
            rows = sum(r for name, _, r, _ in done if name == s.name)
            counts[s.name] = {"files": files, "rows": rows, "seconds": round(seconds, 2), "days": days}
            together = f" (one pass with {', '.join(o.name for o in fed if o is not s)})" if len(fed) > 1 else ""
            log(f"[generate] ×{factor} {s.name}: {rows:,} rows, {files:,} files, {seconds:,.1f}s{together}")
    for source in dataset.sources.values():
        if source.daily or not source.seed_file:
            continue
        started = time.perf_counter()
        raw = read_seed_file(folder, source.seed_file, dataset.seed_archive)
        flights = next((s for s in seeds.values() if s.is_flights), None)
        if tuple(source.primary_key) == ("tailnum",) and flights is not None:
            raw = _with_new_planes(raw, flights, factor, rng_seed)
        _deliver(landing / source.path_for(), raw, SeedResult(source.name))
        rows = max(0, raw.count(b"\n") - 1 + (0 if raw.endswith(b"\n") or not raw else 1))
        seconds = time.perf_counter() - started
        counts[source.name] = {"files": 1, "rows": rows, "seconds": round(seconds, 2)}
        log(f"[generate] ×{factor} {source.name}: {rows:,} rows, 1 file, {seconds:,.1f}s")
    return counts


def _with_new_planes(raw: bytes, flights: SeedFile, factor: int, rng_seed: int) -> bytes:
    """planes.csv with, per copy k >= 1, a line for each of its new tails that planes lists: the
    attributes of the plane it copies under the new registration (a tail planes does not list
    stays unlisted, as its original is)."""
    lines = raw.rstrip(b"\n").split(b"\n")
    t = lines[0].split(SEP).index(b"tailnum")
    by_tail = {line.split(SEP)[t]: line.split(SEP) for line in lines[1:]}
    out = [raw if raw.endswith(b"\n") else raw + b"\n"]
    for k in range(1, factor):
        added = []
        for old, new in new_tails(flights, k, rng_seed).items():
            if old in by_tail:
                f = list(by_tail[old])
                f[t] = new
                added.append(SEP.join(f))
        out.append(b"\n".join(added) + b"\n" if added else b"")
    return b"".join(out)


def main(argv=None) -> dict:
    from bench.common import PeakMemory, bench_config, start_spark

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--factor", type=int, required=True)
    p.add_argument("--root", required=True, help="the lakehouse root; the files go to its landing folder")
    p.add_argument("--window", help="first,last day of 2013 to grow (default: the whole year)")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--out", help="write the counts, seconds and peak memory here as JSON")
    p.add_argument("--set", action="append", default=[], help="a configuration override key=value")
    args = p.parse_args(argv)
    window = tuple(date.fromisoformat(d) for d in args.window.split(",")) if args.window else None
    cfg = bench_config(args.root, *args.set)
    started = time.perf_counter()
    with PeakMemory() as mem:
        spark = start_spark(cfg, f"generate-x{args.factor}")
        counts = generate(spark, cfg, args.factor, window, args.seed)
        spark.stop()
    result = {"factor": args.factor, "landing": counts, "seconds": round(time.perf_counter() - started, 2),
              "memory": mem.result()}
    print(f"[generate] ×{args.factor}: {result['seconds']:,.1f}s, peak memory (MiB) {result['memory']}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result))
    return result


def generate_in_subprocess(root: Path, factor: int, window: tuple[date, date] | None, overrides=(),
                           rng_seed: int = 13) -> dict:
    """`main` in its own Python process (and so its own JVM): the benchmark that follows measures
    its own memory, not the generator's."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "generate.json"
        cmd = [sys.executable, "-m", "bench.generate", "--factor", str(factor), "--root", str(root),
               "--seed", str(rng_seed), "--out", str(out), *[f"--set={o}" for o in overrides],
               *(["--window", f"{window[0]},{window[1]}"] if window else [])]
        subprocess.run(cmd, check=True)
        return json.loads(out.read_text())


if __name__ == "__main__":
    # Through the module's importable name: the seed the executors unpickle must be a
    # bench.generate.SeedFile, not a __main__.SeedFile their Python workers cannot import.
    import bench.generate

    bench.generate.main()
