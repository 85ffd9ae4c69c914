"""Storage: the Delta tables (one `Table` API over two engines), the lakehouse lock and the
SparkSession. The only layer that reads or writes table files.

    >>> from pipelines.storage import Lakehouse
    >>> Lakehouse.from_config(cfg, spark).table("silver.flights").read(version=3)
"""
from pipelines.storage.delta_rs import DISTRIBUTION as DELTA_RS_DISTRIBUTION
from pipelines.storage.errors import ConcurrentWriteError, LakehouseError, SchemaMismatchError, TableNotFoundError
from pipelines.storage.lakehouse import Lakehouse, tables_json
from pipelines.storage.lock import LakehouseLock, LockHeldError
from pipelines.storage.space import DiskFullError, disk_full, remove_orphans
from pipelines.storage.table import Table, TableInfo

__all__ = ["Lakehouse", "Table", "TableInfo", "tables_json", "LakehouseLock", "LockHeldError", "LakehouseError",
           "TableNotFoundError", "SchemaMismatchError", "ConcurrentWriteError", "DELTA_RS_DISTRIBUTION",
           "DiskFullError", "disk_full", "remove_orphans"]
