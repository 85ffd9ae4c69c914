"""`lakehouse-dl train`: train on a pinned gold.model_input version, then fit the baselines on the
same rows and print their validation AUC beside the model's (the regression head: the MAE of the
network, the regression baselines and the naive forecasts on validation)."""
from __future__ import annotations

import json

from pipelines.cli.common import spark_for
from pipelines.config.settings import BASELINES, REGRESSION


def add_commands(sub, common, dates) -> None:
    """Add the `train` subcommand."""
    p = sub.add_parser("train", help="train the model on a pinned gold.model_input version "
                                     "(Horovod on Spark when training.num_proc > 1) and compare it with baselines")
    common(p)
    p.add_argument("--table-version", type=int, help="gold.model_input version to train on (default: the latest)")
    p.add_argument("--spec-version", type=int, help="gold.feature_spec version (default: the latest)")
    p.add_argument("--model-version", help="name of the model version; give a failed run's to resume it")
    p.add_argument("--baselines", help=f"comma-separated {','.join(BASELINES)}, or 'none' (default: training.baselines)")
    p.add_argument("--json", action="store_true", help="also print the training result as JSON")
    p.set_defaults(func=run_train)


def run_train(args, cfg) -> int:
    from pipelines.ml.candidate import compare_with_baselines
    from pipelines.ml.training import train
    from pipelines.storage import Lakehouse

    kinds = cfg.training.baselines if args.baselines is None else [
        k.strip() for k in args.baselines.split(",") if k.strip() and k.strip() != "none"]
    spark = spark_for(cfg, "train")
    result = train(cfg, spark, model_version=args.model_version, table_version=args.table_version,
                   spec_version=args.spec_version)
    lakehouse = Lakehouse.from_config(cfg, spark)
    baselines = compare_with_baselines(cfg, spark, lakehouse, result, kinds)
    for line in summary_lines(result, baselines):
        print(line)
    if cfg.training.head == REGRESSION and kinds:
        # The regression head's bar: its baselines and the naive forecasts, MAE on validation.
        from pipelines.ml.regression_candidate import mae_lines, measure, regression_kinds

        for line in mae_lines(measure(cfg, spark, lakehouse, result, regression_kinds(kinds), splits=("validation",)).metrics):
            print(line.removeprefix("[train] "))
    if args.json:
        fitted_free = {kind: {k: v for k, v in b.items() if k != "model"} for kind, b in baselines.items()}
        print(json.dumps({**result.to_dict(), "baselines": fitted_free}, indent=2, default=str))
    return 0


def summary_lines(result, baselines: dict[str, dict]) -> list[str]:
    """The closing summary: versions read, model version and path, best epoch, wall time, AUCs."""
    versions = ", ".join(f"{t} v{v}" for t, v in result.table_versions.items())
    best = result.best_metrics
    metric = "auc" if "val_auc" in best else "mae"
    lines = [
        f"tables read: {versions} (train {result.rows['train']:,} rows, validation {result.rows['validation']:,} rows)",
        f"model {result.model_version}: {result.model_path}",
        f"best epoch {result.best_epoch} of {result.epochs_run}"
        f"{' (stopped early)' if result.stopped_early else ''}"
        f"{f', resumed after epoch {result.initial_epoch}' if result.initial_epoch else ''}: "
        f"val_loss {best.get('val_loss', float('nan')):.4f}  val_{metric} {best.get('val_' + metric, float('nan')):.4f}",
        f"{result.samples_per_sec:,.0f} samples/s summed over {result.num_proc} process(es); "
        f"wall time {result.wall_seconds:.1f}s",
    ]
    if baselines:
        compared = [f"model {best.get('val_auc', float('nan')):.4f}"]
        compared += [f"{kind} {b['val_auc']:.4f}" for kind, b in baselines.items()]
        lines.append("validation AUC: " + " | ".join(compared))
    return lines
