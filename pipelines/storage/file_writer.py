"""The executor side of a delta-rs write: the function each Spark task runs to write its rows as
Parquet files into a table's folder, and the Delta statistics of each file it wrote.

Nothing here talks to the Delta log; the driver commits what the tasks return
(`pipelines.storage.delta_rs`).
"""
from __future__ import annotations

import json
import os
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Iterator
from urllib.parse import quote

# Delta writes a null partition value as this folder name (the Hive convention).
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
# Statistics on strings longer than this are left out, as the JVM writer truncates them.
STATS_STRING_LIMIT = 32

WRITE_RESULT_SCHEMA = (
    "path string, size long, num_records long, partition_values string, stats string, recorded string"
)


def partition_dir(names: list[str], values: tuple) -> str:
    parts = []
    for name, value in zip(names, values):
        text = NULL_PARTITION if value is None else quote(partition_string(value), safe="")
        parts.append(f"{name}={text}")
    return "/".join(parts)


def partition_string(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f") if value.tzinfo else value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def file_stats(table) -> dict[str, Any]:
    """numRecords, minValues, maxValues and nullCount of a pyarrow Table, as Delta stores them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    for name, column in zip(table.column_names, table.columns):
        typ = column.type
        if pa.types.is_nested(typ):
            continue
        nulls[name] = column.null_count
        if column.null_count == len(column) or pa.types.is_boolean(typ) or pa.types.is_binary(typ):
            continue
        if pa.types.is_floating(typ) and pc.any(pc.is_nan(column)).as_py():
            continue
        mm = pc.min_max(column).as_py()
        lo, hi = mm["min"], mm["max"]
        if pa.types.is_string(typ) or pa.types.is_large_string(typ):
            if len(lo) > STATS_STRING_LIMIT or len(hi) > STATS_STRING_LIMIT:
                continue
        mins[name], maxs[name] = _stat_json(lo), _stat_json(hi, round_up=True)
    return {"numRecords": table.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls}


def _stat_json(value: Any, round_up: bool = False) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        if round_up and value.microsecond % 1000:
            # The log keeps milliseconds: a maximum cut down to the millisecond would be below the
            # file's real maximum, and a reader skipping files by it would miss that row.
            value += timedelta(microseconds=1000 - value.microsecond % 1000)
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


OUTSIDE_PARTITIONS = "got a row outside them"
# A boolean column a predicate overwrite adds to tell its new rows (checked against the predicate)
# from the table's rows it keeps; never written.
NEW_ROW_MARKER = "__lakehouse_new_row"


def make_file_writer(table_root: str, write_id: str, partition_by: list[str], arrow_schema_bytes: bytes,
                     target_file_bytes: int, row_group_rows: int, allowed: dict[str, list[str]] | None = None,
                     target_file_rows: int | None = None, record_column: str | None = None):
    """The function a Spark task runs (through `mapInArrow`) to write its rows as Parquet files.

    A file is closed once its rows hold `target_file_bytes` of Arrow data (uncompressed, so the
    Parquet file comes out smaller) or, when given, `target_file_rows` rows.

    With `allowed` (an overwrite of the rows whose columns hold those values), a new row outside
    them fails the task, so the check costs no second pass over the data.

    The rows of a task come sorted by the partition columns (`DeltaRsEngine.write` sorts them within
    each Spark partition): a file is closed as soon as the next partition value starts, so a task
    holds one open file and one partition value's rows, however many values it writes (a few
    thousand days at ×10), and each batch splits into one or two values. Rows that come unsorted
    are still written correctly, into more files.

    With `record_column` (a column of the rows), each file's result also names the distinct
    non-null values of that column in it (`recorded`, a JSON list), which the commit records
    (`pipelines.storage.lineage_log`).
    """

    def write_task(batches: Iterator) -> Iterator:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
        from pyspark import TaskContext

        schema = pa.ipc.read_schema(pa.py_buffer(arrow_schema_bytes))
        data_schema = pa.schema([f for f in schema if f.name not in partition_by and f.name != NEW_ROW_MARKER])
        ctx = TaskContext.get()
        task = f"{ctx.partitionId():05d}-{ctx.attemptNumber()}" if ctx else "00000-0"
        open_files: dict[tuple, dict] = {}
        results: list[dict] = []

        def close(key: tuple) -> None:
            f = open_files.pop(key)
            table = pa.concat_tables(f["tables"]) if f["tables"] else data_schema.empty_table()
            if table.num_rows > f["written"]:
                f["writer"].write_table(table.slice(f["written"]), row_group_size=row_group_rows)
            f["writer"].close()
            stats = file_stats(table)
            recorded = None
            if record_column in table.column_names:
                recorded = json.dumps(sorted(v for v in pc.unique(table[record_column]).to_pylist() if v))
            results.append({
                "path": f["rel"], "size": os.path.getsize(f["abs"]), "num_records": table.num_rows,
                "partition_values": json.dumps(dict(zip(partition_by, [partition_string(v) for v in key]))),
                "stats": json.dumps(stats), "recorded": recorded,
            })

        def write_rows(key: tuple, part) -> None:
            f = open_files.get(key)
            if f is None:
                folder = partition_dir(partition_by, key)
                name = f"part-{write_id}-{task}-{len(results) + len(open_files):04d}.snappy.parquet"
                rel = f"{folder}/{name}" if folder else name
                absolute = os.path.join(table_root, rel)
                os.makedirs(os.path.dirname(absolute), exist_ok=True)
                writer = pq.ParquetWriter(absolute, data_schema, compression="snappy")
                f = open_files[key] = {"writer": writer, "rel": rel, "abs": absolute, "rows": 0, "written": 0,
                                       "tables": [], "bytes": 0}
            part = part.select(data_schema.names).cast(data_schema)
            f["tables"].append(part)
            f["rows"] += part.num_rows
            f["bytes"] += part.nbytes
            # Spark hands batches of its own size (10,000 rows, fewer per partition value): rows
            # wait until a full row group of row_group_rows is there, as Petastorm shards by row group.
            full = (f["rows"] - f["written"]) // row_group_rows * row_group_rows
            if full:
                f["writer"].write_table(pa.concat_tables(f["tables"]).slice(f["written"], full),
                                        row_group_size=row_group_rows)
                f["written"] += full
            if f["bytes"] >= target_file_bytes or (target_file_rows and f["rows"] >= target_file_rows):
                close(key)

        def check_allowed(table) -> None:
            rows = table.filter(table[NEW_ROW_MARKER]) if NEW_ROW_MARKER in table.column_names else table
            if rows.num_rows == 0:
                return
            for name, values in allowed.items():
                column = rows[name]
                text = column if pa.types.is_string(column.type) else pc.cast(column, pa.string())
                ok = pc.is_in(text, value_set=pa.array([v for v in values if v is not None], pa.string()))
                ok = pc.or_(pc.fill_null(ok, False), pc.is_null(column)) if None in values else pc.fill_null(ok, False)
                if pc.any(pc.invert(ok)).as_py():
                    bad = rows.filter(pc.invert(ok)).slice(0, 1).drop([c for c in (NEW_ROW_MARKER,) if c in rows.column_names])
                    raise ValueError(f"overwrite of {allowed} {OUTSIDE_PARTITIONS}: {bad.to_pylist()[0]}")

        for batch in batches:
            if batch.num_rows == 0:
                continue
            table = pa.Table.from_batches([batch]).cast(schema)
            if allowed:
                check_allowed(table)
            if not partition_by:
                write_rows((), table)
                continue
            keys = table.select(partition_by).group_by(partition_by).aggregate([]).to_pylist()
            # In the order the rows come (nulls first, as Spark sorts), whatever order group_by gives.
            keys.sort(key=lambda k: tuple((k[n] is not None, k[n]) for n in partition_by))
            for key in keys:
                mask = None
                for name in partition_by:
                    col = table[name]
                    cond = pc.is_null(col) if key[name] is None else pc.equal(col, pa.scalar(key[name], col.type))
                    mask = cond if mask is None else pc.and_(mask, cond)
                rows = table.filter(mask)
                current = tuple(key[n] for n in partition_by)
                for finished in [k for k in open_files if k != current]:
                    close(finished)
                write_rows(current, rows)
        for key in list(open_files):
            close(key)
        if results:
            yield pa.RecordBatch.from_pylist(results, schema=pa.schema([
                ("path", pa.string()), ("size", pa.int64()), ("num_records", pa.int64()),
                ("partition_values", pa.string()), ("stats", pa.string()), ("recorded", pa.string())]))

    return write_task
