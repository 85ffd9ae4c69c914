"""Vacuum a Delta table while keeping the files of older versions that models pin.

delta-rs's `vacuum(keep_versions=...)` loads the snapshot of each version it keeps (5 ms each on a
small table, more on a partitioned one). The versions the kept models pin grow with the days of
data behind them, so `maintain` grew with the days too (0.36 s a night in July, 1.61 s in June of
the 365-night benchmark, docs/benchmarks.md).

Here the table's files at every pinned version come from one snapshot (the oldest pinned version)
and the commits after it, read in order: each commit file is a few lines of JSON. delta-rs lists
what nothing live within the retention refers to (its full vacuum, a dry run); the files of the
pinned versions are taken out of that list and the rest deleted. A commit of that range that
cannot be read raises before anything is deleted. A vacuum that deletes files records it in the
table's history as Delta's own does, a `VACUUM START` commit before and a `VACUUM END` after (no
action in either); one that finds nothing to delete commits nothing.

    >>> vacuum(DeltaRsEngine.open(path), 168, dry_run=True, keep_versions=[12, 40], open_table=DeltaRsEngine.open)
    ['date_month=2013-01/part-00000-....snappy.parquet', ...]
"""
from __future__ import annotations

import os
from urllib.parse import unquote

from pipelines.storage.delta_log import commit_file, commit_only_info, file_changes, read_commit
from pipelines.storage.paths import local_path


def files_at_versions(path: str, versions: list[int], open_table) -> set[str]:
    """Every data file (relative to the table, URL-decoded) that one of `versions` of the table at
    `path` refers to. `open_table(path, version)` opens a snapshot (`DeltaRsEngine.open`); a commit
    between the first and the last version that cannot be read raises (OSError, ValueError)."""
    if not versions:
        return set()
    versions = sorted(set(versions))
    first = open_table(path, versions[0])
    live = {unquote(p) for p in first.get_add_actions(flatten=True).column("path").to_pylist()}
    kept = set(live)
    wanted = set(versions)
    for version in range(versions[0] + 1, versions[-1] + 1):
        added, removed = file_changes(read_commit(commit_file(path, version)))
        # A file is not both added and removed by one commit (a rewrite gets a new name).
        live.difference_update(unquote(p) for p in removed)
        live.update(unquote(p) for p in added)
        if version in wanted:
            kept |= live
    return kept


def vacuum(dt, retention_hours: int, dry_run: bool, keep_versions: list[int] | None, open_table) -> list[str]:
    """Delete the files of the table `dt` (a delta-rs `DeltaTable`) that no version within
    `retention_hours` and none of `keep_versions` refers to, and that are on disk; returns them
    (with `dry_run`, the ones it would delete). A full vacuum: files no commit names go too.
    `VACUUM START` and `VACUUM END` are committed around the deletes when there is any."""
    root = local_path(dt.table_uri)
    options = dict(retention_hours=retention_hours, enforce_retention_duration=False, full=True)
    pinned = files_at_versions(dt.table_uri, keep_versions or [], open_table)
    # delta-rs lists every file the log tombstoned, deleted before or not: those on disk count.
    listed = [f for f in dt.vacuum(dry_run=True, **options)
              if unquote(f) not in pinned and os.path.exists(os.path.join(root, f))]
    if dry_run or not listed:
        return listed
    size = sum(_size(os.path.join(root, f)) for f in listed)
    start = commit_only_info(dt.table_uri, dt.version(), {
        "operation": "VACUUM START",
        "operationParameters": {"retentionCheckEnabled": "false",
                                "specifiedRetentionMillis": str(retention_hours * 3_600_000)},
        "operationMetrics": {"numFilesToDelete": len(listed), "sizeOfDataToDelete": size}})
    deleted = 0
    for f in listed:
        try:
            os.remove(os.path.join(root, f))
            deleted += 1
        except FileNotFoundError:
            pass
    end = commit_only_info(dt.table_uri, start, {
        "operation": "VACUUM END", "operationParameters": {"status": "COMPLETED"},
        "operationMetrics": {"numDeletedFiles": deleted, "numVacuumedDirectories": 0}})
    # delta-rs checkpoints after a commit whose version is a multiple of the table's interval.
    interval = int(dt.metadata().configuration.get("delta.checkpointInterval", 100))
    for version in (start, end):
        if version % interval == 0:
            open_table(dt.table_uri, version).create_checkpoint()
    return listed


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:      # gone since it was listed: nothing to delete there
        return 0
