"""Silver: bronze → `silver.<source>`: types fixed, one row per key, quality rules applied.

Rows failing a blocking rule go to `silver.quarantine` with the rule, the reason and the run id;
`ops.data_quality` counts, per run, table, date and rule, the rows checked and failed. Every run
checks on the committed tables that bronze rows = silver rows + quarantined rows + duplicates
removed, and fails loudly where they differ. Re-running a date replaces its rows everywhere.

    >>> results = clean(cfg, spark, dates=[date(2013, 1, 1)])
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict
from datetime import date
from typing import Iterable

from pipelines import catalog
from pipelines.datasets import PARTITION_COLUMN, Dataset, Rule, Source, dataset_for
from pipelines.lineage.columns import built_from
from pipelines.ops.runs import new_run_id
from pipelines.stages.accounting import verify_silver
from pipelines.stages.silver.books import write_books
from pipelines.stages.silver.rows import (CleanResult, check_rules, fix_types, mark_duplicates, quality_counts,
                                          silver_rows)
from pipelines.stages.silver.updates import merge_updates
from pipelines.storage import Lakehouse

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# The clean run


def clean(cfg, spark, dates: Iterable[date] | None = None, dataset: Dataset | None = None,
          sources: Iterable[str] | None = None, run_id: str | None = None,
) -> list[CleanResult]:
    """Clean bronze into silver for every source (or `sources`), reference tables first.

    Daily feeds: the `dates` given, or every date bronze holds. Reference tables are cleaned whole,
    and skipped when neither their bronze table nor their declaration changed since the last clean.
    A source updated by another (flights by flight_outcomes) is cleaned with it: its rows first,
    then the updates merged into them.

        >>> clean(cfg, spark, dates=[date(2013, 1, 1)])
    """
    dataset = dataset or dataset_for(cfg)
    run_id = run_id or new_run_id("clean")
    lh = Lakehouse.from_config(cfg, spark)
    dates = sorted(set(dates)) if dates is not None else None
    wanted = set(dataset.with_updates(dataset.source_names(sources)))
    results = []
    for source in dataset.clean_order():
        if source.name not in wanted:
            continue
        if source.updates:
            result = merge_updates(lh, dataset, source, dates, run_id)
        else:
            result = clean_source(lh, source, dates, run_id, dataset)
        log.info(result.line())
        results.append(result)
    return results


def clean_source(lh, source: Source, dates: list[date] | None, run_id: str,
                 dataset: Dataset | None = None) -> CleanResult:
    """Clean one source (see `clean`); `dataset` names the sources that update it, if any."""
    from pyspark.sql import functions as F

    started = time.time()
    bronze_table = lh.table(catalog.bronze(source.name))
    silver_table = lh.table(catalog.silver(source.name))
    result = CleanResult(silver_table.name)
    if not bronze_table.exists():
        raise ValueError(f"{bronze_table.name} does not exist yet: run `lakehouse-dl ingest` first")
    bronze_version = bronze_table.version()
    stamp = _stamp(source, bronze_version)
    if not source.daily and silver_table.exists() and silver_table.history(1)[0].get("description", "").endswith(stamp):
        result.skipped = True
        result.seconds = time.time() - started
        return result

    bronze = bronze_table.read(version=bronze_version)
    if source.daily:
        if dates is None:
            # Every day bronze holds, and every day silver still holds that bronze no longer does
            # (a redelivered file whose every record was rejected): that day is cleaned to empty.
            held = set(bronze_table.rows_per_partition(PARTITION_COLUMN))
            if silver_table.exists():
                held |= set(silver_table.rows_per_partition(PARTITION_COLUMN))
            dates = sorted(d for d in held if d)
        result.dates = dates
        bronze = bronze.filter(F.col(PARTITION_COLUMN).isin(result.dates))
    references = {r.reference_source: lh.table(catalog.silver(r.reference_source)).read()
                  for r in source.rules if r.check == "reference" and _exists_or_fail(lh, r, source)}
    rows = check_rules(fix_types(bronze, source), source, references).persist()
    checked = mark_duplicates(rows, source).persist()
    try:
        counts = quality_counts(checked, source)
        rows.unpersist()
        description = f"clean {run_id} {stamp}"
        origin = built_from({bronze_table.name: bronze_version})
        if source.daily:
            updaters = dataset.updaters(source.name) if dataset is not None else []
            silver_table.write(silver_rows(checked, source, updaters, dataset, origin), mode="overwrite",
                               partition_by=lh.daily_partition_by(source.layout), schema_mode="merge",
                               partitions={PARTITION_COLUMN: result.dates}, description=description)
        else:
            silver_table.write(silver_rows(checked, source, built_from=origin), mode="overwrite", schema_mode="overwrite",
                               description=description)
        write_books(lh, source, checked, counts, result.dates, run_id, description)
    finally:
        checked.unpersist()
        rows.unpersist()
    result.add_counts(counts, source)
    result.silver_rows = result.bronze_rows - result.quarantined - result.duplicates
    verify_silver(lh, source, result.dates if source.daily else None)
    result.seconds = time.time() - started
    return result


def _stamp(source: Source, bronze_version: int) -> str:
    """What a silver commit was built from: the bronze version and the source's declaration."""
    digest = hashlib.sha256(json.dumps(asdict(source), sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"from {catalog.bronze(source.name)} v{bronze_version} declaration {digest}"


def _exists_or_fail(lh, rule: Rule, source: Source) -> bool:
    if not lh.table(catalog.silver(rule.reference_source)).exists():
        raise ValueError(f"rule {rule.name} of {source.name} checks {rule.reference}, but {catalog.silver(rule.reference_source)} "
                         f"does not exist yet: ingest and clean {rule.reference_source} first")
    return True


# Commits that change no row (compaction, vacuum, table properties), and how many of the latest
# commits are searched for the last one that did.
MAINTENANCE_OPERATIONS = {"OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES"}
MAINTENANCE_SCAN = 50


def days_ingested_since_cleaned(lh, dataset: Dataset) -> list[date] | None:
    """The days of the daily feeds' files ingested after silver was last written (from
    `ops.ingest_log` against each daily silver table's latest commit): what a nightly whose ingest
    found no changed file still has to clean (a run killed after ingest committed, a `lakehouse-dl
    ingest` run by hand). None (every day) when a daily silver table does not exist yet or a
    reference file was ingested since (every day's rows may join it)."""
    from datetime import datetime, timezone

    built = []
    # The daily sources with a silver table of their own (an outcome feed is merged into its
    # source's): when each was last written by clean, not by maintenance.
    for source in (s for s in dataset.daily_sources if not s.updates):
        table = lh.table(catalog.silver(source.name))
        if not table.exists():
            return None
        written = [c for c in table.history(MAINTENANCE_SCAN) if c.get("operation") not in MAINTENANCE_OPERATIONS]
        if not written:
            return None
        built.append(datetime.fromtimestamp(written[0]["timestamp"] / 1000, timezone.utc))
    log_table = lh.table(catalog.INGEST_LOG)
    if not built or not log_table.exists():
        return None
    since = min(built)
    days = set()
    for r in log_table.to_arrow(["source", "path", "ingested_at"]).to_pylist():
        ingested = r["ingested_at"] if r["ingested_at"].tzinfo else r["ingested_at"].replace(tzinfo=timezone.utc)
        if ingested <= since:
            continue
        source = dataset.sources.get(r["source"])
        day = source.date_of(r["path"]) if source is not None and source.daily else None
        if day is None:
            return None
        days.add(day)
    return sorted(days)
