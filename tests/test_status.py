"""`lakehouse-dl status` without Spark: the feed gaps and the screen (pipelines.report.status).
The whole command on a real night is tested in tests/test_nightly.py."""
from __future__ import annotations

from datetime import date

from pipelines.report.status import _missing_days, _ranges, render_status


def test_missing_days_become_ranges():
    days = [date(2013, 1, 1), date(2013, 1, 2), date(2013, 1, 5), date(2013, 1, 9)]
    missing = _missing_days(days)
    assert missing == [date(2013, 1, 3), date(2013, 1, 4), date(2013, 1, 6), date(2013, 1, 7), date(2013, 1, 8)]
    assert _ranges(missing) == [(date(2013, 1, 3), date(2013, 1, 4)), (date(2013, 1, 6), date(2013, 1, 8))]
    assert _missing_days([]) == [] and _ranges([]) == []


def test_the_screen_names_what_a_person_looks_for():
    report = {
        "dataset": "demo", "lakehouse": "/tmp/lh",
        "runs": [{"job": "nightly", "run_date": "2013-03-20", "status": "failed", "seconds": 42.0,
                  "stages": {"ingest": 10.0}, "skipped": ["landing"], "error": "stage 'clean' failed: disk full\nmore"}],
        "serving": {"model_version": "v1/logreg", "model": "logreg", "trained_for": "2013-03-19",
                    "why": "no network is blessed yet", "decision": "threshold 0.3000 (f1, chosen on validation)",
                    "validation_auc": 0.66, "test_auc": None},
        "live": [{"date": "2013-03-19", "model_version": "v1/logreg", "rows": 900, "auc": 0.7, "accuracy": 0.8,
                  "precision": 0.5, "recall": 0.4}],
        "feeds": [{"source": "flights", "first": "2013-03-01", "last": "2013-03-20", "days": 18, "missing_days": 2,
                   "gaps": [["2013-03-05", "2013-03-06"]]}, {"source": "weather", "first": None, "last": None,
                                                             "days": 0, "missing_days": 0, "gaps": []}],
        "tables": [{"table": "silver.flights", "version": 3, "rows": 1234, "files": 1, "bytes": 2048}],
    }
    screen = render_status(report)
    assert "2013-03-20  nightly  failed" in screen and "error: stage 'clean' failed: disk full" in screen
    assert "skipped landing" in screen and "why: no network is blessed yet" in screen
    assert "validation AUC 0.6600" in screen and "test AUC" not in screen
    assert "2 missing: 2013-03-05..2013-03-06" in screen and "weather              no rows yet" in screen
    assert "silver.flights" in screen and "2.0 KB" in screen
