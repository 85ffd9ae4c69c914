"""Results written back as Delta tables: predictions, metrics and training history.

`results.predictions` is partitioned by date and written by partition overwrite, so scoring a day
again replaces its rows. `results.metrics` and `results.training_history` are keyed by run and
model; writing them again for the same run replaces that run's rows (overwrite of the run's
partition), so a resumed or repeated run never duplicates them. Live metrics belong to the date
they measure: one row per date and model version, written once that date's outcomes are in.
"""
from __future__ import annotations

import math
from datetime import date, datetime, timezone

from pipelines.catalog import FEATURES, HISTORY, METRICS, PARTITION_COLUMN, PREDICTIONS
from pipelines.ml.evaluation import binary_metrics
from pipelines.ml.regression import regression_metrics
from pipelines.stages.gold.spec import LABEL, TARGET

# `date`: the day a live metric row measures (the predictions of that day against its outcomes);
# null for the train, validation and test rows of a training run. `mae`, `rmse` and `mape` are the
# regression head's (pipelines.ml.regression), null on a classifier's rows (and its AUC columns on theirs).
METRICS_SCHEMA = ("run_id string, model_version string, model string, split string, date date, rows long, "
                  "positives long, auc double, log_loss double, accuracy double, precision double, recall double, "
                  "f1 double, threshold double, created_at timestamp, mae double, rmse double, mape double")
# The columns a model's scores add to `results.predictions`: a classifier's calibrated score and
# decision, or a regression model's prediction in the target's units.
CLASSIFICATION_OUTPUTS = ("score", "predicted_label")
REGRESSION_OUTPUTS = ("prediction",)
# `auc` for the classification head, `mae` for the regression head (null on the other's rows).
HISTORY_SCHEMA = ("run_id string, model_version string, epoch int, loss double, auc double, val_loss double, "
                  "val_auc double, samples_per_second double, seconds double, learning_rate double, "
                  "mae double, val_mae double")


def write_predictions(lakehouse, scored, key: str, model_version: str, run_id: str, versions: dict) -> int:
    """Write scored rows (`key`, day, score, predicted_label; or `key`, day, prediction from a
    regression model) for the days they cover, with the model version and the versions they were
    scored from (`versions`: feature_spec_version and serving_input_version, as
    `pipelines.ml.scoring.score_days` returns them).

    Returns the number of rows written. The `date` partition column comes from `day` (yyyymmdd).
    A dataset's predictions hold one head's columns: a dataset whose head changes starts a new
    `results.predictions` (`lakehouse-dl` refuses to mix them, naming the columns).
    """
    from pyspark.sql import functions as F

    outputs = list(REGRESSION_OUTPUTS if set(REGRESSION_OUTPUTS) <= set(scored.columns) else CLASSIFICATION_OUTPUTS)
    table = lakehouse.table(PREDICTIONS)
    if table.exists():
        held = set(table.schema().fieldNames())
        if not set(outputs) <= held:
            raise ValueError(f"{PREDICTIONS} holds {', '.join(sorted(held & {*REGRESSION_OUTPUTS, *CLASSIFICATION_OUTPUTS}))}"
                             f" from the other head; this model writes {', '.join(outputs)}: the dataset's "
                             f"prediction.head changed. Move {table.path} aside to start its predictions again")

    df = (scored
          .withColumn("date", F.to_date(F.col("day").cast("string"), "yyyyMMdd"))
          .withColumn("model_version", F.lit(model_version))
          .withColumn("feature_spec_version", F.lit(int(versions["feature_spec_version"])).cast("long"))
          .withColumn("serving_input_version", F.lit(int(versions["serving_input_version"])).cast("long"))
          .withColumn("run_id", F.lit(run_id))
          .withColumn("scored_at", F.lit(datetime.now(timezone.utc)).cast("timestamp"))
          .select(key, "day", "date", *outputs, "model_version", "feature_spec_version",
                  "serving_input_version", "run_id", "scored_at")
          .cache())
    dates = sorted(r["date"] for r in df.select("date").distinct().collect())
    if not dates:
        df.unpersist()
        return 0
    rows = df.count()
    lakehouse.table(PREDICTIONS).write(df, mode="overwrite", partition_by=lakehouse.daily_partition_by(),
                                       partitions={PARTITION_COLUMN: [d.isoformat() for d in dates]})
    df.unpersist()
    return rows


