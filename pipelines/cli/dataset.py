"""`lakehouse-dl dataset init` and `dataset check`: a new dataset's first hour. `init` drafts the
declaration from a sample of the delivered files, `check` is a dry run of a declaration over
them (no table written)."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from pipelines.cli.common import date_range, spark_for
from pipelines.config import ConfigError, load_config


def add_commands(sub, common, dates) -> None:
    """Add the `dataset` group: `init` and `check`."""
    p = sub.add_parser("dataset", help="draft a new dataset's declaration from its files, and check one (a dry run)")
    actions = p.add_subparsers(dest="dataset_command", metavar="ACTION")
    actions.required = True
    s = actions.add_parser("init", help="draft conf/base/datasets/NAME.yaml from a sample of the files under --landing")
    s.add_argument("name", metavar="NAME", help="the new dataset's name (lower case letters, digits and _)")
    s.add_argument("--landing", metavar="DIR",
                   help="the folder holding the dataset's files, one folder or file per source "
                        "(default: the dataset's landing folder, <lakehouse.landing>/NAME)")
    s.add_argument("--out", metavar="FILE", help="write the draft here (default: conf/base/datasets/NAME.yaml)")
    s.add_argument("--force", action="store_true", help="overwrite the file if it exists")
    common(s)
    s.set_defaults(func=run_init)

    s = actions.add_parser("check", help="a dry run of NAME's declaration over its delivered files: parsed, rejected, "
                                         "quarantined, duplicates and feed gaps per source; no table written")
    s.add_argument("name", metavar="NAME", help="the dataset: conf/base/datasets/NAME.yaml")
    s.add_argument("--json", action="store_true", help="print JSON instead of the report")
    common(s)
    dates(s)
    s.set_defaults(func=run_check)


def _landing_of(cfg, name: str) -> str:
    # cfg.lakehouse.landing is already the configured dataset's folder (<landing>/<dataset>);
    # NAME's lies beside it.
    base = cfg.lakehouse.landing.rstrip("/").rsplit("/", 1)[0]
    return f"{base}/{name}"


def run_init(args, cfg) -> int:
    from pipelines.config.loader import dataset_path
    from pipelines.datasets.draft import write_draft
    from pipelines.stages.draft import draft_dataset

    if not re.fullmatch(r"[a-z][a-z0-9_]*", args.name):
        print(f"error: {args.name!r} is not a dataset name (lower case letters, digits and _)", file=sys.stderr)
        return 1
    landing = _landing_of(cfg, args.name)
    out = Path(args.out) if args.out else dataset_path(args.name)
    if out.exists() and not args.force:
        print(f"error: {out} already exists; give --force to overwrite it, or --out another file", file=sys.stderr)
        return 1
    try:
        draft = draft_dataset(args.name, Path(args.landing or landing))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_draft(draft, out, landing, force=args.force)
    for s in draft.sources:
        kind = f"daily feed, {s.files} files" if s.daily else "reference table"
        print(f"[dataset init] {s.name}: {s.path} ({kind}; read {s.files_read}, {s.rows_read:,} records): "
              f"{len(s.columns)} columns, primary key [{', '.join(s.primary_key)}]")
    print(f"[dataset init] wrote {out}: fill in its TODOs (prediction, features), then "
          f"`lakehouse-dl dataset check {args.name}`")
    return 0


def run_check(args, cfg) -> int:
    from pipelines.datasets import dataset_for
    from pipelines.stages.check import check_dataset, render_check

    try:
        cfg = load_config(args.env, [f"pipeline.dataset={args.name}", *args.overrides])
        dataset = dataset_for(cfg)
    except ConfigError as exc:
        print(f"the declaration does not load: {exc}", file=sys.stderr)
        return 1
    report = check_dataset(cfg, spark_for(cfg, "dataset check"), dataset, date_range(args) or None)
    print(json.dumps(report, indent=2, default=str) if args.json else render_check(report))
    return 0 if report["ok"] else 1
