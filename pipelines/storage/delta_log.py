"""A Delta table's log read directly: the files of `_delta_log`, a commit being one JSON action a
line (`add`, `remove`, `metaData`, `commitInfo`, ...).

delta-rs loads whole snapshots. Some questions need the commits themselves, and are answered here:
which version a write committed (`delta_rs`), the files of several versions (`vacuum`), what each
commit recorded (`lineage_log`), what the last commits reference (`space`), whether a commit landed
since a snapshot was kept (`snapshots`).

    >>> actions = read_commit(commit_file(table.path, 12))
    >>> added, removed = file_changes(actions)      # paths as the log writes them (URL-quoted)
"""
from __future__ import annotations

import json
import os
import re

from pipelines.storage.paths import local_path

COMMIT = re.compile(r"^(\d{20})\.json$")
CHECKPOINT = re.compile(r"^(\d{20})\.checkpoint(\.\d+\.\d+)?\.parquet$")
FIRST_COMMIT = f"{0:020d}.json"   # which every table kept whole still holds


def log_dir(table_path: str) -> str:
    """The `_delta_log` folder of the table at `table_path` (a path or a `file:` URI)."""
    return os.path.join(local_path(table_path), "_delta_log")


def commit_file(table_path: str, version: int) -> str:
    """The commit file of `version` of the table at `table_path`."""
    return os.path.join(log_dir(table_path), f"{version:020d}.json")


def read_commit(path: str) -> list[dict]:
    """The actions of the commit file at `path`, in order. Raises OSError when it cannot be read
    and ValueError when a line is not JSON (a commit being written by hand, say)."""
    with open(path) as commit:
        return [json.loads(line) for line in commit if line.strip()]


def file_changes(actions: list[dict]) -> tuple[list[str], list[str]]:
    """The paths a commit's `actions` add and remove, as the log writes them (relative to the
    table, URL-quoted); `urllib.parse.unquote` gives the file's name on disk."""
    added = [a["add"]["path"] for a in actions if "add" in a]
    removed = [a["remove"]["path"] for a in actions if "remove" in a]
    return added, removed


def commit_info(actions: list[dict]) -> dict:
    """The `commitInfo` of a commit's `actions` ({} when it has none)."""
    return next((a["commitInfo"] for a in actions if "commitInfo" in a), {})


def commit_only_info(table_path: str, read_version: int, info: dict) -> int:
    """Commit a version that holds nothing but `info` (its `commitInfo`, as Delta's VACUUM START
    and VACUUM END are) after `read_version`, or after what other writers committed meanwhile;
    returns its version. A local table only: the commit is written to a temporary file and linked
    to its name, which fails when the version is taken, as delta-rs commits on a local disk."""
    import time
    import uuid

    folder = log_dir(table_path)
    if "://" in folder:
        raise ValueError(f"{table_path}: only a table on a local disk takes a commit from here")
    info = {"timestamp": int(time.time() * 1000), **info, "clientVersion": "lakehouse-dl"}
    temporary = os.path.join(folder, f"_commit_{uuid.uuid4()}.json.tmp")
    with open(temporary, "w") as out:
        out.write(json.dumps({"commitInfo": info}, separators=(",", ":")) + "\n")
    try:
        version = read_version + 1
        while True:
            try:
                os.link(temporary, commit_file(table_path, version))
                return version
            except FileExistsError:
                version += 1
    finally:
        os.remove(temporary)
