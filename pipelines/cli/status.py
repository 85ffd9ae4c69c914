"""`lakehouse-dl status`: the last runs, the serving model and why, live metrics, feed gaps and
table sizes of a dataset's lakehouse, in one screen (`--json` for scripts)."""
from __future__ import annotations

import json


def add_commands(sub, common, dates) -> None:
    """Add the `status` subcommand."""
    p = sub.add_parser("status", help="what the nightly did, which model serves and why, live metrics, feed gaps, tables")
    common(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of the screen")
    p.add_argument("--runs", type=int, default=5, help="how many of the last runs to show (default 5)")
    p.set_defaults(func=run_status)


def run_status(args, cfg) -> int:
    from pipelines.cli.common import spark_for
    from pipelines.report.status import gather_status, render_status
    from pipelines.storage import Lakehouse

    report = gather_status(cfg, Lakehouse.from_config(cfg, spark_for(cfg, "status")), runs=args.runs)
    print(json.dumps(report, indent=2, default=str) if args.json else render_status(report))
    return 0
