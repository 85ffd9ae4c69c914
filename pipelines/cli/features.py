"""`lakehouse-dl features`: silver → gold.features, gold.feature_spec, gold.model_input."""
from __future__ import annotations

from pipelines.cli.common import date_range, spark_for


def add_commands(sub, common, dates) -> None:
    """Add the `features` subcommand to the `lakehouse-dl` parser."""
    p = sub.add_parser(
        "features",
        help="build gold: readable features, the feature spec (fitted on the training window) and model input",
        description="Build gold.features for the dates given (every date of the prediction source's silver table when none), "
                    "refit gold.feature_spec when it no longer matches the training window, and rewrite "
                    "the affected splits of gold.model_input.")
    common(p)
    dates(p)
    p.add_argument("--refit-spec", action="store_true",
                   help="fit gold.feature_spec again even when the stored one still matches the training window")
    p.set_defaults(func=run_features)


def run_features(args, cfg) -> int:
    from pipelines.stages.gold import FeaturesError, build_features

    days = date_range(args) or None
    spark = spark_for(cfg, "features")
    try:
        build_features(cfg, spark, dates=days, refit_spec=args.refit_spec)
    except FeaturesError as exc:
        print(f"error: {exc}")
        return 1
    return 0
