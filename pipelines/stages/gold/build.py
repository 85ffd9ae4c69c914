"""Gold: silver → readable features, the feature spec fitted on the training window, model input.

The dataset's features (its YAML's `features:`, pipelines/datasets/features) are built here;
`spec` fits and applies the feature spec; this module splits by time and reads and writes
`gold.features`, `gold.feature_spec` and `gold.model_input` (contracts in docs/design.md).

    >>> summary = build_features(cfg, spark, dates=[date(2013, 3, 1)])
"""
from __future__ import annotations

import logging
import time
from datetime import date, timedelta
from typing import Sequence

from pipelines import catalog
from pipelines.catalog import FEATURE_SPEC, FEATURES, MODEL_INPUT, silver
from pipelines.datasets import PARTITION_COLUMN, dataset_for
from pipelines.datasets.features import ModelColumn, features_for
from pipelines.lineage.columns import BUILT_FROM, built_from
from pipelines.stages.gold.spec import (TARGET, FeaturesError, apply_feature_spec, fit_feature_spec, spec_rows,
                                        split_column)
from pipelines.storage import Lakehouse

log = logging.getLogger(__name__)

# gold.model_input's partition column: the split (train, validation, test) a row belongs to.
[SPLIT] = catalog.entry(MODEL_INPUT).partition_by

# ------------------------------------------------------------------------------------------------
# The stage: silver tables in, gold tables out


