"""Accounting: every raw record is somewhere, and nowhere twice.

Bronze: the records counted in each raw file = bronze rows + rejected records. Silver: bronze
rows = silver rows + quarantined rows + duplicates removed. Both are checked on the committed
tables after each write, per date for a daily feed; a difference raises `AccountingError`
naming the table, the date and the counts.
"""
from __future__ import annotations

from datetime import date

from pipelines import catalog
from pipelines.datasets import PARTITION_COLUMN, Source


class AccountingError(RuntimeError):
    """Rows went missing or appeared between two stages; the message says where and how many."""


def check_parsed(table: str, counted: list[tuple[str, int]], per_file: dict[str, tuple[int, int]]) -> None:
    """Every record the driver counted in a file (`counted`: (path, records)) came out of the
    parse (`per_file`: {path: (rows, rejected)}), as a row or a rejection."""
    def parsed_records(path: str) -> int:
        good, bad = per_file.get(path, (0, 0))
        return good + bad

    wrong = [f"{path}: {records} records, parsed {parsed_records(path)}"
             for path, records in counted if parsed_records(path) != records]
    if wrong:
        raise AccountingError(f"{table}: parsing lost or invented records: {'; '.join(wrong[:10])}")


def verify_bronze(lh, source: Source, read_files: list[tuple], dates: list[date]) -> None:
    """Check the committed tables: the records counted in the raw files (`read_files`: (landing
    file, records)) equal bronze rows plus rejected records, per date for a daily feed and for the
    whole table otherwise."""
    bronze = lh.table(catalog.bronze(source.name))
    paths = {f.path for f, _ in read_files}
    rejected_by_file: dict[str, int] = {}
    for path in lh.table(catalog.rejected(source.name)).to_arrow(["_source_file"]).column(0).to_pylist():
        if path in paths:
            rejected_by_file[path] = rejected_by_file.get(path, 0) + 1
    if source.daily:
        bronze_by_date = bronze.rows_per_partition(PARTITION_COLUMN)
        problems = []
        for day in dates:
            of_day = [(f, n) for f, n in read_files if f.date == day]
            lines = sum(n for _, n in of_day)
            rej = sum(rejected_by_file.get(f.path, 0) for f, _ in of_day)
            got = bronze_by_date.get(day, 0)
            if lines != got + rej:
                problems.append(f"{day}: {lines} records in the files, {got} in bronze + {rej} rejected")
    else:
        lines = sum(n for _, n in read_files)
        rej = sum(rejected_by_file.values())
        got = bronze.count()
        problems = [] if lines == got + rej else [f"{lines} records in the files, {got} in bronze + {rej} rejected"]
    if problems:
        raise AccountingError(f"{bronze.name}: the committed tables do not account for every raw record: "
                              + "; ".join(problems[:10]))


def verify_silver(lh, source: Source, dates: list[date] | None) -> None:
    """On the committed tables: bronze rows = silver rows + quarantined rows + duplicates removed
    (rows of `silver.duplicates`, each naming its file and line), per date for a daily feed (whole
    table otherwise). Raises AccountingError where not."""
    bronze = lh.table(catalog.bronze(source.name))
    silver = lh.table(catalog.silver(source.name))
    quarantine = lh.table(catalog.QUARANTINE).rows_per_partition(("table", PARTITION_COLUMN))
    duplicates = lh.table(catalog.DUPLICATES).rows_per_partition(("table", PARTITION_COLUMN))
    problems = []
    if source.daily:
        b, s = bronze.rows_per_partition(PARTITION_COLUMN), silver.rows_per_partition(PARTITION_COLUMN)
        for day in dates:
            q = quarantine.get((source.name, day), 0)
            dup = duplicates.get((source.name, day), 0)
            if b.get(day, 0) != s.get(day, 0) + q + dup:
                problems.append(f"{day}: bronze {b.get(day, 0)} != silver {s.get(day, 0)} + quarantined {q} + duplicates {dup}")
    else:
        q = sum(n for (table, _), n in quarantine.items() if table == source.name)
        dup = sum(n for (table, _), n in duplicates.items() if table == source.name)
        if bronze.count() != silver.count() + q + dup:
            problems.append(f"bronze {bronze.count()} != silver {silver.count()} + quarantined {q} + duplicates {dup}")
    if problems:
        raise AccountingError(f"{silver.name}: rows are lost or counted twice: " + "; ".join(problems[:10]))
