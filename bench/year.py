"""A year of nightlies: `backfill` over consecutive days of the Bundesliga slice, the real nightly
of every day (the landing stage delivers each day's files from the package, as a supplier would),
a model retrained every `--retrain-every` days. Printed:

- the seconds of each night (and of the `maintain` after it, as the Airflow DAG runs it), the
  nights that trained apart and the others by kind, quiet nights
  (no file arrived: a league's weekday) and nights with files: the first night of each kind
  against its last, and the median of the first nights against the median of the last ones
  (issue 28's goal: within 1.2x: a night's cost does not grow with the days behind it);
- registration at the end: the pins of the latest model from the commits' lineage records, and
  the registry's rewrite (goal: <= 5 s);
- after `maintain` (no retention, `lakehouse.keep_registered_models`), the data files on disk
  against one copy of the tables' latest versions (goal: <= 2x).

    python -m bench.year [--days 365] [--start 2005-07-01] [--retrain-every 30] [--root DIR] [--set K=V]
                         [--tombstone-seconds S] [--no-nightly-maintain]

`tests/test_year.py` runs it in CI; `make bench-year` over 365 days.
"""
from __future__ import annotations

import argparse
import time
from datetime import date, timedelta
from pathlib import Path

from bench.common import bench_config, folder_bytes, median, print_table, ratio, scratch_dir, start_spark, write_result

NAME = "year"
START = date(2005, 7, 1)
GOAL_GROWTH, GOAL_REGISTRATION_S, GOAL_STORAGE = 1.2, 5.0, 2.0
# A season to train on, one to validate; the nights run through the next one. The network and the
# backtest are the test slice's (tests/test_bundesliga.py): the figures are about the nights'
# fixed costs, not the model.
SLICE = [
    "pipeline.dataset=bundesliga",
    "pipeline.splits.train=[2003-07-01,2004-06-30]",
    "pipeline.splits.validation=[2004-07-01,2005-06-30]",
    "pipeline.splits.test=[2005-07-01,2006-06-30]",
    "training.epochs=4", "training.batch_size=32", "training.num_proc=2", "training.wide=true",
    "training.early_stopping_patience=2", "lakehouse.model_input_row_group_rows=32",
    "nightly.baselines=[logreg]", "spark.master=local[2]", "spark.shuffle_partitions=2",
    "backtest.folds=2", "backtest.epochs=2", "backtest.min_fold_rows=100",
]
# The nights compared at each end of the run (their median), besides the second and the last.
ENDS = 5


