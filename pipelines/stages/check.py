"""A dry run of a dataset's declaration over its delivered files (`lakehouse-dl dataset check`):
what ingest and clean would make of them, with no table written.

Per source, the landing files are found and parsed exactly as bronze does (`find_files`,
`header_reason`, `parse_files`), and the rows that parse go through silver's own functions
(`fix_types`, `check_rules`, `mark_duplicates`, `quality_counts`) as DataFrames that are only
counted: the records parsed and rejected (with the reasons), the rows each rule would quarantine
or count, the duplicates of the primary key, and the days the source's calendar expects with no
file. A file refused whole (a header that names other columns, a Parquet file that is not one)
fails the check; rejected records and quarantined rows do not: the pipeline keeps them apart.
A daily file is judged by the schema of its own date, and the report names the schema each file
matched (`schemas`: a feed's columns may change over time, `pipelines.datasets.schemas`).

    >>> report = check_dataset(cfg, spark, load_dataset("shop"))
    >>> report["ok"], report["sources"][0]["rejected"]
    (True, 1)
    >>> print(render_check(report))
"""
from __future__ import annotations

import re
from collections import Counter
from datetime import date, datetime, timezone

from pipelines.datasets import PARTITION_COLUMN, Dataset, Source
from pipelines.lineage.columns import LINE_NUMBER, SOURCE_FILE
from pipelines.stages.accounting import check_parsed
from pipelines.stages.bronze.ingestion import _counts_per_file, _missing_dates
from pipelines.stages.bronze.parse import count_records, header_reason
from pipelines.stages.bronze.task import bronze_rows, parse_files
from pipelines.stages.landing import due, find_files
from pipelines.stages.silver.rows import check_rules, fix_types, mark_duplicates, quality_counts

# Examples shown per source of rejected records and of quarantined rows.
EXAMPLES = 3
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def check_dataset(cfg, spark, dataset: Dataset, dates: list[date] | None = None) -> dict:
    """The dry run of `dataset` over the files in `cfg.lakehouse.landing` (for a daily feed, those
    of `dates` when given): {"dataset", "landing", "ok", "problems", "sources": [per source]}."""
    landing = cfg.lakehouse.landing
    # As ingest does: without dates, a day is expected when any daily feed delivered it, and a
    # feed known later than the others (outcomes) only up to what the landing has reached.
    found = [(s, f.date) for s in dataset.daily_sources for f in find_files(landing, s, dates)]
    delivered = None if dates is not None else sorted({d for _, d in found})
    as_of = max((due(s, d) for s, d in found), default=None)
    reports: dict[str, dict] = {}
    kept: dict[str, object] = {}
    cached: list = []
    try:
        for source in dataset.clean_order():
            reports[source.name] = check_source(spark, dataset, source, landing, dates, delivered, as_of, kept, cached)
    finally:
        for df in cached:
            df.unpersist()
    sources = [reports[name] for name in dataset.sources]
    problems = [f"{r['source']}: {f['file']} is refused whole: {f['reason']}" for r in sources for f in r["refused"]]
    if not any(r["files"] for r in sources):
        problems.append(f"no delivered file in {landing} matches any source's path")
    return {"dataset": dataset.name, "landing": landing, "dates": [str(dates[0]), str(dates[-1])] if dates else None,
            "ok": not problems, "problems": problems, "sources": sources}


