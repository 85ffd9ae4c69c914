"""The lakehouse: a root folder of Delta tables named `<layer>.<name>` (the layers and names are
the catalog's, `pipelines.catalog`), stored at `<root>/<layer>/<name>`.

    >>> lh = Lakehouse.from_config(cfg, spark)
    >>> lh.table("gold.model_input").version()
    >>> [t.name for t in Lakehouse(root).tables()]        # metadata needs no Spark
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from pipelines.catalog import LAYERS
from pipelines.config import base_value
from pipelines.storage.delta_rs import DeltaRsEngine
from pipelines.storage.jvm import choose_engine
from pipelines.storage.layout import partition_columns
from pipelines.storage.paths import local_path
from pipelines.storage.table import Table, TableInfo


class Lakehouse:
    """The lakehouse root: tables are named `<layer>.<name>` and live at `<root>/<layer>/<name>`."""

    def __init__(self, root: str | Path, spark=None, engine: str | None = None,
                 target_file_bytes: int | None = None, row_group_rows: int | None = None,
                 target_file_rows: int | None = None, partition_by: str | None = None):
        """`engine`, `target_file_bytes` and `row_group_rows` left out take conf/base's values;
        `target_file_rows`, when given, also closes a file at that many rows (tests and benchmarks
        that need several files of a small table)."""
        self.root = str(root)
        self.spark = spark
        self._engine_name = engine or base_value("lakehouse.engine")
        self._engine = None
        self.target_file_bytes = target_file_bytes or base_value("lakehouse.target_file_bytes")
        self.target_file_rows = target_file_rows
        self.row_group_rows = row_group_rows or base_value("lakehouse.row_group_rows")
        self.layout = partition_by or base_value("lakehouse.partition_by")

    @classmethod
    def from_config(cls, cfg, spark=None) -> "Lakehouse":
        lk = cfg.lakehouse
        return cls(lk.root, spark, lk.engine, lk.target_file_bytes, lk.row_group_rows, partition_by=lk.partition_by)

    @property
    def engine(self):
        if self._engine is None:
            if self.spark is None:
                raise RuntimeError("this Lakehouse was opened without Spark; reads and writes need a SparkSession")
            self._engine = choose_engine(self.spark, self._engine_name, self.target_file_bytes, self.row_group_rows,
                                         self.target_file_rows)
        return self._engine

    def daily_partition_by(self, layout: str | None = None) -> list[str]:
        """The partition columns of a daily table: of its own `layout` (a source's `partition_by`)
        or of the lakehouse's default (`lakehouse.partition_by`, month).

            >>> lh.daily_partition_by(), lh.daily_partition_by("none")
            (['date_month'], [])
        """
        return partition_columns(layout or self.layout)

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
