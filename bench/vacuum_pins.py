"""Vacuum's cost of keeping the versions models pin, on an existing lakehouse (read only).

For each table, the versions `maintain` keeps for the kept models (`pinned_versions`), listed two
ways in a dry run: delta-rs's `vacuum(keep_versions=...)`, which loads a snapshot per version, and
`pipelines.storage.vacuum`, which reads them from one snapshot and the commits after it. Both must
list the same files; printed: the seconds of each and their ratio, per table and in all.

    python -m bench.vacuum_pins --root /tmp/year_dag/lakehouse/bundesliga [--retention-hours 168]

(The lakehouse of `python -m bench.year` is in `bench/results/year/lakehouse/<dataset>` unless it
was run with `--root`.)
"""
from __future__ import annotations

import argparse
import time

from bench.common import print_table, ratio, write_result


def measure(root: str, retention_hours: int, keep_registered: int | None) -> dict:
    from pipelines.ops.maintenance import pinned_versions
    from pipelines.storage import Lakehouse
    from pipelines.storage.delta_rs import DeltaRsEngine
    from pipelines.storage.vacuum import vacuum

    lakehouse = Lakehouse(root)
    pins = pinned_versions(lakehouse, keep_registered)
    rows = []
    for name in lakehouse.table_names():
        table = lakehouse.table(name)
        latest = table.version()
        keep = [v for v in pins.get(name, []) if v < latest]
        options = dict(retention_hours=retention_hours, enforce_retention_duration=False, full=True)
        started = time.perf_counter()
        by_delta_rs = DeltaRsEngine.open(table.path).vacuum(dry_run=True, keep_versions=keep or None, **options)
        delta_rs_s = time.perf_counter() - started
        started = time.perf_counter()
        ours = vacuum(DeltaRsEngine.open(table.path), retention_hours, True, keep, DeltaRsEngine.open)
        ours_s = time.perf_counter() - started
        expected = sorted(f for f in by_delta_rs if _exists(table.path, f))
        assert sorted(ours) == expected, f"{name}: the two lists differ"
        rows.append({"table": name, "versions": latest + 1, "kept": len(keep), "listed": len(ours),
                     "delta_rs_s": round(delta_rs_s, 3), "log_s": round(ours_s, 3),
                     "ratio": ratio(ours_s, delta_rs_s)})
    total = {"table": "all", "versions": sum(r["versions"] for r in rows), "kept": sum(r["kept"] for r in rows),
             "listed": sum(r["listed"] for r in rows),
             "delta_rs_s": round(sum(r["delta_rs_s"] for r in rows), 3), "log_s": round(sum(r["log_s"] for r in rows), 3)}
    total["ratio"] = ratio(total["log_s"], total["delta_rs_s"])
    return {"root": root, "retention_hours": retention_hours, "tables": rows, "total": total}


def _exists(table_path: str, relative: str) -> bool:
    import os

    from pipelines.storage.paths import local_path

    return os.path.exists(os.path.join(local_path(table_path), relative))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="a dataset's folder of a lakehouse (it holds its tables)")
    p.add_argument("--retention-hours", type=int, default=168)
    p.add_argument("--keep-registered", type=int, default=None, help="keep the last N registered models' pins")
    args = p.parse_args(argv)
    result = measure(args.root, args.retention_hours, args.keep_registered)
    print_table([*sorted(result["tables"], key=lambda r: -r["delta_rs_s"])[:10], result["total"]])
    write_result("vacuum_pins", result)


if __name__ == "__main__":
    main()