def check_source(spark, dataset: Dataset, source: Source, landing: str, dates: list[date] | None,
                 delivered: list[date] | None, as_of: int | None, kept: dict, cached: list) -> dict:
    """One source's part of `check_dataset`. `kept` receives, per source, the rows silver would
    keep (the reference rules and updates of later sources are checked against them); the
    DataFrames persisted here are appended to `cached` for the caller to release."""
    from pyspark.sql import functions as F

    files = find_files(landing, source, dates if source.daily else None)
    out = {"source": source.name, "kind": "daily feed" if source.daily else "reference table", "path": source.path,
           "calendar": source.calendar if source.daily else None, "files": len(files),
           "first": None, "last": None,
           "records": 0, "parsed": 0, "rejected": 0, "rejected_reasons": {}, "rejected_examples": [],
           "refused": [], "empty": [], "rules": [], "quarantined": 0, "quarantine_examples": [], "duplicates": 0,
           "primary_key": list(source.primary_key), "gaps": [], "schemas": []}
    if source.daily and files:
        out["first"], out["last"] = str(min(f.date for f in files)), str(max(f.date for f in files))
    if source.daily:
        out["gaps"] = [str(d) for d in _missing_dates(files, dates, delivered, source)
                       if as_of is None or due(source, d) <= as_of]
    readable = []
    # The files that matched each of the source's schemas over time (one when no column changes).
    schemas = source.schemas()
    matched: dict[str, list[str]] = {s.label: [] for s in schemas}
    for f in files:
        content = f.read_bytes()
        try:
            records, why = count_records(content, source), header_reason(content, source.on(f.date))
        except Exception as exc:     # a Parquet file that is not one: bronze could not open it either
            out["refused"].append({"file": f.path, "reason": f"unreadable as {source.format}: {exc}"})
            continue
        if why:
            out["refused"].append({"file": f.path, "reason": why})
        elif records == 0:
            out["empty"].append(f.path)
        else:
            matched[source.schema_on(f.date).label].append(f.path)
        readable.append((f, records))
    out["schemas"] = [{"schema": s.label, "columns": [c.in_file for c in s.columns],
                       "differences": s.differences(source.columns), "files": matched[s.label]}
                      for s in schemas]
    out["records"] = sum(n for _, n in readable)
    if not readable:
        kept[source.name] = spark.createDataFrame([], _kept_schema(source))
        return out

    parsed = parse_files(spark, source, [f for f, _ in readable]).persist()
    cached.append(parsed)
    per_file = _counts_per_file(parsed)
    check_parsed(source.name, [(f.path, n) for f, n in readable], per_file)
    out["parsed"] = sum(good for good, _ in per_file.values())
    out["rejected"] = sum(bad for _, bad in per_file.values())
    if out["rejected"]:
        bad = parsed.filter(F.col("_reason").isNotNull())
        reasons = Counter()
        for row in bad.groupBy("_reason").count().collect():
            reasons[_QUOTED.sub("…", row["_reason"])] += int(row["count"])
        out["rejected_reasons"] = dict(reasons.most_common())
        out["rejected_examples"] = [
            {"file": r[SOURCE_FILE], "line": r[LINE_NUMBER], "reason": r["_reason"], "raw": r["_raw_line"]}
            for r in bad.orderBy(SOURCE_FILE, LINE_NUMBER).limit(EXAMPLES).collect()]

    # The rows bronze would hold, then what silver would make of them.
    rows = fix_types(bronze_rows(parsed, source, "check", datetime.now(timezone.utc)), source)
    if source.updates:
        # An update names its target's row by the target's id, computed from the same key.
        rows = rows.withColumn(dataset.source(source.updates).id_column, F.xxhash64(*source.primary_key))
    references = {r.reference_source: kept[r.reference_source] for r in source.rules if r.check == "reference"}
    ruled = check_rules(rows, source, references).persist()
    cached.append(ruled)
    checked = mark_duplicates(ruled, source).persist()
    cached.append(checked)
    counts = quality_counts(checked, source)
    out["quarantined"] = sum(c["blocked"] for c in counts.values())
    out["duplicates"] = sum(c["duplicates"] for c in counts.values())
    out["rules"] = [{"rule": r.name, "check": r.check, "blocking": r.blocking,
                     "failed": sum(c[r.name] for c in counts.values())} for r in source.rules]
    if out["quarantined"]:
        out["quarantine_examples"] = [
            {"file": r[SOURCE_FILE], "line": r[LINE_NUMBER], "reason": r["_reason"]}
            for r in checked.filter(F.col("_blocked")).orderBy(SOURCE_FILE, LINE_NUMBER)
            .select(SOURCE_FILE, LINE_NUMBER, "_reason").limit(EXAMPLES).collect()]
    good = checked.filter(~F.col("_blocked") & ~F.col("_duplicate"))
    if source.id_column:
        good = good.withColumn(source.id_column, F.xxhash64(*source.primary_key))
    kept[source.name] = good
    return out


