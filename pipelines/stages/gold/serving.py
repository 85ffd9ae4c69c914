"""The serving input: the rows a model scores, encoded with the feature spec that model was
trained with, never with a newer one.

Training reads `gold.model_input` (labelled rows of the split windows, encoded with the latest
spec); scoring reads `gold.serving_input`: every row of `gold.features` for the days to
score, labelled or not (tomorrow's rows have no outcome yet), encoded with the spec version
the model's registry entry pins. A spec version that can no longer be read is refused by name.

    >>> version, rows = build_serving_input(cfg, lh, [date(2013, 12, 31)], spec_version=4)
"""
from __future__ import annotations

import logging
from datetime import date

from pipelines.catalog import FEATURE_SPEC, FEATURES, PARTITION_COLUMN, SERVING_INPUT
from pipelines.datasets import dataset_for
from pipelines.lineage.columns import BUILT_FROM, built_from
from pipelines.stages.gold.spec import SPEC_SCHEMA, FeaturesError, apply_feature_spec

log = logging.getLogger(__name__)


class ServingError(FeaturesError):
    """The rows cannot be encoded as the model needs; the message says why and what to do."""


def spec_at(lakehouse, spec_version: int | None, owner: str = "the model"):
    """`gold.feature_spec` at `spec_version` as a small Spark DataFrame, read to the end so that a
    version whose files were vacuumed fails here, with a message, not inside a scoring job."""
    if spec_version is None:
        raise ServingError(f"{owner} records no {FEATURE_SPEC} version (it was registered before models "
                           "owned their encoding): train a new model (`lakehouse-dl train` or the nightly)")
    table = lakehouse.table(FEATURE_SPEC)
    try:
        rows = table.to_arrow(version=int(spec_version)).to_pylist()
    except Exception as exc:
        raise ServingError(f"{owner} was trained with {FEATURE_SPEC} v{spec_version}, which can no longer be "
                           f"read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); it will not score "
                           "with another spec: train a new model") from None
    if not rows:
        raise ServingError(f"{FEATURE_SPEC} v{spec_version} is empty: {owner} cannot be served")
    return lakehouse.spark.createDataFrame(rows, SPEC_SCHEMA)


def encode(cfg, lakehouse, features_df, spec_version: int | None, owner: str = "the model", keep=()):
    """`features_df` (rows of gold.features) encoded with the spec at `spec_version`."""
    return apply_feature_spec(features_df, spec_at(lakehouse, spec_version, owner), key=dataset_for(cfg).key,
                              keep=keep)


def build_serving_input(cfg, lakehouse, days: list[date], spec_version: int | None,
                        owner: str = "the model") -> tuple[int, int]:
    """Encode every row of gold.features dated `days` with the spec at `spec_version` and
    overwrite those days of gold.serving_input; returns (the table's version, rows written)."""
    from pyspark.sql import functions as F

    features = lakehouse.table(FEATURES)
    if not features.exists():
        raise ServingError(f"{FEATURES} does not exist yet: run `lakehouse-dl features` first")
    version = features.version()
    read = (features.read(version=version, between=(PARTITION_COLUMN, min(days), max(days)))
            .filter(F.col(PARTITION_COLUMN).isin(list(days))))
    # Each row keeps the landing records it came from, so a prediction is one join from its raw lines.
    lineage = [c for c in read.columns if c.startswith("_") and c != BUILT_FROM]
    rows = (encode(cfg, lakehouse, read, spec_version, owner, keep=[PARTITION_COLUMN, *lineage])
            .withColumn("feature_spec_version", F.lit(int(spec_version)).cast("long"))
            .withColumn(BUILT_FROM, F.lit(built_from({FEATURES: version, FEATURE_SPEC: int(spec_version)}))))
    table = lakehouse.table(SERVING_INPUT)
    # Another model's spec may have other columns: merge the schema, each version keeps its own.
    version = table.write(rows, mode="overwrite", partition_by=lakehouse.daily_partition_by(),
                          partitions={PARTITION_COLUMN: list(days)}, schema_mode="merge",
                          description=f"serving input for {len(days)} day(s), {FEATURE_SPEC} v{spec_version}")
    counts = table.rows_per_partition(PARTITION_COLUMN)
    return version, sum(counts.get(d, 0) for d in days)
