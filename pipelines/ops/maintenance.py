"""Table maintenance: compact small files and vacuum unreferenced ones (`lakehouse-dl maintain`).

Nightly runs leave two kinds of litter. Tables that grow by appends (`ops.stage_log`,
`ops.ingest_log`, the results tables) get one small file per write; compaction rewrites each
partition's small files into one (a Delta OPTIMIZE: the rows do not change, one new version, and
no version at all when there is nothing to compact). Partition overwrites and compactions leave
files that only old versions refer to; vacuum deletes those older than the retention
(`lakehouse.vacuum_retention_hours`), so time travel works within that window, and any other file
the log does not reference (`Table.vacuum`: those whose tombstone a checkpoint dropped, a stopped
write's).

Two exceptions keep training reproducible:
- `gold.model_input` is never compacted: its 4,096-row row groups are Petastorm's shard unit.
- Vacuum keeps every version of every table that a kept model pins (`results.models` `pins`: the
  model input and feature spec versions a model read and, transitively, the versions they were
  built from), however old, so the model can be read back with the exact rows it was trained on,
  and trained again (`lakehouse-dl reproduce`). The kept models are the serving one, the one it
  replaced, the challenger and the last `lakehouse.keep_registered_models` registered
  (`kept_models`): an older model's versions go once the retention has passed, so a year of
  nightlies does not keep every version it ever pinned.

Reports are not tables: `prune_reports` deletes the run reports but the newest
`lakehouse.keep_reports`, and the model plots (`reports/models/`, drawn once per model) that no kept
report showed.

It takes the nightly job's lakehouse lock, so it never runs beside a nightly run. It needs no
Spark: delta-rs does the work on the driver.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

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


def registered(lakehouse: Lakehouse) -> list[dict]:
    """The registry's rows, oldest first, with the columns maintenance reads (older registries lack
    the later ones: feature_spec_version, then pins)."""
    table = lakehouse.table(catalog.MODELS)
    if not table.exists():
        return []
    columns = [c for c in ("model_version", "created_at", "status", "training_table", "training_version",
                           "feature_spec_version", "pins") if c in table.schema().fieldNames()]
    return sorted(table.to_arrow(columns).to_pylist(), key=lambda r: (r["created_at"] is None, r["created_at"]))


def kept_models(lakehouse: Lakehouse, keep_registered: int | None) -> dict:
    """The registered models whose pins vacuum keeps, by role: the one serving (blessed), the one it
    replaced (`previous`: the last retired), the `challenger` (the last neither blessed nor retired)
    and the last `keep_registered` registered; every registered model when `keep_registered` is None.

        >>> kept_models(lakehouse, 2)
        {'serving': 'm3', 'previous': 'm1', 'challenger': 'm7', 'last 2 registered': ['m6', 'm7']}
    """
    rows = registered(lakehouse)
    if not rows:
        return {}

    def last(statuses) -> str | None:
        return next((r["model_version"] for r in reversed(rows) if r["status"] in statuses), None)

    roles = {"serving": last({"blessed"}), "previous": last({"retired"}),
             "challenger": last({"candidate", "rejected"})}
    out = {role: model for role, model in roles.items() if model}
    if keep_registered is None:
        out["every registered"] = [r["model_version"] for r in rows]
    else:
        out[f"last {keep_registered} registered"] = [r["model_version"] for r in rows[len(rows) - keep_registered:]
                                                     ] if keep_registered > 0 else []
    return out


def pinned_versions(lakehouse: Lakehouse, keep_registered: int | None = None) -> dict[str, list[int]]:
    """{table: versions} that the kept models (`kept_models`) depend on: every version in their
    `pins`, and their training table's version and feature spec version (all a registry written
    before `pins` existed records)."""
    kept = kept_models(lakehouse, keep_registered)
    names = {m for v in kept.values() for m in ([v] if isinstance(v, str) else v)}
    pinned: dict[str, set[int]] = {}
    for row in registered(lakehouse):
        if row.get("model_version") not in names:
            continue
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
    if not dry_run and table.keep_whole_log():
        log.info(f"[maintain] {table.name}: its Delta log is now kept whole (no cleanup of commits older "
                 f"than 30 days, which the versions models pin need) and checkpointed every 10 commits")
    if table.name in NOT_COMPACTED:
        out.note = "not compacted (its row groups are Petastorm's shard unit)"
    elif dry_run:
        out.compacted = sharing_a_partition(table)
    elif sharing_a_partition(table):    # else nothing to compact, and no table opened anew to plan it
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


def prune_reports(folder: str | Path, keep: int, dry_run: bool = False) -> list[Path]:
    """Delete the run reports in `folder` (`<root>/reports`) but the newest `keep` (by the time
    their page was written), and the model sections of `reports/models/` that no kept report
    copied its plots from (each names its own in `SECTION_FILE`). Returns the folders deleted (or,
    dry run, that would be)."""
    from pipelines.report.page import SECTION_FILE

    folder = Path(folder)
    if not folder.is_dir():
        return []
    reports = sorted((d for d in folder.iterdir() if (d / "index.html").is_file()),
                     key=lambda d: ((d / "index.html").stat().st_mtime, d.name))
    gone = reports[:max(len(reports) - keep, 0)]
    shown = {(d / SECTION_FILE).read_text().strip() for d in reports[len(gone):] if (d / SECTION_FILE).is_file()}
    sections = folder / "models"
    gone += [d for d in (sorted(sections.iterdir()) if sections.is_dir() else []) if d.name not in shown]
    if not dry_run:
        for d in gone:
            shutil.rmtree(d, ignore_errors=True)
    return gone


def maintain(lakehouse: Lakehouse, retention_hours: int, row_group_rows: int, dry_run: bool = False,
             keep_registered: int | None = None, keep_reports: int | None = None) -> list[Maintained]:
    """Maintain every table of the lakehouse, keeping the versions the kept models pin
    (`kept_models`: all of them when `keep_registered` is None); one line per table, then a total.
    With `keep_reports`, the run reports but the newest that many go too (`prune_reports`)."""
    started = time.time()
    kept = kept_models(lakehouse, keep_registered)
    pinned = pinned_versions(lakehouse, keep_registered)
    if kept:
        names = {m for v in kept.values() for m in ([v] if isinstance(v, str) else v)}
        roles = "; ".join(f"{role} {v if isinstance(v, str) else ', '.join(v) or 'none'}" for role, v in kept.items())
        log.info(f"[maintain] vacuum keeps what {len(names)} of {len(registered(lakehouse))} registered "
                 f"models pin ({roles})")
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
    if keep_reports is not None:
        pruned = prune_reports(Path(lakehouse.root) / "reports", keep_reports, dry_run)
        log.info(f"[maintain] reports: {verb} {len(pruned)} folders (the newest {keep_reports} reports "
                 f"and the model plots they show are kept)")
    return done
