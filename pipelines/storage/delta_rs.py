"""The embedded Delta engine: Spark executors write Parquet, the driver commits them with delta-rs.

A write is one Delta transaction however many executors took part: every task writes its rows
into files named after the write's id and returns what it wrote (path, size, rows, statistics);
the driver then commits all the files in one `deltalake` transaction. A job that fails before the
commit leaves the table at its previous version, and the files its tasks wrote are deleted.
"""
from __future__ import annotations

import json
import math
import os
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

from pipelines.lakehouse.errors import ConcurrentWriteError, TableNotFoundError

# Delta writes a null partition value as this folder name (the Hive convention).
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
# Statistics on strings longer than this are left out, as the JVM writer truncates them.
STATS_STRING_LIMIT = 32

WRITE_RESULT_SCHEMA = (
    "path string, size long, num_records long, partition_values string, stats string"
)


def local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


# --------------------------------------------------------------------------------------------
# Executor side


def partition_dir(names: list[str], values: tuple) -> str:
    parts = []
    for name, value in zip(names, values):
        text = NULL_PARTITION if value is None else quote(_partition_string(value), safe="")
        parts.append(f"{name}={text}")
    return "/".join(parts)


def _partition_string(value: Any) -> str | None:
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


def make_file_writer(table_root: str, write_id: str, partition_by: list[str], arrow_schema_bytes: bytes,
                     target_file_rows: int, row_group_rows: int, allowed: dict[str, list[str]] | None = None):
    """The function a Spark task runs (through `mapInArrow`) to write its rows as Parquet files.

    With `allowed` (a partition overwrite), a row outside those partition values fails the task,
    so the check costs no second pass over the data.
    """

    def write_task(batches: Iterator) -> Iterator:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
        from pyspark import TaskContext

        schema = pa.ipc.read_schema(pa.py_buffer(arrow_schema_bytes))
        data_schema = pa.schema([f for f in schema if f.name not in partition_by])
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
            results.append({
                "path": f["rel"], "size": os.path.getsize(f["abs"]), "num_records": table.num_rows,
                "partition_values": json.dumps(dict(zip(partition_by, [_partition_string(v) for v in key]))),
                "stats": json.dumps(stats),
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
                                       "tables": []}
            part = part.select(data_schema.names).cast(data_schema)
            f["tables"].append(part)
            f["rows"] += part.num_rows
            # Spark hands batches of its own size (10,000 rows, fewer per partition value): rows
            # wait until a full row group of row_group_rows is there, as Petastorm shards by row group.
            full = (f["rows"] - f["written"]) // row_group_rows * row_group_rows
            if full:
                f["writer"].write_table(pa.concat_tables(f["tables"]).slice(f["written"], full),
                                        row_group_size=row_group_rows)
                f["written"] += full
            if f["rows"] >= target_file_rows:
                close(key)

        for batch in batches:
            if batch.num_rows == 0:
                continue
            table = pa.Table.from_batches([batch]).cast(schema)
            if not partition_by:
                write_rows((), table)
                continue
            keys = table.select(partition_by).group_by(partition_by).aggregate([]).to_pylist()
            for key in keys:
                mask = None
                for name in partition_by:
                    col = table[name]
                    cond = pc.is_null(col) if key[name] is None else pc.equal(col, pa.scalar(key[name], col.type))
                    mask = cond if mask is None else pc.and_(mask, cond)
                rows = table.filter(mask)
                if allowed and any(_partition_string(key[c]) not in vals for c, vals in allowed.items()):
                    raise ValueError(f"overwrite of partitions {allowed} {OUTSIDE_PARTITIONS}: "
                                     f"{rows.slice(0, 1).to_pylist()[0]}")
                write_rows(tuple(key[n] for n in partition_by), rows)
        for key in list(open_files):
            close(key)
        if results:
            yield pa.RecordBatch.from_pylist(results, schema=pa.schema([
                ("path", pa.string()), ("size", pa.int64()), ("num_records", pa.int64()),
                ("partition_values", pa.string()), ("stats", pa.string())]))

    return write_task


# --------------------------------------------------------------------------------------------
# Driver side


class DeltaRsEngine:
    """Reads with Spark over the snapshot's file list, writes with executors + one delta-rs commit."""

    name = "delta-rs"

    def __init__(self, spark, target_file_rows: int = 500_000, row_group_rows: int = 16_384):
        self.spark = spark
        self.target_file_rows = target_file_rows
        self.row_group_rows = row_group_rows

    # -- metadata ------------------------------------------------------------------------------
    @staticmethod
    def exists(path: str) -> bool:
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(path)

    @staticmethod
    def open(path: str, version: int | None = None, timestamp: datetime | str | None = None):
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError as RsNotFound

        try:
            dt = DeltaTable(path)
        except RsNotFound as exc:
            raise TableNotFoundError(f"no Delta table at {path}") from exc
        if version is not None:
            dt.load_as_version(version)
        elif timestamp is not None:
            dt.load_as_version(DeltaRsEngine.version_as_of(dt, timestamp))
        return dt

    @staticmethod
    def version_as_of(dt, timestamp: datetime | str) -> int:
        """The latest version committed at or before `timestamp` (naive means UTC).

        Commits are dated by their own `commitInfo.timestamp`, the time `history()` shows, so a
        timestamp read off the history always finds that version. delta-rs would date them by the
        log files' modification times, which come a few milliseconds later and made reads at a
        commit's own timestamp land on the version before it.
        """
        ts = datetime.fromisoformat(timestamp) if isinstance(timestamp, str) else timestamp
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=timezone.utc)
        target_ms = (ts - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)
        commits = {h["version"]: h["timestamp"] for h in dt.history() if "timestamp" in h}
        earlier = [version for version, ms in commits.items() if ms <= target_ms]
        if not earlier:
            first = datetime.fromtimestamp(min(commits.values()) / 1000, tz=timezone.utc)
            raise ValueError(
                f"{ts.isoformat()} is before the table's first commit ({first.isoformat()})"
            )
        return max(earlier)

    @staticmethod
    def spark_schema(dt):
        from pyspark.sql.types import StructType

        return StructType.fromJson(json.loads(dt.schema().to_json()))

    # -- read ----------------------------------------------------------------------------------
    def read(self, path: str, version: int | None = None, timestamp=None):
        dt = self.open(path, version, timestamp)
        schema = self.spark_schema(dt)
        files = dt.file_uris()
        if not files:
            return self.spark.createDataFrame([], schema)
        partition_by = dt.metadata().partition_columns
        reader = self.spark.read.schema(schema)
        if partition_by:
            # Partition values live in the folder names (`date=2013-01-01/`), as Delta writes them.
            reader = reader.option("basePath", local_path(dt.table_uri))
        # Spark lists more than `parallelPartitionDiscovery.threshold` (32) paths with a Spark job of
        # one task per path (5-10 s for a year of daily files); the log already names every file.
        key = "spark.sql.sources.parallelPartitionDiscovery.threshold"
        before = self.spark.conf.get(key, None)
        self.spark.conf.set(key, str(max(len(files) + 1, 32)))
        try:
            df = reader.parquet(*files)
        finally:
            if before is None:
                self.spark.conf.unset(key)
            else:
                self.spark.conf.set(key, before)
        return df.select(*schema.fieldNames())

    # -- write ---------------------------------------------------------------------------------
    def write(self, df, path: str, mode: str, partition_by: list[str] | None,
              partitions: dict[str, list] | None, schema_mode: str | None,
              description: str | None = None, row_group_rows: int | None = None) -> int:
        from deltalake import Schema
        from deltalake.transaction import AddAction, CommitProperties, create_table_with_add_actions
        from deltalake.exceptions import CommitFailedError, DeltaError
        from pyspark.sql.pandas.types import to_arrow_schema

        from pipelines.lakehouse.schema import check_schema, merge_schemas

        existed = self.exists(path)
        if existed:
            dt = self.open(path)
            table_partition_by = list(dt.metadata().partition_columns)
            if partition_by and list(partition_by) != table_partition_by:
                raise ValueError(f"{path} is partitioned by {table_partition_by}, not {list(partition_by)}")
            partition_by = table_partition_by
            table_schema = self.spark_schema(dt)
            if mode == "overwrite" and schema_mode == "overwrite" and not partitions:
                target_schema = df.schema
            else:
                check_schema(table_schema, df.schema, path, allow_new_columns=schema_mode == "merge")
                target_schema = merge_schemas(table_schema, df.schema) if schema_mode == "merge" else table_schema
                df = df.select(*[c for c in target_schema.fieldNames() if c in df.columns])
                for field in target_schema.fields:
                    if field.name not in df.columns:
                        from pyspark.sql import functions as F
                        df = df.withColumn(field.name, F.lit(None).cast(field.dataType))
                df = df.select(*target_schema.fieldNames())
        else:
            partition_by = list(partition_by or [])
            missing = [c for c in partition_by if c not in df.columns]
            if missing:
                raise ValueError(f"partition columns {missing} are not in the data written to {path}")
            target_schema = df.schema

        allowed = None
        if partitions:
            _check_partition_spec(partitions, partition_by, path)
            allowed = {c: [_partition_string(v) for v in vals] for c, vals in partitions.items()}

        os.makedirs(local_path(path), exist_ok=True)
        write_id = uuid.uuid4().hex[:12]
        arrow_schema = to_arrow_schema(df.schema)
        writer = make_file_writer(local_path(path), write_id, partition_by,
                                  arrow_schema.serialize().to_pybytes(),
                                  self.target_file_rows, row_group_rows or self.row_group_rows, allowed)
        if partition_by:
            df = df.repartition(*partition_by)
        else:
            parallelism = self.spark.sparkContext.defaultParallelism
            if df.rdd.getNumPartitions() > parallelism:
                df = df.coalesce(parallelism)
        try:
            written = _collect_in_group(self.spark.sparkContext, df.mapInArrow(writer, WRITE_RESULT_SCHEMA),
                                        group=f"lakehouse-dl-write-{write_id}", description=f"write {path}")
        except BaseException as exc:
            _remove_files_of(local_path(path), write_id)
            message = str(exc)
            if OUTSIDE_PARTITIONS in message:
                # Raised in a task: surface the task's own message, not the Spark stack trace.
                line = next(l for l in message.splitlines() if OUTSIDE_PARTITIONS in l)
                raise ValueError(f"{path}: {line[line.index('overwrite of partitions'):]}") from None
            raise
        # Tasks that were retried or speculated leave files no result points at: delete them.
        kept = {row["path"] for row in written}
        _remove_files_of(local_path(path), write_id, keep=kept)

        now = int(time.time() * 1000)
        actions = [AddAction(row["path"], row["size"], json.loads(row["partition_values"]), now, True, row["stats"])
                   for row in written]
        delta_schema = Schema.from_json(target_schema.json())
        props = CommitProperties(custom_metadata={"engine": "lakehouse-dl/delta-rs", "writeId": write_id,
                                                  **({"description": description} if description else {})})
        filters = _partition_filters(partitions, df.schema) if partitions else None
        try:
            if not existed:
                try:
                    create_table_with_add_actions(path, delta_schema, actions, mode="error",
                                                  partition_by=partition_by or None, commit_properties=props)
                    return 0
                except DeltaError as exc:
                    if "exists" not in str(exc).lower():
                        raise
                    # Another writer created the table first: commit on top of it like any writer.
            dt = self.open(path)
            if schema_mode == "merge":
                new = [f for f in target_schema.fields if f.name not in self.spark_schema(dt).fieldNames()]
                if new:
                    from deltalake import Field as RsField
                    dt.alter.add_columns([RsField.from_json(json.dumps(f.jsonValue())) for f in new])
                    dt = self.open(path)
            dt.create_write_transaction(actions, mode, delta_schema, partition_by=partition_by or None,
                                        partition_filters=filters, commit_properties=props)
            return _version_of_write(path, write_id, dt.version())
        except CommitFailedError as exc:
            _remove_files_of(local_path(path), write_id)
            raise ConcurrentWriteError(
                f"another writer committed to {path} first and the two writes conflict ({exc}); "
                f"nothing of this write was committed, run it again") from exc
        except BaseException:
            _remove_files_of(local_path(path), write_id)
            raise


