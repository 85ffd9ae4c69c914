"""Parsing landing files with Spark: one task per batch of files reads their bytes (`binaryFile`)
and parses each with `pipelines.stages.bronze.parse`, giving one DataFrame of every record:
the declared columns, `date` for a daily feed, the file and line, and the reason where rejected.
A daily file is parsed by the schema of its date (`Source.on`); the columns it lacks are null.
"""
from __future__ import annotations

import os
from datetime import datetime
from typing import Iterator

from pipelines.datasets import PARTITION_COLUMN, Source
from pipelines.lineage.columns import LINE_NUMBER, SOURCE_FILE, SOURCE_SHA256
from pipelines.stages.bronze.parse import _arrow_schema, _arrow_type, parse_file
from pipelines.stages.landing import LandingFile
from pipelines.storage.paths import local_path


# The parsed frame: declared columns, then what bronze and the rejected table need.
PARSE_EXTRA = [(SOURCE_FILE, "string"), (SOURCE_SHA256, "string"), (LINE_NUMBER, "bigint"),
               ("_raw_line", "string"), ("_reason", "string")]


def parsed_schema(source: Source) -> str:
    cols = [f"`{c.name}` {c.spark_type}" for c in source.columns]
    if source.daily:
        cols.append(f"`{PARTITION_COLUMN}` date")
    return ", ".join(cols + [f"`{n}` {t}" for n, t in PARSE_EXTRA])


def make_parser(source: Source, files: list[LandingFile]):
    """The function Spark tasks run (through `mapInArrow`) over `binaryFile` rows of `files`."""
    by_path = {os.path.normpath(os.path.realpath(f.absolute)): (f.path, f.date) for f in files}

    def parse_task(batches: Iterator) -> Iterator:
        import hashlib
        import urllib.parse

        import pyarrow as pa

        fields = list(_arrow_schema(source))
        if source.daily:
            fields.append(pa.field(PARTITION_COLUMN, pa.date32()))
        fields += [pa.field(SOURCE_FILE, pa.string()), pa.field(SOURCE_SHA256, pa.string()),
                   pa.field(LINE_NUMBER, pa.int64()), pa.field("_raw_line", pa.string()),
                   pa.field("_reason", pa.string())]
        schema = pa.schema(fields)
        for batch in batches:
            for spark_path, content in zip(batch.column("path").to_pylist(), batch.column("content").to_pylist()):
                local = os.path.normpath(local_path(spark_path))
                key = by_path.get(local) or by_path.get(os.path.normpath(urllib.parse.unquote(local)))
                if key is None:
                    raise RuntimeError(f"bronze read {spark_path}, which is not among the files of this run")
                rel, day = key
                # Each file by the schema of its date; a column that date lacks is null.
                delivered = source.on(day)
                parsed = parse_file(content or b"", delivered)
                n_good, n_bad = parsed.good.num_rows, len(parsed.rejected)
                n = n_good + n_bad
                if n == 0:
                    continue
                carried = set(delivered.column_names)
                arrays = [pa.concat_arrays([*parsed.good.column(c.name).chunks, pa.nulls(n_bad, _arrow_type(c.type))])
                          if c.name in carried else pa.nulls(n, _arrow_type(c.type)) for c in source.columns]
                if source.daily:
                    arrays.append(pa.array([day] * n, type=pa.date32()))
                arrays += [
                    pa.array([rel] * n, type=pa.string()),
                    # The checksum of the bytes parsed here, which ops.ingest_log records too.
                    pa.array([hashlib.sha256(content or b"").hexdigest()] * n, type=pa.string()),
                    pa.array(parsed.good_lines + [ln for ln, _, _ in parsed.rejected], type=pa.int64()),
                    pa.array([None] * n_good + [raw for _, raw, _ in parsed.rejected], type=pa.string()),
                    pa.array([None] * n_good + [why for _, _, why in parsed.rejected], type=pa.string()),
                ]
                yield pa.RecordBatch.from_arrays(arrays, schema=schema)

    return parse_task


def _static_root(landing_file: LandingFile, pattern: str) -> str:
    """The folder above every file of a source: the glob's leading parts without wildcards."""
    parts = pattern.split("/")
    fixed = []
    for part in parts[:-1]:
        if any(ch in part for ch in "*?[{"):
            break
        fixed.append(part)
    depth = len(landing_file.path.split("/"))
    root = landing_file.absolute
    for _ in range(depth):
        root = os.path.dirname(root)
    return os.path.join(root, *fixed) if fixed else root


def parse_files(spark, source: Source, files: list[LandingFile]):
    """One DataFrame of every record of `files`: declared columns (+ `date` for a daily feed),
    `_source_file`, `_source_sha256`, `_line_number`, and `_raw_line` + `_reason` where the record
    was rejected."""
    from pyspark.sql import functions as F

    if not files:
        return spark.createDataFrame([], parsed_schema(source))
    # Spark lists more than 32 paths with a job of one task per path; the source's folder lists in
    # a blink, and the filter on `path` keeps binaryFile from reading other days' contents.
    root = _static_root(files[0], source.path)
    wanted = sorted({"file:" + os.path.realpath(f.absolute) for f in files})
    raw = (spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(root)
           .filter(F.col("path").isin(wanted)).select("path", "content"))
    return raw.mapInArrow(make_parser(source, files), parsed_schema(source))


def bronze_rows(parsed, source: Source, run_id: str, ingest_time: datetime):
    """The parsed records that parsed: declared columns, `date`, and the lineage columns: the
    landing file, its checksum and the record's line (`pipelines.lineage.columns`), the ingest
    time and run."""
    from pyspark.sql import functions as F

    cols = source.column_names + ([PARTITION_COLUMN] if source.daily else [])
    return (parsed.filter(F.col("_reason").isNull())
            .select(*cols, SOURCE_FILE, SOURCE_SHA256, LINE_NUMBER,
                    F.lit(ingest_time).cast("timestamp").alias("_ingest_time"),
                    F.lit(run_id).alias("_run_id")))


def rejected_rows(parsed, run_id: str, ingest_time: datetime):
    """The records that did not parse, as `bronze.<source>_rejected` holds them."""
    from pyspark.sql import functions as F

    return (parsed.filter(F.col("_reason").isNotNull())
            .select(SOURCE_FILE, F.col(LINE_NUMBER).alias("line_number"), SOURCE_SHA256,
                    F.col("_raw_line").alias("raw_line"), F.col("_reason").alias("reason"),
                    F.lit(run_id).alias("_run_id"),
                    F.lit(ingest_time).cast("timestamp").alias("_ingest_time")))