def run(root: Path, start: date, days: int, retrain_every: int, log=print, spark=None,
        overrides: tuple[str, ...] = (), tombstone_seconds: int | None = None, nightly_maintain: bool = True) -> dict:
    """The nightly of each of `days` days from `start` on the lakehouse at `root`, then the
    registration and the storage figures; returns the figures (see the module's doc). `overrides`
    (`key=value`) go after the slice's settings (a test's cheaper training, say);
    `tombstone_seconds`, the tables' tombstone retention (`expire_tombstones`); `nightly_maintain`,
    `maintain` after each night as the Airflow DAG runs it (the week's retention; timed apart)."""
    from pipelines.catalog import FEATURE_SPEC, MODEL_INPUT
    from pipelines.flows.nightly import run_nightly
    from pipelines.lineage.pins import upstream
    from pipelines.ml import registry
    from pipelines.ops.maintenance import maintain
    from pipelines.storage import Lakehouse

    cfg = bench_config(root, *SLICE, f"nightly.retrain_every_days={retrain_every}", *overrides)
    spark = spark or start_spark(cfg, NAME)
    lakehouse = Lakehouse.from_config(cfg, spark)

    def maintain_all(retention_hours: int) -> None:
        maintain(lakehouse, retention_hours=retention_hours, row_group_rows=cfg.lakehouse.row_group_rows,
                 keep_registered=cfg.lakehouse.keep_registered_models, keep_reports=cfg.lakehouse.keep_reports)

    nights, shortened = [], set()
    for i in range(days):
        day = start + timedelta(days=i)
        started = time.perf_counter()
        record = run_nightly(cfg, spark, day)
        seconds = time.perf_counter() - started
        trained = record.stage_rows.get("train", 0) > 0
        nights.append({"night": i + 1, "date": day.isoformat(), "seconds": round(seconds, 2), "trained": trained,
                       "train_s": round(record.stage_seconds.get("train", 0.0), 2),
                       "ingested": record.stage_rows.get("ingest", 0),
                       "stages": {k: round(v, 2) for k, v in record.stage_seconds.items()}})
        if nightly_maintain:
            started = time.perf_counter()
            maintain_all(cfg.lakehouse.vacuum_retention_hours)
            nights[-1]["maintain_s"] = round(time.perf_counter() - started, 2)
        log(f"[{NAME}] night {i + 1}/{days} {day}: {seconds:.1f}s{' (trained)' if trained else ''}"
            + (f", maintain {nights[-1]['maintain_s']:.1f}s" if nightly_maintain else ""))
        if tombstone_seconds is not None:
            expire_tombstones(lakehouse, tombstone_seconds, shortened)

    # Registration: the pins of the latest model, from the records, and the registry's rewrite.
    latest = registry.latest(lakehouse)
    started = time.perf_counter()
    pins = upstream(lakehouse, {MODEL_INPUT: latest.training_version, FEATURE_SPEC: latest.feature_spec_version})
    pins_s = time.perf_counter() - started
    started = time.perf_counter()
    registry.register(lakehouse, latest)
    register_s = time.perf_counter() - started

    tables_root = Path(lakehouse.root)
    before = folder_bytes(tables_root)
    maintain_all(0)
    after = folder_bytes(tables_root)
    reports = sum(f.stat().st_size for f in (tables_root / "reports").rglob("*") if f.is_file())
    one_copy = sum(t.size_bytes for t in lakehouse.tables())

    # A night's cost depends on what arrived (a match day's files, or none): nights are compared
    # with nights of their own kind, training nights apart.
    kinds = {kind: [n for n in nights if not n["trained"] and (n["ingested"] > 0) == (kind == "delivery")]
             for kind in ("quiet", "delivery")}
    figures = {"days": days, "start": start.isoformat(), "retrain_every": retrain_every,
               "nights": nights, "trainings": sum(n["trained"] for n in nights)}
    for kind, plain in kinds.items():
        plain = [n for n in plain if n["night"] >= 2]
        first, last = plain[0] if plain else None, plain[-1] if plain else None
        first_ends, last_ends = [n["seconds"] for n in plain][:ENDS], [n["seconds"] for n in plain][-ENDS:]
        figures.update({
            f"{kind}_nights": len(plain),
            f"{kind}_first_s": first and first["seconds"], f"{kind}_last_s": last and last["seconds"],
            f"{kind}_last/first": ratio(last and last["seconds"], first and first["seconds"]),
            f"{kind}_last/first_median": (ratio(median(last_ends), median(first_ends))
                                          if len(plain) >= 2 * ENDS else None),
            # Medians by quarter of the run, of the night and of each stage: where growth is.
            f"{kind}_quarters": quarter_medians([n["seconds"] for n in plain]),
            f"{kind}_stage_quarters": {stage: quarter_medians([n["stages"].get(stage, 0.0) for n in plain])
                                       for stage in (plain[0]["stages"] if plain else {})},
            f"{kind}_maintain_quarters": quarter_medians([n["maintain_s"] for n in plain if "maintain_s" in n]),
        })
    return {
        **figures,
        "models_registered": len(registry.entries(lakehouse)),
        "versions_pinned": sum(len(v) for v in pins.values()), "pins_s": round(pins_s, 3),
        "register_s": round(register_s, 3), "registration_s": round(pins_s + register_s, 3),
        "bytes_before_maintain": before, "bytes_after_maintain": after, "bytes_one_copy": one_copy,
        "storage/one_copy": ratio(after, one_copy), "reports_bytes_after_maintain": reports,
    }


def expire_tombstones(lakehouse, seconds: int, done: set[str]) -> None:
    """The bench's compressed time, untimed: a checkpoint keeps a removed file's tombstone for the
    table's `delta.deletedFileRetentionDuration`, a week, a handful of a real year's nights; the
    bench's year lasts an hour, so its checkpoints would carry every tombstone of the year. Give each
    table, once it exists, a retention of `seconds`: about a week of the bench's nights. (Vacuum
    deletes the files whose tombstone went too: `Table.vacuum`.)"""
    from pipelines.storage.delta_rs import DeltaRsEngine

    for name in lakehouse.table_names():
        if name not in done:
            DeltaRsEngine.open(lakehouse.table(name).path).alter.set_table_properties(
                {"delta.deletedFileRetentionDuration": f"interval {seconds} seconds"})
            done.add(name)


