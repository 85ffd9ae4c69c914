"""Train a registered model again from what the registry pins, and say how the two differ
(`lakehouse-dl reproduce MODEL_VERSION`).

The retraining reads the pinned `gold.model_input` and `gold.feature_spec` versions, with the
configuration the model was trained with and in as many processes, under a new model version
(`models/reproduce/<model version>-<UTC time>`; the registry is not touched). It measures the
validation AUC over the whole validation split as the nightly did (`candidate.dnn_scores` +
`binary_metrics`), compares it with the registered one, compares the weights of the two saved
models, and names what differs between then and now: library versions, Python, platform, device,
code version, configuration keys that were not recorded.

Which configuration keys are whose: the sections that shape the model (`pipeline`: dataset and
split windows; `training`: architecture, optimiser, seed, batch, threads, device...; `nightly`)
come from the registry; the ones that say where and how the job runs (`env`, `spark`, `lakehouse`:
paths, master, engine, file sizes of future writes, retention) come from the current
configuration, so a model registered on one machine is reproduced against the lakehouse it is in.

    >>> r = reproduce(cfg, spark, "20131230-3f2a9c1d")
    >>> r.auc_difference, r.weights_max_difference, r.differences
    (0.0, 0.0, [])
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from pipelines.catalog import FEATURE_SPEC, MODEL_INPUT
from pipelines.config import config_from_dict, config_hash
from pipelines.datasets import dataset_for
from pipelines.ml import registry
from pipelines.ml.baselines import model_input_frames
from pipelines.ml.candidate import dnn_scores
from pipelines.ml.evaluation import binary_metrics
from pipelines.ml.training import train
from pipelines.storage import Lakehouse
from pipelines.storage.paths import local_path

log = logging.getLogger(__name__)

# The validation AUC of a reproduction on CPU equals the registered one to this tolerance.
AUC_TOLERANCE = 1e-4
# Weights closer than this are reported equal (on CPU with Gloo they are identical).
WEIGHT_TOLERANCE = 1e-6
# The configuration sections taken from the registry: they shape the model. The others (env,
# spark, lakehouse) say where the job runs and come from the current configuration.
MODEL_SECTIONS = ("pipeline", "training", "nightly")
# The tables retraining reads: a pinned version of these that cannot be read stops it.
READ_BY_TRAINING = (MODEL_INPUT, FEATURE_SPEC)


class ReproductionError(RuntimeError):
    """The model cannot be trained again: unknown version, or a pinned table version is gone."""


@dataclass
class Reproduction:
    """A registered model against its retraining; `to_dict()` is what `--json` prints."""

    model_version: str
    reproduced_as: str
    model_path: str
    table_versions: dict[str, int]
    num_proc: int
    registered_auc: float           # the validation AUC the registry recorded
    registered_auc_now: float       # the registered model measured again now, the same way
    reproduced_auc: float
    weights_max_difference: float | None   # None when they cannot be compared (see differences)
    differences: list[str] = field(default_factory=list)   # then → now, one line each
    unreadable_pins: list[str] = field(default_factory=list)  # pinned versions of tables training does not read
    device: str = "unknown"

    @property
    def auc_difference(self) -> float:
        return abs(self.reproduced_auc - self.registered_auc)

    @property
    def auc_matches(self) -> bool:
        return self.auc_difference <= AUC_TOLERANCE

    @property
    def weights_equal(self) -> bool | None:
        return None if self.weights_max_difference is None else self.weights_max_difference <= WEIGHT_TOLERANCE

    def explanation(self) -> str:
        """Why the reproduction differs, or that it does not."""
        if self.auc_matches and self.weights_equal is not False:
            return "reproduced: same validation AUC" + (", same weights" if self.weights_equal else "")
        if "GPU" in self.device:
            return ("differs: trained on GPU, where cuDNN kernels, atomics and NCCL's reduction order are not "
                    "deterministic" + (f"; also {'; '.join(self.differences)}" if self.differences else ""))
        if self.differences:
            return "differs, with these differences between then and now: " + "; ".join(self.differences)
        return ("differs, and no recorded difference explains it: the CPU (instruction set, core count) "
                "is the one thing the registry does not pin")

    def to_dict(self) -> dict:
        return {**asdict(self), "auc_difference": self.auc_difference, "auc_matches": self.auc_matches,
                "weights_equal": self.weights_equal, "explanation": self.explanation()}


def reproduce(cfg, spark, model_version: str, verbose: bool = False) -> Reproduction:
    """Train `model_version` of the registry again at its pinned versions and configuration, in
    the same number of processes, against the lakehouse of `cfg`; compare AUC and weights."""
    lakehouse = Lakehouse.from_config(cfg, spark)
    entry = registry.get(lakehouse, model_version)
    if entry is None:
        known = [e.model_version for e in registry.entries(lakehouse)]
        raise ReproductionError(f"no model {model_version} in the registry of {lakehouse.root} "
                                f"(registered: {', '.join(known[-5:]) or 'none'})")
    registered_auc = entry.metric.get("validation_auc")
    if registered_auc is None or math.isnan(registered_auc):
        raise ReproductionError(f"model {model_version} has no recorded validation AUC to compare with")
    unreadable = check_pins(lakehouse, entry)
    stored_cfg, differences = stored_configuration(cfg, entry)
    num_proc = entry.num_proc or stored_cfg.training.num_proc
    if entry.num_proc is None:
        differences.append(f"processes: not recorded; trained with {num_proc} (training.num_proc of the configuration)")
    version, spec_version = entry.training_version, entry.feature_spec_version
    if spec_version is None:
        raise ReproductionError(f"model {model_version} was registered before the registry recorded its "
                                f"{FEATURE_SPEC} version: it cannot be trained again on the same inputs")

    name = f"reproduce/{model_version}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    log.info(f"[reproduce] training {model_version} again as {name}: {MODEL_INPUT} v{version}, "
             f"{FEATURE_SPEC} v{spec_version}, {num_proc} process(es)")
    result = train(stored_cfg, spark, model_version=name, table_version=version, spec_version=spec_version,
                   num_proc=num_proc, verbose=verbose)
    devices = [r.get("device") or "unknown" for r in result.ranks]
    differences += environment_differences(entry, registry.environment(devices))

    validation = model_input_frames(lakehouse, version, splits=("validation",))["validation"].cache()
    key, threshold = dataset_for(stored_cfg).key, stored_cfg.training.threshold

    def auc(path: str) -> float:
        return binary_metrics(dnn_scores(validation, path, threshold, key), threshold).auc

    reproduced_auc = auc(result.model_path)
    registered_now = auc(entry.path) if os.path.exists(local_path(entry.path)) else float("nan")
    validation.unpersist()
    weights, why = weight_difference(entry.path, result.model_path)
    if why:
        differences.append(why)
    out = Reproduction(model_version=model_version, reproduced_as=name, model_path=result.model_path,
                       table_versions=dict(result.table_versions), num_proc=num_proc, registered_auc=registered_auc,
                       registered_auc_now=registered_now, reproduced_auc=reproduced_auc,
                       weights_max_difference=weights, differences=differences, unreadable_pins=unreadable,
                       device=", ".join(sorted(set(devices))))
    log.info(f"[reproduce] {model_version}: validation AUC {registered_auc:.6f} registered, "
             f"{reproduced_auc:.6f} reproduced; {out.explanation()}")
    return out


def check_pins(lakehouse, entry: registry.ModelEntry) -> list[str]:
    """Every pinned version is read back from the Delta log and its files are on disk. One that
    training reads stops the reproduction with an error naming it; the others are returned."""
    unreadable = []
    for name, versions in sorted(entry.pinned.items()):
        for version in versions:
            problem = unreadable_version(lakehouse.table(name), version)
            if problem is None:
                continue
            text = f"{name} v{version}: {problem}"
            if name in READ_BY_TRAINING:
                raise ReproductionError(
                    f"model {entry.model_version} cannot be trained again: its pinned {text}. Vacuum keeps every "
                    "version the registry pins; this one was deleted by other means (or before the model pinned it).")
            log.warning(f"[reproduce] pinned {text} (training does not read it)")
            unreadable.append(text)
    return unreadable


def unreadable_version(table, version: int) -> str | None:
    """Why `version` of `table` cannot be read (its log entry or a data file is gone), or None."""
    if not table.exists():
        return "the table does not exist"
    try:
        paths = [a["path"] for a in table.add_actions(version)]
    except Exception as exc:  # delta-rs raises its own errors for a version missing from the log
        return f"the Delta log has no such version ({type(exc).__name__}: {exc})"
    # Files on object storage are left to the read to find; local ones are checked here.
    missing = [p for p in paths if "://" not in local_path(p) and not os.path.exists(local_path(p))]
    if missing:
        return f"{len(missing)} of its {len(paths)} data files are gone (first: {missing[0]})"
    return None


def stored_configuration(cfg, entry: registry.ModelEntry):
    """(Config, notes): the model's own configuration for the sections that shape it, the current
    one for where the job runs; a note for each key it lacks (the current value is used)."""
    current = cfg.to_dict()
    if not entry.config:
        same = "equals" if config_hash(cfg) == entry.config_hash else "differs from"
        return cfg, [f"configuration: not recorded (registered before the registry stored it); the current one is "
                     f"used, whose hash {config_hash(cfg)} {same} the recorded {entry.config_hash}"]
    stored = json.loads(entry.config)
    if stored.get("pipeline", {}).get("dataset") != cfg.pipeline.dataset:
        raise ReproductionError(f"model {entry.model_version} was trained on dataset "
                                f"{stored.get('pipeline', {}).get('dataset')!r}, this configuration is for "
                                f"{cfg.pipeline.dataset!r}: run with --dataset")
    notes: list[str] = []
    merged = {**current}
    for section in MODEL_SECTIONS:
        merged[section] = _overlay(current[section], stored.get(section, {}), section, notes)
    return config_from_dict(merged, source=f"the configuration model {entry.model_version} recorded"), notes


def _overlay(current: dict, stored: dict, prefix: str, notes: list[str]) -> dict:
    out = dict(current)
    for key, value in stored.items():
        if key not in current:
            notes.append(f"configuration: {prefix}.{key} was recorded but this code has no such key (left out)")
        else:
            out[key] = value
    for key in current:
        if key not in stored:
            notes.append(f"configuration: {prefix}.{key} was not recorded; the current {current[key]!r} is used")
    return out


def environment_differences(entry: registry.ModelEntry, now: dict) -> list[str]:
    """One line per recorded library version, Python, platform, device or code version that is
    not the same now; one line saying they were not recorded for an older entry."""
    out = []
    if not entry.libraries:
        out.append("libraries and platform: not recorded (registered before the registry stored them)")
    else:
        then = json.loads(entry.libraries)
        for key in sorted(set(then) | set(now)):
            if then.get(key) != now.get(key):
                out.append(f"{key}: {then.get(key)} when registered, {now.get(key)} now")
    code = registry.code_version()
    if entry.code_version != code:
        out.append(f"code version: {entry.code_version} when registered, {code} now")
    return out


def weight_difference(registered_path: str, reproduced_path: str) -> tuple[float | None, str | None]:
    """(max absolute difference over every weight, None), or (None, why they cannot be compared)."""
    import numpy as np

    from pipelines.ml.model import load_model

    if not os.path.exists(local_path(registered_path)):
        return None, f"weights: the registered model's file {registered_path} is gone"
    then, now = load_model(registered_path).get_weights(), load_model(reproduced_path).get_weights()
    if [w.shape for w in then] != [w.shape for w in now]:
        return None, "weights: the two models' layers have different shapes (the model code changed)"
    return float(max((np.max(np.abs(a - b)) for a, b in zip(then, now) if a.size), default=0.0)), None
