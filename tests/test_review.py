"""The reviewer's tables (pipelines/ml/review.py) on small literal DataFrames."""
from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from model_input_fixtures import training_config


def test_every_model_is_measured_on_every_slice_of_its_test_rows(spark, tmp_path):
    from pipelines.ml.review import slice_rows
    from pipelines.storage import Lakehouse

    lakehouse = Lakehouse(str(tmp_path / "lakehouse" / "nycflights13"), spark, "delta-rs")
    cfg = training_config(lakehouse.root, "pipeline.splits.train=[2013-01-01,2013-10-31]",
                          "pipeline.splits.validation=[2013-11-01,2013-11-30]",
                          "pipeline.splits.test=[2013-12-01,2013-12-31]")
    rng = np.random.default_rng(3)
    n = 600
    # November rows (validation) are in gold.features too; the slices read the test window's days.
    features = pd.DataFrame({"flight_id": np.arange(n, dtype=np.int64),
                             "date": [date(2013, 11 + (i % 2), 1 + i % 28) for i in range(n)],
                             "origin": rng.choice(["EWR", "JFK", "LGA"], n), "carrier": rng.choice(["AA", "UA"], n),
                             "sched_hour": rng.integers(5, 23, n).astype(np.int32)})
    lakehouse.table("gold.features").write(spark.createDataFrame(features), mode="overwrite")
    test = features[[d.month == 12 for d in features["date"]]].copy()
    test["label"] = rng.integers(0, 2, len(test)).astype(float)
    # Scores on a 1/1000 grid, so the binned AUC is the exact one.
    scores = {"dnn": (0.3 * test["label"] + rng.uniform(0, 0.7, len(test))).round(3),
              "gbt": rng.uniform(0, 1, len(test)).round(3)}
    tests = {m: spark.createDataFrame(test.assign(score=s)[["flight_id", "label", "score"]]) for m, s in scores.items()}

    rows = slice_rows(cfg, lakehouse, tests)
    by = {(r["model"], r["slice"], r["value"]): r for r in rows}
    assert {r["slice"] for r in rows} == {"origin", "carrier", "hour_band"} and {r["model"] for r in rows} == {"dnn", "gbt"}
    for model, score in scores.items():
        for value, part in test.assign(score=score).groupby("origin"):
            r = by[(model, "origin", value)]
            assert (r["rows"], r["positives"]) == (len(part), int(part["label"].sum()))
            assert r["mean_score"] == pytest.approx(part["score"].mean())
            assert r["auc"] == pytest.approx(roc_auc_score(part["label"], part["score"]), abs=1e-9)
        assert sum(r["rows"] for k, r in by.items() if k[:2] == (model, "hour_band")) == len(test)
