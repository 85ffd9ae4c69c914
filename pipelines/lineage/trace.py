"""One row back to the raw lines it came from (`lakehouse-dl lineage`).

A row of `results.predictions`, a gold table, silver or bronze is walked down the layers, each
step read at the version the row above names:

    results.predictions  --serving_input_version, key, date-->  gold.serving_input @ v
    gold.serving_input / gold.model_input  --_built_from, key, date-->  gold.features @ v
    gold.features  --_built_from, key, date-->  silver.<prediction source> @ v
    silver.<source>  --_built_from-->  bronze.<source> @ v  --_source_file, _line_number-->  landing file, line

and every landing record a row carries (its own, the updates merged into it, the rows its lookups
joined) is checked against the bronze version that holds it, `ops.ingest_log` (when it was
ingested, by which run) and the file in the landing folder today (same checksum or not; the raw
line itself when it is). A prediction also names its model: registry status, training run, and
the table versions the registry pins.

    >>> [chain] = trace(cfg, lakehouse, "results.predictions", limit=1)
    >>> print("\\n".join(chain.lines()))
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from datetime import date

from pipelines import catalog
from pipelines.datasets import PARTITION_COLUMN, dataset_for
from pipelines.lineage.columns import BUILT_FROM, LINE_NUMBER, OWN, SOURCE_FILE, parse_built_from, provenance


class LineageError(ValueError):
    """The chain cannot be walked; the message names the table and version that broke it."""


@dataclass
class Step:
    """One table version on the way down, and what it was built from."""
    table: str
    version: int | None
    built_from: dict[str, int] = field(default_factory=dict)
    note: str = ""


@dataclass
class Record:
    """One raw record a row came from."""
    role: str                      # "row", "update", "lookup <name>"
    source: str
    file: str | None               # relative to the dataset's landing folder
    path: str | None               # absolute
    checksum: str | None           # sha256 of the file as ingested
    line: int | None               # physical line (1 = a CSV's header); a Parquet file's row number
    bronze: str | None = None      # "bronze.<source> vN": the version holding the record
    in_bronze: bool | None = None  # that version holds a row from this file and line
    ingested_at: str | None = None
    ingest_run: str | None = None
    on_disk: str = ""              # "same checksum", "changed since (sha256 ...)", "missing"
    raw: str | None = None         # the line as it is in the file, when the file is unchanged


@dataclass
class Lineage:
    """The chain of one row."""
    table: str
    row: dict
    model: dict | None
    steps: list[Step]
    records: list[Record]

    def to_dict(self) -> dict:
        return {"table": self.table, "row": self.row, "model": self.model,
                "steps": [asdict(s) for s in self.steps], "records": [asdict(r) for r in self.records]}

    def lines(self) -> list[str]:
        shown = ", ".join(f"{k}={v}" for k, v in self.row.items())
        out = [f"{self.table}: {shown}"]
        if self.model:
            m = self.model
            pinned = ", ".join(f"{t} v{'/'.join(map(str, vs))}" for t, vs in (m.get("pins") or {}).items())
            out.append(f"  model {m['model_version']} ({m['status']}), trained by run {m['run_id']} on "
                       f"{m['training_table']} v{m['training_version']}, {catalog.FEATURE_SPEC} "
                       f"v{m['feature_spec_version']}; code {m['code_version']}")
            if pinned:
                out.append(f"    pins {pinned}")
        for s in self.steps:
            origin = ", ".join(f"{t} v{v}" for t, v in s.built_from.items())
            out.append(f"  {s.table} v{s.version}" + (f"  built from {origin}" if origin else "")
                       + (f"  ({s.note})" if s.note else ""))
        for r in self.records:
            if r.file is None:
                out.append(f"  {r.role} ({r.source}): none" + (f" ({r.on_disk})" if r.on_disk else ""))
                continue
            held = "" if r.in_bronze is None else (" (held there)" if r.in_bronze else " (NOT held there)")
            out.append(f"  {r.role} ({r.source}): {r.path} line {r.line}")
            out.append(f"      sha256 {r.checksum}, {r.bronze}{held}, ingested {r.ingested_at} by {r.ingest_run}; "
                       f"on disk: {r.on_disk}")
            if r.raw is not None:
                out.append(f"      | {r.raw}")
        return out


# --------------------------------------------------------------------------------------------
# The walk


def trace(cfg, lakehouse, table: str, where: str | None = None, limit: int = 1, dataset=None) -> list[Lineage]:
    """The lineage of up to `limit` rows of `table` (those `where`, a Spark SQL condition, holds for);
    `dataset` defaults to the configured one."""
    walker = _Walker(cfg, lakehouse, dataset or dataset_for(cfg))
    start = lakehouse.table(table)
    if not start.exists():
        raise LineageError(f"{table} does not exist under {lakehouse.root}")
    if not walker.can_walk(table):
        raise LineageError(f"lineage follows rows of {catalog.PREDICTIONS}, gold.features, gold.serving_input, "
                           f"gold.model_input and the silver and bronze tables of the sources; not {table}")
    version = start.version()
    df = start.read(version=version)
    if where:
        df = df.where(where)
    return [walker.walk(table, version, r.asDict()) for r in df.limit(limit).collect()]


class _Walker:
    def __init__(self, cfg, lakehouse, dataset):
        self.cfg = cfg
        self.lh = lakehouse
        self.dataset = dataset
        self.key = dataset.key if dataset.prediction_source else None
        self._ingest_log = None

    @property
    def lookups(self) -> list:
        from pipelines.datasets.features import features_for

        return list(features_for(self.dataset).declaration.lookups)

    def can_walk(self, table: str) -> bool:
        layer, _, name = table.partition(".")
        return (table in (catalog.PREDICTIONS, catalog.FEATURES, catalog.SERVING_INPUT, catalog.MODEL_INPUT)
                or (layer in ("silver", "bronze") and name in self.dataset.sources))

    def walk(self, table: str, version: int, row: dict) -> Lineage:
        chain = Lineage(table, _shown(row, self.key), None, [Step(table, version, parse_built_from(row.get(BUILT_FROM)))], [])
        layer, _, name = table.partition(".")
        if table == catalog.PREDICTIONS:
            chain.model = self._model(row["model_version"])
            version = row.get("serving_input_version")
            row = self._row(catalog.SERVING_INPUT, version, row[self.key], row[PARTITION_COLUMN], chain)
            table = catalog.SERVING_INPUT
        if table in (catalog.SERVING_INPUT, catalog.MODEL_INPUT):
            origin = parse_built_from(row.get(BUILT_FROM))
            day = row.get(PARTITION_COLUMN) or _day(row["day"])
            row = self._row(catalog.FEATURES, origin.get(catalog.FEATURES), row[self.key], day, chain)
            table = catalog.FEATURES
        if table == catalog.FEATURES:
            self._features(row, chain)
        elif layer == "silver":
            self._silver(name, row, chain)
        elif layer == "bronze":
            chain.records.append(self._record("row", name, row, OWN, bronze_version=version))
        return chain

    # -- the layers

    def _features(self, row: dict, chain: Lineage) -> None:
        origin = parse_built_from(row.get(BUILT_FROM))
        source = self.dataset.prediction_source
        silver_row = self._row(catalog.silver(source), origin.get(catalog.silver(source)), row[self.key],
                               row[PARTITION_COLUMN], chain, key=self.dataset.source(source).id_column)
        self._silver(source, silver_row, chain)
        for lookup in self.lookups:
            columns = provenance(lookup.name)
            if row.get(columns[0]) is None:
                chain.records.append(Record(f"lookup {lookup.name}", lookup.source, None, None, None, None,
                                            on_disk="no row joined"))
                continue
            silver_table = catalog.silver(lookup.source)
            version = origin.get(silver_table)
            found = self._by_record(silver_table, version, row[columns[0]], row[columns[2]], lookup.source)
            bronze_version = parse_built_from(found.get(BUILT_FROM)).get(catalog.bronze(lookup.source)) if found else None
            chain.records.append(self._record(f"lookup {lookup.name}", lookup.source, row, columns, bronze_version))

    def _silver(self, source: str, row: dict, chain: Lineage) -> None:
        """The row's own record and those of the updates merged into it."""
        origin = parse_built_from(row.get(BUILT_FROM))
        chain.records.append(self._record("row", source, row, OWN, origin.get(catalog.bronze(source))))
        for update in self.dataset.updaters(source):
            columns = provenance(update.name)
            if row.get(columns[0]) is None:
                chain.records.append(Record("update", update.name, None, None, None, None,
                                            on_disk="no update merged yet (the outcome was not known)"))
                continue
            chain.records.append(self._record("update", update.name, row, columns,
                                              origin.get(catalog.bronze(update.name))))

    # -- reading

    def _row(self, table: str, version: int | None, key_value, day, chain: Lineage, key: str | None = None) -> dict:
        """The row of `table` at `version` with the key and date given; a Step in `chain`."""
        from pyspark.sql import functions as F

        key = key or self.key
        t = self.lh.table(table)
        note = ""
        try:
            df = t.read(version=version)
        except Exception as exc:
            # Vacuumed: the latest version, said so (a registered model's versions are kept).
            note = f"v{version} can no longer be read ({type(exc).__name__}); the latest version instead"
            version = t.version()
            df = t.read(version=version)
        if version is None:
            version = t.version()
        condition = F.col(key) == F.lit(key_value)
        if day is not None and PARTITION_COLUMN in df.columns:
            condition = condition & (F.col(PARTITION_COLUMN) == F.lit(day))
        found = [r.asDict() for r in df.where(condition).limit(2).collect()]
        if not found:
            raise LineageError(f"{table} v{version} holds no row with {key}={key_value} and date {day}")
        row = found[0]
        chain.steps.append(Step(table, version, parse_built_from(row.get(BUILT_FROM)), note))
        return row

    def _by_record(self, table: str, version: int | None, file: str, line: int, source: str) -> dict | None:
        """The row of `table` (a bronze or silver table of `source`) at `version` from `file`, `line`."""
        from pyspark.sql import functions as F

        t = self.lh.table(table)
        try:
            df = t.read(version=version)
        except Exception:
            df = t.read()
        if SOURCE_FILE not in df.columns:
            return None
        condition = (F.col(SOURCE_FILE) == file) & (F.col(LINE_NUMBER) == line)
        declared = self.dataset.source(source)
        if declared.daily and declared.date_of(file) is not None:
            # A daily file's rows are in the partition of its date: read that one only.
            condition = condition & (F.col(PARTITION_COLUMN) == F.lit(declared.date_of(file)))
        found = df.where(condition).limit(1).collect()
        return found[0].asDict() if found else None

    def _record(self, role: str, source: str, row: dict, columns: tuple[str, str, str],
                bronze_version: int | None) -> Record:
        file, checksum, line = (row.get(c) for c in columns)
        path = os.path.join(self.cfg.lakehouse.landing, file) if file else None
        record = Record(role, source, file, path, checksum, line)
        if file is None:
            record.on_disk = "not recorded (the row was cleaned before rows kept their lineage)"
            return record
        bronze = catalog.bronze(source)
        if bronze_version is not None:
            record.bronze = f"{bronze} v{bronze_version}"
            held = self._by_record(bronze, bronze_version, file, line, source)
            record.in_bronze = held is not None and held.get("_source_sha256") in (None, checksum)
        logged = self._logged(source, file, checksum)
        if logged:
            record.ingested_at, record.ingest_run = str(logged["ingested_at"]), logged["run_id"]
        record.on_disk, record.raw = _on_disk(path, checksum, line, self.dataset.source(source).format)
        return record

    def _logged(self, source: str, file: str, checksum: str | None) -> dict | None:
        if self._ingest_log is None:
            table = self.lh.table(catalog.INGEST_LOG)
            self._ingest_log = table.to_arrow(["source", "path", "sha256", "run_id", "ingested_at"]).to_pylist() \
                if table.exists() else []
        hits = [r for r in self._ingest_log if r["source"] == source and r["path"] == file and r["sha256"] == checksum]
        return max(hits, key=lambda r: r["ingested_at"]) if hits else None

    def _model(self, model_version: str) -> dict | None:
        from pipelines.ml import registry

        # A baseline that scored while no network was blessed: "<candidate>/<kind>".
        candidate, _, baseline = model_version.partition("/")
        entry = registry.get(self.lh, candidate)
        if entry is None:
            return {"model_version": model_version, "status": "not in the registry", "run_id": None,
                    "training_table": None, "training_version": None, "feature_spec_version": None,
                    "code_version": None, "num_proc": None}
        out = {k: getattr(entry, k) for k in ("model_version", "status", "run_id", "training_table",
                                              "training_version", "feature_spec_version", "code_version",
                                              "num_proc")}
        out["pins"] = entry.pinned
        if baseline:
            out.update(model_version=model_version, status=f"{baseline} fitted beside candidate {candidate} "
                                                           f"({entry.status}), scoring while no network is blessed")
        return out


def _on_disk(path: str, checksum: str | None, line: int | None, fmt: str) -> tuple[str, str | None]:
    """What the landing folder holds for a record today, and its raw line when the file is unchanged."""
    from pipelines.stages.bronze import split_lines

    if not os.path.isfile(path):
        return "missing", None
    content = open(path, "rb").read()
    now = hashlib.sha256(content).hexdigest()
    if now != checksum:
        return f"changed since (sha256 now {now})", None
    if fmt == "parquet" or not line:
        return "same checksum", None
    lines = split_lines(content)
    return "same checksum", lines[line - 1].decode("utf-8", errors="backslashreplace") if line <= len(lines) else None


def _shown(row: dict, key: str) -> dict:
    """The columns of a row worth showing: the key, the date, scores and versions; not the features."""
    keep = [key, PARTITION_COLUMN, "day", "score", "predicted_label", "prediction", "label", "target",
            "model_version", "feature_spec_version", "serving_input_version", "split"]
    return {k: (v.isoformat() if isinstance(v, date) else v) for k, v in row.items() if k in keep and v is not None}


def _day(yyyymmdd: int) -> date:
    return date(yyyymmdd // 10000, yyyymmdd // 100 % 100, yyyymmdd % 100)
