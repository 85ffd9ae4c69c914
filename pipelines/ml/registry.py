"""The model registry, `results.models`: one row per trained model and its status.

A candidate is blessed only where it beats, on the same validation rows, both the blessed model
and the logistic-regression baseline; the model it replaces becomes `retired`. Scoring uses the
blessed model. The registry is small, so every change rewrites it in one atomic commit.

Each entry pins what its model depends on, so `lakehouse-dl reproduce` can train it again
(`pipelines.ml.reproduce`): the version of every table read, transitively (`pins`, from
`pipelines.lineage.pins.upstream`), the full merged configuration (`config`), the seeds, the
library versions and platform (`libraries`), the code version and the number of processes.
Vacuum keeps the versions the serving, previous and challenger models and the last
`lakehouse.keep_registered_models` registered pin (`pipelines.ops.maintenance.kept_models`).
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, fields
from datetime import date, datetime, timezone
from importlib import metadata

from pipelines import __version__
from pipelines.catalog import FEATURE_SPEC, MODELS
from pipelines.config.settings import CLASSIFICATION, REGRESSION
from pipelines.ml.decision import Decision, decisions_from_json
from pipelines.ml.stacking import STACKS
from pipelines.config import PROJECT_ROOT
from pipelines.storage import DELTA_RS_DISTRIBUTION

SCHEMA = ("model_version string, created_at timestamp, run_id string, run_date date, path string, training_table string, "
          "training_version long, feature_spec_version long, config_hash string, code_version string, metrics string, "
          "status string, reason string, pins string, config string, seeds string, libraries string, num_proc int, mlflow_run_id string, mlflow_model_version string, "
          "decisions string, serves string")

# The libraries whose versions decide what training and the baselines it is measured against
# compute, by distribution name (the first installed of each tuple: TensorFlow is `tensorflow-cpu`
# in the CPU lock, `tensorflow` with CUDA; XGBoost likewise `xgboost-cpu` or `xgboost`).
LIBRARIES = {"tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-macos"), "keras": ("keras",),
             "horovod": ("horovod",), "pyspark": ("pyspark",), "petastorm": ("petastorm",),
             "delta-rs": (DELTA_RS_DISTRIBUTION,), "pyarrow": ("pyarrow",), "numpy": ("numpy",),
             "xgboost": ("xgboost-cpu", "xgboost")}


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
    # What the model depends on, as JSON; None in entries registered before they were recorded.
    pins: str | None = None         # {table: [versions]}: every table version it read, transitively
    config: str | None = None       # the full merged configuration (`Config.to_dict()`)
    seeds: str | None = None        # {"training.seed": ..., and what each random stream derives from it}
    libraries: str | None = None    # `environment()`: library versions, Python, platform, device
    num_proc: int | None = None     # the processes it was trained with (its shards and allreduce order)
    # Where MLflow shows it (`pipelines.ml.tracking`): its run and its version of the registered model.
    mlflow_run_id: str | None = None
    mlflow_model_version: str | None = None
    # {model kind: decision} as JSON (`pipelines.ml.decision`): the calibration and threshold fitted
    # on the validation window for the network ("dnn") and each baseline beside it.
    decisions: str | None = None
    # What the nightly and the Transformer score with when this entry is blessed: "dnn" (the
    # network; also None, in entries registered before stacks) or a stacked ensemble of it and
    # the baselines beside it ("stack", `pipelines.ml.stacking`).
    serves: str | None = None

    @property
    def metric(self) -> dict:
        return json.loads(self.metrics)

    @property
    def pinned(self) -> dict[str, list[int]]:
        """{table: [versions]} this model depends on: `pins`, or for an entry registered before
        pins were recorded, its training table's version and its feature spec version."""
        if self.pins:
            return {t: [int(v) for v in vs] for t, vs in json.loads(self.pins).items()}
        out = {self.training_table: [int(self.training_version)]}
        if self.feature_spec_version is not None:
            out[FEATURE_SPEC] = [int(self.feature_spec_version)]
        return out


