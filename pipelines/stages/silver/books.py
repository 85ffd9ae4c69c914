"""Silver's bookkeeping tables for one source and its dates: `silver.quarantine` (the rows that broke
a blocking rule), `silver.duplicates` (the rows removed as duplicates, beside the row kept) and
`ops.data_quality` (rows checked and failed per rule). They are unpartitioned: a run appends its
rows, and a re-run of a date replaces the rows of that (`table`, `date`)."""
from __future__ import annotations

from datetime import date

from pipelines import catalog
from pipelines.datasets import PARTITION_COLUMN, Source
from pipelines.stages.silver.rows import (BOOK_PARTITIONS, DATA_QUALITY_SCHEMA, duplicate_rows, quality_rows,
                                          quarantine_rows)


def write_books(lh, source: Source, checked, counts: dict, dates: list[date], run_id: str, description: str) -> None:
    """Write the quarantine and the duplicates (when they change) and the data-quality rows of
    `source` for `dates`."""
    book = {"table": [source.name], PARTITION_COLUMN: dates} if source.daily else {"table": [source.name]}
    for name, count, rows in ((catalog.QUARANTINE, "blocked", quarantine_rows),
                              (catalog.DUPLICATES, "duplicates", duplicate_rows)):
        if _book_changes(lh.table(name), source, dates, counts, count):
            lh.table(name).write(rows(checked, source, run_id), mode="overwrite", partition_by=BOOK_PARTITIONS,
                                 partitions=book, description=description)
    dq = lh.spark.createDataFrame(quality_rows(counts, source, run_id), DATA_QUALITY_SCHEMA)
    lh.table(catalog.DATA_QUALITY).write(dq, mode="overwrite", partition_by=BOOK_PARTITIONS, partitions=book,
                                         description=description)


def _book_changes(table, source: Source, dates: list[date], counts: dict, count: str) -> bool:
    """False when this run puts no row in `table` (no `count` rows) and the table holds nothing for
    its dates (the usual case), so the table is not rewritten for nothing."""
    if not table.exists() or any(c[count] for c in counts.values()):
        return True
    held = table.rows_per_partition(("table", PARTITION_COLUMN))
    return any(n for (name, day), n in held.items() if name == source.name and (not source.daily or day in dates))