def build_features(cfg, spark, dates: Sequence[date] | None = None, refit_spec: bool = False,
                   lakehouse=None) -> dict:
    """Build gold for `dates` (every date of the primary silver table when None) and for the days
    after them whose history reads them (the HISTORY_DAYS after each, those silver holds); return
    counts.

    - `gold.features`: the dates' partitions are overwritten. Silver is read from
      HISTORY_DAYS before the first date to the last one, so the history features are complete
      and no later day is read.
    - `gold.feature_spec` is refitted when `refit_spec`, when it does not exist, or when it no
      longer matches: the training window in the config, the model columns or their missing-value
      policies, or the number of labelled rows in the training window changed (the window is still
      filling, or a training day was rebuilt). Otherwise it is reused as it is.
    - `gold.model_input`: the splits holding `dates` (every split after a refit) are rewritten
      from `gold.features`, so each split stays a few large files and a re-run changes no count.

        >>> build_features(cfg, spark, dates=[date(2013, 12, 31)])["model_input"]["test"]
    """
    started = time.time()
    lh = lakehouse or Lakehouse.from_config(cfg, spark)
    dataset = dataset_for(cfg)
    features = features_for(dataset)
    columns = features.model_columns
    splits = {name: cfg.split(name) for name in cfg.pipeline.splits}
    if "train" not in splits:
        raise FeaturesError("pipeline.splits has no 'train' window to fit the feature spec on")

    for source in features.sources.values():
        if not lh.table(source).exists():
            raise FeaturesError(f"{source} does not exist yet: run `lakehouse-dl clean` first")
    primary_name = silver(dataset.prediction_source)
    # The dates silver holds, from the Delta log's partition values: no data is read.
    available = sorted(d for d, n in lh.table(primary_name).rows_per_partition(PARTITION_COLUMN).items() if n)
    # A day's rows feed the history of the HISTORY_DAYS after it: those that exist are rebuilt too
    # (the outcomes of a day arrive after it, and tomorrow's features read them).
    wanted = sorted(set(dates) | affected_days(dates, features.history_days, available)) if dates is not None else available
    present = set(available)
    days = [d for d in wanted if d in present]
    absent = [d for d in wanted if d not in present]
    if absent:
        log.info(f"[features] {len(absent)} date(s) have no rows in {primary_name}, skipped: {_dates_text(absent)}")
    summary: dict = {"dates": len(days), "skipped_dates": [d.isoformat() for d in absent]}
    if not days:
        summary.update(features=0, unlabelled=0, spec="unchanged", model_input={},
                       seconds=time.time() - started)
        return summary

    rows, unlabelled = _write_features(lh, features, days, dataset)
    summary.update(features=rows, unlabelled=unlabelled)
    log.info(f"[features] {FEATURES}: {rows:,} rows for {_dates_text(days)} ({unlabelled:,} without an "
        f"outcome yet, left out of {MODEL_INPUT}) in {time.time() - started:.1f}s")

    spec_started = time.time()
    labelled, features_version = _labelled(lh)
    fitted_on = training_files(lh.table(FEATURES), splits["train"])
    reason, spec = (("asked to refit", None) if refit_spec else
                    _refit_reason(lh.table(FEATURE_SPEC), labelled, splits["train"], columns, fitted_on))
    if reason:
        spec = spec if spec is not None else fit_feature_spec(labelled, splits["train"], columns, fitted_on)
        lh.table(FEATURE_SPEC).write(spec, mode="overwrite", schema_mode="overwrite",
                                   description=f"feature spec fitted on {_window_text(splits['train'])}: {reason}")
    spec_version = lh.table(FEATURE_SPEC).version()
    spec_df = lh.table(FEATURE_SPEC).read(version=spec_version)
    spec_list = spec_rows(spec_df)
    summary.update(spec="fitted" if reason else "reused", spec_columns=len(spec_list))
    fitted_on = f"{spec_list[0]['train_rows']:,} training rows of {_window_text(splits['train'])}"
    log.info(f"[features] {FEATURE_SPEC}: {len(spec_list)} model columns "
        + (f"fitted on {fitted_on} ({reason})" if reason else f"reused (fitted on {fitted_on})")
        + f" in {time.time() - spec_started:.1f}s")

    model_started = time.time()
    outside = [d for d in days if not any(start <= d <= end for start, end in splits.values())]
    if outside:
        log.info(f"[features] {len(outside)} date(s) lie in no split of pipeline.splits, so not in "
            f"{MODEL_INPUT}: {_dates_text(outside)}")
    # After a refit every split was encoded with the old spec, so all of them are rewritten.
    touched = list(splits) if reason else [
        name for name, (start, end) in splits.items() if any(start <= d <= end for d in days)]
    origin = built_from({FEATURES: features_version, FEATURE_SPEC: spec_version})
    by_split = _write_model_input(lh, dataset.key, labelled, spec_df, origin, {n: splits[n] for n in touched},
                                  replace_all=bool(reason), row_group_rows=cfg.lakehouse.model_input_row_group_rows,
                                  ranks=cfg.training.num_proc)
    summary["model_input"] = by_split
    summary["seconds"] = time.time() - started
    split_text = " / ".join(f"{name} {by_split.get(name, 0):,}" for name in splits)
    log.info(f"[features] {MODEL_INPUT}: {sum(by_split.values()):,} rows ({split_text}), "
        f"rewrote {', '.join(touched) or 'nothing'} in {time.time() - model_started:.1f}s; "
        f"gold total {summary['seconds']:.1f}s")
    return summary


def affected_days(dates, history_days: int, available: list[date]) -> set[date]:
    """The days of `available` whose features read a day of `dates`: the `history_days` after it."""
    after = {d + timedelta(days=i) for d in dates for i in range(1, history_days + 1)}
    return after & set(available)


def model_columns(cfg) -> list[ModelColumn]:
    """The dataset's model columns, with the missing-value policies of its YAML."""
    return features_for(dataset_for(cfg)).model_columns


