"""The table versions a table version was built from, transitively: what the model registry pins.

Each row from silver on names the versions of the tables it was computed from in `_built_from`
(`pipelines.lineage.columns`). Starting from the versions a model read (`gold.model_input` and
`gold.feature_spec`), the distinct `_built_from` values of each version read name the next ones,
down to bronze.

`upstream` takes those values from the commits: every write records what each file it adds was
built from (`pipelines.storage.lineage_log`), so one replay of each table's log answers every
version of it, and no data file is opened. `upstream_by_column` reads the column itself, one
dictionary-encoded column of the files of each version (about a second each): the reference the
records are tested against, and what `upstream` falls back to, file by file, where a commit
recorded nothing (written before the record existed).

    >>> upstream(lakehouse, {"gold.model_input": 12, "gold.feature_spec": 3})
    {'bronze.flights': [40, 41], ..., 'gold.features': [57], 'gold.feature_spec': [3], 'gold.model_input': [12], ...}
"""
from __future__ import annotations

from typing import Callable, Iterable

from pipelines.lineage.columns import BUILT_FROM, parse_built_from


def built_from_values(table, version: int) -> set[str]:
    """The distinct `_built_from` values of `table` at `version`, read from its data files (empty
    when it has no such column)."""
    import pyarrow.compute as pc

    if BUILT_FROM not in table.schema(version).fieldNames():
        return set()
    column = table.to_arrow([BUILT_FROM], version=version).column(0)
    return {v for v in pc.unique(column).to_pylist() if v}


def upstream(lakehouse, versions: dict[str, int | Iterable[int]]) -> dict[str, list[int]]:
    """{table: sorted versions} of `versions` and of every table version they were built from,
    from the commits' lineage records (each table's log read once)."""
    logs: dict[str, object] = {}

    def values(table, version: int) -> set[str]:
        if table.name not in logs:
            logs[table.name] = table.lineage_log()
        return logs[table.name].built_from(version)

    return _closure(lakehouse, versions, values)


def upstream_by_column(lakehouse, versions: dict[str, int | Iterable[int]]) -> dict[str, list[int]]:
    """`upstream`, reading the `_built_from` column of every version walked."""
    return _closure(lakehouse, versions, built_from_values)


def _closure(lakehouse, versions, values: Callable[[object, int], set[str]]) -> dict[str, list[int]]:
    found: dict[str, set[int]] = {}
    todo = [(t, int(v)) for t, vs in versions.items() for v in ([vs] if isinstance(vs, int) else vs)]
    while todo:
        name, version = todo.pop()
        if version in found.setdefault(name, set()):
            continue
        found[name].add(version)
        table = lakehouse.table(name)
        if not table.exists():
            continue
        for text in values(table, version):
            todo.extend(parse_built_from(text).items())
    return {name: sorted(vs) for name, vs in sorted(found.items())}
