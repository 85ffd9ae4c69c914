"""The model registry, `results.models`: one row per trained model and its status.

A candidate is blessed only where it beats, on the same validation rows, both the blessed model
and the logistic-regression baseline; the model it replaces becomes `retired`. Scoring uses the
blessed model. The registry is small, so every change rewrites it in one atomic commit.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone

from pipelines import __version__
from pipelines.catalog import MODELS
from pipelines.config import PROJECT_ROOT

SCHEMA = ("model_version string, created_at timestamp, run_id string, run_date date, path string, training_table string, "
          "training_version long, feature_spec_version long, config_hash string, code_version string, metrics string, "
          "status string, reason string")


@dataclass
class ModelEntry:
    model_version: str
    created_at: datetime
    run_id: str
    run_date: date | None  # the nightly date it was trained for (drives retrain_every_days)
    path: str
    training_table: str
    training_version: int
    feature_spec_version: int | None  # the gold.feature_spec version it was trained with: scoring applies it
    config_hash: str
    code_version: str
    metrics: str  # JSON: {"validation_auc": ..., "logreg_validation_auc": ..., ...}
    status: str  # candidate, blessed, rejected, retired
    reason: str

    @property
    def metric(self) -> dict:
        return json.loads(self.metrics)


def code_version() -> str:
    """The git commit of the code (with -dirty when changed), or the package version outside git."""
    try:
        sha = subprocess.run(["git", "-C", str(PROJECT_ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        sha = ""
    return sha or __version__


def entries(lakehouse) -> list[ModelEntry]:
    table = lakehouse.table(MODELS)
    if not table.exists():
        return []
    rows = table.read().orderBy("created_at").collect()
    # A registry written before models recorded their spec version reads as None (scoring refuses it).
    return [ModelEntry(**{"feature_spec_version": None, **r.asDict()}) for r in rows]


def blessed(lakehouse) -> ModelEntry | None:
    """The model scoring uses, or None before one was blessed."""
    return next((e for e in reversed(entries(lakehouse)) if e.status == "blessed"), None)


def get(lakehouse, model_version: str) -> ModelEntry | None:
    return next((e for e in entries(lakehouse) if e.model_version == model_version), None)


def decide(candidate_auc: float, logreg_auc: float, blessed_auc: float | None) -> tuple[str, str]:
    """Bless, or reject with the reason: the rule in one place, so it is tested on its own."""
    if not candidate_auc > logreg_auc:
        return "rejected", f"validation AUC {candidate_auc:.4f} does not beat logistic regression {logreg_auc:.4f}"
    if blessed_auc is not None and not candidate_auc > blessed_auc:
        return "rejected", f"validation AUC {candidate_auc:.4f} does not beat the blessed model {blessed_auc:.4f}"
    against = f", blessed model {blessed_auc:.4f}" if blessed_auc is not None else ""
    return "blessed", f"validation AUC {candidate_auc:.4f} beats logistic regression {logreg_auc:.4f}{against}"


def register(lakehouse, entry: ModelEntry) -> None:
    """Add (or replace, by model version) an entry; a newly blessed entry retires the previous one."""
    current = [e for e in entries(lakehouse) if e.model_version != entry.model_version]
    if entry.status == "blessed":
        for e in current:
            if e.status == "blessed":
                e.status, e.reason = "retired", f"replaced by {entry.model_version}"
    rows = [asdict(e) for e in current + [entry]]
    df = lakehouse.spark.createDataFrame(rows, SCHEMA)
    lakehouse.table(MODELS).write(df, mode="overwrite", schema_mode="overwrite")


def now() -> datetime:
    return datetime.now(timezone.utc)
