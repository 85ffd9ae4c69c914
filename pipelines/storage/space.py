"""A full disk under the lakehouse: telling it apart from other failures, the one line that says
so, and the data files a write cut short left behind that no version of their table references.

A full disk reaches the driver in many wrappings: an `OSError` (errno 28) of this process, a Spark
task's Python traceback inside a Py4J error, delta-rs's Rust `os error 28`, SQLite's (MLflow's
store) "database or disk is full". `disk_full` looks through the whole chain of causes.

    >>> try:
    ...     run_the_stage()
    ... except Exception as exc:
    ...     full = disk_full(exc, lakehouse.root)       # None when the disk is not the reason
    ...     if full:
    ...         remove_orphans(lakehouse.root, since=run_started)
    ...         raise full from exc
"""
from __future__ import annotations

import errno
import os
import shutil
from urllib.parse import unquote

from pipelines.storage.delta_log import COMMIT, file_changes, read_commit
from pipelines.storage.errors import LakehouseError

# How the libraries underneath word ENOSPC, lower-cased.
_MARKERS = ("no space left on device", "[errno 28]", "os error 28", "database or disk is full")
# Seconds of slack when choosing the commits that may reference a file of the run (clock granularity).
_SLACK_S = 2.0


class DiskFullError(LakehouseError):
    """The filesystem under the lakehouse is full; the message names it and its free space."""

    def __init__(self, path: str, filesystem: str, free_bytes: int):
        self.path, self.filesystem, self.free_bytes = path, filesystem, free_bytes
        where = path if filesystem == path else f"{path} (filesystem {filesystem})"
        super().__init__(f"no space left on device under {where}: {mebibytes(free_bytes)} MiB free; "
                         f"free space and run again")


def is_disk_full(exc: BaseException | None) -> bool:
    """True when `exc`, or any exception it was raised from or while handling, is a full disk."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFullError) or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
            return True
        try:
            text = str(exc).lower()
        except Exception:     # a wrapper whose str() itself fails tells nothing
            text = ""
        if any(marker in text for marker in _MARKERS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full(exc: BaseException, path: str) -> DiskFullError | None:
    """A `DiskFullError` naming `path`, its filesystem and the space free on it now, when `exc`
    is a full disk; else None.

        >>> str(disk_full(OSError(28, "No space left on device"), "/data/lakehouse/flights"))
        'no space left on device under /data/lakehouse/flights (filesystem /data): 0.3 MiB free; ...'
    """
    if not is_disk_full(exc):
        return None
    path = os.path.abspath(str(path))
    existing = path
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    return DiskFullError(path, mount_point(existing), shutil.disk_usage(existing).free)


def mount_point(path: str) -> str:
    """The mount point of the filesystem that holds `path`."""
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def mebibytes(n: int) -> str:
    mib = n / 2**20
    return f"{mib:.1f}" if mib < 10 else f"{mib:,.0f}"


def remove_orphans(root: str, since: float) -> list[str]:
    """Delete what writes of the last moments left in the Delta tables under `root` and no commit
    owns: data files modified at or after `since` (a `time.time()`) that no commit of their table
    adds or removes, and half-written commit files in `_delta_log`. Returns the paths removed.

    The engine already deletes the files of a write it sees fail (`delta_rs`, by write id); this is
    the net under it for a run that a full disk stopped, whichever writer the disk stopped. Only for
    a caller holding the lakehouse lock: another writer's files, written and not yet committed,
    would look the same. Files from before `since` are left to `vacuum`.

        >>> remove_orphans(lakehouse.root, since=record.started)
        ['/data/lakehouse/flights/gold/features/date_month=2013-01/part-1a2b3c-00000-0-0000.snappy.parquet']
    """
    removed: list[str] = []
    for table in _table_folders(root):
        log = os.path.join(table, "_delta_log")
        referenced: set[str] | None = set()
        for name in os.listdir(log):
            full = os.path.join(log, name)
            modified = _mtime(full)
            if modified is None or modified < since - _SLACK_S:
                continue
            if COMMIT.match(name):
                files = _files_of_commit(full)
                if files is None:
                    referenced = None        # a commit it cannot read: leave the table's files alone
                    break
                referenced |= files
            elif name.startswith("_commit_") or name.endswith(".tmp") or "#" in name:
                removed += _remove(full)
        if referenced is None:
            continue
        for folder, subfolders, names in os.walk(table):
            subfolders[:] = [s for s in subfolders if s != "_delta_log"]
            for name in names:
                full = os.path.join(folder, name)
                if not name.endswith(".parquet") or (_mtime(full) or 0) < since:
                    continue
                if os.path.relpath(full, table) not in referenced:
                    removed += _remove(full)
    return removed


def _table_folders(root: str) -> list[str]:
    """Every folder under `root` that holds a Delta log (`<root>/<layer>/<table>`)."""
    out = []
    for folder, subfolders, _ in os.walk(root):
        if "_delta_log" in subfolders:
            out.append(folder)
            subfolders[:] = []          # a table holds no other table
    return sorted(out)


def _files_of_commit(path: str) -> set[str] | None:
    """The paths a commit adds or removes, as written and URL-decoded; None when it cannot be read."""
    try:
        added, removed = file_changes(read_commit(path))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {p for path in added + removed for p in (path, unquote(path))}


def _mtime(path: str) -> float | None:
    try:
        return os.path.getmtime(path)
    except FileNotFoundError:
        return None


def _remove(path: str) -> list[str]:
    try:
        os.remove(path)
    except FileNotFoundError:
        return []
    return [path]