def _kept_schema(source: Source) -> str:
    """The columns of a source's kept rows when it delivered no file (a reference rule still runs)."""
    schema = source.spark_schema() + (f", `{PARTITION_COLUMN}` date" if source.daily else "")
    return schema + (f", `{source.id_column}` bigint" if source.id_column else "")


def render_check(report: dict) -> str:
    """The report as the command prints it: a block per source, then the verdict."""
    scope = f" for {report['dates'][0]}..{report['dates'][1]}" if report["dates"] else ""
    lines = [f"dataset {report['dataset']}: a dry run over {report['landing']}{scope} (no table written)"]
    for s in report["sources"]:
        lines += [""] + _source_lines(s)
    lines.append("")
    rejected = sum(s["rejected"] for s in report["sources"])
    quarantined = sum(s["quarantined"] for s in report["sources"])
    if report["ok"]:
        lines.append(f"ok: every file parses ({_n(rejected, 'record')} rejected, {_n(quarantined, 'row')} "
                     "would be quarantined)")
    else:
        lines += ["failed:"] + [f"  {p}" for p in report["problems"]]
    return "\n".join(lines)


def _source_lines(s: dict) -> list[str]:
    head = f"{s['source']}  {s['kind']} {s['path']}" + (f", calendar {s['calendar']}" if s["calendar"] else "")
    span = f", {s['first']}..{s['last']}" if s["first"] else ""
    out = [head, f"  files        {s['files']}{span}"]
    if not s["files"]:
        return out + ["  (no file: nothing to check)"]
    for f in s["refused"]:
        out.append(f"    refused whole: {f['file']}: {f['reason']}")
    if s["empty"]:
        out.append(f"    empty: {', '.join(s['empty'][:5])}" + (", ..." if len(s["empty"]) > 5 else ""))
    for i, schema in enumerate(s["schemas"] if len(s["schemas"]) > 1 else []):
        files = schema["files"]
        span = f": {files[0]}" + (f"..{files[-1]}" if len(files) > 1 else "") if files else ""
        differs = f" ({'; '.join(schema['differences'])})" if schema["differences"] else ""
        out.append(f"  {'schemas' if i == 0 else '':13}{schema['schema']}{differs}: matched by "
                   f"{_n(len(files), 'file')}{span}")
    out.append(f"  records      {s['records']:,}: {s['parsed']:,} parsed, {s['rejected']:,} rejected")
    for reason, count in s["rejected_reasons"].items():
        out.append(f"    {count:,} × {reason}")
    for e in s["rejected_examples"]:
        out.append(f"      e.g. {e['file']} line {e['line']}: {e['reason']}")
    if s["rules"]:
        shown = [f"{r['rule']} {r['failed']:,}" + (" (blocking)" if r["blocking"] else "") for r in s["rules"]]
        out.append(f"  rules        {', '.join(shown)}")
    out.append(f"  quarantined  {s['quarantined']:,}")
    for e in s["quarantine_examples"]:
        out.append(f"      e.g. {e['file']} line {e['line']}: {e['reason']}")
    out.append(f"  duplicates   {s['duplicates']:,} of the primary key [{', '.join(s['primary_key'])}]")
    if s["calendar"]:
        gaps = s["gaps"]
        listed = ", ".join(gaps[:5]) + (", ..." if len(gaps) > 5 else "")
        out.append(f"  gaps         {len(gaps)}" + (f": {listed}" if gaps else ""))
    return out


def _n(count: int, word: str) -> str:
    return f"{count:,} {word}{'s' if count != 1 else ''}"
