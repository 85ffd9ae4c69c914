"""Delta through Spark's own `format("delta")`, for clusters submitted with the Delta jars, and
the choice between it and the embedded delta-rs engine (`lakehouse.engine`)."""
from __future__ import annotations

from pipelines.storage.delta_rs import DeltaRsEngine, merge_condition
from pipelines.storage.layout import check_layout
from pipelines.storage.replace import with_derived_columns
from pipelines.storage.spark import session_conf


class JvmDeltaEngine:
    """Delta through Spark's own `format("delta")`: used where the Delta jars are on the classpath."""

    name = "jvm"

    def __init__(self, spark):
        self.spark = spark

    def read(self, path: str, version=None, timestamp=None, files=None):
        # `files` is delta-rs's pruning; Delta's reader skips files by the filters it is given.
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        elif timestamp is not None:
            reader = reader.option("timestampAsOf", str(timestamp))
        return reader.load(path)

    def write(self, df, path, mode, partition_by, partitions, schema_mode, description=None,
              row_group_rows=None, order_by=None) -> int:   # Spark's Parquet writer sizes row groups in bytes
        """`Table.write` through Delta's writer: `partitions` becomes `replaceWhere`, which Delta
        applies to partition and data columns alike (a day of a table partitioned by month)."""
        if DeltaRsEngine.exists(path):
            partition_by = check_layout(path, DeltaRsEngine.open(path).metadata().partition_columns, partition_by)
        df = with_derived_columns(df, list(partition_by or []))
        if order_by:
            df = df.sortWithinPartitions(*order_by)
        writer = df.write.format("delta").mode(mode)
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        if partitions:
            clauses = [f"{c} IN ({', '.join(repr(str(v)) for v in vals)})" for c, vals in partitions.items()]
            writer = writer.option("replaceWhere", " AND ".join(clauses))
        if schema_mode == "merge":
            writer = writer.option("mergeSchema", "true")
        elif schema_mode == "overwrite":
            writer = writer.option("overwriteSchema", "true")
        if description:
            writer = writer.option("userMetadata", description)
        writer.save(path)
        from delta.tables import DeltaTable

        return DeltaTable.forPath(self.spark, path).history(1).collect()[0]["version"]

    def merge(self, df, path: str, on: list[str], update: list[str], partitions: dict[str, list] | None,
              description: str | None = None, derive: dict | None = None) -> dict:
        """Delta's own MERGE (matched rows only) of a non-empty `df` with unique keys (`Table.merge`
        checks both); the version and the rows updated are read off the commit it made.

        Untested here: the machine the tests run on has no Delta jars."""
        from delta.tables import DeltaTable
        from pyspark.sql import functions as F

        # What writer.option("userMetadata") sets, for the MERGE's commit.
        metadata = {"spark.databricks.delta.commitInfo.userMetadata": description} if description else {}
        with session_conf(self.spark, metadata):
            target = DeltaTable.forPath(self.spark, path).alias("t")
            assignments = {c: F.col(f"s.`{c}`") for c in update}
            assignments.update({c: fn(F.col(f"t.`{c}`")) for c, fn in (derive or {}).items()})
            (target.merge(df.alias("s"), merge_condition(on, partitions))
             .whenMatchedUpdate(set=assignments).execute())
        last = DeltaTable.forPath(self.spark, path).history(1).collect()[0]
        metrics = last["operationMetrics"] or {}
        return {"version": last["version"], "updated": int(metrics.get("numTargetRowsUpdated", 0))}


def jvm_delta_available(spark) -> bool:
    """True when the Delta classes load in this Spark (a cluster submitted with the Delta jars)."""
    try:
        spark._jvm.java.lang.Class.forName("io.delta.tables.DeltaTable")
        return True
    except Exception:
        return False


def choose_engine(spark, engine: str, target_file_bytes: int, row_group_rows: int,
                  target_file_rows: int | None = None):
    """The engine `lakehouse.engine` names: "auto" is the JVM one where its classes load, else delta-rs."""
    if engine == "auto":
        engine = "jvm" if jvm_delta_available(spark) else "delta-rs"
    if engine == "jvm":
        if not jvm_delta_available(spark):
            raise RuntimeError("lakehouse.engine is 'jvm' but the Delta classes are not on Spark's classpath; "
                               "submit with --packages io.delta:delta-spark_2.12:3.3.2 or set lakehouse.engine=delta-rs")
        return JvmDeltaEngine(spark)
    return DeltaRsEngine(spark, target_file_bytes, row_group_rows, target_file_rows)


