"""`lakehouse-dl lineage TABLE`: rows of a results, gold, silver or bronze table traced back, version
by version, to the landing file, checksum and line of every raw record they came from."""
from __future__ import annotations

import json

from pipelines.cli.common import spark_for


def add_commands(sub, common, dates) -> None:
    """Add the `lineage` subcommand."""
    p = sub.add_parser("lineage", help="trace rows of a table (results.predictions, gold.*, silver.*, bronze.*) "
                                       "back to their model, table versions and raw landing lines")
    common(p)
    p.add_argument("table", help="the table whose rows to trace, for example results.predictions")
    p.add_argument("--where", help="a Spark SQL condition choosing the rows, for example \"date = '2013-12-31'\"")
    p.add_argument("--limit", type=int, default=1, help="rows to trace (default 1)")
    p.add_argument("--json", action="store_true", help="print the chains as JSON")
    p.set_defaults(func=run_lineage)


def run_lineage(args, cfg) -> int:
    from pipelines.lineage.trace import LineageError, trace
    from pipelines.storage import Lakehouse

    spark = spark_for(cfg, "lineage")
    try:
        chains = trace(cfg, Lakehouse.from_config(cfg, spark), args.table, where=args.where, limit=args.limit)
    except LineageError as exc:
        print(f"lineage: {exc}")
        return 1
    if args.json:
        print(json.dumps([c.to_dict() for c in chains], indent=2, default=str))
    elif not chains:
        print(f"no row of {args.table}" + (f" where {args.where}" if args.where else ""))
    else:
        print("\n\n".join("\n".join(c.lines()) for c in chains))
    return 0
