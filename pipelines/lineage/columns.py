"""The provenance columns each layer carries, named once (contracts in docs/design.md "Lineage").

Every row of bronze, silver, gold and the serving input carries the landing file it came from
(`_source_file`, relative to the dataset's landing folder), that file's checksum as ingested
(`_source_sha256`) and the record's line in it (`_line_number`: the physical line of a CSV or
JSON-lines file, 1 = the header; the row number of a Parquet file). A row updated by a late feed
(an outcome) also carries the update's file, checksum and line; a gold row carries those of each
row a lookup joined to it. Every row from silver on carries `_built_from`: the versions of the
tables it was computed from, as JSON (`{"bronze.flights":7}`), so the chain can be walked
version by version (`pipelines.lineage.pins`).

    >>> provenance("weather")
    ('_weather_file', '_weather_sha256', '_weather_line')
"""
from __future__ import annotations

import json

SOURCE_FILE = "_source_file"
SOURCE_SHA256 = "_source_sha256"
LINE_NUMBER = "_line_number"
BUILT_FROM = "_built_from"
# The columns naming a row's own landing record.
OWN = (SOURCE_FILE, SOURCE_SHA256, LINE_NUMBER)
# The Spark types of (file, checksum, line).
PROVENANCE_TYPES = ("string", "string", "long")


def provenance(name: str) -> tuple[str, str, str]:
    """The (file, checksum, line) columns naming the landing record of another source's row that
    fed this one: an update merged into it, or a row a lookup joined to it."""
    return f"_{name}_file", f"_{name}_sha256", f"_{name}_line"


def built_from(versions: dict[str, int]) -> str:
    """The `_built_from` value of rows computed from `versions` ({table: version})."""
    return json.dumps({k: int(v) for k, v in sorted(versions.items())}, separators=(",", ":"))


def parse_built_from(text: str | None) -> dict[str, int]:
    """{table: version} of one `_built_from` value (empty for None)."""
    return {k: int(v) for k, v in json.loads(text).items()} if text else {}


def merge_built_from(column, versions: dict[str, int]):
    """A Spark Column: `column` (a `_built_from` value, or null) with `versions` added, as JSON."""
    from pyspark.sql import functions as F

    added = F.create_map(*[x for k, v in sorted(versions.items()) for x in (F.lit(k), F.lit(int(v)))])
    current = F.coalesce(F.from_json(column, "map<string,long>"), F.create_map().cast("map<string,long>"))
    merged = F.map_zip_with(current, added, lambda _k, a, b: F.coalesce(b, a))
    return F.to_json(F.map_from_entries(F.array_sort(F.map_entries(merged))))
