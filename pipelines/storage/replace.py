"""Predicate overwrites on the embedded engine (Delta's `replaceWhere`), and the derived partition
columns of a table's layout: what `DeltaRsEngine.write` does before its files are written."""
from __future__ import annotations

from datetime import datetime

from pipelines.storage.file_writer import NEW_ROW_MARKER, partition_string
from pipelines.storage.layout import derive, derive_value, derived_from
from pipelines.storage.paths import file_uri, local_path
from pipelines.storage.spark import session_conf


def replace_where(engine, path: str, df, partitions: dict[str, list], partition_by: list[str]):
    """A predicate overwrite: the rows of the table where each column of `partitions` is in its
    list are replaced by `df`, the table's other rows stay. Returns what `write` then writes:
    (rows, mode, partition overwrite, the version read).

    The files that may hold a replaced row are found from the log (partition values, then
    min/max statistics); none: the write is a plain append, the cheap case of a new day. Some:
    every partition holding one (the whole table when it is unpartitioned) is rewritten with
    its rows outside the predicate plus `df`, in the one commit of the write. New rows carry a
    marker so the writer checks them alone against the predicate."""
    import pyarrow as pa
    from pyspark.sql import functions as F

    dt = engine.open(path)
    read_version = dt.version()
    schema = engine.spark_schema(dt)
    types = {f.name: f.dataType.typeName() for f in schema.fields}
    wanted = {c: [_log_value(partition_string(v), types.get(c)) for v in vals] for c, vals in partitions.items()}
    actions = pa.table(dt.get_add_actions(flatten=True)).to_pylist()

    def may_hold(action: dict) -> bool:
        for column, values in wanted.items():
            if column in partition_by:
                if _log_value(action.get(f"partition.{column}"), types.get(column)) not in values:
                    return False
                continue
            rows, nulls = action.get("num_records"), action.get(f"null_count.{column}")
            low, high = action.get(f"min.{column}"), action.get(f"max.{column}")
            if nulls is not None and rows is not None and nulls == rows:
                if None not in values:
                    return False
                continue
            if low is None or high is None:
                continue           # no statistics: it may hold any value
            low, high = _log_value(low, types.get(column)), _log_value(high, types.get(column))
            if not ((None in values and nulls) or any(v is not None and low <= v <= high for v in values)):
                return False
        return True

    marked = df.withColumn(NEW_ROW_MARKER, F.lit(True))
    affected = [a for a in actions if may_hold(a)]
    if not affected:
        return marked, "append", None, read_version
    rewrite = None
    if partition_by:
        rewrite = {}
        for column in partition_by:
            if column in wanted:
                values = {partition_string(v) for v in partitions[column]}
            elif derived_from(column) in wanted:
                values = {derive_value(column, v) for v in partitions[derived_from(column)]}
            else:
                rewrite = None     # new rows may land anywhere: rewrite the whole table
                break
            values |= {partition_string(a.get(f"partition.{column}")) for a in affected}
            rewrite[column] = sorted(values, key=lambda v: (v is not None, v or ""))
    files = [a["path"] for a in actions if rewrite is None or
             all(partition_string(a.get(f"partition.{c}")) in vals for c, vals in rewrite.items())]
    root = dt.table_uri
    reader = engine.spark.read.schema(schema)
    if partition_by:
        reader = reader.option("basePath", local_path(root))
    with session_conf(engine.spark, {"spark.sql.sources.parallelPartitionDiscovery.threshold":
                                    str(max(len(files) + 1, 32))}):
        existing = reader.parquet(*[file_uri(root, f) for f in files]).select(*schema.fieldNames())
    replaced = None
    for column, values in wanted.items():
        known = [v for v in values if v is not None]
        cond = F.col(column).isin(known) if known else F.lit(False)
        if None in values:
            cond = cond | F.col(column).isNull()
        replaced = cond if replaced is None else replaced & cond
    # Rows written under an older schema read the columns added since as null.
    kept = existing.filter(~F.coalesce(replaced, F.lit(False)))
    for field in marked.schema.fields:
        if field.name not in kept.columns and field.name != NEW_ROW_MARKER:
            kept = kept.withColumn(field.name, F.lit(None).cast(field.dataType))
    kept = kept.select(*[c for c in marked.columns if c != NEW_ROW_MARKER])
    rows = marked.unionByName(kept.withColumn(NEW_ROW_MARKER, F.lit(False)))
    return rows, "overwrite", rewrite, read_version


def with_derived_columns(df, partition_by: list[str]):
    """`df` with the derived partition columns of `partition_by` it lacks (`month` from `date`)."""
    from pyspark.sql import functions as F

    for column in partition_by:
        source = derived_from(column)
        if column not in df.columns and source and source in df.columns:
            df = df.withColumn(column, derive(column, F.col(source)))
    return df


def estimated_bytes(df) -> int:
    """Spark's size estimate of `df`'s optimized plan (an upper bound, often a loose one)."""
    try:
        return int(str(df._jdf.queryExecution().optimizedPlan().stats().sizeInBytes()))
    except Exception:   # an estimate only: any failure means "large"
        return 1 << 62


def _log_value(value, type_name: str | None):
    """A value of the log (a partition string, or a statistic) comparable with the column's values."""
    from datetime import date as _date

    if value is None:
        return None
    if type_name == "date":
        if isinstance(value, datetime):
            return value.date()
        return value if isinstance(value, _date) else _date.fromisoformat(str(value)[:10])
    if type_name in ("integer", "long", "short", "byte"):
        return int(value)
    if type_name in ("double", "float"):
        return float(value)
    if type_name == "boolean":
        return value if isinstance(value, bool) else str(value) == "true"
    return str(value) if not isinstance(value, (datetime,)) else value
