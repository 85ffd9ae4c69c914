"""One object per Delta table: read a version, write, merge, history, counts, small reads, maintenance.

This and `pipelines.storage.lakehouse` are the only code that reads or writes tables. Stages get
DataFrames from `Table.read` and hand DataFrames to `Table.write`; they never see a path, and
what they need from the Delta log (rows per partition, the files of a version, a small table on
the driver) is a verb here.

    >>> flights = lakehouse.table("bronze.flights")
    >>> flights.write(df, mode="overwrite", partitions={"date": ["2013-01-02"]})
    >>> flights.read(version=0).count()
    >>> flights.rows_per_partition()            # {date(2013, 1, 2): 842, ...}, from the log alone
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Callable, Literal

from pipelines.storage import snapshots
from pipelines.storage.delta_rs import DeltaRsEngine, files_and_bytes, keep_whole_log, missing_properties, rows_in
from pipelines.storage.errors import TableNotFoundError
from pipelines.storage.layout import hidden_columns
from pipelines.storage.lineage_log import LineageLog
from pipelines.storage.paths import file_uri, local_path
from pipelines.storage.vacuum import vacuum as vacuum_table


@dataclass
class TableInfo:
    name: str
    layer: str
    path: str
    version: int
    rows: int
    files: int
    size_bytes: int
    last_operation: str
    last_modified: str
    partition_by: list[str]


class Table:
    """A Delta table: read a version, write, merge, history, counts, small reads, vacuum, compaction."""

    def __init__(self, name: str, path: str, engine):
        self.name = name
        self.path = path
        self.engine = engine

    def __repr__(self) -> str:
        return f"Table({self.name!r}, {self.path!r}, engine={self.engine.name if self.engine else None})"

    def exists(self) -> bool:
        """True once the table has a first commit."""
        return DeltaRsEngine.exists(self.path)

    # -- read and write (Spark) -------------------------------------------------------------------
    def read(self, version: int | None = None, timestamp: datetime | str | None = None,
             between: tuple[str, date, date] | None = None):
        """A Spark DataFrame of the latest version, of `version`, or as of `timestamp` (time travel);
        `between=(column, start, end)`: only its rows with `column` in [start, end], from only the
        files that may hold them (`files_between`): a night's read of its last days costs the same
        on the 365th night as on the 2nd.

            >>> lh.table("silver.flights").read(version=3)
            >>> lh.table("gold.features").read(between=("date", date(2013, 6, 1), date(2013, 6, 30)))
        """
        if not self.exists():
            raise TableNotFoundError(f"table {self.name} does not exist yet (no Delta log at {self.path})")
        files = self.files_between(*between, version=version) if between and timestamp is None else None
        df = self.engine.read(self.path, version=version, timestamp=timestamp, files=files)
        if between:
            df = df.filter(df[between[0]].between(between[1], between[2]))
        # A derived partition column (`month`) is the layout's, not the data's.
        hidden = hidden_columns(list(self.delta(version, timestamp).metadata().partition_columns), df.columns)
        return df.drop(*hidden) if hidden else df

    def write(self, df, mode: Literal["append", "overwrite"] = "append",
              partition_by: list[str] | None = None, partitions: dict[str, list] | None = None,
              schema_mode: Literal["merge", "overwrite"] | None = None,
              description: str | None = None, row_group_rows: int | None = None,
              order_by: list[str] | None = None) -> int:
        """Write `df` in one atomic commit and return the new version.

        mode="append" adds rows; mode="overwrite" replaces the table, or, with `partitions`
        (for example ``{"date": ["2013-01-02"]}``), only the rows whose columns hold those values
        (Delta's `replaceWhere`), which makes a re-run of a date idempotent: a partition column
        replaces whole partitions, a data column (the date of a table partitioned by month) the
        matching rows of the partitions that hold them. Every new row must match.

        `partition_by` is the table's layout (`pipelines.storage.layout`): it applies when the
        write creates the table, and a table on disk laid out otherwise is a LayoutMismatchError
        (None: whatever the table has). A derived partition column (`month`) is computed from its
        data column (`date`) here and left out by `read`. `order_by` names a key the rows of each
        file are sorted by, so two runs write the same files. A schema that differs from the
        table's fails unless `schema_mode="merge"` (add new columns) or, with a full overwrite,
        `schema_mode="overwrite"`.
        """
        if mode not in ("append", "overwrite"):
            raise ValueError(f"mode must be 'append' or 'overwrite', got {mode!r}")
        if partitions and mode != "overwrite":
            raise ValueError("partitions= names what an overwrite replaces; use mode='overwrite'")
        return self.engine.write(df, self.path, mode=mode, partition_by=partition_by,
                                 partitions=partitions, schema_mode=schema_mode, description=description,
                                 row_group_rows=row_group_rows, **({"order_by": order_by} if order_by else {}))

    def replace_rows(self, rows: list[dict], schema: str, key: tuple[str, ...],
                     drop: Callable[[dict], bool] | None = None) -> int:
        """Keep every row whose `key` differs from the given rows', replace the others, in one
        commit; `drop(row)`, when given, also removes the existing rows it is true for.

        For small bookkeeping tables (tens of rows per run): read and rewritten by the driver,
        without a Spark job where the engine can (delta-rs).

            >>> lh.table("results.runs").replace_rows([row], RUNS_SCHEMA, key=("job", "run_date"))
        """
        spark_schema = self.engine.spark.createDataFrame([], schema).schema
        names = spark_schema.fieldNames()
        replaced = {tuple(r.get(k) for k in key) for r in rows}
        kept = []
        if self.exists():
            # Rows written under an older schema read the columns added since as null.
            held = self.to_arrow()
            kept = [r for r in ({**dict.fromkeys(names), **row} for row in held.select(
                        [c for c in names if c in held.column_names]).to_pylist())
                    if tuple(r.get(k) for k in key) not in replaced and not (drop and drop(r))]
        rows = [{n: r.get(n) for n in names} for r in kept + rows]
        df = self.engine.spark.createDataFrame(rows, spark_schema)
        local = {"rows": rows} if self.engine.name == "delta-rs" else {}
        return self.engine.write(df, self.path, mode="overwrite", partition_by=None, partitions=None,
                                 schema_mode="overwrite", **local)

    def append_rows(self, rows: list[dict], schema: str) -> int:
        """Append `rows` (dicts of `schema`'s columns) in one commit, without reading the table: for
        bookkeeping tables that gain a few rows at a time, written by the driver without a Spark
        job where the engine can (delta-rs) and the table holds the same columns.

            >>> lh.table("ops.stage_log").append_rows([row], STAGE_LOG_SCHEMA)
        """
        spark_schema = self.engine.spark.createDataFrame([], schema).schema
        rows = [{n: r.get(n) for n in spark_schema.fieldNames()} for r in rows]
        df = self.engine.spark.createDataFrame(rows, spark_schema)
        local = {"rows": rows} if self.engine.name == "delta-rs" else {}
        return self.engine.write(df, self.path, mode="append", partition_by=None, partitions=None,
                                 schema_mode=None, **local)

    def merge(self, df, on: list[str], update: list[str], description: str | None = None,
              partitions: dict[str, list] | None = None, derive: dict[str, Callable] | None = None) -> dict:
        """Delta MERGE: each row of `df` sets the `update` columns of the target row whose `on` columns
        equal its own; the other rows and columns stay as they are. `derive` maps more columns of the
        target to a function of their current value (a Spark Column in, a Column out), applied to
        the matched rows only, as Delta's ``whenMatchedUpdate(set={"c": f(t.c)})``. One atomic commit, none when `df`
        is empty (nor, with delta-rs, when no row matches); `description` is recorded in the commit,
        as `write` does.

        It neither inserts nor deletes: a source row that matches no target row is ignored, so a
        caller that must not lose one finds those beforehand (a left anti join on `on`). A null in an
        `on` column never matches. Two source rows with the same key are a ValueError (a target row
        would get two updates). `partitions`, for example ``{"date": [date(2013, 1, 2)]}``, restricts
        the merge to those partitions of the table: rows elsewhere are not updated even when their
        key matches, and the files of other partitions are neither read nor rewritten. The JVM
        engine runs Delta's MERGE; the delta-rs engine rewrites the affected partitions through
        Spark in one commit (see `DeltaRsEngine.merge` for why not delta-rs's own MERGE).

        Returns ``{"version": the new version (the current one when nothing was committed),
        "updated": target rows updated, "source_rows": rows of df}``.

            >>> late = spark.createDataFrame(rows, "flight_id long, date date, arr_delay double")
            >>> lh.table("silver.flights").merge(late, on=["flight_id", "date"], update=["arr_delay"],
            ...                                  partitions={"date": [date(2013, 1, 2)]},
            ...                                  description="late arrivals of 2013-01-02")
            {'version': 7, 'updated': 41, 'source_rows': 41}
        """
        if not self.exists():
            raise TableNotFoundError(f"table {self.name} does not exist yet (no Delta log at {self.path})")
        on = [on] if isinstance(on, str) else list(on)
        update = [update] if isinstance(update, str) else list(update)
        if not on or not update or set(on) & set(update):
            raise ValueError(f"a merge into {self.name} matches on `on` columns and sets other, `update` "
                             f"columns; got on={on}, update={update}")
        derive = dict(derive or {})
        table_columns = self.schema().fieldNames()
        if set(derive) & set(on + update):
            raise ValueError(f"a merge into {self.name} derives columns it neither matches on nor sets; "
                             f"got derive={sorted(derive)}, on={on}, update={update}")
        for where, columns, wanted in (("the merge source", df.columns, on + update),
                                       (f"table {self.name}", table_columns, on + update + list(derive))):
            missing = [c for c in wanted if c not in columns]
            if missing:
                raise ValueError(f"columns {missing} of the merge into {self.name} are not in {where}")
        if any(c not in table_columns or not values for c, values in (partitions or {}).items()):
            raise ValueError(f"partitions={partitions} must list values of columns of {self.name}, "
                             f"which holds {', '.join(table_columns)}")
        source_rows, duplicated, examples = _merge_source_keys(df, on)
        if duplicated:
            raise ValueError(f"the source of the merge into {self.name} has {duplicated} keys {on} on more "
                             f"than one row, for example {examples}; a target row takes one update: "
                             f"deduplicate the source first")
        if source_rows == 0:
            return {"version": self.version(), "updated": 0, "source_rows": 0}
        result = self.engine.merge(df, self.path, on, update, partitions, description=description, derive=derive)
        return {**result, "source_rows": source_rows}

    # -- the Delta log (delta-rs reads tables of either engine; no Spark) ------------------------
    def delta(self, version: int | None = None, timestamp: datetime | str | None = None):
        """The `deltalake.DeltaTable` at a version: the engine underneath, for the storage layer
        and for exploring. The rest of the package asks the verbs of this class instead."""
        if version is None and timestamp is None:
            return snapshots.latest(self.path, DeltaRsEngine.open)
        return DeltaRsEngine.open(self.path, version, timestamp)

    def version(self) -> int:
        return self.delta().version()

    def files(self, version: int | None = None) -> list[str]:
        """Absolute URIs of the data files of a version: what Petastorm reads."""
        return [f if "://" in f else f"file://{f}" for f in self.delta(version).file_uris()]

    def files_between(self, column: str, start: date, end: date, version: int | None = None) -> list[str]:
        """The data files of a version that may hold a row with `column` in [start, end]: by the
        partition value where `column` partitions the table, else by the file's min/max statistics
        (a file without them counts). Sorted URIs.

            >>> lh.table("gold.features").files_between("date", date(2013, 1, 1), date(2013, 9, 30))
        """
        out = []
        for a in self.add_actions(version):
            low = a.get(f"partition.{column}") or a.get(f"min.{column}")
            high = a.get(f"partition.{column}") or a.get(f"max.{column}")
            low, high = (_as_date(v) for v in (low, high))
            if low is None or high is None or (low <= end and high >= start):
                out.append(a["path"])
        return sorted(out)

    def add_actions(self, version: int | None = None) -> list[dict]:
        """One dict per data file of a version: `path` (absolute URI), `size_bytes`, `num_records`,
        and `partition.<column>`, `min.<column>`, `max.<column>`, `null_count.<column>`."""
        return _add_actions(self.delta(version))

    def schema(self, version: int | None = None):
        """The table's columns as `read` gives them (a derived partition column left out)."""
        return _visible_schema(self.delta(version))

    def partition_by(self) -> list[str]:
        return list(self.delta().metadata().partition_columns)

    def lineage_log(self) -> LineageLog:
        """The table's log replayed once: `built_from(version)` gives a version's distinct
        `_built_from` values from the commits' records, reading no data file they cover."""
        return LineageLog(self.path)

    def history(self, limit: int | None = None) -> list[dict]:
        """Commits, newest first: version, timestamp, operation, parameters."""
        return self.delta().history(limit)

    def count(self, version: int | None = None) -> int:
        """Rows in a version, from the log's statistics (no data is read)."""
        return rows_in(self.delta(version))

    def size(self, version: int | None = None) -> tuple[int, int]:
        """(data files, bytes) of a version, from the log."""
        return files_and_bytes(self.delta(version))

    def rows_per_partition(self, columns: tuple[str, ...] | list[str] | str | None = None,
                           version: int | None = None) -> dict:
        """Rows per value of `columns` (the table's partition columns by default).

        Keys are the value of one column, or a tuple of values for several, typed by the schema (a
        `date` column gives `date`s, a null None). Partition columns come from the log alone; a
        data column (the `date` of a table partitioned by month) from the log where a file's
        statistics show it holds one value, else from that column of the file, read on the driver.

            >>> lh.table("silver.quarantine").rows_per_partition(("table", "date"))
        """
        import pyarrow.parquet as pq

        columns = [columns] if isinstance(columns, str) else list(columns or self.partition_by())
        dt = self.delta(version)
        parts_by = list(dt.metadata().partition_columns)
        types = {f.name: f.dataType.typeName() for f in DeltaRsEngine.spark_schema(dt).fields}
        stored = [c for c in columns if c not in parts_by]
        out: dict = {}
        for a in self.add_actions(version):
            rows = int(a.get("num_records") or 0)
            fixed = {c: _typed(a.get(f"partition.{c}"), types.get(c)) for c in parts_by}
            single = all(a.get(f"null_count.{c}") == 0 and a.get(f"min.{c}") is not None
                         and a.get(f"min.{c}") == a.get(f"max.{c}") for c in stored)
            if single:
                fixed.update({c: _typed(_stat_string(a.get(f"min.{c}")), types.get(c)) for c in stored})
                groups = [((), rows)]
            else:
                data = pq.read_table(local_path(a["path"]), columns=stored)
                counted = data.group_by(stored).aggregate([([], "count_all")]).to_pylist()
                groups = [(tuple(g[c] for c in stored), g["count_all"]) for g in counted]
            for values, n in groups:
                found = dict(zip(stored, values)) if values else {}
                key = tuple(found[c] if c in found else fixed[c] for c in columns)
                key = key[0] if len(columns) == 1 else key
                out[key] = out.get(key, 0) + n
        return out

    def to_arrow(self, columns: list[str] | None = None, version: int | None = None):
        """A small table (bookkeeping, the feature spec, the registry) as a pyarrow Table, read
        on the driver without Spark. Partition columns are filled from the log's values."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        dt = self.delta(version)   # one snapshot for the schema and the files: a log replay each
        schema = _visible_schema(dt)
        wanted = columns or schema.fieldNames()
        parts_by = list(dt.metadata().partition_columns)
        arrow_types = {f.name: _arrow_type(f.dataType.typeName()) for f in schema.fields}
        tables = []
        for a in _add_actions(dt):
            stored = [c for c in wanted if c not in parts_by]
            table = pq.read_table(local_path(a["path"]), columns=stored)
            for c in wanted:
                if c in parts_by:
                    value = _typed(a.get(f"partition.{c}"), schema[c].dataType.typeName())
                    table = table.append_column(c, pa.array([value] * table.num_rows, arrow_types.get(c)))
            tables.append(table.select(wanted))
        if not tables:
            return pa.table({c: pa.array([], arrow_types.get(c)) for c in wanted})
        return pa.concat_tables([t.cast(tables[0].schema) for t in tables])

    def to_pandas(self, columns: list[str] | None = None, version: int | None = None):
        """`to_arrow` as a pandas DataFrame (notebooks; works on partitioned tables with pyarrow 14)."""
        return self.to_arrow(columns, version).to_pandas()

    # -- maintenance -----------------------------------------------------------------------------
    def vacuum(self, retention_hours: int, dry_run: bool = False, keep_versions: list[int] | None = None) -> list[str]:
        """Delete the files no version within `retention_hours` (nor one of `keep_versions`) refers
        to; returns them (with `dry_run`, the ones it would delete). The history shows it as Delta's
        VACUUM does (`VACUUM START`, `VACUUM END`; the files of the pinned versions are read from the
        log: `pipelines.storage.vacuum`). A vacuum that finds nothing to delete commits nothing, so
        running it twice changes nothing.

        A full vacuum (delta-rs `full=True`): every data file the log does not reference and older
        than the retention, not only those a tombstone still names. A checkpoint drops the
        tombstones older than the table's `delta.deletedFileRetentionDuration` (a week), so a file
        removed while a model pinned its version for longer, or removed a week before a checkpoint
        that came before this vacuum, has no tombstone left, and would stay on disk for good; so
        would the files of a write stopped before its commit."""
        # The latest snapshot, kept between calls (`snapshots`): delta-rs commits nothing through it.
        return vacuum_table(self.delta(), retention_hours, dry_run, keep_versions, DeltaRsEngine.open)

    def keep_whole_log(self) -> bool:
        """Give a table created before them the properties every table is created with
        (`delta_rs.TABLE_PROPERTIES`: the whole log kept, a checkpoint every 10 commits); True if
        it changed the table. Only a table that lacks them is opened anew to commit them."""
        if not missing_properties(self.delta()):
            return False
        return keep_whole_log(DeltaRsEngine.open(self.path))

    def compact(self, row_group_rows: int | None = None, partitions: dict[str, list] | None = None,
                target_size_bytes: int | None = None) -> dict:
        """Rewrite small files into fewer large ones (data unchanged, one new version, none when
        there is nothing to compact); returns delta-rs's metrics (`numFilesRemoved`, ...)."""
        from deltalake import WriterProperties

        filters = [(c, "in", [str(v) for v in vals]) for c, vals in (partitions or {}).items()] or None
        props = WriterProperties(max_row_group_size=row_group_rows) if row_group_rows else None
        dt = DeltaRsEngine.open(self.path)    # its own: the compaction commits through it
        return dt.optimize.compact(partition_filters=filters, target_size=target_size_bytes, writer_properties=props)

    def info(self, layer: str) -> TableInfo:
        dt = self.delta()
        last = dt.history(1)[0]
        files, size = files_and_bytes(dt)
        ts = datetime.utcfromtimestamp(last["timestamp"] / 1000).isoformat(timespec="seconds") + "Z"
        return TableInfo(self.name, layer, self.path, dt.version(), rows_in(dt), files, size,
                         last.get("operation", "?"), ts, list(dt.metadata().partition_columns))


def _add_actions(dt) -> list[dict]:
    """`Table.add_actions` of the delta-rs snapshot `dt`."""
    import pyarrow as pa

    actions = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
    for a in actions:
        a["path"] = file_uri(dt.table_uri, a["path"])
    return actions


def _visible_schema(dt):
    """`Table.schema` of the delta-rs snapshot `dt`."""
    from pyspark.sql.types import StructType

    schema = DeltaRsEngine.spark_schema(dt)
    hidden = hidden_columns(list(dt.metadata().partition_columns), schema.fieldNames())
    return StructType([f for f in schema.fields if f.name not in hidden]) if hidden else schema


def _merge_source_keys(df, on: list[str]) -> tuple[int, int, list[tuple]]:
    """Rows of a merge source, how many of its keys (nulls aside: they match nothing) are on more
    than one row, and three of those; one Spark job."""
    from functools import reduce
    from operator import and_

    from pyspark.sql import functions as F

    counts = df.groupBy(*on).count()
    repeated = reduce(and_, [F.col(c).isNotNull() for c in on], F.col("count") > 1)
    row = counts.agg(F.sum("count").alias("rows"), F.count(F.when(repeated, 1)).alias("duplicated"),
                     F.slice(F.collect_list(F.when(repeated, F.struct(*on))), 1, 3).alias("examples")).first()
    return int(row["rows"] or 0), row["duplicated"], [tuple(key) for key in row["examples"]]


def _typed(value: Any, type_name: str | None) -> Any:
    """A partition value of the log (a string) as the column's type."""
    if value is None or not isinstance(value, str):
        return value
    if type_name == "date":
        return date.fromisoformat(value)
    if type_name in ("integer", "long", "short", "byte"):
        return int(value)
    if type_name == "boolean":
        return value == "true"
    return value


def _as_date(value: Any) -> date | None:
    """A date of the log (a partition string, a date or a timestamp statistic)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def _stat_string(value: Any) -> Any:
    """A min/max statistic as the string a partition value would be (dates as ISO dates)."""
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == datetime.min.time() else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


def _arrow_type(type_name: str):
    import pyarrow as pa

    return {"date": pa.date32(), "integer": pa.int32(), "long": pa.int64(), "short": pa.int16(),
            "byte": pa.int8(), "boolean": pa.bool_(), "string": pa.string(), "double": pa.float64(),
            "float": pa.float32()}.get(type_name)
