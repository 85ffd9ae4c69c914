"""The latest snapshot of a table, opened once and reused while no commit has landed since.

A nightly asks its tables for their version, files, statistics and rows about 120 times; each
`DeltaTable(path)` lists the table's whole Delta log and reads its last checkpoint (5 to 9 ms a
table, more as the log grows over a year of nightlies: docs/benchmarks.md). A snapshot kept here
is handed out again as long as its commit file is the one it was loaded from and the next commit
does not exist: two file reads, not an open. Delta commits are numbered files created only when
absent, so a commit by any writer, in this process or another, makes the next file appear.

Only what the `Table` API reads goes through here; the engine's writes open the table themselves.
Each thread keeps its own snapshots (backtest folds run in threads), at most `KEEP` of them.

    >>> dt = latest("/lakehouse/gold/features")       # opened
    >>> dt is latest("/lakehouse/gold/features")      # True until the table is written again
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict

from pipelines.storage.delta_log import commit_file
from pipelines.storage.paths import local_path

KEEP = 64
_local = threading.local()


def latest(path: str, open_table):
    """The latest snapshot of the table at `path`: the one kept, when no commit has landed since it
    was loaded, else `open_table(path)` (kept for next time)."""
    if "://" in local_path(path):
        return open_table(path)
    kept = getattr(_local, "snapshots", None)
    if kept is None:
        kept = _local.snapshots = OrderedDict()
    hit = kept.get(path)
    if hit is not None:
        dt, version, commit = hit
        if dt.version() == version and _commit(path, version) == commit and not os.path.exists(
                commit_file(path, version + 1)):
            kept.move_to_end(path)
            return dt
        del kept[path]
    dt = open_table(path)
    version = dt.version()
    commit = _commit(path, version)
    if commit is not None:
        kept[path] = (dt, version, commit)
        while len(kept) > KEEP:
            kept.popitem(last=False)
    return dt


def forget() -> None:
    """Drop this thread's snapshots (tests that rewrite a table's log by hand)."""
    getattr(_local, "snapshots", {}).clear()


def _commit(path: str, version: int) -> bytes | None:
    """The bytes of the commit file of `version` (each names its own write and time, so a table
    deleted and written again reads differently), or None when it is gone (a table made of a
    checkpoint only, or deleted)."""
    try:
        with open(commit_file(path, version), "rb") as fh:
            return fh.read()
    except OSError:
        return None
