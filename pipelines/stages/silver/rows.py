"""Silver's DataFrame functions: types fixed, quality rules checked, duplicates marked, and the
rows each table receives (silver, quarantine, data quality). DataFrames in, DataFrames out;
`pipelines.stages.silver.clean` reads and writes the tables.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from pipelines import catalog
from pipelines.datasets import PARTITION_COLUMN, Dataset, Rule, Source
from pipelines.lineage.columns import (BUILT_FROM, LINE_NUMBER, OWN, PROVENANCE_TYPES, SOURCE_FILE, SOURCE_SHA256,
                                       provenance)

# Both bookkeeping tables are partitioned by source table and date, so a re-run of a date
# replaces its rows.
BOOK_PARTITIONS = list(catalog.entry(catalog.QUARANTINE).partition_by)
QUARANTINE_SCHEMA = ("table string, key string, rule string, reason string, row string, _run_id string, "
                     "date date")
DUPLICATES_SCHEMA = ("table string, key string, _source_file string, _source_sha256 string, _line_number long, "
                     "kept_file string, kept_sha256 string, kept_line long, _run_id string, date date")
# The winner's provenance, on every row of a key (`mark_duplicates`).
KEPT = ("_kept_file", "_kept_sha256", "_kept_line")
DATA_QUALITY_SCHEMA = ("run_id string, table string, date date, rule string, rows_checked long, "
                       "rows_failed long, blocking boolean")
DUPLICATE_RULE = "duplicate_key"


# --------------------------------------------------------------------------------------------
# The stage's functions: DataFrames in, DataFrames out


def fix_types(bronze, source: Source):
    """Trim strings (a blank string is null) and cast every declared column to its declared type,
    so silver holds the schema of the dataset file even where bronze was written by an older one."""
    from pyspark.sql import functions as F

    cols = []
    for c in source.columns:
        # A column declared with its dates after bronze was last written is null until ingested again.
        value = F.col(c.name) if c.name in bronze.columns or not c.dated else F.lit(None)
        if c.type == "string":
            value = F.when(F.trim(value) == "", None).otherwise(F.trim(value))
        cols.append(value.cast(c.spark_type).alias(c.name))
    keep = [c for c in bronze.columns if c not in source.column_names]
    # Bronze partitions ingested before rows kept their checksum and line read them as null.
    absent = [F.lit(None).cast(t).alias(c) for c, t in zip(OWN, PROVENANCE_TYPES) if c not in bronze.columns]
    return bronze.select(*cols, *keep, *absent)


def _fail_column(rule: Rule) -> str:
    return f"_fail_{rule.name}"


def _failure(rule: Rule):
    """(failed, reason) Columns of one rule; `failed` is true where the row breaks the rule."""
    from pyspark.sql import functions as F

    if rule.check == "not_null":
        failed = None
        for c in rule.columns:
            failed = F.col(c).isNull() if failed is None else failed | F.col(c).isNull()
        missing = F.concat_ws(", ", *[F.when(F.col(c).isNull(), F.lit(c)) for c in rule.columns])
        return failed, F.concat(F.lit(f"{rule.name}: no value for "), missing)
    if rule.check == "expression":
        return ~F.coalesce(F.expr(rule.expr).cast("boolean"), F.lit(False)), F.lit(f"{rule.name}: not true: {rule.expr}")
    col = rule.columns[0]
    shown = F.coalesce(F.col(col).cast("string"), F.lit("null"))
    if rule.check == "range":
        out = F.lit(False)
        if rule.min is not None:
            out = out | (F.col(col) < F.lit(rule.min))
        if rule.max is not None:
            out = out | (F.col(col) > F.lit(rule.max))
        bounds = f"[{_num(rule.min) if rule.min is not None else '-inf'}, {_num(rule.max) if rule.max is not None else 'inf'}]"
        return F.col(col).isNotNull() & out, F.concat(F.lit(f"{rule.name}: {col}="), shown, F.lit(f" outside {bounds}"))
    if rule.check == "allowed_values":
        return (F.col(col).isNotNull() & ~F.col(col).isin(list(rule.values)),
                F.concat(F.lit(f"{rule.name}: {col}="), shown, F.lit(f" not one of {', '.join(map(str, rule.values))}")))
    if rule.check == "max_length":
        length = F.length(F.col(col))
        return (F.col(col).isNotNull() & (length > F.lit(int(rule.max))),
                F.concat(F.lit(f"{rule.name}: {col} has "), length.cast("string"),
                         F.lit(f" characters, more than {int(rule.max)}")))
    if rule.check == "reference":
        return (~F.col(f"_known_{rule.name}"),
                F.concat(F.lit(f"{rule.name}: {col}="), shown, F.lit(f" is not in {rule.reference}")))
    raise ValueError(f"unknown check {rule.check}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def check_rules(df, source: Source, references: dict | None = None):
    """Add, per rule, `_fail_<rule>` (true where the row breaks it), and `_blocked`, `_rule` (the
    first blocking rule broken) and `_reason` (every blocking rule broken, with the values).

    `references` maps a reference rule's source name to its silver DataFrame; a reference rule
    joins the distinct keys of that table. No broadcast hint: Spark broadcasts the small ones
    itself (planes, airports), and a large one (a daily table's ids: 34 million at ×100) is
    joined by a shuffle instead of being copied whole to every task.
    """
    from pyspark.sql import functions as F

    references = references or {}
    for rule in source.rules:
        if rule.check != "reference":
            continue
        if rule.reference_source not in references:
            raise ValueError(f"rule {rule.name} of {source.name} needs silver.{rule.reference_source}; "
                             f"clean {rule.reference_source} first")
        key = f"_key_{rule.name}"
        keys = (references[rule.reference_source].select(F.col(rule.reference_column).alias(key))
                .where(F.col(key).isNotNull()).distinct().withColumn(f"_hit_{rule.name}", F.lit(True)))
        df = (df.join(keys, df[rule.columns[0]] == keys[key], "left")
              .withColumn(f"_known_{rule.name}", F.coalesce(F.col(f"_hit_{rule.name}"), F.lit(False)))
              .drop(key, f"_hit_{rule.name}"))
    reasons = []
    for rule in source.rules:
        failed, reason = _failure(rule)
        df = df.withColumn(_fail_column(rule), failed)
        if rule.blocking:
            reasons.append((rule, reason))
    blocked = F.lit(False)
    for rule, _ in reasons:
        blocked = blocked | F.col(_fail_column(rule))
    first_rule = F.coalesce(*[F.when(F.col(_fail_column(r)), F.lit(r.name)) for r, _ in reasons], F.lit(None).cast("string")) \
        if reasons else F.lit(None).cast("string")
    reason = F.concat_ws("; ", *[F.when(F.col(_fail_column(r)), why) for r, why in reasons]) if reasons else F.lit("")
    return (df.withColumn("_blocked", blocked)
            .withColumn("_rule", first_rule)
            .withColumn("_reason", F.when(F.col("_blocked"), reason)))


def mark_duplicates(df, source: Source):
    """Add `_duplicate`: true on every row that passed the blocking rules but repeats the key of
    another such row (per date for a daily feed). The row kept is the one ingested last, then by
    file name, then the later line of a file, then content, so the choice does not depend on
    Spark's ordering. Every row that passed also gets the kept row's file, checksum and line
    (`KEPT`), which `duplicate_rows` records beside each loser.

    Only the rows whose key repeats go through the window that ranks them (a sort of every row
    otherwise): the repeated keys are counted first, on the key columns alone, so `df` should be
    persisted (silver's callers do). Up to `WINDOW_BROADCAST_KEYS` repeated keys are broadcast to
    pick their rows out; more than that, and every row is ranked."""
    from functools import reduce
    from operator import and_

    from pyspark.sql import functions as F

    key = list(source.primary_key)
    if source.daily and PARTITION_COLUMN not in key:
        key.append(PARTITION_COLUMN)
    repeated = (df.filter(~F.col("_blocked")).groupBy(*key).count().filter(F.col("count") > 1)
                .select(*[F.col(c).alias(f"_repeated_{c}") for c in key]))
    n = repeated.count()
    if n == 0:
        return _alone(df)
    if n > WINDOW_BROADCAST_KEYS:
        return _ranked(df, source, key)
    # A null key part equals a null, as in the window's groups.
    same_key = reduce(and_, [df[c].eqNullSafe(F.col(f"_repeated_{c}")) for c in key])
    tagged = (df.join(F.broadcast(repeated.withColumn("_repeats", F.lit(True))), same_key, "left")
              .drop(*[f"_repeated_{c}" for c in key]))
    repeats = tagged.filter(F.col("_repeats").isNotNull()).drop("_repeats")
    alone = tagged.filter(F.col("_repeats").isNull()).drop("_repeats")
    return _ranked(repeats, source, key).unionByName(_alone(alone))


# Repeated keys picked out by a broadcast join before ranking; more, and every row is ranked.
WINDOW_BROADCAST_KEYS = 200_000


def _alone(df):
    """`mark_duplicates`' columns for rows whose key nothing else has: each is kept, as itself."""
    from pyspark.sql import functions as F

    for kept, own in zip(KEPT, OWN):
        df = df.withColumn(kept, F.col(own))
    return df.withColumn("_duplicate", F.lit(False))


def _ranked(df, source: Source, key: list[str]):
    """`mark_duplicates`' columns by ranking the rows of each key (blocked or not) in a window."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = []
    for c in ("_ingest_time", SOURCE_FILE, LINE_NUMBER):
        if c in df.columns:
            order.append(F.col(c).desc())
    order.append(F.xxhash64(*source.column_names).desc())
    window = Window.partitionBy(F.col("_blocked"), *key).orderBy(*order)
    df = df.withColumn("_n", F.row_number().over(window))
    for kept, own in zip(KEPT, OWN):
        df = df.withColumn(kept, F.first(own).over(window))
    return df.withColumn("_duplicate", ~F.col("_blocked") & (F.col("_n") > 1)).drop("_n")


def silver_rows(checked, source: Source, updaters: list[Source] = (), dataset: Dataset | None = None,
                built_from: str | None = None):
    """The rows that passed every blocking rule, once per key: declared columns, `date`, the id,
    the rule flags (true = passed) and `<column>_missing` flags, the row's landing file, checksum
    and line and `built_from` (the bronze version read); then, null until an update source sets
    them, the columns of each of `updaters` and the update's own file, checksum and line
    (`merge_updates`)."""
    from pyspark.sql import functions as F

    cols = [F.col(c) for c in source.column_names]
    if source.daily:
        cols.append(F.col(PARTITION_COLUMN))
    if source.id_column:
        cols.append(F.xxhash64(*source.primary_key).alias(source.id_column))
    for rule in source.rules:
        if rule.flag:
            cols.append((~F.col(_fail_column(rule))).alias(rule.flag))
    for c in source.column_names:
        if source.missing_policy(c).silver_flag:
            cols.append(F.col(c).isNull().alias(f"{c}_missing"))
    cols += [F.col(c) for c in OWN] + [F.lit(built_from).cast("string").alias(BUILT_FROM)]
    for update in updaters:
        cols += [F.lit(None).cast(update.column(c).spark_type).alias(c) for c in dataset.update_columns(update)]
        cols += [F.lit(None).cast("boolean").alias(c) for c in update.flag_columns]
        cols += [F.lit(None).cast(t).alias(c) for c, t in zip(provenance(update.name), PROVENANCE_TYPES)]
    return checked.filter(~F.col("_blocked") & ~F.col("_duplicate")).select(*cols)


def update_marker(update: Source) -> str:
    """The column of the updated table naming the landing file an update came from (null: none yet)."""
    return provenance(update.name)[0]


def update_rows(checked, update: Source, dataset: Dataset):
    """The updates that passed every blocking rule, once per key: the target's id and `date`, the
    columns they set, their flags and the file, checksum and line they came from."""
    from pyspark.sql import functions as F

    target = dataset.source(update.updates)
    flags = [(~F.col(_fail_column(r))).alias(r.flag) for r in update.rules if r.flag]
    flags += [F.col(c).isNull().alias(f"{c}_missing") for c in update.column_names
              if update.missing_policy(c).silver_flag]
    return (checked.filter(~F.col("_blocked") & ~F.col("_duplicate"))
            .select(target.id_column, PARTITION_COLUMN, *dataset.update_columns(update), *flags,
                    *[F.col(own).alias(mine) for own, mine in zip(OWN, provenance(update.name))]))


def duplicate_rows(checked, source: Source, run_id: str):
    """The rows removed as duplicates, as `silver.duplicates` holds them: the key, the removed
    row's file, checksum and line, and those of the row kept in its place."""
    from pyspark.sql import functions as F

    day = F.col(PARTITION_COLUMN) if source.daily else F.lit(None).cast("date")
    return (checked.filter(F.col("_duplicate"))
            .select(F.lit(source.name).alias("table"),
                    F.to_json(F.struct(*[F.col(c) for c in source.primary_key])).alias("key"),
                    SOURCE_FILE, SOURCE_SHA256, LINE_NUMBER,
                    *[F.col(k).alias(k[1:]) for k in KEPT], F.lit(run_id).alias("_run_id"), day.alias(PARTITION_COLUMN)))


def quarantine_rows(checked, source: Source, run_id: str):
    """The rows that broke a blocking rule, as `silver.quarantine` holds them: the key and the
    whole bronze row as JSON, the first rule broken and every reason."""
    from pyspark.sql import functions as F

    bronze_cols = [c for c in checked.columns if not c.startswith(("_fail_", "_known_")) and
                   c not in ("_blocked", "_rule", "_reason", "_duplicate", *KEPT)]
    day = F.col(PARTITION_COLUMN) if source.daily else F.lit(None).cast("date")
    return (checked.filter(F.col("_blocked"))
            .select(F.lit(source.name).alias("table"),
                    F.to_json(F.struct(*[F.col(c) for c in source.primary_key])).alias("key"),
                    F.col("_rule").alias("rule"), F.col("_reason").alias("reason"),
                    F.to_json(F.struct(*[F.col(c) for c in bronze_cols])).alias("row"),
                    F.lit(run_id).alias("_run_id"), day.alias(PARTITION_COLUMN)))


def quality_counts(checked, source: Source) -> dict:
    """{date or None: {"rows": n, "blocked": n, "duplicates": n, <rule>: failed}} in one Spark job."""
    from pyspark.sql import functions as F

    aggs = [F.count(F.lit(1)).alias("rows"), F.sum(F.col("_blocked").cast("long")).alias("blocked"),
            F.sum(F.col("_duplicate").cast("long")).alias("duplicates")]
    aggs += [F.sum(F.col(_fail_column(r)).cast("long")).alias(r.name) for r in source.rules]
    grouped = checked.groupBy(PARTITION_COLUMN) if source.daily else checked.groupBy()
    out = {}
    for row in grouped.agg(*aggs).collect():
        d = row.asDict()
        day = d.pop(PARTITION_COLUMN, None)
        out[day] = {k: int(v or 0) for k, v in d.items()}
    return out


def quality_rows(counts: dict, source: Source, run_id: str) -> list[tuple]:
    """`ops.data_quality` rows: per date and rule, rows checked and failed; duplicates are checked
    on the rows that passed the blocking rules."""
    out = []
    for day, c in sorted(counts.items(), key=lambda kv: (kv[0] is None, kv[0])):
        for rule in source.rules:
            out.append((run_id, source.name, day, rule.name, c["rows"], c[rule.name], rule.blocking))
        out.append((run_id, source.name, day, DUPLICATE_RULE, c["rows"] - c["blocked"], c["duplicates"], True))
    return out


@dataclass
class CleanResult:
    """What one clean run did to one source."""
    table: str
    dates: list[date] = field(default_factory=list)
    bronze_rows: int = 0
    silver_rows: int = 0
    quarantined: int = 0
    duplicates: int = 0
    failed: dict[str, int] = field(default_factory=dict)     # non-blocking rules: rows that broke them
    skipped: bool = False                                     # a reference table whose bronze did not change
    seconds: float = 0.0

    def add_counts(self, counts: dict, source: Source) -> None:
        """Take the rows, blocked rows, duplicates and non-blocking failures of `quality_counts`."""
        self.bronze_rows = sum(c["rows"] for c in counts.values())
        self.quarantined = sum(c["blocked"] for c in counts.values())
        self.duplicates = sum(c["duplicates"] for c in counts.values())
        self.failed = {r.name: sum(c[r.name] for c in counts.values()) for r in source.rules if not r.blocking}

    def line(self) -> str:
        if self.skipped:
            return f"[clean] {self.table}: unchanged since the last clean (bronze has not changed) in {self.seconds:.1f}s"
        flagged = ", ".join(f"{k} {v:,}" for k, v in self.failed.items() if v)
        return (f"[clean] {self.table}: {self.silver_rows:,} rows of {self.bronze_rows:,} in bronze "
                f"({self.quarantined:,} quarantined, {self.duplicates:,} duplicates removed"
                + (f"; flagged: {flagged}" if flagged else "") + f") in {self.seconds:.1f}s")
