"""The nightly report: `build` gathers from the tables, `plots` draws, `page` writes the HTML."""
from pipelines.report.build import build_report, feature_drift

__all__ = ["build_report", "feature_drift"]
