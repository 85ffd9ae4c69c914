"""Schema enforcement: compare what a write brings with what the table holds."""
from __future__ import annotations

from pipelines.storage.errors import SchemaMismatchError


def check_schema(table_schema, data_schema, path: str, allow_new_columns: bool = False) -> None:
    """Raise SchemaMismatchError naming every column that is missing, extra or of another type."""
    table = {f.name: f.dataType for f in table_schema.fields}
    data = {f.name: f.dataType for f in data_schema.fields}
    missing = [c for c in table if c not in data]
    extra = [c for c in data if c not in table]
    changed = [f"{c} ({table[c].simpleString()} in the table, {data[c].simpleString()} written)"
               for c in table if c in data and table[c] != data[c]]
    problems = []
    if missing and not allow_new_columns:
        problems.append(f"missing columns: {', '.join(missing)}")
    if extra and not allow_new_columns:
        problems.append(f"columns not in the table: {', '.join(extra)}")
    if changed:
        problems.append(f"columns of another type: {', '.join(changed)}")
    if problems:
        hint = "" if allow_new_columns else " (pass schema_mode='merge' to add new columns)"
        raise SchemaMismatchError(f"schema of the write does not match {path}: {'; '.join(problems)}{hint}")


def merge_schemas(table_schema, data_schema):
    """The table's schema followed by the data's new columns (nullable)."""
    from pyspark.sql.types import StructField, StructType

    names = set(table_schema.fieldNames())
    new = [StructField(f.name, f.dataType, True) for f in data_schema.fields if f.name not in names]
    return StructType(list(table_schema.fields) + new)