def _write_features(lh, features, days: list[date], dataset) -> tuple[int, int]:
    """Compute the features of `days` from silver, overwrite their partitions; (rows, unlabelled)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    # History windows look back HISTORY_DAYS before the first date; later days are never read.
    first = days[0] - timedelta(days=features.history_days)
    sources, versions = {}, {}
    for name, table in features.sources.items():
        # Each silver table is read at one version, which every row built names in `_built_from`.
        versions[table] = lh.table(table).version()
        df = lh.table(table).read(version=versions[table])
        if name in features.dated_sources:
            df = df.filter(F.col("date").between(F.lit(first), F.lit(days[-1])))
        sources[name] = df
    # The table layer checks the rows before writing them: computed once, not twice.
    built = (features.build(sources, days, dataset).withColumn(BUILT_FROM, F.lit(built_from(versions)))
             .persist(StorageLevel.MEMORY_AND_DISK))
    try:
        # schema_mode="merge": a features module that gains a column evolves the table (older days
        # read it as null) instead of failing until gold is deleted by hand.
        lh.table(FEATURES).write(built, mode="overwrite", partition_by=lh.daily_partition_by(),
                                 partitions={PARTITION_COLUMN: days}, schema_mode="merge",
                                 order_by=[PARTITION_COLUMN, dataset.key],
                                 description=f"features for {_dates_text(days)}")
        counts = built.agg(F.count(F.lit(1)).alias("rows"),
                           F.sum(F.col(TARGET).isNull().cast("long")).alias("unlabelled")).first()
    finally:
        built.unpersist()
    return int(counts["rows"]), int(counts["unlabelled"] or 0)


def _labelled(lh):
    """Every row of gold.features whose outcome is known, at one version of the table: what the
    spec and the model see. `_built_from` names that version and the spec's (`with_origin`)."""
    from pyspark.sql import functions as F

    table = lh.table(FEATURES)
    version = table.version()
    return table.read(version=version).filter(F.col(TARGET).isNotNull()), version


