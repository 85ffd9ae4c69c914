"""The nightly report: one HTML page with PNG plots a person can read in a minute, gathered from
the tables (`plots` draws, `page` writes the HTML).

Everything here is aggregated in Spark first; only small summaries reach the driver.

    >>> build_report(cfg, spark, lakehouse, run_id, date(2013, 12, 30))
    PosixPath('.../lakehouse/reports/nightly-2013-12-30-.../index.html')
"""
from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

from pipelines import catalog
from pipelines.config.settings import REGRESSION
from pipelines.datasets import dataset_for
from pipelines.ml import registry, results
from pipelines.ml.training.plan import ROC_FILE
from pipelines.report import plots
from pipelines.report.page import write_report


def build_report(cfg, spark, lakehouse, run_id: str, run_date: date) -> Path:
    """Write `<root>/reports/<run_id>/index.html` and its plots; return the page's path."""
    import pandas as pd
    from pyspark.sql import functions as F

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
    # What each head is measured by: a classifier's ranking and decisions, a regression's errors.
    measure = "mae" if regression else "auc"
    measured = (("rows", "mae", "rmse", "mape") if regression else
                ("rows", "auc", "log_loss", "accuracy", "precision", "recall", "f1"))

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
        history = lakehouse.table(catalog.HISTORY).read().filter(F.col("model_version") == model.model_version)
        rows = [r.asDict() for r in history.orderBy("epoch").collect()]
        if rows:
            images["Training curves"] = plots.plot_training_curves(rows, out / "training_curves.png", measure)
            tables["Training history"] = [{k: r.get(k) for k in ("epoch", "loss", measure, "val_loss", f"val_{measure}",
                                                                "samples_per_second")} for r in rows]
        metrics = [m for m in every_metric if m["model_version"] == model.model_version]
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

    quality = lakehouse.table(catalog.DATA_QUALITY)
    if quality.exists():
        dq = (quality.read().groupBy("date", "rule").agg(F.sum("rows_failed").alias("rows_failed"))
              .orderBy("date").toPandas())
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


def review_section(lakehouse, model_version: str, out: Path, images: dict, tables: dict) -> None:
    """The reviewer's evaluation of `model_version` (`pipelines.ml.review`'s tables): the confusion
    matrices, reliability curves, AUC by slice and permutation importance."""
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
        images["AUC by slice on the test window"] = plots.plot_slices(slices, out / "slices.png")
    importance = rows_of(catalog.IMPORTANCE)
    if importance is not None:
        images["Permutation importance on the validation window (AUC drop)"] = plots.plot_importance(
            importance, out / "importance.png")


def feature_drift(lakehouse, run_date: date):
    """Standardised shift of each numeric feature's mean between the latest two days up to the run date."""
    import pandas as pd
    from pyspark.sql import functions as F

    features, spec = lakehouse.table(catalog.FEATURES), lakehouse.table(catalog.FEATURE_SPEC)
    if not (features.exists() and spec.exists()):
        return None
    numeric = [r.asDict() for r in spec.read().filter(F.col("kind") == "numeric").collect()]
    df = features.read().filter(F.col("date") <= F.lit(run_date))
    # One row per source column: its `_missing` flag column shares the source but is no drift signal.
    cols = [r for r in numeric if r["transform"] == "standardize" and r["source"] in df.columns]
    days = [r["date"] for r in df.select("date").distinct().orderBy(F.desc("date")).limit(2).collect()]
    if len(days) < 2 or not cols:
        return None
    means = (df.filter(F.col("date").isin(days)).groupBy("date")
             .agg(*[F.avg(r["source"]).alias(r["source"]) for r in cols]).toPandas().set_index("date"))
    latest, previous = days
    shift = [(r["source"], float((means.loc[latest, r["source"]] - means.loc[previous, r["source"]]) / (r["std"] or 1.0)))
             for r in cols if pd.notna(means.loc[latest, r["source"]]) and pd.notna(means.loc[previous, r["source"]])]
    return pd.DataFrame(shift, columns=["feature", "shift"]), previous.isoformat(), latest.isoformat()
