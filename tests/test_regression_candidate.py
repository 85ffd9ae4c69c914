"""The regression head's train stage end to end (pipelines/ml/regression_candidate.py) on a daily
series of one row a day: two years of bench/daily_feed.py's generated feed (the target is its
declared `demand - planned`, known the morning after), encoded into gold.model_input as the gold
stage encodes it. The network, the regression baselines and the naive forecasts are measured on
the same rows, and the bless rule decides."""
from __future__ import annotations

from datetime import timedelta

import pytest
import yaml

DAYS = 730
NAIVE = {"same_weekday": {"lag_days": 2, "group": ["dayofweek(date)"]},
         "two_weeks_before": {"lag_days": 14, "group": []}}


def write_daily_model_input(lakehouse, days, seed: int = 11) -> None:
    """gold.model_input (one row a day, split by the declaration's windows) and gold.feature_spec:
    the planned volume standardised on the train window, the site and the weekday as indices."""
    import numpy as np
    from pyspark.sql import types as T

    from bench import daily_feed

    train_days = int(len(days) * 0.75)
    validation_end = int(len(days) * 0.92)
    rows = list(daily_feed.feed_rows(days, seed))
    planned = np.array([plan[3] for plan, _ in rows])
    mean, std = planned[:train_days].mean(), planned[:train_days].std()
    sites = sorted(daily_feed.SITES)
    data = []
    for i, ((day, site, _, plan), (_, _, demand, _)) in enumerate(rows):
        split = "train" if i < train_days else "validation" if i < validation_end else "test"
        data.append((i, int(day.replace("-", "")), float((plan - mean) / std), sites.index(site) + 1,
                     days[i].weekday() + 1, float(demand > plan), float(demand - plan), split))
    schema = ("event_id long, day int, num_planned float, cat_site int, cat_weekday int, label float, "
              "target float, split string")
    lakehouse.table("gold.model_input").write(lakehouse.spark.createDataFrame(data, schema), mode="overwrite",
                                              partition_by=["split"])
    spec = [("num_planned", "numeric", [], 0), ("cat_site", "categorical", sites, 5),
            ("cat_weekday", "categorical", [str(d) for d in range(1, 8)], 8)]
    spec_schema = T.StructType([T.StructField("name", T.StringType()), T.StructField("kind", T.StringType()),
                                T.StructField("vocabulary", T.ArrayType(T.StringType())),
                                T.StructField("vocab_size", T.IntegerType())])
    lakehouse.table("gold.feature_spec").write(lakehouse.spark.createDataFrame(spec, spec_schema).coalesce(1),
                                               mode="overwrite")


@pytest.mark.slow
def test_the_regression_network_is_measured_against_baselines_and_naive_forecasts_and_blessed_by_mae(spark, tmp_path):
    from bench import daily_feed
    from pipelines.config import load_config
    from pipelines.ml import registry, results
    from pipelines.ml.regression import decide
    from pipelines.ml.regression_candidate import train_and_register_regression
    from pipelines.storage import Lakehouse

    days = [daily_feed.FIRST_DAY + timedelta(days=i) for i in range(DAYS)]
    conf = daily_feed.write_conf(tmp_path, days)
    declared = conf / "base" / "datasets" / f"{daily_feed.NAME}.yaml"
    # The dataset declares its own naive forecasts, beside the training mean and the last known value.
    declared.write_text(yaml.safe_dump({**yaml.safe_load(declared.read_text()),
                                        "training": {"naive_forecasts": NAIVE}}, sort_keys=False))
    with daily_feed.conf_root(conf):
        cfg = load_config("local", [f"lakehouse.root={tmp_path / 'lakehouse'}", f"pipeline.dataset={daily_feed.NAME}",
                                    "spark.master=local[2]", "training.head=regression", "training.num_proc=1",
                                    "training.batch_size=32", "training.epochs=30", "training.hidden_units=[16,8]",
                                    "training.dropout=0", "training.l2=0.0001", "training.learning_rate=0.003",
                                    "training.early_stopping_patience=5", "training.shuffle_buffer=1000",
                                    "nightly.baselines=[logreg,gbt]"])
        assert set(cfg.training.naive_forecasts) == set(NAIVE)
        lakehouse = Lakehouse.from_config(cfg, spark)
        write_daily_model_input(lakehouse, days)
        candidate = train_and_register_regression(cfg, spark, lakehouse, run_id="regression-test", run_date=days[-1])

    validation = {m["model"]: m["mae"] for m in candidate.metrics if m["split"] == "validation"}
    assert set(validation) == {"dnn", "linreg", "gbt", "naive_training_mean", "naive_last_known",
                               "naive_same_weekday", "naive_two_weeks_before"}
    assert {m["split"] for m in candidate.metrics} == {"train", "validation", "test"}
    assert all(m["rows"] > 0 and m["rmse"] >= m["mae"] > 0 for m in candidate.metrics)
    best_naive = min(v for k, v in validation.items() if k.startswith("naive_"))
    # The target of the issue: the network's validation MAE below the best naive forecast's.
    assert validation["dnn"] < best_naive, validation
    # The bless rule decided, and the registry and results.metrics hold what it decided on.
    entry = registry.entries(lakehouse)[-1]
    assert (entry.status, entry.reason) == decide(candidate.metrics) == (candidate.entry.status, candidate.entry.reason)
    assert entry.metric["validation_mae"] == pytest.approx(validation["dnn"])
    assert entry.metric["naive_same_weekday_validation_mae"] == pytest.approx(validation["naive_same_weekday"])
    written = {(r["model"], r["split"]): r["mae"] for r in results.read_metrics(lakehouse, "regression-test")}
    assert written[("gbt", "validation")] == pytest.approx(validation["gbt"])
