"""Bronze: raw landing files → `bronze.<source>` (+ `bronze.<source>_rejected`, `ops.ingest_log`).

`parse` reads one raw file in pure Python, `task` runs it in Spark tasks over many files, `ingest`
(`ingestion`) is the stage: which files are new or changed, the writes, the accounting.
"""
from pipelines.stages.bronze.ingestion import IngestResult, ingest, ingest_source, ingested_files
from pipelines.stages.bronze.parse import ParsedFile, count_records, header_reason, parse_file, split_lines

__all__ = ["ingest", "ingest_source", "ingested_files", "IngestResult", "parse_file", "ParsedFile",
           "count_records", "header_reason", "split_lines"]
