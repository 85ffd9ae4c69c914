"""Table maintenance: compact small files and vacuum unreferenced ones (`lakehouse-dl maintain`).

Nightly runs leave two kinds of litter. Tables that grow by appends (`ops.stage_log`,
`ops.ingest_log`, the results tables) get one small file per write; compaction rewrites each
partition's small files into one (a Delta OPTIMIZE: the rows do not change, one new version, and
no version at all when there is nothing to compact). Partition overwrites and compactions leave
files that only old versions refer to; vacuum deletes those older than the retention
(`lakehouse.vacuum_retention_hours`), so time travel works within that window.

Two exceptions keep training reproducible:
- `gold.model_input` is never compacted: its 4,096-row row groups are Petastorm's shard unit.
- Vacuum keeps every version of every table that the model registry pins (`results.models`
  `pins`: the model input and feature spec versions a model read and, transitively, the versions
  they were built from), however old, so every registered model can be read back with the exact
  rows it was trained on, and trained again (`lakehouse-dl reproduce`).

It takes the nightly job's lakehouse lock, so it never runs beside a nightly run. It needs no
Spark: delta-rs does the work on the driver.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from pipelines import catalog
from pipelines.storage import Lakehouse, Table

log = logging.getLogger(__name__)

# Tables whose file layout is part of their contract.
NOT_COMPACTED = (catalog.MODEL_INPUT,)


@dataclass
class Maintained:
    """What maintenance did to one table."""

    table: str
    files_before: int
    files_after: int
    compacted: int = 0          # files rewritten by compaction (dry run: that share a partition)
    vacuumed: list[str] = field(default_factory=list)   # files deleted (or, dry run, that would be)
    kept_versions: list[int] = field(default_factory=list)
    note: str = ""

    def line(self, dry_run: bool) -> str:
        if dry_run:
            text = (f"[maintain] {self.table}: {self.files_before} live files ({self.compacted} share a "
                    f"partition: compaction candidates), would delete {len(self.vacuumed)} unreferenced")
        else:
            text = (f"[maintain] {self.table}: {self.files_before} → {self.files_after} live files"
                    f" ({self.compacted} compacted), deleted {len(self.vacuumed)} unreferenced")
        if self.kept_versions:
            text += f", kept version{'s' if len(self.kept_versions) > 1 else ''} " \
                    f"{', '.join(map(str, self.kept_versions))} for the model registry"
        return text + (f"; {self.note}" if self.note else "")


def pinned_versions(lakehouse: Lakehouse) -> dict[str, list[int]]:
    """{table: versions} that registered models depend on: every version in their `pins`, and
    their training table's version and feature spec version (all a registry written before
    `pins` existed records)."""
    table = lakehouse.table(catalog.MODELS)
    if not table.exists():
        return {}
    pinned: dict[str, set[int]] = {}
    # Older registries lack the later columns (feature_spec_version, then pins).
    columns = [c for c in ("training_table", "training_version", "feature_spec_version", "pins")
               if c in table.schema().fieldNames()]
    for row in table.to_arrow(columns).to_pylist():
        if row["training_table"] and row["training_version"] is not None:
            pinned.setdefault(row["training_table"], set()).add(int(row["training_version"]))
        if row.get("feature_spec_version") is not None:
            pinned.setdefault(catalog.FEATURE_SPEC, set()).add(int(row["feature_spec_version"]))
        for name, versions in json.loads(row.get("pins") or "{}").items():
            pinned.setdefault(name, set()).update(int(v) for v in versions)
    return {name: sorted(versions) for name, versions in pinned.items()}


def sharing_a_partition(table: Table) -> int:
    """Live files that share their partition with another file: what compaction would merge."""
    partitions = Counter(tuple(v for k, v in sorted(a.items()) if k.startswith("partition."))
                         for a in table.add_actions())
    return sum(n for n in partitions.values() if n > 1)


def maintain_table(table: Table, retention_hours: int, keep_versions: list[int], row_group_rows: int,
                   dry_run: bool = False) -> Maintained:
    """Compact (unless the table's layout is fixed), then vacuum past `retention_hours`."""
    files_before, _ = table.size()
    out = Maintained(table.name, files_before, files_before)
    if table.name in NOT_COMPACTED:
        out.note = "not compacted (its row groups are Petastorm's shard unit)"
    elif dry_run:
        out.compacted = sharing_a_partition(table)
    else:
        out.compacted = int(table.compact(row_group_rows=row_group_rows).get("numFilesRemoved", 0))
    # The live versions within the retention are kept by vacuum itself; older pinned ones need naming.
    latest = table.version()
    out.kept_versions = [v for v in keep_versions if v < latest]
    out.vacuumed = table.vacuum(retention_hours, dry_run=dry_run, keep_versions=out.kept_versions)
    out.files_after, _ = table.size()
    return out


def compact_small_files(lakehouse: Lakehouse, target_size_bytes: int) -> list[tuple[str, int, int]]:
    """Compact every table (but the NOT_COMPACTED ones) where a partition holds more than one file:
    what a nightly run leaves in the tables it appends to. (table, files before, files after) of
    each table compacted; a table with nothing to compact gets no new version."""
    done = []
    for name in lakehouse.table_names():
        table = lakehouse.table(name)
        if name in NOT_COMPACTED or not sharing_a_partition(table):
            continue
        before, _ = table.size()
        table.compact(target_size_bytes=target_size_bytes)
        done.append((name, before, table.size()[0]))
    return done


def maintain(lakehouse: Lakehouse, retention_hours: int, row_group_rows: int, dry_run: bool = False
             ) -> list[Maintained]:
    """Maintain every table of the lakehouse; one line per table, then a total."""
    started = time.time()
    pinned = pinned_versions(lakehouse)
    done = []
    for name in lakehouse.table_names():
        result = maintain_table(lakehouse.table(name), retention_hours, pinned.get(name, []), row_group_rows, dry_run)
        done.append(result)
        if result.compacted or result.vacuumed or result.kept_versions:
            log.info(result.line(dry_run))
    verb = "would delete" if dry_run else "deleted"
    log.info(f"[maintain] {len(done)} tables: {sum(m.files_before for m in done):,} → "
             f"{sum(m.files_after for m in done):,} live files, {verb} "
             f"{sum(len(m.vacuumed) for m in done):,} unreferenced files older than {retention_hours} h, "
             f"in {time.time() - started:.1f}s")
    return done
