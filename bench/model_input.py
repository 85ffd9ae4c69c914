"""The `gold.model_input` the training benchmarks read: the real one of a lakehouse when it has
one, else a synthetic one as wide as the real feature set (built from tests/model_input_fixtures.py).

Either way the benchmarks get a scratch lakehouse of their own, so the models they train are
written there and never into the lakehouse they read.
"""
from __future__ import annotations

import os
import sys
from datetime import date
from pathlib import Path

from bench.common import REPO

# Sizes of the real vocabularies (2013's training window) plus index 0, so the embeddings are as
# large as the real model's.
REAL_VOCAB_SIZES = {"cat_carrier": 17, "cat_origin": 4, "cat_dest": 105, "cat_route": 224,
                    "cat_sched_hour": 21, "cat_weekday": 8, "cat_plane_engine": 7, "cat_plane_type": 4}


def real_columns(cfg) -> tuple[list[str], dict[str, int]]:
    """The numeric model columns the real features produce (flags included) and the categorical
    ones with their vocabulary sizes, from pipelines/datasets/features/nycflights13.py and the dataset YAML."""
    from pipelines.stages.gold import model_columns

    numeric, categorical = [], {}
    for col in model_columns(cfg):
        if col.kind == "numeric":
            numeric.append(f"num_{col.source}")
            if col.flag:
                numeric.append(f"num_{col.source}_missing")
        else:
            categorical[f"cat_{col.source}"] = REAL_VOCAB_SIZES.get(f"cat_{col.source}", 10)
    return numeric, categorical


def prepare(spark, cfg, real_root: str | None, rows: dict[str, int], seed: int = 7):
    """A Lakehouse at `cfg.lakehouse.root` holding gold.model_input and gold.feature_spec.

    When `real_root` holds gold.model_input, its two gold tables are linked in (read in place);
    otherwise a synthetic table of `rows` per split is written. Returns (lakehouse, description).
    """
    from pipelines.storage import Lakehouse

    lh = Lakehouse.from_config(cfg, spark)
    if real_root and Lakehouse(real_root).table("gold.model_input").exists():
        real = Lakehouse(str(Path(real_root).resolve()))   # the links must not be relative
        for name in ("gold.model_input", "gold.feature_spec"):
            target = Path(lh.path(name))
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.symlink(real.path(name), target)
        table = lh.table("gold.model_input")
        return lh, {"model_input": "real", "root": str(real_root), "version": table.version(),
                    "rows": table.count()}
    write_synthetic(lh, cfg, rows, seed)
    numeric, categorical = real_columns(cfg)
    return lh, {"model_input": "synthetic", "rows_per_split": rows, "numeric_columns": len(numeric),
                "categorical_columns": len(categorical),
                "why": f"no gold.model_input under {real_root}" if real_root else "no --root given"}


def write_synthetic(lh, cfg, rows: dict[str, int], seed: int = 7) -> None:
    """gold.model_input (partitioned by split, row groups of lakehouse.model_input_row_group_rows) and
    gold.feature_spec with the real model's columns: the fixture's learnable columns stand in for
    distance, the scheduled time, temperature, carrier and origin; the rest are noise of the same types."""
    import numpy as np
    import pandas as pd
    from pyspark.sql import types as T

    sys.path.insert(0, str(REPO))
    from tests.model_input_fixtures import model_input_rows

    numeric, categorical = real_columns(cfg)
    stand_in = {"num_distance": "num_distance", "num_sched_minute_of_day": "num_dep_hour",
                "num_temp": "num_temp", "num_temp_missing": "num_temp_missing",
                "cat_carrier": "cat_carrier", "cat_origin": "cat_origin"}
    frames, next_id = [], 0
    for i, (split, n) in enumerate(rows.items()):
        base = model_input_rows(n, seed + i, first_flight_id=next_id)
        rng = np.random.default_rng(seed + 100 + i)
        frame = {"flight_id": base["flight_id"], "day": base["day"]}
        for name in numeric:
            frame[name] = (base[stand_in[name]] if name in stand_in else
                           ((rng.random(n) < 0.1) if name.endswith("_missing") else rng.normal(size=n)).astype(np.float32))
        for name, size in categorical.items():
            frame[name] = base[stand_in[name]] if name in stand_in else rng.integers(0, size, n).astype(np.int32)
        frame.update(label=base["label"], target=base["target"])
        frame = pd.DataFrame(frame)
        frame["split"] = split
        frames.append(frame)
        next_id += n
    data = pd.concat(frames, ignore_index=True)
    schema = T.StructType([
        T.StructField("flight_id", T.LongType(), False), T.StructField("day", T.IntegerType(), False),
        *[T.StructField(c, T.FloatType(), False) for c in numeric],
        *[T.StructField(c, T.IntegerType(), False) for c in categorical],
        T.StructField("label", T.FloatType(), False), T.StructField("target", T.FloatType(), False),
        T.StructField("split", T.StringType(), False)])
    spark = lh.spark
    df = spark.createDataFrame(data[[f.name for f in schema.fields]], schema)
    # Files roll over between Arrow batches only: batches of one row group keep row groups whole.
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    previous = spark.conf.get(key)
    spark.conf.set(key, str(cfg.lakehouse.model_input_row_group_rows))
    try:
        lh.table("gold.model_input").write(df, mode="overwrite", partition_by=["split"],
                                           row_group_rows=cfg.lakehouse.model_input_row_group_rows)
    finally:
        spark.conf.set(key, previous)

    window = {"train_start": date(2013, 1, 1), "train_end": date(2013, 9, 30)}
    spec = [{"position": i, "name": n, "kind": "numeric", "source": n[4:], "vocabulary": [], "vocab_size": 0,
             "mean": 0.0, "std": 1.0, **window} for i, n in enumerate(numeric)]
    spec += [{"position": len(numeric) + i, "name": n, "kind": "categorical", "source": n[4:],
              "vocabulary": [f"v{j}" for j in range(1, size)], "vocab_size": size, "mean": None, "std": None, **window}
             for i, (n, size) in enumerate(categorical.items())]
    spec_schema = ("position int, name string, kind string, source string, vocabulary array<string>, "
                   "vocab_size int, mean double, std double, train_start date, train_end date")
    lh.table("gold.feature_spec").write(spark.createDataFrame(spec, spec_schema).coalesce(1), mode="overwrite")
