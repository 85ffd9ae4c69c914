"""What each data file of a table was built from, as the commit that added it recorded it.

Every write of the delta-rs engine records in its commit (`commitInfo`, through delta-rs's
`CommitProperties.custom_metadata`) the distinct `_built_from` values of each file it adds
(`RECORD_KEY`; the task that wrote a file knows them). Replaying the table's log once then gives
the `_built_from` values of any version, the union over its live files, without opening a data
file: a model's pins cost the log's size, not a column scan per version (`pipelines.lineage.pins`).

Files no commit recorded (written before the record existed, or by the JVM engine) have their
column read, as the column walk would; a compaction's files (delta-rs OPTIMIZE) take the values of
the files it replaced in the same partition, since it moves rows and changes none.

    >>> log = LineageLog(lakehouse.table("silver.flights").path)
    >>> log.built_from(12)                # {'{"bronze.flights":40}', '{"bronze.flights":41}', ...}
    >>> log.files_read                    # data files opened: 0 when every commit recorded its files
"""
from __future__ import annotations

import json
import os
from urllib.parse import unquote

from pipelines.lineage.columns import BUILT_FROM
from pipelines.storage.delta_log import CHECKPOINT, COMMIT, commit_info, read_commit
from pipelines.storage.paths import local_path

RECORD_KEY = "lakehouse.builtFrom"


def record(written: list[dict]) -> str:
    """The commit's record of the files a write adds: {"values": [...], "files": {path: [index]}}
    (files with no value left out), from the tasks' results (`recorded`: a JSON list or None)."""
    values: dict[str, int] = {}
    files = {}
    for row in written:
        found = json.loads(row["recorded"] or "[]")
        if found:
            files[row["path"]] = [values.setdefault(v, len(values)) for v in found]
    return json.dumps({"values": list(values), "files": files}, separators=(",", ":"))


class _File:
    __slots__ = ("path", "added", "removed", "values", "partition")

    def __init__(self, path: str, added: int, values: frozenset | None, partition: str):
        self.path, self.added, self.removed, self.values, self.partition = path, added, None, values, partition


class LineageLog:
    """One table's log replayed: every data file, the versions it was live in, its recorded values."""

    def __init__(self, path: str):
        self.root = local_path(path)
        self.files_read = 0          # data files opened because no commit recorded their values
        self._files: list[_File] = []
        self.first = 0               # the oldest version the log can still tell
        self._replay()

    def built_from(self, version: int) -> set[str]:
        """The distinct `_built_from` values of the table at `version`."""
        if version < self.first:
            raise ValueError(f"version {version} of {self.root} is older than its log ({self.first}): "
                             f"its commits were cleaned up")
        out: set[str] = set()
        for f in self._files:
            if f.added <= version and (f.removed is None or f.removed > version):
                if f.values is None:
                    f.values = self._read_column(f.path)
                out |= f.values
        return out

    # -- the log ---------------------------------------------------------------------------------
    def _replay(self) -> None:
        folder = os.path.join(self.root, "_delta_log")
        names = os.listdir(folder)
        commits = sorted(int(m.group(1)) for m in map(COMMIT.match, names) if m)
        live: dict[str, _File] = {}
        if commits and commits[0] > 0:
            # Commits before a checkpoint were cleaned up: start from the checkpoint, its files unrecorded.
            points = sorted(int(m.group(1)) for m in map(CHECKPOINT.match, names) if m)
            first = next((v for v in points if v + 1 >= commits[0]), None)
            if first is None:
                raise ValueError(f"{self.root}: the log starts at version {commits[0]} with no checkpoint "
                                 f"to start from")
            self.first = first
            for path, partition in _files_at(self.root, self.first):
                live[path] = _File(path, self.first, None, partition)
            commits = [v for v in commits if v > self.first]
        for version in commits:
            self._apply(version, os.path.join(folder, f"{version:020d}.json"), live)
        self._files.extend(live.values())

    def _apply(self, version: int, commit_file: str, live: dict[str, _File]) -> None:
        actions = read_commit(commit_file)
        adds = [a["add"] for a in actions if "add" in a]
        removes = [a["remove"] for a in actions if "remove" in a]
        info = commit_info(actions)
        removed = []
        for r in removes:
            f = live.pop(unquote(r["path"]), None)
            if f is not None:
                f.removed = version
                self._files.append(f)
                removed.append(f)
        recorded = info.get(RECORD_KEY)
        if recorded is not None:
            recorded = json.loads(recorded) if isinstance(recorded, str) else recorded
            values = recorded["values"]
            by_file = {unquote(p): frozenset(values[i] for i in idx) for p, idx in recorded["files"].items()}
        inherited = _inherited(removed) if info.get("operation") == "OPTIMIZE" else {}
        for a in adds:
            path = unquote(a["path"])
            partition = json.dumps(a.get("partitionValues") or {}, sort_keys=True)
            if recorded is not None:
                values = by_file.get(path, frozenset())
            else:
                values = inherited.get(partition)
            live[path] = _File(path, version, values, partition)

    def _read_column(self, path: str) -> frozenset:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        self.files_read += 1
        file = os.path.join(self.root, path)
        if BUILT_FROM not in pq.read_schema(file).names:
            return frozenset()
        column = pq.read_table(file, columns=[BUILT_FROM]).column(0)
        return frozenset(v for v in pc.unique(column).to_pylist() if v)


def _inherited(removed: list[_File]) -> dict[str, frozenset]:
    """{partition: values} of the files a compaction replaced, where every one of them is known."""
    out: dict[str, frozenset] = {}
    unknown = set()
    for f in removed:
        if f.values is None:
            unknown.add(f.partition)
        out[f.partition] = out.get(f.partition, frozenset()) | (f.values or frozenset())
    return {p: v for p, v in out.items() if p not in unknown}


def _files_at(root: str, version: int) -> list[tuple[str, str]]:
    """(relative path, partition as JSON) of the live files of `version`, from delta-rs."""
    import pyarrow as pa
    from deltalake import DeltaTable

    dt = DeltaTable(root, version=version)
    actions = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
    out = []
    for a in actions:
        partition = {k[len("partition."):]: v for k, v in a.items() if k.startswith("partition.")}
        out.append((unquote(a["path"]), json.dumps({k: None if v is None else str(v) for k, v in partition.items()},
                                                    sort_keys=True)))
    return out
