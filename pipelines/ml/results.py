"""Results written back as Delta tables: predictions, metrics and training history.

`results.predictions` is partitioned by date and written by partition overwrite, so scoring a day
again replaces its rows. `results.metrics` and `results.training_history` are keyed by run and
model; writing them again for the same run replaces that run's rows (overwrite of the run's
partition), so a resumed or repeated run never duplicates them. Live metrics belong to the run
date rather than the run: evaluating a date again (a resumed or forced run, with a new run id)
replaces the live rows that earlier runs of that date wrote.
"""
from __future__ import annotations

from datetime import datetime, timezone

PREDICTIONS = "results.predictions"
METRICS = "results.metrics"
HISTORY = "results.training_history"

METRICS_SCHEMA = ("run_id string, model_version string, model string, split string, rows long, positives long, "
                  "auc double, log_loss double, accuracy double, precision double, recall double, f1 double, "
                  "threshold double, created_at timestamp")
HISTORY_SCHEMA = ("run_id string, model_version string, epoch int, loss double, auc double, val_loss double, "
                  "val_auc double, samples_per_second double, seconds double, learning_rate double")


def write_predictions(lakehouse, scored, model_version: str, run_id: str, feature_version: int) -> int:
    """Write scored rows (flight_id, day, score, predicted_label) for the days they cover.

    Returns the number of rows written. The `date` partition column comes from `day` (yyyymmdd).
    """
    from pyspark.sql import functions as F

    df = (scored
          .withColumn("date", F.to_date(F.col("day").cast("string"), "yyyyMMdd"))
          .withColumn("model_version", F.lit(model_version))
          .withColumn("run_id", F.lit(run_id))
          .withColumn("feature_table_version", F.lit(int(feature_version)).cast("long"))
          .withColumn("scored_at", F.lit(datetime.now(timezone.utc)).cast("timestamp"))
          .select("flight_id", "day", "date", "score", "predicted_label", "model_version", "run_id",
                  "feature_table_version", "scored_at")
          .cache())
    dates = sorted(r["date"] for r in df.select("date").distinct().collect())
    if not dates:
        df.unpersist()
        return 0
    rows = df.count()
    lakehouse.table(PREDICTIONS).write(df, mode="overwrite", partition_by=["date"],
                                       partitions={"date": [d.isoformat() for d in dates]})
    df.unpersist()
    return rows


def write_metrics(lakehouse, run_id: str, rows: list[dict]) -> None:
    """Replace this run's metric rows for the (model, split) pairs given, in one commit."""
    replace_rows(lakehouse, METRICS, METRICS_SCHEMA, [
        {**r, "run_id": run_id, "created_at": datetime.now(timezone.utc)} for r in rows],
        key=("run_id", "model_version", "model", "split"))


def write_live_metrics(lakehouse, run_id: str, run_date, rows: list[dict]) -> None:
    """This run's live metrics (split "live"), replacing those of every earlier run of the same date."""
    from pipelines.runs import run_id_prefix

    prefix = run_id_prefix(run_id.split("-", 1)[0], run_date)
    replace_rows(lakehouse, METRICS, METRICS_SCHEMA, [
        {**r, "split": "live", "run_id": run_id, "created_at": datetime.now(timezone.utc)} for r in rows],
        key=("run_id", "model_version", "model", "split"),
        drop=lambda r: r["split"] == "live" and r["run_id"].startswith(prefix))


def write_history(lakehouse, run_id: str, model_version: str, history: list[dict]) -> None:
    # Names as pipelines.training records them → names of the table's columns.
    names = {"epoch": "epoch", "loss": "loss", "auc": "auc", "val_loss": "val_loss", "val_auc": "val_auc",
             "samples_per_sec": "samples_per_second", "seconds": "seconds", "lr": "learning_rate"}
    rows = [{"run_id": run_id, "model_version": model_version,
             **{column: (None if h.get(key) is None else (int(h[key]) if key == "epoch" else float(h[key])))
                for key, column in names.items()}}
            for h in history]
    replace_rows(lakehouse, HISTORY, HISTORY_SCHEMA, rows, key=("run_id", "model_version", "epoch"))


def replace_rows(lakehouse, name: str, schema: str, rows: list[dict], key: tuple, drop=None) -> None:
    """Keep every row whose `key` differs from the given rows', replace the others: one atomic commit.
    `drop(row)`, when given, also removes the existing rows it is true for.

    For the small bookkeeping tables (tens of rows per run), so the rewrite goes through the driver.
    """
    table = lakehouse.table(name)
    replaced = {tuple(r[k] for k in key) for r in rows}
    kept = []
    if table.exists():
        kept = [r.asDict() for r in table.read().collect()
                if tuple(r[k] for k in key) not in replaced and not (drop and drop(r.asDict()))]
    table.write(lakehouse.spark.createDataFrame(kept + rows, schema), mode="overwrite")


def read_metrics(lakehouse, run_id: str | None = None) -> list[dict]:
    table = lakehouse.table(METRICS)
    if not table.exists():
        return []
    df = table.read()
    if run_id:
        df = df.filter(df.run_id == run_id)
    return [r.asDict() for r in df.orderBy("split", "model").collect()]