def _collect_in_group(sc, df, group: str, description: str) -> list:
    """Collect `df` as its own job group; if the job fails, return only once its tasks have ended.

    When one task fails, Spark fails the job at once but cancels the other tasks in the background,
    and their Python workers may still write files for a moment. Waiting for them to end lets the
    caller delete every file of the failed write, not only those that existed when it failed.
    """
    saved = {key: sc.getLocalProperty(key)
             for key in ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel")}
    sc.setJobGroup(group, description, interruptOnCancel=True)
    try:
        return df.collect()
    except BaseException:
        sc.cancelJobGroup(group)
        _wait_for_tasks(sc, group)
        raise
    finally:
        for key, value in saved.items():
            sc.setLocalProperty(key, value)


def _wait_for_tasks(sc, group: str, timeout_s: float = 120.0) -> None:
    tracker = sc.statusTracker()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        active = 0
        for job_id in tracker.getJobIdsForGroup(group):
            job = tracker.getJobInfo(job_id)
            for stage_id in (job.stageIds if job else []):
                stage = tracker.getStageInfo(stage_id)
                active += stage.numActiveTasks if stage else 0
        if active == 0:
            return
        time.sleep(0.2)


def _version_of_write(path: str, write_id: str, read_version: int) -> int:
    """The version this write committed; another writer may have committed after it already.

    Read from the commit files themselves: `DeltaTable.history()` numbers its entries from the
    snapshot it loaded, so with a commit landing meanwhile it can give an entry the wrong version.
    """
    log = os.path.join(local_path(path), "_delta_log")
    latest = DeltaRsEngine.open(path).version()
    for version in range(latest, read_version, -1):
        with open(os.path.join(log, f"{version:020d}.json")) as commit:
            for line in commit:
                if line.startswith('{"commitInfo"') and json.loads(line)["commitInfo"].get("writeId") == write_id:
                    return version
    return latest


def _check_partition_spec(partitions: dict[str, list], partition_by: list[str], path: str) -> None:
    unknown = [c for c in partitions if c not in partition_by]
    if unknown:
        raise ValueError(f"cannot overwrite partitions of {path} by {unknown}: it is partitioned by {partition_by}")


def _partition_filters(partitions: dict[str, list], schema) -> list[tuple]:
    return [(col, "in", [_partition_string(v) for v in values]) for col, values in partitions.items()]


def _remove_files_of(root: str, write_id: str, keep: set[str] | None = None) -> None:
    keep = keep or set()
    for dirpath, _, names in os.walk(root):
        if "_delta_log" in dirpath:
            continue
        for name in names:
            if f"part-{write_id}-" in name:
                rel = os.path.relpath(os.path.join(dirpath, name), root)
                if rel not in keep:
                    try:
                        os.remove(os.path.join(dirpath, name))
                    except FileNotFoundError:
                        pass


def rows_in(dt) -> int:
    import pyarrow as pa

    actions = pa.table(dt.get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return 0
    return int(sum(v or 0 for v in actions.column("num_records").to_pylist()))


def files_and_bytes(dt) -> tuple[int, int]:
    import pyarrow as pa

    actions = pa.table(dt.get_add_actions(flatten=True))
    return actions.num_rows, int(sum(actions.column("size_bytes").to_pylist())) if actions.num_rows else 0


def ceil_div(a: int, b: int) -> int:
    return max(1, math.ceil(a / b))