def _write_model_input(lh, key: str, labelled, spec_df, origin: str, splits: dict[str, tuple[date, date]],
                       replace_all: bool, row_group_rows: int, ranks: int = 1) -> dict[str, int]:
    """Rewrite the `splits` of gold.model_input (the whole table when `replace_all`) in row groups of
    at most `row_group_rows`, the unit Petastorm shards training by; rows per split. Each row keeps
    its key, `date` and `_built_from` (`origin`: the features and spec versions it was encoded from),
    the way back to its gold.features row and that row's provenance.

    Each of the `ranks` training processes needs row groups of its own in every split: a split
    too small for two per rank at that size (a few seasons of football matches) gets the whole
    write in smaller ones.
    """
    from pyspark.sql import functions as F

    table = lh.table(MODEL_INPUT)
    if splits:
        windows = F.lit(False)
        for start, end in splits.values():
            windows = windows | F.col("date").between(F.lit(start), F.lit(end))
        rows = labelled.filter(windows).withColumn(SPLIT, split_column(splits))
        sizes = [r["count"] for r in rows.groupBy(SPLIT).count().collect()]
        if sizes and min(sizes) < 2 * ranks * row_group_rows:
            row_group_rows = max(1, min(sizes) // (2 * ranks))
        rows = apply_feature_spec(rows, spec_df, key=key, keep=[SPLIT]).withColumn(BUILT_FROM, F.lit(origin))
        description = f"model input for {', '.join(splits)}"
        if replace_all:
            # A new spec may bring other columns: the whole table is replaced, schema included.
            table.write(rows, mode="overwrite", partition_by=[SPLIT], schema_mode="overwrite",
                        description=description, row_group_rows=row_group_rows, order_by=["date", key])
        else:
            # schema_mode="merge": a table written before rows named their origin gains `_built_from`.
            table.write(rows, mode="overwrite", partition_by=[SPLIT], partitions={SPLIT: list(splits)},
                        schema_mode="merge", description=description, row_group_rows=row_group_rows,
                        order_by=["date", key])
    return table.rows_per_partition(SPLIT) if table.exists() else {}


def training_files(features_table, train_window: tuple[date, date]) -> str:
    """What the spec is fitted on: the features table's version and a digest of the data files of
    the training window's partitions. A rebuilt training day has new files, so a new digest."""
    import hashlib

    files = features_table.files_between(PARTITION_COLUMN, *train_window)
    digest = hashlib.sha256("\n".join(f.rsplit("/", 2)[-2] + "/" + f.rsplit("/", 1)[-1] for f in files).encode())
    return f"{FEATURES} v{features_table.version()} files {digest.hexdigest()[:16]}"


def _refit_reason(spec_table, labelled, train_window, columns, fitted_on: str):
    """(why the stored spec no longer holds, the spec fitted to find out or None); the reason is
    None when the stored spec holds."""
    from pyspark.sql import functions as F

    if not spec_table.exists():
        return "no spec yet", None
    stored = spec_rows(spec_table.read())
    if not stored:
        return "the stored spec is empty", None
    start, end = train_window
    if (stored[0]["train_start"], stored[0]["train_end"]) != (start, end):
        return (f"training window changed from {_window_text((stored[0]['train_start'], stored[0]['train_end']))} "
                f"to {_window_text(train_window)}"), None
    if _declared(columns) != {(r.get("source"), r.get("transform"), r.get("fill_with")) for r in stored}:
        return "the model columns or their missing-value policies changed", None
    before = stored[0].get("fitted_on")
    if before is None:
        return "the stored spec does not record the files it was fitted on", None
    if before.split(" files ")[-1] != fitted_on.split(" files ")[-1]:
        # The training window's files were rewritten: a rebuilt day, or another day of its month
        # (a month is one partition). Their values may differ where the counts do not, so the spec
        # is fitted again (one aggregation) and kept only if it differs from the stored one.
        spec = fit_feature_spec(labelled, train_window, columns, fitted_on)
        if _same_statistics(stored, spec_rows(spec)):
            log.info(f"[features] {FEATURE_SPEC}: the training window's files were rewritten "
                     f"({before.split(' files ')[0]} -> {fitted_on.split(' files ')[0]}) with the same statistics")
            return None, None
        return (f"the training window's rows changed: fitted on {before.split(' files ')[0]}, "
                f"rewritten by {fitted_on.split(' files ')[0]}"), spec
    # A spec fitted while the training window was still filling would otherwise stay frozen.
    rows = labelled.filter(F.col("date").between(F.lit(start), F.lit(end))).count()
    if rows != stored[0]["train_rows"]:
        return f"training rows changed from {stored[0]['train_rows']:,} to {rows:,}", None
    return None, None


def _same_statistics(stored: list[dict], fitted: list[dict]) -> bool:
    """Whether two specs encode every column alike (means and deviations up to summation order)."""
    import math

    def close(a, b):
        return (a is None and b is None) or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12))

    if [r["name"] for r in stored] != [r["name"] for r in fitted] or stored[0]["train_rows"] != fitted[0]["train_rows"]:
        return False
    return all(list(a["vocabulary"] or []) == list(b["vocabulary"] or []) and a["vocab_size"] == b["vocab_size"]
               and close(a["mean"], b["mean"]) and close(a["std"], b["std"]) and close(a["fill"], b["fill"])
               for a, b in zip(stored, fitted))


def _declared(columns: Sequence[ModelColumn]) -> set[tuple]:
    declared = set()
    for c in columns:
        if c.kind == "categorical":
            declared.add((c.source, "vocabulary", None))
        elif c.kind == "sequence":
            declared.add((c.source, "standardize_sequence", None))
        else:
            declared.add((c.source, "standardize", c.fill))
            if c.flag:
                declared.add((c.source, "missing_flag", None))
    return declared


def _dates_text(days: Sequence[date]) -> str:
    if not days:
        return "none"
    if len(days) == 1:
        return days[0].isoformat()
    return f"{days[0].isoformat()}..{days[-1].isoformat()} ({len(days)} days)"


def _window_text(window: tuple[date, date]) -> str:
    return f"{window[0].isoformat()}..{window[1].isoformat()}"
