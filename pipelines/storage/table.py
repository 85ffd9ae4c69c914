"""One object per Delta table and one for the lakehouse that holds them.

This is the only code that reads or writes tables. Stages get DataFrames from `Table.read` and
hand DataFrames to `Table.write`; they never see a path.

    >>> lh = Lakehouse.from_config(cfg, spark)
    >>> flights = lh.table("bronze.flights")
    >>> flights.write(df, mode="overwrite", partitions={"date": ["2013-01-02"]})
    >>> flights.read(version=0).count()
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from pipelines.lakehouse.delta_rs import DeltaRsEngine, files_and_bytes, local_path, rows_in
from pipelines.lakehouse.errors import TableNotFoundError

LAYERS = ("bronze", "silver", "gold", "results", "ops")


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
    """A Delta table: read a version, write, history, vacuum, compaction."""

    def __init__(self, name: str, path: str, engine):
        self.name = name
        self.path = path
        self.engine = engine

    def __repr__(self) -> str:
        return f"Table({self.name!r}, {self.path!r}, engine={self.engine.name})"

    def exists(self) -> bool:
        """True once the table has a first commit."""
        return DeltaRsEngine.exists(self.path)

    def read(self, version: int | None = None, timestamp: datetime | str | None = None):
        """A Spark DataFrame of the latest version, of `version`, or as of `timestamp` (time travel).

            >>> lh.table("silver.flights").read(version=3)
        """
        if not self.exists():
            raise TableNotFoundError(f"table {self.name} does not exist yet (no Delta log at {self.path})")
        return self.engine.read(self.path, version=version, timestamp=timestamp)

    def write(self, df, mode: Literal["append", "overwrite"] = "append",
              partition_by: list[str] | None = None, partitions: dict[str, list] | None = None,
              schema_mode: Literal["merge", "overwrite"] | None = None,
              description: str | None = None, row_group_rows: int | None = None) -> int:
        """Write `df` in one atomic commit and return the new version.

        mode="append" adds rows; mode="overwrite" replaces the table, or, with `partitions`
        (for example ``{"date": ["2013-01-02"]}``), only those partitions, which makes a re-run
        of a date idempotent. `partition_by` applies when the write creates the table. A schema
        that differs from the table's fails unless `schema_mode="merge"` (add new columns) or,
        with a full overwrite, `schema_mode="overwrite"`.
        """
        if mode not in ("append", "overwrite"):
            raise ValueError(f"mode must be 'append' or 'overwrite', got {mode!r}")
        if partitions and mode != "overwrite":
            raise ValueError("partitions= names what an overwrite replaces; use mode='overwrite'")
        return self.engine.write(df, self.path, mode=mode, partition_by=partition_by,
                                 partitions=partitions, schema_mode=schema_mode, description=description,
                                 row_group_rows=row_group_rows)

    # -- snapshot metadata (delta-rs reads tables of either engine) -------------------------------
    def delta(self, version: int | None = None, timestamp: datetime | str | None = None):
        """The `deltalake.DeltaTable` at a version, for what this API does not cover."""
        return DeltaRsEngine.open(self.path, version, timestamp)

    def version(self) -> int:
        return self.delta().version()

    def files(self, version: int | None = None) -> list[str]:
        """Absolute URIs of the data files of a version: what Petastorm reads."""
        return [f if "://" in f else f"file://{f}" for f in self.delta(version).file_uris()]

    def schema(self, version: int | None = None):
        return DeltaRsEngine.spark_schema(self.delta(version))

    def partition_by(self) -> list[str]:
        return list(self.delta().metadata().partition_columns)

    def history(self, limit: int | None = None) -> list[dict]:
        """Commits, newest first: version, timestamp, operation, parameters."""
        return self.delta().history(limit)

    def count(self, version: int | None = None) -> int:
        """Rows in a version, from the log's statistics (no data is read)."""
        return rows_in(self.delta(version))

    def vacuum(self, retention_hours: int = 168, dry_run: bool = False) -> list[str]:
        """Delete files no version within `retention_hours` refers to; returns them."""
        return self.delta().vacuum(retention_hours=retention_hours, dry_run=dry_run,
                                   enforce_retention_duration=False)

    def compact(self, target_size_bytes: int = 128 * 1024 * 1024, partitions: dict[str, list] | None = None) -> dict:
        """Rewrite small files into fewer large ones (data unchanged, one new version)."""
        filters = [(c, "in", [str(v) for v in vals]) for c, vals in (partitions or {}).items()] or None
        return self.delta().optimize.compact(partition_filters=filters, target_size=target_size_bytes)

    def info(self, layer: str) -> TableInfo:
        dt = self.delta()
        last = dt.history(1)[0]
        files, size = files_and_bytes(dt)
        ts = datetime.utcfromtimestamp(last["timestamp"] / 1000).isoformat(timespec="seconds") + "Z"
        return TableInfo(self.name, layer, self.path, dt.version(), rows_in(dt), files, size,
                         last.get("operation", "?"), ts, list(dt.metadata().partition_columns))


