"""Silver's bookkeeping tables for one source and its dates: `silver.quarantine` (the rows that broke
a blocking rule) and `ops.data_quality` (rows checked and failed per rule), both replaced by
partition (`table`, `date`) so a re-run of a date replaces its rows."""
from __future__ import annotations

from datetime import date

from pipelines import catalog
from pipelines.datasets import PARTITION_COLUMN, Source
from pipelines.stages.silver.rows import BOOK_PARTITIONS, DATA_QUALITY_SCHEMA, quality_rows, quarantine_rows


def write_books(lh, source: Source, checked, counts: dict, dates: list[date], run_id: str, description: str) -> None:
    """Write the quarantine (when it changes) and the data-quality rows of `source` for `dates`."""
    book = {"table": [source.name], PARTITION_COLUMN: dates} if source.daily else {"table": [source.name]}
    if _quarantine_changes(lh, source, dates, counts):
        lh.table(catalog.QUARANTINE).write(quarantine_rows(checked, source, run_id), mode="overwrite",
                                           partition_by=BOOK_PARTITIONS, partitions=book, description=description)
    dq = lh.spark.createDataFrame(quality_rows(counts, source, run_id), DATA_QUALITY_SCHEMA)
    lh.table(catalog.DATA_QUALITY).write(dq, mode="overwrite", partition_by=BOOK_PARTITIONS, partitions=book,
                                         description=description)


def _quarantine_changes(lh, source: Source, dates: list[date], counts: dict) -> bool:
    """False when this run quarantines nothing and the quarantine holds nothing for its dates
    (the usual case), so the table is not rewritten for nothing."""
    table = lh.table(catalog.QUARANTINE)
    if not table.exists() or any(c["blocked"] for c in counts.values()):
        return True
    held = table.rows_per_partition(("table", PARTITION_COLUMN))
    return any(n for (name, day), n in held.items() if name == source.name and (not source.daily or day in dates))
