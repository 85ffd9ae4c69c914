"""`lakehouse-dl reproduce MODEL_VERSION`: train a registered model again at the table versions,
configuration and number of processes it pins, and say what differs (`pipelines.ml.reproduce`)."""
from __future__ import annotations

import json
import sys

from pipelines.cli.common import spark_for


def add_commands(sub, common, dates) -> None:
    """Add the `reproduce` subcommand."""
    p = sub.add_parser("reproduce", help="train a registered model again from what the registry pins and compare "
                                         "validation AUC and weights; exit 1 when the AUC differs by more than 1e-4")
    common(p)
    p.add_argument("model_version", metavar="MODEL_VERSION", help="a model version of results.models")
    p.add_argument("--json", action="store_true", help="also print the comparison as JSON")
    p.set_defaults(func=run_reproduce)


def run_reproduce(args, cfg) -> int:
    from pipelines.ml.reproduce import ReproductionError, reproduce

    try:
        result = reproduce(cfg, spark_for(cfg, "reproduce"), args.model_version)
    except ReproductionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in summary_lines(result):
        print(line)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    return 0 if result.auc_matches else 1


def summary_lines(r) -> list[str]:
    """Versions read, the two AUCs, the weights, each difference, the verdict."""
    from pipelines.ml.reproduce import AUC_TOLERANCE

    versions = ", ".join(f"{t} v{v}" for t, v in r.table_versions.items())
    weights = ("not compared" if r.weights_max_difference is None
               else f"max |difference| {r.weights_max_difference:.3g} ({'equal' if r.weights_equal else 'different'})")
    lines = [
        f"model {r.model_version} trained again as {r.reproduced_as} on {versions}, "
        f"{r.num_proc} process(es), {r.device}",
        f"validation AUC: registered {r.registered_auc:.6f}, reproduced {r.reproduced_auc:.6f} "
        f"(difference {r.auc_difference:.2g}, tolerance {AUC_TOLERANCE:g}); the registered model measured now "
        f"{r.registered_auc_now:.6f}",
        f"weights: {weights}",
    ]
    lines += [f"  differs: {d}" for d in r.differences]
    lines += [f"  unreadable pin: {u}" for u in r.unreadable_pins]
    lines.append(r.explanation())
    return lines
