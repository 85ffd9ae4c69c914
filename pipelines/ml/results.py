"""Results written back as Delta tables: predictions, metrics and training history.

`results.predictions` is partitioned by date and written by partition overwrite, so scoring a day
again replaces its rows. `results.metrics` and `results.training_history` are keyed by run and
model; writing them again for the same run replaces that run's rows (overwrite of the run's
partition), so a resumed or repeated run never duplicates them. Live metrics belong to the run
date rather than the run: evaluating a date again (a resumed or forced run, with a new run id)
replaces the live rows that earlier runs of that date wrote.
"""
from __future__ import annotations

from datetime import date, datetime, timezone

from pipelines.catalog import HISTORY, METRICS, MODEL_INPUT, PARTITION_COLUMN, PREDICTIONS
from pipelines.ml.evaluation import binary_metrics
from pipelines.ops.runs import run_id_prefix

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
    lakehouse.table(PREDICTIONS).write(df, mode="overwrite", partition_by=[PARTITION_COLUMN],
                                       partitions={PARTITION_COLUMN: [d.isoformat() for d in dates]})
    df.unpersist()
    return rows


def write_metrics(lakehouse, run_id: str, rows: list[dict]) -> None:
    """Replace this run's metric rows for the (model, split) pairs given, in one commit."""
    lakehouse.table(METRICS).replace_rows([
        {**r, "run_id": run_id, "created_at": datetime.now(timezone.utc)} for r in rows],
        METRICS_SCHEMA, key=("run_id", "model_version", "model", "split"))


def write_live_metrics(lakehouse, run_id: str, run_date, rows: list[dict]) -> None:
    """This run's live metrics (split "live"), replacing those of every earlier run of the same date."""
    prefix = run_id_prefix(run_id.split("-", 1)[0], run_date)
    lakehouse.table(METRICS).replace_rows([
        {**r, "split": "live", "run_id": run_id, "created_at": datetime.now(timezone.utc)} for r in rows],
        METRICS_SCHEMA, key=("run_id", "model_version", "model", "split"),
        drop=lambda r: r["split"] == "live" and r["run_id"].startswith(prefix))


def write_history(lakehouse, run_id: str, model_version: str, history: list[dict]) -> None:
    # Names as pipelines.ml.training records them → names of the table's columns.
    names = {"epoch": "epoch", "loss": "loss", "auc": "auc", "val_loss": "val_loss", "val_auc": "val_auc",
             "samples_per_sec": "samples_per_second", "seconds": "seconds", "lr": "learning_rate"}
    rows = [{"run_id": run_id, "model_version": model_version,
             **{column: (None if h.get(key) is None else (int(h[key]) if key == "epoch" else float(h[key])))
                for key, column in names.items()}}
            for h in history]
    lakehouse.table(HISTORY).replace_rows(rows, HISTORY_SCHEMA, key=("run_id", "model_version", "epoch"))


def read_metrics(lakehouse, run_id: str | None = None) -> list[dict]:
    table = lakehouse.table(METRICS)
    if not table.exists():
        return []
    df = table.read()
    if run_id:
        df = df.filter(df.run_id == run_id)
    return [r.asDict() for r in df.orderBy("split", "model").collect()]


def live_metrics(lakehouse, first_day: date, last_day: date, threshold: float) -> list[dict]:
    """Metrics of the predictions for `first_day`..`last_day` whose outcomes have arrived (in
    `gold.model_input`), per model version that scored them."""
    from pyspark.sql import functions as F

    preds = lakehouse.table(PREDICTIONS)
    if not preds.exists():
        return []
    outcomes = lakehouse.table(MODEL_INPUT).read().select("flight_id", "label")
    scored = (preds.read().filter((F.col("day") >= int(first_day.strftime("%Y%m%d")))
                                  & (F.col("day") <= int(last_day.strftime("%Y%m%d"))))
              .join(outcomes, "flight_id"))
    rows = []
    for (model_version,) in scored.select("model_version").distinct().collect():
        subset = scored.filter(F.col("model_version") == model_version)
        if subset.limit(1).count() == 0:
            continue
        m = binary_metrics(subset, threshold=threshold)
        rows.append({"model_version": model_version, "model": "dnn", **m.as_dict()})
    return rows