def code_version() -> str:
    """The git commit of the code (with -dirty when changed), or the package version outside git."""
    try:
        sha = subprocess.run(["git", "-C", str(PROJECT_ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        sha = ""
    return sha or __version__


def seeds(training_cfg) -> dict:
    """Every random stream of a training run and the seed it derives from: one `training.seed`."""
    seed = training_cfg.seed
    return {"training.seed": seed,
            "keras": seed,                                      # tf.keras.utils.set_random_seed: init, dropout
            "petastorm_row_groups": "training.seed * 1000003 + epoch",   # row-group order of each epoch
            "shuffle_blocks": "[training.seed, epoch, rank]",   # numpy generator shuffling each block
            "baselines": seed}                                   # MLlib GBT


def environment(devices: list[str] | tuple[str, ...] = ()) -> dict:
    """The versions of the libraries that decide what training computes, Python's, the platform
    and the `devices` the ranks trained on (CPU or GPU), as recorded with each model. The versions
    are the driver's: the ranks run the same stack (see the README, "Running on a cluster")."""
    out = {}
    for name, distributions in LIBRARIES.items():
        out[name] = next((v for v in map(_installed, distributions) if v), None)
    out["python"] = sys.version.split()[0]
    out["platform"] = platform.platform()
    out["device"] = ", ".join(sorted(set(devices))) or "unknown"
    return out


def _installed(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def entries(lakehouse) -> list[ModelEntry]:
    table = lakehouse.table(MODELS)
    if not table.exists():
        return []
    # Read on the driver (no Spark job: a nightly asks the registry several times).
    rows = sorted(table.to_arrow().to_pylist(), key=lambda r: r["created_at"])
    # A registry written before a column existed reads it as None: a model without a
    # feature_spec_version is refused by scoring, one without pins cannot be reproduced exactly.
    missing = {f.name: None for f in fields(ModelEntry)}
    return [ModelEntry(**{**missing, **r}) for r in rows]


def blessed(lakehouse) -> ModelEntry | None:
    """The model scoring uses, or None before one was blessed."""
    return next((e for e in reversed(entries(lakehouse)) if e.status == "blessed"), None)


def latest(lakehouse) -> ModelEntry | None:
    """The entry registered last, whatever its status."""
    registered = entries(lakehouse)
    return registered[-1] if registered else None


# Until a network is blessed, the nightly scores with this baseline, fitted beside the latest
# candidate on the same rows: the model the candidate failed to beat (the linear regression for a
# regression candidate, `pipelines.ml.regression_candidate`).
FALLBACK_BASELINE = "logreg"
REGRESSION_FALLBACK_BASELINE = "linreg"


def head_of(entry: ModelEntry) -> str:
    """The head `entry`'s network was trained with: "regression" when its metrics say so (as
    `pipelines.ml.regression_candidate` registers them), "classification" otherwise."""
    metrics = json.loads(entry.metrics) if entry.metrics else {}
    return metrics.get("head") or CLASSIFICATION


def fallback_baseline(entry: ModelEntry) -> str:
    """The baseline fitted beside `entry` that scores while no network is blessed."""
    return REGRESSION_FALLBACK_BASELINE if head_of(entry) == REGRESSION else FALLBACK_BASELINE


def baseline_version(model_version: str, kind: str) -> str:
    """The model version predictions name when the baseline `kind` fitted beside a candidate scored them."""
    return f"{model_version}/{kind}"


def decision_of(entry: ModelEntry, kind: str | None = None) -> Decision:
    """The decision `kind` (the network, a stack, or a baseline fitted beside it; by default what
    the entry serves) of `entry` is served with; for an entry registered before decisions were
    fitted, the raw score at the `training.threshold` it was trained with."""
    kind = kind or entry.serves or "dnn"
    fitted = decisions_from_json(entry.decisions)
    if kind in fitted:
        return fitted[kind]
    config = json.loads(entry.config) if entry.config else {}
    return Decision.fixed((config.get("training") or {}).get("threshold", 0.5))


def served_thresholds(lakehouse) -> dict[str, float]:
    """{model version as predictions name it: the threshold its predicted_label used}."""
    out = {}
    for entry in entries(lakehouse):
        out[entry.model_version] = decision_of(entry).threshold
        for kind in decisions_from_json(entry.decisions):
            if kind not in ("dnn", *STACKS):
                out[baseline_version(entry.model_version, kind)] = decision_of(entry, kind).threshold
    return out


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