def quarter_medians(values: list[float]) -> list[float] | None:
    """The medians of the four quarters of `values` (in order), or None for fewer than 4."""
    if len(values) < 4:
        return None
    bounds = [round(len(values) * q / 4) for q in range(5)]
    return [round(median(values[a:b]), 2) for a, b in zip(bounds, bounds[1:])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--start", type=date.fromisoformat, default=START)
    parser.add_argument("--retrain-every", type=int, default=30)
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting after the slice's (backtest.min_lift=-1: the network is blessed and scores)")
    parser.add_argument("--no-nightly-maintain", action="store_true",
                        help="no `maintain` after each night (the DAG runs it; the runs before 2026-12-07 did not)")
    parser.add_argument("--tombstone-seconds", type=int, default=None,
                        help="the tables' tombstone retention, a week of the bench's nights (60: 7 nights of ~8 s); "
                             "Delta's week when left out")
    args = parser.parse_args(argv)
    root = args.root or scratch_dir(NAME) / "lakehouse"
    figures = run(root, args.start, args.days, args.retrain_every, overrides=tuple(args.set),
                  tombstone_seconds=args.tombstone_seconds, nightly_maintain=not args.no_nightly_maintain)
    print_table([{k: v for k, v in n.items()} for n in figures["nights"] if n["trained"]])
    summary = []
    for kind in ("quiet", "delivery"):
        n = figures[f"{kind}_nights"]
        summary += [
            {"figure": f"{kind} night: last / first ({n} nights)", "value": figures[f"{kind}_last/first"],
             "goal": f"<= {GOAL_GROWTH}", "met": _met(figures[f"{kind}_last/first"], GOAL_GROWTH)},
            {"figure": f"{kind} night: median of the last {ENDS} / first {ENDS}",
             "value": figures[f"{kind}_last/first_median"], "goal": f"<= {GOAL_GROWTH}",
             "met": _met(figures[f"{kind}_last/first_median"], GOAL_GROWTH)}]
    summary += [
        {"figure": "registration s (pins + registry)", "value": figures["registration_s"],
         "goal": f"<= {GOAL_REGISTRATION_S}", "met": _met(figures["registration_s"], GOAL_REGISTRATION_S)},
        {"figure": "storage after maintain / one copy", "value": figures["storage/one_copy"],
         "goal": f"<= {GOAL_STORAGE}", "met": _met(figures["storage/one_copy"], GOAL_STORAGE)},
    ]
    print(f"{figures['days']} nights from {figures['start']}, {figures['trainings']} trainings, "
          f"{figures['quiet_nights']} quiet nights (no file) from {figures['quiet_first_s']} s to "
          f"{figures['quiet_last_s']} s, {figures['delivery_nights']} nights with files from "
          f"{figures['delivery_first_s']} s to {figures['delivery_last_s']} s, "
          f"{figures['versions_pinned']} versions pinned by the latest model")
    print_table(summary)
    print_table([{"nights": kind, "part": part, **{f"Q{i + 1} s": v for i, v in enumerate(values)}}
                 for kind in ("quiet", "delivery") if figures[f"{kind}_quarters"]
                 for part, values in [("night", figures[f"{kind}_quarters"]),
                                      *((stage, q) for stage, q in figures[f"{kind}_stage_quarters"].items() if q),
                                      *([("maintain (after)", figures[f"{kind}_maintain_quarters"])]
                                        if figures[f"{kind}_maintain_quarters"] else [])]])
    command = " ".join(["python -m bench.year", f"--days {args.days}", f"--start {args.start}",
                        f"--retrain-every {args.retrain_every}", *(f"--set {kv}" for kv in args.set),
                        *([f"--tombstone-seconds {args.tombstone_seconds}"] if args.tombstone_seconds is not None else []),
                        *(["--no-nightly-maintain"] if args.no_nightly_maintain else [])])
    write_result(NAME, figures, command=command)
    return 0


def _met(value, goal: float) -> str:
    return "?" if value is None else ("met" if value <= goal else "missed")


if __name__ == "__main__":
    raise SystemExit(main())
