"""`lakehouse-dl tables` and `config`: what the lakehouse holds and what the configuration is."""
from __future__ import annotations

import json


def add_commands(sub, common, dates) -> None:
    """Add the `tables` and `config` subcommands."""
    p = sub.add_parser("tables", help="list every table: layer, version, rows, files, size, last operation")
    common(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_tables)

    p = sub.add_parser("config", help="print the merged, validated configuration")
    common(p)
    p.set_defaults(func=run_config)


def run_tables(args, cfg) -> int:
    from pipelines.report.status import human_size
    from pipelines.storage import Lakehouse, tables_json

    infos = Lakehouse.from_config(cfg).tables()
    if args.json:
        print(tables_json(infos))
        return 0
    if not infos:
        print(f"no tables yet under {cfg.lakehouse.root}")
        return 0
    header = f"{'table':32} {'version':>7} {'rows':>12} {'files':>6} {'size':>10}  last operation"
    print(header)
    print("-" * len(header))
    for i in infos:
        print(f"{i.name:32} {i.version:>7} {i.rows:>12,} {i.files:>6} {human_size(i.size_bytes):>10}  {i.last_operation} at {i.last_modified}")
    return 0


def run_config(args, cfg) -> int:
    print(json.dumps(cfg.to_dict(), indent=2))
    return 0
