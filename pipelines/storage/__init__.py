"""The Delta table layer: the only code that reads or writes tables (see table.py)."""
from pipelines.lakehouse.errors import (ConcurrentWriteError, LakehouseError, SchemaMismatchError,
                                        TableNotFoundError)
from pipelines.lakehouse.table import Lakehouse, Table, TableInfo, tables_json

__all__ = ["Lakehouse", "Table", "TableInfo", "tables_json", "LakehouseError", "TableNotFoundError",
           "SchemaMismatchError", "ConcurrentWriteError"]
