"""A tiny, learnable `gold.model_input` + `gold.feature_spec`, written through the Lakehouse exactly as
docs/design.md specifies them, for the tensors, model, training and baseline tests.

    >>> versions = write_model_input(lakehouse, rows={"train": 4000, "validation": 1000})
"""
from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np

CARRIERS = ["AA", "B6", "DL", "EV", "UA"]
ORIGINS = ["EWR", "JFK", "LGA"]
NUMERIC = ["num_distance", "num_dep_hour", "num_temp", "num_temp_missing"]
CATEGORICAL = {"cat_carrier": CARRIERS, "cat_origin": ORIGINS}
# How strongly each carrier index pushes towards a late arrival (index 0 is out of vocabulary).
CARRIER_EFFECT = np.array([0.0, 1.2, -0.8, 0.3, 1.0, -1.2])


# The sequence columns `write_model_input(sequence_days=N)` adds: N standardised daily values each.
SEQUENCES = ["seq_route_late_rate", "seq_carrier_late_rate"]


def model_input_rows(n: int, seed: int, first_flight_id: int = 0, sequence_days: int = 0,
                     day_span: int = 28) -> dict[str, np.ndarray]:
    """`n` rows of model-ready columns whose label depends on the features (so a model can learn),
    on days spread over the `day_span` days from 2013-01-01; with `sequence_days`, also SEQUENCES,
    whose last days push the label too."""
    rng = np.random.default_rng(seed)
    distance = rng.normal(size=n).astype(np.float32)
    dep_hour = rng.normal(size=n).astype(np.float32)
    temp_missing = (rng.random(n) < 0.1).astype(np.float32)
    temp = np.where(temp_missing == 1, 0.0, rng.normal(size=n)).astype(np.float32)
    carrier = rng.integers(0, len(CARRIERS) + 1, size=n).astype(np.int32)
    origin = rng.integers(0, len(ORIGINS) + 1, size=n).astype(np.int32)
    logit = 1.6 * dep_hour - 0.7 * distance + CARRIER_EFFECT[carrier] - 0.8
    sequences = {name: rng.normal(size=(n, sequence_days)).astype(np.float32) for name in SEQUENCES if sequence_days}
    if sequences:
        logit = logit + sequences[SEQUENCES[0]][:, -3:].mean(axis=1)
    late = rng.random(n) < 1 / (1 + np.exp(-logit))
    arr_delay = (12 * logit + rng.normal(scale=8, size=n)).astype(np.float32)
    dates = np.datetime64("2013-01-01") + rng.integers(0, day_span, size=n).astype("timedelta64[D]")
    day = np.array([int(str(d).replace("-", "")) for d in dates], dtype=np.int32)
    return {
        "flight_id": np.arange(first_flight_id, first_flight_id + n, dtype=np.int64),
        "day": day,
        "num_distance": distance,
        "num_dep_hour": dep_hour,
        "num_temp": temp,
        "num_temp_missing": temp_missing,
        "cat_carrier": carrier,
        "cat_origin": origin,
        "label": late.astype(np.float32),
        "target": arr_delay,
        **{name: list(values) for name, values in sequences.items()},
    }


def feature_spec_rows(sequence_days: int = 0) -> list[dict]:
    """One row per model column, as `gold.feature_spec` holds them (a sequence's length in `vocab_size`)."""
    window = {"train_start": date(2013, 1, 1), "train_end": date(2013, 1, 28)}
    rows = [{"name": name, "kind": "numeric", "source": name[len("num_"):], "vocabulary": [],
             "vocab_size": 0, "mean": 0.0, "std": 1.0, **window} for name in NUMERIC]
    rows += [{"name": name, "kind": "categorical", "source": name[len("cat_"):], "vocabulary": list(vocab),
              "vocab_size": len(vocab) + 1, "mean": None, "std": None, **window}
             for name, vocab in CATEGORICAL.items()]
    rows += [{"name": name, "kind": "sequence", "source": name[len("seq_"):], "vocabulary": [],
              "vocab_size": sequence_days, "mean": 0.0, "std": 1.0, **window} for name in SEQUENCES if sequence_days]
    return rows


