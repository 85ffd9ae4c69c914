"""`lakehouse-dl tune`: the hyper-parameter search over the backtest folds (pipelines/ml/tuning.py);
every trial lands in results.trials and the nightly trains with the best one."""
from __future__ import annotations

from pipelines.cli.common import spark_for
from pipelines.config.settings import BASELINES


def add_commands(sub, common, dates) -> None:
    """Add the `tune` subcommand."""
    p = sub.add_parser("tune", help="search hyper-parameters (Hyperopt SparkTrials) on the backtest folds of the "
                                    "pinned gold.model_input and record every trial in results.trials")
    common(p)
    p.add_argument("--models", help=f"comma-separated dnn,{','.join(BASELINES)} (default: every model of tuning.space)")
    p.add_argument("--max-evals", type=int, help="trials per model (default: tuning.max_evals)")
    p.add_argument("--table-version", type=int, help="gold.model_input version (default: the latest)")
    p.set_defaults(func=run_tune)


def run_tune(args, cfg) -> int:
    from pipelines.ml.tuning import best_trials, tune
    from pipelines.storage import Lakehouse

    spark = spark_for(cfg, "tune")
    lakehouse = Lakehouse.from_config(cfg, spark)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    rows = tune(cfg, spark, lakehouse, models=models, max_evals=args.max_evals, table_version=args.table_version)
    print(f"{len(rows)} trial(s) written to results.trials "
          f"({sum(r['status'] == 'ok' for r in rows)} ok, {sum(r['seconds'] for r in rows):.0f}s of trial time)")
    for model, best in best_trials(cfg, lakehouse).items():
        print(f"best {model}: backtest AUC {best['mean_auc']:.4f} ± {best['std_auc']:.4f}  {best['params']}")
    return 0
