"""The nightly report: one HTML page with PNG plots a person can read in a minute, gathered from
the tables (`plots` draws, `page` writes the HTML).

Everything here is aggregated in Spark first; only small summaries reach the driver.

    >>> build_report(cfg, spark, lakehouse, run_id, date(2013, 12, 30))
    PosixPath('.../lakehouse/reports/nightly-2013-12-30-.../index.html')
"""
from __future__ import annotations

import hashlib
import json
import os
from datetime import date, timedelta
from pathlib import Path

from pipelines import catalog
from pipelines.catalog import PARTITION_COLUMN
from pipelines.config.settings import REGRESSION
from pipelines.datasets import dataset_for
from pipelines.ml import registry, results
from pipelines.ml.training.plan import ROC_FILE
from pipelines.report import plots
from pipelines.report.page import SECTION_FILE, write_report

# Feature drift compares the latest two days of this many days before the run date, read from
# their files alone (a year's `gold.features` is not read each night to find them).
DRIFT_LOOKBACK_DAYS = 35


def build_report(cfg, spark, lakehouse, run_id: str, run_date: date) -> Path:
    """Write `<root>/reports/<run_id>/index.html` and its plots; return the page's path."""
    import pandas as pd

    out = Path(cfg.lakehouse.root) / "reports" / run_id
    out.mkdir(parents=True, exist_ok=True)
    images: dict[str, Path] = {}
    # The model that serves; before any is blessed, the latest candidate, whose fallback baseline serves.
    model = registry.blessed(lakehouse) or registry.latest(lakehouse)
    dataset = dataset_for(cfg)
    regression = model is not None and registry.head_of(model) == REGRESSION
    summary = [("dataset", f"{dataset.name}: {dataset.description}"),
               ("target", dataset.target) if regression else ("label", dataset.label),
               ("run", run_id), ("run date", run_date.isoformat())]
    tables: dict[str, list[dict]] = {}
    every_metric = results.read_metrics(lakehouse)   # one read for the model's rows and the live ones
    if model is not None:
        blessed = model.status == "blessed"
        summary += [("blessed model", f"{model.model_version} ({model.reason})") if blessed else
                    ("latest model", f"{model.model_version}, rejected ({model.reason}); no network is blessed "
                                     f"yet, the {registry.fallback_baseline(model)} fitted beside it serves"),
                    ("model path", model.path),
                    ("trained on", f"{model.training_table} v{model.training_version}"),
                    ("head", "regression: the target predicted, in its units") if regression else
                    ("decision", registry.decision_of(model, None if blessed else registry.fallback_baseline(model))
                     .describe())]
        # Its measures when it was trained (its live rows are the live table's, below).
        metrics = [m for m in every_metric if m["model_version"] == model.model_version and m["split"] != "live"]
        model_section(cfg, lakehouse, model, metrics, out, images, tables, regression)

    quality = lakehouse.table(catalog.DATA_QUALITY)
    if quality.exists():
        # Read on the driver: three small columns of a table that gains rows every night.
        dq = (quality.to_pandas(["date", "rule", "rows_failed"]).groupby(["date", "rule"], as_index=False)
              ["rows_failed"].sum().sort_values(["date", "rule"]))
        dq["date"] = pd.to_datetime(dq["date"])
        images["Data quality over time"] = plots.plot_quality(dq, out / "data_quality.png")

    drift = feature_drift(lakehouse, run_date)
    if drift is not None:
        frame, day_a, day_b = drift
        images["Feature drift"] = plots.plot_drift(frame, day_a, day_b, out / "drift.png")

    live = sorted((m for m in every_metric if m["split"] == "live" and m.get("date")
                   and m["date"] <= run_date), key=lambda m: (m["date"], m["model_version"]), reverse=True)
    if live:
        shown = ("date", "model_version", "rows", *(("mae", "rmse") if regression else
                                                      ("auc", "accuracy", "precision", "recall")))
        tables["Live metrics: each day's predictions against its outcomes (latest 14)"] = [
            {k: m[k] for k in shown} for m in live[:14]]
    tables["Tables"] = [{"table": t.name, "version": t.version, "rows": t.rows, "files": t.files}
                        for t in lakehouse.tables()]
    return write_report(out, f"lakehouse-dl nightly {run_date}: {dataset.name}", summary, tables, images)