def write_model_input(lakehouse, rows: dict[str, int] | None = None, seed: int = 7,
                      row_group_rows: int = 500, files_per_split: int = 2, sequence_days: int = 0,
                      day_span: int = 28) -> dict[str, int]:
    """Write `gold.model_input` (partitioned by `split`) and `gold.feature_spec`; return their versions.

    Row groups are `row_group_rows` long and each split is spread over `files_per_split` files, so
    the tests see several files and row groups per split, as Petastorm shards them. `sequence_days`
    adds the SEQUENCES columns, array<float> of that length.
    """
    import pandas as pd
    from pyspark.sql import types as T

    from pipelines.storage import Lakehouse

    spark = lakehouse.spark
    rows = rows or {"train": 4000, "validation": 1000}
    frames, next_id = [], 0
    for i, (split, n) in enumerate(rows.items()):
        frame = pd.DataFrame(model_input_rows(n, seed + i, first_flight_id=next_id, sequence_days=sequence_days,
                                              day_span=day_span))
        frame["split"] = split
        frames.append(frame)
        next_id += n
    data = pd.concat(frames, ignore_index=True)
    schema = T.StructType([
        T.StructField("flight_id", T.LongType(), False),
        T.StructField("day", T.IntegerType(), False),
        *[T.StructField(c, T.FloatType(), False) for c in NUMERIC],
        *[T.StructField(c, T.IntegerType(), False) for c in CATEGORICAL],
        T.StructField("label", T.FloatType(), False),
        T.StructField("target", T.FloatType(), False),
        *[T.StructField(c, T.ArrayType(T.FloatType(), False), False) for c in SEQUENCES if sequence_days],
        T.StructField("split", T.StringType(), False),
    ])
    largest = max(rows.values())
    writer = Lakehouse(lakehouse.root, spark, "delta-rs",
                       target_file_rows=-(-largest // files_per_split), row_group_rows=row_group_rows)
    df = spark.createDataFrame(data[[f.name for f in schema.fields]], schema)
    # Files roll over only between Arrow batches: batches of one row group give files of the size asked.
    batch_key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    previous = spark.conf.get(batch_key)
    spark.conf.set(batch_key, str(row_group_rows))
    try:
        model_input_version = writer.table("gold.model_input").write(df, mode="overwrite", partition_by=["split"])
    finally:
        spark.conf.set(batch_key, previous)

    spec_schema = T.StructType([
        T.StructField("name", T.StringType(), False),
        T.StructField("kind", T.StringType(), False),
        T.StructField("source", T.StringType(), False),
        T.StructField("vocabulary", T.ArrayType(T.StringType()), False),
        T.StructField("vocab_size", T.IntegerType(), False),
        T.StructField("mean", T.DoubleType(), True),
        T.StructField("std", T.DoubleType(), True),
        T.StructField("train_start", T.DateType(), False),
        T.StructField("train_end", T.DateType(), False),
    ])
    spec_df = spark.createDataFrame(feature_spec_rows(sequence_days), spec_schema).coalesce(1)
    spec_version = writer.table("gold.feature_spec").write(spec_df, mode="overwrite")
    return {"gold.model_input": model_input_version, "gold.feature_spec": spec_version}


# The dataset whose folder of the lakehouse the tiny tables live in (its key column is flight_id).
DATASET = "nycflights13"


def model_input_lakehouse(spark, root, **kwargs):
    """The dataset folder of the lakehouse at `root` (`<root>/nycflights13`) holding the tiny
    model_input and feature spec (see `write_model_input`); `training_config(lakehouse.root)`
    configures training over it."""
    from pipelines.storage import Lakehouse

    lakehouse = Lakehouse(str(Path(root) / DATASET), spark, "delta-rs")
    write_model_input(lakehouse, **kwargs)
    return lakehouse


def training_config(root, *overrides: str):
    """The local configuration over the dataset folder `root` (what `model_input_lakehouse` returns
    as its root), sized for tests (small MLP, batch 128)."""
    from pipelines.config import load_config

    root = Path(root)
    return load_config("local", [f"lakehouse.root={root.parent}", f"pipeline.dataset={root.name}", "spark.master=local[2]", "training.batch_size=128",
                                 "training.hidden_units=[32,16]", "training.epochs=3", "training.shuffle_buffer=1000",
                                 # The tests' own optimisation settings, independent of the defaults
                                 # tuned for the full year: a few thousand rows learn in 3 epochs.
                                 "training.learning_rate=0.001", "training.dropout=0.1", "training.l2=0.00001",
                                 "training.embedding_dim=8", "training.warmup_epochs=1",
                                 "training.early_stopping_patience=2",
                                 *overrides])