class JvmDeltaEngine:
    """Delta through Spark's own `format("delta")`: used where the Delta jars are on the classpath."""

    name = "jvm"

    def __init__(self, spark):
        self.spark = spark

    def read(self, path: str, version=None, timestamp=None):
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        elif timestamp is not None:
            reader = reader.option("timestampAsOf", str(timestamp))
        return reader.load(path)

    def write(self, df, path, mode, partition_by, partitions, schema_mode, description=None,
              row_group_rows=None) -> int:   # Spark's Parquet writer sizes row groups in bytes
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


def jvm_delta_available(spark) -> bool:
    """True when the Delta classes load in this Spark (a cluster submitted with the Delta jars)."""
    try:
        spark._jvm.java.lang.Class.forName("io.delta.tables.DeltaTable")
        return True
    except Exception:
        return False


def choose_engine(spark, engine: str, target_file_rows: int = 500_000, row_group_rows: int = 16_384):
    if engine == "auto":
        engine = "jvm" if jvm_delta_available(spark) else "delta-rs"
    if engine == "jvm":
        if not jvm_delta_available(spark):
            raise RuntimeError("lakehouse.engine is 'jvm' but the Delta classes are not on Spark's classpath; "
                               "submit with --packages io.delta:delta-spark_2.12:3.3.2 or set lakehouse.engine=delta-rs")
        return JvmDeltaEngine(spark)
    return DeltaRsEngine(spark, target_file_rows, row_group_rows)


class Lakehouse:
    """The lakehouse root: tables are named `<layer>.<name>` and live at `<root>/<layer>/<name>`."""

    def __init__(self, root: str | Path, spark=None, engine: str = "delta-rs",
                 target_file_rows: int = 500_000, row_group_rows: int = 16_384):
        self.root = str(root)
        self.spark = spark
        self._engine_name = engine
        self._engine = None
        self.target_file_rows = target_file_rows
        self.row_group_rows = row_group_rows

    @classmethod
    def from_config(cls, cfg, spark=None) -> "Lakehouse":
        lk = cfg.lakehouse
        return cls(lk.root, spark, lk.engine, lk.target_file_rows, lk.row_group_rows)

    @property
    def engine(self):
        if self._engine is None:
            if self.spark is None:
                raise RuntimeError("this Lakehouse was opened without Spark; reads and writes need a SparkSession")
            self._engine = choose_engine(self.spark, self._engine_name, self.target_file_rows, self.row_group_rows)
        return self._engine

    def path(self, name: str) -> str:
        layer, _, table = name.partition(".")
        if not table or layer not in LAYERS:
            raise ValueError(f"table names are '<layer>.<name>' with a layer of {', '.join(LAYERS)}; got {name!r}")
        return os.path.join(self.root, layer, table)

    def table(self, name: str) -> Table:
        """The table `<layer>.<name>` (it may not exist yet: `exists()` tells)."""
        path = self.path(name)
        return Table(name, path, _LazyEngine(self))

    def table_names(self) -> list[str]:
        """The name of every table in the lakehouse, by layer and name, without opening them."""
        out = []
        root = local_path(self.root)
        for layer in LAYERS:
            folder = os.path.join(root, layer)
            if not os.path.isdir(folder):
                continue
            for name in sorted(os.listdir(folder)):
                path = os.path.join(folder, name)
                if os.path.isdir(os.path.join(path, "_delta_log")) and DeltaRsEngine.exists(path):
                    out.append(f"{layer}.{name}")
        return out

    def tables(self) -> list[TableInfo]:
        """Every table in the lakehouse, by layer and name."""
        root = local_path(self.root)
        out = []
        for name in self.table_names():
            layer, table = name.split(".", 1)
            out.append(Table(name, os.path.join(root, layer, table), None).info(layer))
        return out

    def drop(self, name: str) -> None:
        """Delete a table and its files (tests and `reset` only)."""
        shutil.rmtree(local_path(self.path(name)), ignore_errors=True)


class _LazyEngine:
    """Lets `Table` objects exist without Spark (metadata only) and pick the engine on first write."""

    def __init__(self, lakehouse: Lakehouse):
        self._lh = lakehouse

    @property
    def name(self) -> str:
        return self._lh._engine_name

    def __getattr__(self, attr):
        return getattr(self._lh.engine, attr)


def tables_json(infos: list[TableInfo]) -> str:
    return json.dumps([asdict(i) for i in infos], indent=2)
