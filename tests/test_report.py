"""The report page: every plot is a real PNG and the page links them."""
import pandas as pd

from pipelines.report import plots
from pipelines.report.page import write_report


def test_report_writes_page_and_plots(tmp_path):
    history = [{"epoch": e, "loss": 0.6 - e / 20, "val_loss": 0.62 - e / 30, "auc": 0.6 + e / 50,
                "val_auc": 0.6 + e / 60} for e in range(1, 4)]
    images = {
        "Training curves": plots.plot_training_curves(history, tmp_path / "curves.png"),
        "ROC": plots.plot_roc({"dnn": ([0, 0.3, 1], [0, 0.6, 1], 0.65)}, tmp_path / "roc.png"),
        "Calibration": plots.plot_calibration([0.1, 0.5, 0.9], [0.15, 0.45, 0.8], tmp_path / "cal.png"),
        "Quality": plots.plot_quality(pd.DataFrame({"date": ["2013-01-01", "2013-01-02"], "rule": ["r", "r"],
                                                     "rows_failed": [1, 3]}), tmp_path / "dq.png"),
        "Drift": plots.plot_drift(pd.DataFrame({"feature": ["a", "b"], "shift": [0.1, -0.7]}),
                                   "2013-12-30", "2013-12-31", tmp_path / "drift.png"),
    }
    page = write_report(tmp_path, "Nightly 2013-12-31", [("model", "m1")],
                               {"metrics": [{"model": "dnn", "auc": 0.71}]}, images)
    text = page.read_text()
    for img in images.values():
        assert img.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert img.name in text
    assert "0.7100" in text and "Nightly 2013-12-31" in text


def test_the_review_plots_draw_every_model(tmp_path):
    confusion = pd.DataFrame([{"model": m, "rule": r, "threshold": t, "tp": 30, "fp": 20, "fn": 10, "tn": 140}
                              for m in ("dnn", "gbt") for r, t in (("f1", 0.31), ("fixed", 0.5))])
    calibration = pd.DataFrame([{"model": m, "bin": b, "mean_score": b / 10 + 0.05, "observed": b / 10, "brier": 0.15}
                                for m in ("dnn", "logreg") for b in range(10)])
    slices = pd.DataFrame([{"model": m, "slice": s, "value": v, "rows": 100, "auc": 0.7}
                           for m in ("dnn", "gbt") for s, vs in (("origin", ("EWR", "JFK")), ("hour_band", ("00-08",)))
                           for v in vs])
    importance = pd.DataFrame([{"model": m, "feature": f, "auc_drop": d, "base_auc": 0.72}
                               for m in ("dnn", "gbt") for f, d in (("carrier", 0.02), ("temp", -0.001))])
    for img in (plots.plot_confusion(confusion, tmp_path / "c.png"), plots.plot_reliability(calibration, tmp_path / "r.png"),
                plots.plot_slices(slices, tmp_path / "s.png"), plots.plot_importance(importance, tmp_path / "i.png")):
        assert img.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
