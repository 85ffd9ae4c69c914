"""Table maintenance: compact small files and vacuum unreferenced ones (`lakehouse-dl maintain`).

Nightly runs leave two kinds of litter. Tables that grow by appends (`ops.stage_log`,
`ops.ingest_log`, the results tables) get one small file per write; compaction rewrites each
partition's small files into one (a Delta OPTIMIZE: the rows do not change, one new version, and
no version at all when there is nothing to compact). Partition overwrites and compactions leave
files that only old versions refer to; vacuum deletes those older than the retention
(`lakehouse.vacuum_retention_hours`), so time travel works within that window.

Two exceptions keep training reproducible:
- `gold.model_input` is never compacted: its 4,096-row row groups are Petastorm's shard unit.
- Vacuum keeps every version of a table that the model registry pins (`results.models`
  `training_table` @ `training_version`), however old, so every registered model can be read back
  with the exact rows it was trained on.

It takes the nightly job's lakehouse lock, so it never runs beside a nightly run. It needs no
Spark: delta-rs does the work on the driver.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field

from pipelines.lakehouse import Lakehouse, Table
from pipelines.lakehouse.delta_rs import files_and_bytes, local_path
from pipelines.registry import MODELS

# Tables whose file layout is part of their contract.
NOT_COMPACTED = ("gold.model_input",)


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
    """{table: versions} that registered models were trained on."""
    table = lakehouse.table(MODELS)
    if not table.exists():
        return {}
    pinned: dict[str, set[int]] = {}
    for row in table.delta().to_pyarrow_table(columns=["training_table", "training_version"]).to_pylist():
        if row["training_table"] and row["training_version"] is not None:
            pinned.setdefault(row["training_table"], set()).add(int(row["training_version"]))
    return {name: sorted(versions) for name, versions in pinned.items()}


def sharing_a_partition(dt) -> int:
    """Live files that share their partition with another file: what compaction would merge."""
    import pyarrow as pa

    actions = pa.table(dt.get_add_actions(flatten=True))
    keys = [c for c in actions.column_names if c.startswith("partition.")]
    partitions = [tuple(row.values()) for row in actions.select(keys).to_pylist()] if keys else [()] * actions.num_rows
    return sum(n for n in Counter(partitions).values() if n > 1)


def maintain_table(table: Table, retention_hours: int, keep_versions: list[int], row_group_rows: int,
                   dry_run: bool = False) -> Maintained:
    """Compact (unless the table's layout is fixed), then vacuum past `retention_hours`."""
    from deltalake import WriterProperties

    dt = table.delta()
    files_before, _ = files_and_bytes(dt)
    out = Maintained(table.name, files_before, files_before)
    if table.name in NOT_COMPACTED:
        out.note = "not compacted (its row groups are Petastorm's shard unit)"
    elif dry_run:
        out.compacted = sharing_a_partition(dt)
    else:
        metrics = dt.optimize.compact(writer_properties=WriterProperties(max_row_group_size=row_group_rows))
        out.compacted = int(metrics.get("numFilesRemoved", 0))
        dt = table.delta()
    # The live versions within the retention are kept by vacuum itself; older pinned ones need naming.
    out.kept_versions = [v for v in keep_versions if v < dt.version()]
    options = dict(retention_hours=retention_hours, enforce_retention_duration=False,
                   keep_versions=out.kept_versions or None)
    # delta-rs lists every file the log tombstoned, deleted before or not: count those on disk, and
    # vacuum (two commits: VACUUM START and END) only when there are some, so a rerun commits nothing.
    root = local_path(table.path)
    out.vacuumed = [f for f in dt.vacuum(dry_run=True, **options) if os.path.exists(os.path.join(root, f))]
    if out.vacuumed and not dry_run:
        dt.vacuum(dry_run=False, **options)
    out.files_after, _ = files_and_bytes(dt)
    return out


def maintain(lakehouse: Lakehouse, retention_hours: int, row_group_rows: int, dry_run: bool = False,
             log=print) -> list[Maintained]:
    """Maintain every table of the lakehouse; one line per table, then a total."""
    started = time.time()
    pinned = pinned_versions(lakehouse)
    done = []
    for name in lakehouse.table_names():
        result = maintain_table(lakehouse.table(name), retention_hours, pinned.get(name, []), row_group_rows, dry_run)
        done.append(result)
        if log and (result.compacted or result.vacuumed or result.kept_versions):
            log(result.line(dry_run))
    if log:
        verb = "would delete" if dry_run else "deleted"
        log(f"[maintain] {len(done)} tables: {sum(m.files_before for m in done):,} → "
            f"{sum(m.files_after for m in done):,} live files, {verb} "
            f"{sum(len(m.vacuumed) for m in done):,} unreferenced files older than {retention_hours} h, "
            f"in {time.time() - started:.1f}s")
    return done
