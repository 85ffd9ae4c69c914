"""`lakehouse-dl maintain`: compact small files and vacuum unreferenced ones (pipelines/ops/maintenance.py)."""
from __future__ import annotations

import sys


def add_commands(sub, common, dates) -> None:
    p = sub.add_parser("maintain", help="compact small files and vacuum files no kept version needs "
                                        "(holds the nightly lock; no Spark)")
    common(p)
    p.add_argument("--retention-hours", type=int, metavar="H",
                   help="delete unreferenced files older than this (default: lakehouse.vacuum_retention_hours)")
    p.add_argument("--keep-models", type=int, metavar="K",
                   help="keep the versions pinned by the serving, previous and challenger models and the last "
                        "K registered (default: lakehouse.keep_registered_models)")
    p.add_argument("--keep-reports", type=int, metavar="K",
                   help="delete the run reports but the newest K (default: lakehouse.keep_reports)")
    p.add_argument("--dry-run", action="store_true", help="say what would be compacted and deleted; change nothing")
    p.set_defaults(func=run_maintain)


def run_maintain(args, cfg) -> int:
    from pipelines.ops.maintenance import maintain
    from pipelines.ops.runs import new_run_id
    from pipelines.storage import Lakehouse, LakehouseLock, LockHeldError

    hours = cfg.lakehouse.vacuum_retention_hours if args.retention_hours is None else args.retention_hours
    keep = cfg.lakehouse.keep_registered_models if args.keep_models is None else args.keep_models
    if hours < 0:
        print(f"error: --retention-hours must be at least 0, got {hours}", file=sys.stderr)
        return 2
    reports = cfg.lakehouse.keep_reports if args.keep_reports is None else args.keep_reports
    if keep < 0 or reports < 0:
        print(f"error: --keep-models and --keep-reports must be at least 0, got {keep} and {reports}",
              file=sys.stderr)
        return 2
    lakehouse = Lakehouse.from_config(cfg)
    try:
        with LakehouseLock(cfg.lakehouse.root, "nightly", new_run_id("maintain"), cfg.lakehouse.lock_lease_seconds):
            maintain(lakehouse, hours, cfg.lakehouse.row_group_rows, dry_run=args.dry_run, keep_registered=keep,
                     keep_reports=reports)
    except LockHeldError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 3
    return 0
