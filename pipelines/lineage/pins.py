"""The table versions a table version was built from, transitively: what the model registry pins.

Each row from silver on names the versions of the tables it was computed from in `_built_from`
(`pipelines.lineage.columns`). Starting from the versions a model read (`gold.model_input` and
`gold.feature_spec`), the distinct `_built_from` values of each version read name the next ones,
down to bronze. The column is read without Spark (one dictionary-encoded column of the Delta
files of that version), so pinning costs about a second.

    >>> upstream(lakehouse, {"gold.model_input": 12, "gold.feature_spec": 3})
    {'bronze.flights': [40, 41], ..., 'gold.features': [57], 'gold.feature_spec': [3], 'gold.model_input': [12], ...}
"""
from __future__ import annotations

from typing import Iterable

from pipelines.lineage.columns import BUILT_FROM, parse_built_from


def built_from_values(table, version: int) -> set[str]:
    """The distinct `_built_from` values of `table` at `version` (empty when it has no such column)."""
    import pyarrow.compute as pc

    if BUILT_FROM not in table.schema(version).fieldNames():
        return set()
    column = table.to_arrow([BUILT_FROM], version=version).column(0)
    return {v for v in pc.unique(column).to_pylist() if v}


def upstream(lakehouse, versions: dict[str, int | Iterable[int]]) -> dict[str, list[int]]:
    """{table: sorted versions} of `versions` and of every table version they were built from."""
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
        for text in built_from_values(table, version):
            todo.extend(parse_built_from(text).items())
    return {name: sorted(vs) for name, vs in sorted(found.items())}