def write_metrics(lakehouse, run_id: str, rows: list[dict]) -> None:
    """Replace this run's metric rows for the (model, split) pairs given, in one commit."""
    lakehouse.table(METRICS).replace_rows([
        {**r, "run_id": run_id, "created_at": datetime.now(timezone.utc)} for r in rows],
        METRICS_SCHEMA, key=("run_id", "model_version", "model", "split"))


def write_live_metrics(lakehouse, run_id: str, rows: list[dict]) -> None:
    """Live metrics (split "live"): one row per date and model version (`rows` carry `date`),
    replacing any row of the same date and model version."""
    lakehouse.table(METRICS).replace_rows([
        {**r, "split": "live", "run_id": run_id, "created_at": datetime.now(timezone.utc)} for r in rows],
        METRICS_SCHEMA, key=("split", "date", "model_version", "model"))


def write_history(lakehouse, run_id: str, model_version: str, history: list[dict]) -> None:
    # Names as pipelines.ml.training records them → names of the table's columns.
    names = {"epoch": "epoch", "loss": "loss", "auc": "auc", "val_loss": "val_loss", "val_auc": "val_auc",
             "samples_per_sec": "samples_per_second", "seconds": "seconds", "lr": "learning_rate",
             "mae": "mae", "val_mae": "val_mae"}
    rows = [{"run_id": run_id, "model_version": model_version,
             **{column: (None if h.get(key) is None else (int(h[key]) if key == "epoch" else float(h[key])))
                for key, column in names.items()}}
            for h in history]
    lakehouse.table(HISTORY).replace_rows(rows, HISTORY_SCHEMA, key=("run_id", "model_version", "epoch"))


def read_metrics(lakehouse, run_id: str | None = None) -> list[dict]:
    table = lakehouse.table(METRICS)
    if not table.exists():
        return []
    # Read on the driver: no Spark job for a table that gains rows every night.
    rows = [r for r in table.to_arrow().to_pylist() if not run_id or r["run_id"] == run_id]
    return sorted(rows, key=lambda r: (r["split"], r["model"]))


def live_metrics(lakehouse, key: str, through: date, thresholds: dict[str, float] | float,
                 default_threshold: float = 0.5, since: date | None = None) -> list[dict]:
    """Metrics of the predictions of each date up to `through` (from `since`, when given: the
    files of those days alone are read) whose outcomes have arrived (a
    `label` in `gold.features`, joined on the dataset's `key`), per date and model version, for the pairs that have no
    live metrics yet: each date is measured once, when its outcomes are in. Each model version's
    rows are labelled at the threshold it scored them with (`thresholds`, by model version, as
    `registry.served_thresholds` gives them; `default_threshold` for a version it lacks)."""
    if not isinstance(thresholds, dict):
        thresholds, default_threshold = {}, float(thresholds)
    from pyspark.sql import functions as F

    preds = lakehouse.table(PREDICTIONS)
    if not preds.exists():
        return []
    done = set()
    if lakehouse.table(METRICS).exists():
        done = {(r["date"], r["model_version"]) for r in
                lakehouse.table(METRICS).to_arrow(["split", "date", "model_version"]).to_pylist() if r["split"] == "live"}

    def read(name: str):
        if since is None:
            return lakehouse.table(name).read().filter(F.col(PARTITION_COLUMN) <= F.lit(through))
        return lakehouse.table(name).read(between=(PARTITION_COLUMN, since, through))

    predictions = read(PREDICTIONS)
    # A regression model's predictions are measured against the target, in its units.
    outcome = TARGET if set(REGRESSION_OUTPUTS) <= set(predictions.columns) else LABEL
    outcomes = read(FEATURES).filter(F.col(outcome).isNotNull()).select(key, outcome)
    scored = predictions.join(outcomes, key)
    pairs = sorted((r[PARTITION_COLUMN], r["model_version"]) for r in
                   scored.select(PARTITION_COLUMN, "model_version").distinct().collect())
    rows = []
    for day, model_version in pairs:
        if (day, model_version) in done:
            continue
        subset = scored.filter((F.col(PARTITION_COLUMN) == F.lit(day)) & (F.col("model_version") == model_version))
        if outcome == TARGET:
            r = regression_metrics(subset, "prediction", TARGET)
            m = {"rows": r.rows, "mae": r.mae, "rmse": r.rmse, "mape": None if math.isnan(r.mape) else r.mape}
        else:
            m = binary_metrics(subset, threshold=thresholds.get(model_version, default_threshold)).as_dict()
        rows.append({"model_version": model_version, "model": "dnn", "date": day, **m})
    return rows