def model_section(cfg, lakehouse, model, metrics: list[dict], out: Path, images: dict, tables: dict,
                  regression: bool) -> None:
    """The plots and tables of `model` (a registry entry) that change only when a model is trained:
    its training curves, its metrics against the baselines, ROC, calibration and the review.
    Drawn once per model version and versions of the tables they come from, kept in
    `<root>/reports/models/`, and copied into each night's report: a quiet night draws none."""
    import shutil

    sources = [catalog.HISTORY, catalog.CONFUSION, catalog.CALIBRATION, catalog.SLICES,
               catalog.IMPORTANCE]
    versions = [lakehouse.table(n).version() if lakehouse.table(n).exists() else -1 for n in sources]
    key = hashlib.sha256(json.dumps([model.model_version, model.path, versions, metrics],
                                    default=str, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(cfg.lakehouse.root) / "reports" / "models" / key
    index = cache / "section.json"
    if not index.exists():
        drawn_images: dict[str, Path] = {}
        drawn_tables: dict[str, list[dict]] = {}
        cache.mkdir(parents=True, exist_ok=True)
        draw_model_section(lakehouse, model, metrics, cache, drawn_images, drawn_tables, regression)
        written = cache / "section.json.tmp"
        written.write_text(json.dumps({"images": {k: Path(v).name for k, v in drawn_images.items()},
                                       "tables": drawn_tables}, default=_plain))
        written.replace(index)
    (out / SECTION_FILE).write_text(key)   # which section this report shows (what `maintain` keeps)
    section = json.loads(index.read_text())
    for caption, name in section["images"].items():
        images[caption] = Path(shutil.copy2(cache / name, out / name))
    tables.update(section["tables"])


def _plain(value):
    """A value of a plotted table as JSON holds it (numpy scalars, dates)."""
    return value.item() if hasattr(value, "item") else str(value)


def draw_model_section(lakehouse, model, metrics: list[dict], out: Path, images: dict, tables: dict,
                       regression: bool) -> None:
    """`model_section`'s drawing: reads the tables, writes the PNGs into `out`."""
    from pyspark.sql import functions as F

    measure = "mae" if regression else "auc"
    measured = (("rows", "mae", "rmse", "mape") if regression else
                ("rows", "auc", "log_loss", "accuracy", "precision", "recall", "f1"))
    history = lakehouse.table(catalog.HISTORY).read().filter(F.col("model_version") == model.model_version)
    rows = [r.asDict() for r in history.orderBy("epoch").collect()]
    if rows:
        images["Training curves"] = plots.plot_training_curves(rows, out / "training_curves.png", measure)
        tables["Training history"] = [{k: r.get(k) for k in ("epoch", "loss", measure, "val_loss", f"val_{measure}",
                                                            "samples_per_second")} for r in rows]
    tables["Model against baselines"] = [
        {"model": m["model"], "split": m["split"], **{k: m[k] for k in measured}}
        for m in sorted(metrics, key=lambda m: (m["split"], m["model"]))]
    if regression:
        images["Validation MAE: the network, the baselines and the naive forecasts"] = plots.plot_errors(
            {m["model"]: m["mae"] for m in metrics if m["split"] == "validation" and m["mae"] is not None},
            out / "validation_mae.png")
    roc_path = os.path.join(os.path.dirname(model.path), ROC_FILE)
    if os.path.exists(roc_path):
        with open(roc_path) as fh:
            roc = json.load(fh)
        images["ROC on the test window"] = plots.plot_roc(
            {k: (v["fpr"], v["tpr"], v["auc"]) for k, v in roc.items()}, out / "roc.png")
        if "dnn" in roc and not lakehouse.table(catalog.CALIBRATION).exists():
            cal = roc["dnn"]["calibration"]
            images["Calibration on the test window"] = plots.plot_calibration(
                cal["mean_score"], cal["observed"], out / "calibration.png")
    review_section(lakehouse, model.model_version, out, images, tables)


def review_section(lakehouse, model_version: str, out: Path, images: dict, tables: dict) -> None:
    """The reviewer's evaluation of `model_version` (`pipelines.ml.review`'s tables): the confusion
    matrices, reliability curves, AUC (the regression head: MAE) by slice and permutation importance."""
    from pyspark.sql import functions as F

    def rows_of(name: str):
        table = lakehouse.table(name)
        if not table.exists():
            return None
        frame = table.read().filter(F.col("model_version") == model_version).toPandas()
        return frame if len(frame) else None

    confusion = rows_of(catalog.CONFUSION)
    if confusion is not None:
        confusion = confusion.sort_values(["model", "rule"])
        tables["Confusion on the test window (decision: the model's own threshold; the rule's chosen on validation; fixed: the configured one)"] = [
            {k: r[k] for k in ("model", "rule", "chosen_on", "threshold", "tp", "fp", "fn", "tn", "precision", "recall", "f1")}
            for r in confusion.to_dict("records")]
        images["Confusion matrices on the test window"] = plots.plot_confusion(confusion, out / "confusion.png")
    calibration = rows_of(catalog.CALIBRATION)
    if calibration is not None:
        images["Reliability on the test window (Brier score and expected calibration error in the legend)"] = plots.plot_reliability(
            calibration, out / "reliability.png")
    slices = rows_of(catalog.SLICES)
    if slices is not None:
        # The regression head's rows have an MAE and no AUC.
        measure = "mae" if "mae" in slices and slices["auc"].isna().all() else "auc"
        images[f"{measure.upper()} by slice on the test window"] = plots.plot_slices(slices, out / "slices.png", measure)
    importance = rows_of(catalog.IMPORTANCE)
    if importance is not None:
        measure = "mae" if "mae_increase" in importance and importance["auc_drop"].isna().all() else "auc"
        images[f"Permutation importance on the validation window ({plots.IMPORTANCE_CHANGE[measure][1]})"] = plots.plot_importance(
            importance, out / "importance.png", measure=measure)


def feature_drift(lakehouse, run_date: date):
    """Standardised shift of each numeric feature's mean between the latest two days up to the run date."""
    import pandas as pd
    from pyspark.sql import functions as F

    features, spec = lakehouse.table(catalog.FEATURES), lakehouse.table(catalog.FEATURE_SPEC)
    if not (features.exists() and spec.exists()):
        return None
    numeric = [r for r in spec.to_arrow().to_pylist() if r["kind"] == "numeric"]
    # The last weeks' files first; the whole table only when they hold fewer than two days.
    for df in (features.read(between=(PARTITION_COLUMN, run_date - timedelta(days=DRIFT_LOOKBACK_DAYS), run_date)),
               features.read().filter(F.col(PARTITION_COLUMN) <= F.lit(run_date))):
        days = [r[0] for r in df.select(PARTITION_COLUMN).distinct().orderBy(F.desc(PARTITION_COLUMN)).limit(2).collect()]
        if len(days) == 2:
            break
    # One row per source column: its `_missing` flag column shares the source but is no drift signal.
    cols = [r for r in numeric if r["transform"] == "standardize" and r["source"] in df.columns]
    if len(days) < 2 or not cols:
        return None
    means = (df.filter(F.col(PARTITION_COLUMN).isin(days)).groupBy(PARTITION_COLUMN)
             .agg(*[F.avg(r["source"]).alias(r["source"]) for r in cols]).toPandas().set_index(PARTITION_COLUMN))
    latest, previous = days
    shift = [(r["source"], float((means.loc[latest, r["source"]] - means.loc[previous, r["source"]]) / (r["std"] or 1.0)))
             for r in cols if pd.notna(means.loc[latest, r["source"]]) and pd.notna(means.loc[previous, r["source"]])]
    return pd.DataFrame(shift, columns=["feature", "shift"]), previous.isoformat(), latest.isoformat()
