"""What training is given and what it gives back, shared by the driver and every rank: the plan
each Horovod process receives, the result, the progress file and the files of a model's folder.
Importing it does not start TensorFlow.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from pipelines.ml.inputs import FeatureSpec
from pipelines.ml.tensors import SplitFiles

# The files of a model version's folder, `<root>/models/<model_version>/`.
MODEL_FILE = "model.keras"
STATE_FILE = "state.json"
RESULT_FILE = "result.json"
SPEC_FILE = "feature_spec.json"
CHECKPOINT_PREFIX = "epoch"
# ROC and calibration points of the test window, written by pipelines.ml.candidate for the report.
ROC_FILE = "roc_test.json"


class TrainingError(RuntimeError):
    """Training cannot start or did not finish; no model was produced by this call."""


@dataclass
class TrainingPlan:
    """Everything one rank needs, shipped to every Horovod process (it pickles)."""

    training: Any                       # pipelines.config.TrainingConfig
    spec: FeatureSpec
    train: SplitFiles
    validation: SplitFiles
    model_version: str
    model_dir: str
    distributed: bool = False
    verbose: bool = True
    return_weights: bool = False
    callbacks: tuple = ()
    # The regression target's scale on the training rows (`pipelines.ml.model.TargetScale`); None
    # for the classification head.
    target_scale: Any = None


@dataclass
class TrainingResult:
    """What a training run produced; `to_dict()` is what the results table and registry record."""

    model_version: str
    model_path: str
    model_dir: str
    head: str
    table_versions: dict[str, int]
    rows: dict[str, int]
    history: list[dict]
    best_epoch: int
    best_metrics: dict[str, float]
    initial_epoch: int
    epochs_run: int
    stopped_early: bool
    num_proc: int
    wall_seconds: float
    samples_per_sec: float
    config_hash: str
    # Where each rank ran: rank, host, pid, working folder, the package file it imported, device.
    ranks: list[dict] = field(default_factory=list)
    weights: list | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("weights")
        return out


def model_dir_for(cfg, model_version: str) -> str:
    """Where a model version's checkpoints and final model live: `<root>/models/<model_version>`."""
    return os.path.join(cfg.lakehouse.root, "models", model_version)


def read_state(model_dir: str) -> dict | None:
    """The progress file of a model version (epochs done, history, early-stopping state), if any."""
    path = os.path.join(model_dir, STATE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_json(path: str, data: dict) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never half of one."""
    partial = f"{path}.{os.getpid()}.partial"
    with open(partial, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(partial, path)


def read_result(model_dir: str) -> "TrainingResult | None":
    """The result a finished training wrote to its folder, if any."""
    path = os.path.join(model_dir, RESULT_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return TrainingResult(**json.load(f))
