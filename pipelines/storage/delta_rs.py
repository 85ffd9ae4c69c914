"""The embedded Delta engine: Spark executors write Parquet, the driver commits them with delta-rs.

A write is one Delta transaction however many executors took part: every task writes its rows
into files named after the write's id and returns what it wrote (path, size, rows, statistics;
`pipelines.storage.file_writer`); the driver then commits all the files in one `deltalake`
transaction. A job that fails before the commit leaves the table at its previous version, and the
files its tasks wrote are deleted.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from datetime import datetime, timedelta, timezone

from pipelines.lineage.columns import BUILT_FROM
from pipelines.storage.delta_log import FIRST_COMMIT, commit_file, commit_info, log_dir, read_commit
from pipelines.storage.errors import ConcurrentWriteError, TableNotFoundError
from pipelines.storage.file_writer import (OUTSIDE_PARTITIONS, WRITE_RESULT_SCHEMA, make_file_writer,
                                           partition_string)
from pipelines.storage.layout import DATE_COLUMN, check_layout
from pipelines.storage.lineage_log import RECORD_KEY, record as lineage_record
from pipelines.storage.replace import estimated_bytes, replace_where, with_derived_columns
from pipelines.storage.paths import local_path
from pipelines.storage.spark import session_conf
from pipelines.storage.schema import check_schema, merge_schemas

# The Python distribution of this engine, whose version the model registry records.
DISTRIBUTION = "deltalake"
# Every table keeps its whole Delta log (delta-rs deletes commits older than 30 days at each
# checkpoint, and a version a registered model pins would no longer read; vacuum removes data
# files only), and checkpoints every 10 commits, not 100: an open replays the commits since the
# last one (56 ms against 10 ms at 365 commits, docs/benchmarks.md), and a nightly opens its tables
# ~170 times. `keep_whole_log` sets both on a table created before.
TABLE_PROPERTIES = {"delta.enableExpiredLogCleanup": "false", "delta.checkpointInterval": "10"}


def missing_properties(dt) -> dict[str, str]:
    """The `TABLE_PROPERTIES` the delta-rs table `dt` lacks (or holds with another value)."""
    configured = dt.metadata().configuration
    return {k: v for k, v in TABLE_PROPERTIES.items() if configured.get(k) != v}


def keep_whole_log(dt) -> bool:
    """Set `TABLE_PROPERTIES` on the delta-rs table `dt` where missing (one commit); True if it did."""
    missing = missing_properties(dt)
    if missing:
        dt.alter.set_table_properties(missing)
    return bool(missing)


class DeltaRsEngine:
    """Reads with Spark over the snapshot's file list, writes with executors + one delta-rs commit."""

    name = "delta-rs"

    def __init__(self, spark, target_file_bytes: int, row_group_rows: int, target_file_rows: int | None = None):
        self.spark = spark
        self.target_file_bytes = target_file_bytes
        self.target_file_rows = target_file_rows
        self.row_group_rows = row_group_rows

    # -- metadata ------------------------------------------------------------------------------
    @staticmethod
    def exists(path: str) -> bool:
        from deltalake import DeltaTable

        local = local_path(path)
        if "://" not in local:
            # Its first commit (or, made before the whole log was kept, a checkpoint): a stat or
            # two, where delta-rs lists the whole log (6 ms at 900 commits).
            return any(os.path.isfile(os.path.join(log_dir(local), name)) for name in (FIRST_COMMIT, "_last_checkpoint"))
        return DeltaTable.is_deltatable(path)

    @staticmethod
    def open(path: str, version: int | None = None, timestamp: datetime | str | None = None):
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError as RsNotFound

        try:
            # A version is loaded from its own last checkpoint, not replayed back from the latest.
            dt = DeltaTable(path, version=version) if version is not None else DeltaTable(path)
        except RsNotFound as exc:
            raise TableNotFoundError(f"no Delta table at {path}") from exc
        if timestamp is not None and version is None:
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
    def read(self, path: str, version: int | None = None, timestamp=None, files: list[str] | None = None):
        dt = self.open(path, version, timestamp)
        schema = self.spark_schema(dt)
        files = dt.file_uris() if files is None else files   # `files`: the version's files to read
        if not files:
            return self.spark.createDataFrame([], schema)
        partition_by = dt.metadata().partition_columns
        reader = self.spark.read.schema(schema)
        if partition_by:
            # Partition values live in the folder names (`date=2013-01-01/`), as Delta writes them.
            reader = reader.option("basePath", local_path(dt.table_uri))
        # Spark lists more than `parallelPartitionDiscovery.threshold` (32) paths with a Spark job of
        # one task per path (5-10 s for a year of daily files); the log already names every file.
        with session_conf(self.spark, {"spark.sql.sources.parallelPartitionDiscovery.threshold":
                                        str(max(len(files) + 1, 32))}):
            df = reader.parquet(*files)
        return df.select(*schema.fieldNames())

    # -- write ---------------------------------------------------------------------------------
    def write(self, df, path: str, mode: str, partition_by: list[str] | None,
              partitions: dict[str, list] | None, schema_mode: str | None,
              description: str | None = None, row_group_rows: int | None = None, clustered: bool = False,
              order_by: list[str] | None = None, rows: list[dict] | None = None) -> int:
        """`Table.write`'s commit. `clustered`: the rows of each partition value are in one Spark
        partition already (`merge` arranges it), so no exchange by the partition columns is added.
        `rows`: the rows `df` was made from, held by the driver (bookkeeping); a whole new
        unpartitioned table of them is written by the driver itself, without a Spark job."""
        from deltalake import Schema
        from deltalake.transaction import AddAction, CommitProperties, create_table_with_add_actions
        from deltalake.exceptions import CommitFailedError, DeltaError
        from pyspark.sql.pandas.types import to_arrow_schema

        existed = self.exists(path)
        if existed:
            dt = self.open(path)
            partition_by = check_layout(path, dt.metadata().partition_columns, partition_by)
        else:
            partition_by = list(partition_by or [])
        df = with_derived_columns(df, partition_by)
        if existed:
            table_schema = self.spark_schema(dt)
            as_given = mode == "overwrite" and schema_mode == "overwrite" and not partitions
            if as_given:
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
            as_given = True
            missing = [c for c in partition_by if c not in df.columns]
            if missing:
                raise ValueError(f"partition columns {missing} are not in the data written to {path}")
            target_schema = df.schema

        allowed, read_version = None, None
        if partitions:
            unknown = [c for c in partitions if c not in df.columns]
            if unknown:
                raise ValueError(f"cannot overwrite the rows of {path} where {unknown} is in a list: "
                                 f"no such column (it holds {', '.join(df.columns)})")
            allowed = {c: [partition_string(v) for v in vals] for c, vals in partitions.items()}
            if existed and not set(partitions) <= set(partition_by):
                # A predicate overwrite (Delta's replaceWhere on a data column): rewrite the
                # partitions that hold a replaced row, keeping their other rows.
                df, mode, partitions, read_version = replace_where(self, path, df, partitions, partition_by)
            elif not existed:
                partitions = None
        os.makedirs(local_path(path), exist_ok=True)
        write_id = uuid.uuid4().hex[:12]
        arrow_schema = to_arrow_schema(df.schema)
        writer = make_file_writer(local_path(path), write_id, partition_by,
                                  arrow_schema.serialize().to_pybytes(), self.target_file_bytes,
                                  row_group_rows or self.row_group_rows, allowed, self.target_file_rows,
                                  record_column=BUILT_FROM)
        # The driver writes rows it holds (a whole table as given, or an append of the table's own
        # columns; no partition, no order asked): the same file writer, without a Spark job.
        local = (rows is not None and not partition_by and not order_by
                 and (as_given or (mode == "append" and df.schema == target_schema)))
        # Within a file, rows in the order of the partition columns, then of `order_by` (a key the
        # caller names, so two runs write the same rows in the same order), then of the date, which
        # keeps each file's date range narrow for skipping by statistics.
        order = list(dict.fromkeys([*partition_by, *(order_by or []),
                                    *([DATE_COLUMN] if DATE_COLUMN in df.columns else [])]))
        if partition_by:
            # Each partition value in one task, its rows together: the task writes one file per
            # value and holds one value's rows at a time (`make_file_writer`).
            df = (df if clustered else df.repartition(*partition_by)).sortWithinPartitions(*order)
        elif not local:
            # An unpartitioned table is a small one (bookkeeping, reference data): its write is one
            # task, so one file up to the target size. Where Spark's estimate says the rows are
            # small, the task computes them too (no exchange); where it cannot tell (it never can
            # for rows made in Python), the rows are computed in parallel and gathered.
            if df.rdd.getNumPartitions() > 1:
                df = df.coalesce(1) if estimated_bytes(df) < self.target_file_bytes else df.repartition(1)
            if order_by:
                df = df.sortWithinPartitions(*order)
        try:
            if local:
                import pyarrow as pa

                batches = pa.Table.from_pylist(rows, schema=arrow_schema).to_batches()
                written = [r for b in writer(iter(batches)) for r in b.to_pylist()]
            else:
                written = _collect_in_group(self.spark.sparkContext, df.mapInArrow(writer, WRITE_RESULT_SCHEMA),
                                            group=f"lakehouse-dl-write-{write_id}", description=f"write {path}")
        except BaseException as exc:
            _remove_files_of(local_path(path), write_id)
            message = str(exc)
            if OUTSIDE_PARTITIONS in message:
                # Raised in a task: surface the task's own message, not the Spark stack trace.
                line = next(l for l in message.splitlines() if OUTSIDE_PARTITIONS in l)
                raise ValueError(f"{path}: {line[line.index('overwrite of '):]}") from None
            raise
        # From here to the commit, any failure deletes every file of this write: the table stays at
        # its last version with no file of a write that never committed (tests inject one at each step).
        try:
            # Tasks that were retried or speculated leave files no result points at: delete them.
            kept = {row["path"] for row in written}
            _remove_files_of(local_path(path), write_id, keep=kept)
            now = int(time.time() * 1000)
            actions = [AddAction(row["path"], row["size"], json.loads(row["partition_values"]), now, True,
                                 row["stats"]) for row in written]
            delta_schema = Schema.from_json(target_schema.json())
            # What each added file was built from, so pins read the log, not the files (`lineage_log`).
            props = CommitProperties(custom_metadata={"engine": "lakehouse-dl/delta-rs", "writeId": write_id,
                                                      RECORD_KEY: lineage_record(written),
                                                      **({"description": description} if description else {})})
            filters = _partition_filters(partitions, df.schema) if partitions else None
            if not existed:
                try:
                    create_table_with_add_actions(path, delta_schema, actions, mode="error",
                                                  partition_by=partition_by or None, commit_properties=props,
                                                  configuration=TABLE_PROPERTIES)
                    return 0
                except DeltaError as exc:
                    if "exists" not in str(exc).lower():
                        raise
                    if allowed and mode == "overwrite" and not filters:
                        # An overwrite of some rows must not replace a table it never read.
                        raise CommitFailedError("the table was created by another writer meanwhile")
                    # Another writer created the table first: commit on top of it like any writer.
            # A predicate overwrite commits on the version it read the kept rows of, so a commit
            # landing in between is a conflict, not a silent loss of that commit's rows.
            dt = self.open(path, version=read_version)
            if schema_mode == "merge":
                new = [f for f in target_schema.fields if f.name not in self.spark_schema(dt).fieldNames()]
                if new:
                    from deltalake import Field as RsField
                    dt.alter.add_columns([RsField.from_json(json.dumps(f.jsonValue())) for f in new])
                    dt = self.open(path)
            dt.create_write_transaction(actions, mode, delta_schema, partition_by=partition_by or None,
                                        partition_filters=filters, commit_properties=props)
            read_version = dt.version()
        except CommitFailedError as exc:
            _remove_files_of(local_path(path), write_id)
            raise ConcurrentWriteError(
                f"another writer committed to {path} first and the two writes conflict ({exc}); "
                f"nothing of this write was committed, run it again") from exc
        except BaseException:
            _remove_files_of(local_path(path), write_id)
            raise
        # Committed: the files belong to the table now, whatever happens next.
        return _version_of_write(path, write_id, read_version)

    # -- merge ---------------------------------------------------------------------------------
    def merge(self, df, path: str, on: list[str], update: list[str], partitions: dict[str, list] | None,
              description: str | None = None, derive: dict | None = None) -> dict:
        """MERGE (matched rows only) of a non-empty `df` with unique keys (`Table.merge` checks both),
        copy-on-write through Spark: the target's rows in `partitions` (the whole table when None)
        are joined with the source on `on`, matched rows take the source's `update` values (and
        `derive`'s functions of their own values), and those partitions are overwritten in one
        commit by `write`, so the version is atomic like any write and the files are written as
        every other file of the lakehouse. Nothing is committed when no row matches. Returns the
        version and the rows updated.

        One exchange of the target's rows: when the table's partition columns are among `on`, both
        sides are hash-partitioned by the partition columns, the join keeps that partitioning (no
        second exchange by all of `on`) and the write takes the rows as they come, one file per
        partition value. The rows updated are counted on the keys alone, so nothing wide is cached.

        Not delta-rs's own `DeltaTable.merge`: delta-rs 1.6 writes the files it rewrites with Arrow
        `string_view` strings, which the pinned pyarrow 14 (hence `Table.to_arrow` and Petastorm)
        cannot open (delta-rs PR #4302, issue #4579). The cost: whole partitions are rewritten, and
        the log records the commit as a WRITE whose description names the merge."""
        from pyspark.sql import functions as F

        derive = derive or {}
        target = self.read(path)
        types = {f.name: f.dataType for f in target.schema.fields}
        source = (df.select(*on, *[F.col(c).cast(types[c]).alias(f"__new_{c}") for c in update])
                  .withColumn("__matched", F.lit(True)))
        lost = df.select(*[(F.col(c).isNotNull() & F.col(c).cast(types[c]).isNull()).cast("int").alias(c)
                           for c in update]).groupBy().sum().first()
        for c, n in zip(update, lost or []):
            if n:
                raise ValueError(f"{path}: column {c} of the merge source does not cast to the table's "
                                 f"{types[c].simpleString()} ({n} value(s) would become null)")
        partition_by = list(self.open(path).metadata().partition_columns)
        if partitions is None and partition_by:
            # Only the partitions holding a matched row are rewritten.
            hit = target.join(source.select(*on), on=on).select(*partition_by).distinct().collect()
            partitions = {c: sorted({r[c] for r in hit}, key=str) for c in partition_by}
            if not hit:
                return {"version": self.open(path).version(), "updated": 0}
        for column, values in (partitions or {}).items():
            target = target.filter(F.col(column).isin(list(values)))
        # An equi-join on the names: a null key matches nothing.
        updated = target.select(*on).join(source.select(*on), on=on).count()
        if updated == 0:
            return {"version": self.open(path).version(), "updated": 0}
        clustered = bool(partition_by) and set(partition_by) <= set(on)
        if clustered:
            n = int(self.spark.conf.get("spark.sql.shuffle.partitions"))
            target, source = target.repartition(n, *partition_by), source.repartition(n, *partition_by)
        joined = target.join(source, on=on, how="left")
        matched = F.col("__matched")
        merged = joined.select(*[
            F.when(matched, F.col(f"__new_{c}")).otherwise(F.col(c)).alias(c) if c in update
            else F.when(matched, derive[c](F.col(c))).otherwise(F.col(c)).alias(c) if c in derive
            else F.col(c) for c in target.columns])
        # The join keeps the partitioning by the partition columns only when Spark may co-partition
        # on a subset of the join keys; `write` then takes it as it is.
        with session_conf(self.spark, {"spark.sql.requireAllClusterKeysForCoPartition": "false"} if clustered else {}):
            version = self.write(merged, path, mode="overwrite", partition_by=None,
                                 partitions=partitions or None, schema_mode=None, clustered=clustered,
                                 description=description or f"merge on {', '.join(on)} setting {', '.join(update)}")
        return {"version": version, "updated": updated}


def merge_condition(on: list[str], partitions: dict[str, list] | None) -> str:
    """The MERGE condition of both engines, target `t` and source `s`: equal keys (a null never equals
    anything), and the target's partition columns within `partitions`, so other partitions' files are
    neither read nor rewritten."""
    keys = [f"t.`{c}` = s.`{c}`" for c in on]
    within = [f"t.`{c}` IN ({', '.join(_sql_string(v) for v in values)})"
              for c, values in (partitions or {}).items()]
    return " AND ".join(keys + within)


def _sql_string(value) -> str:
    """A partition value as a SQL string literal, which both engines cast to the column's type."""
    return "NULL" if value is None else "'" + partition_string(value).replace("'", "''") + "'"


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
    latest = DeltaRsEngine.open(path).version()
    for version in range(latest, read_version, -1):
        if commit_info(read_commit(commit_file(path, version))).get("writeId") == write_id:
            return version
    return latest


def _partition_filters(partitions: dict[str, list], schema) -> list[tuple]:
    return [(col, "in", [partition_string(v) for v in values]) for col, values in partitions.items()]


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
