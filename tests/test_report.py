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
