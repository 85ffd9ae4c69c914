"""Silver: bronze → `silver.<source>`: types fixed, one row per key, quality rules applied, late
updates merged (`clean` runs it; `rows` holds the DataFrame functions, `updates` the merge).

    >>> from pipelines.stages import silver
    >>> silver.clean(cfg, spark, dates=[date(2013, 1, 1)])
"""
from pipelines.stages.silver.clean import clean, clean_source, days_ingested_since_cleaned
from pipelines.stages.silver.rows import (BOOK_PARTITIONS, DATA_QUALITY_SCHEMA, DUPLICATE_RULE, QUARANTINE_SCHEMA,
                                          CleanResult, check_rules, fix_types, mark_duplicates, quality_counts,
                                          quality_rows, quarantine_rows, silver_rows, update_marker, update_rows)
from pipelines.stages.silver.updates import merge_updates, verify_updates

__all__ = ["clean", "clean_source", "days_ingested_since_cleaned", "merge_updates", "verify_updates", "CleanResult", "fix_types", "check_rules",
           "mark_duplicates", "silver_rows", "update_rows", "update_marker", "quarantine_rows", "quality_counts",
           "quality_rows", "BOOK_PARTITIONS", "QUARANTINE_SCHEMA", "DATA_QUALITY_SCHEMA", "DUPLICATE_RULE"]
