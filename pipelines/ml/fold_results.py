"""The recorded result of every backtest fold (`results.backtest_folds`), keyed by a fingerprint of
what it was measured from: a fold whose inputs did not change since a run measured it is not
trained and scored again (`pipelines.ml.backtest.run_backtest` takes the record).

A result's inputs are the data files of the pinned `gold.model_input`'s train and validation
splits, the feature spec, the fold's windows, the model's settings, the code of the `pipelines.ml`
modules that measure a fold and the libraries' versions. Any of them changed is another fingerprint, so a reused result is always
the one that computing it again would give.

    >>> shared = shared_inputs(lakehouse, snapshot, spec)
    >>> fp, inputs = fingerprint(shared, fold, "gbt", model_settings(cfg, "gbt"))
    >>> {r["fingerprint"]: r for r in recorded_results(lakehouse)}.get(fp)      # None: compute it
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from pathlib import Path

from pipelines.catalog import BACKTEST_FOLDS, BACKTEST_SCORES

log = logging.getLogger(__name__)

RECORD_SCHEMA = ("fingerprint string, model string, fold string, train_start date, train_end date, "
                 "validation_start date, validation_end date, table_version long, spec_version long, "
                 "model_version string, rows long, positives long, auc double, log_loss double, accuracy double, "
                 "precision double, recall double, f1 double, threshold double, best_epoch int, seconds double, "
                 "inputs string, created_at timestamp")
# One row of a fold result's month, scored by that fold's model (the key as a string).
SCORES_SCHEMA = "fingerprint string, key string, label double, score double"
# What a fold result is in results.metrics (`BinaryMetrics.as_dict()`), and what a record keeps of it.
METRIC_FIELDS = ("rows", "positives", "auc", "log_loss", "accuracy", "precision", "recall", "f1", "threshold")


# The modules that measure a fold: the network's (`backtest.network_fold`) and the baselines'.
MEASURING = ("pipelines.ml.backtest", "pipelines.ml.baselines")


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """A digest of the sources of the `pipelines.ml` modules that measure a fold: `MEASURING` and
    every module of the package they import, at the top or inside a function (`measuring_modules`).
    A run whose copy of any of them differs measures every fold again; the review, the registry's
    bookkeeping or the tracking changing does not."""
    digest = hashlib.sha256()
    for name, path in sorted(measuring_modules().items()):
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def measuring_modules() -> dict[str, Path]:
    """{module name: source file} of `MEASURING` and of the `pipelines.ml` modules they import,
    transitively (read from their syntax trees: every `import`, wherever it stands)."""
    import ast

    package = Path(__file__).resolve().parent

    def source(name: str) -> Path | None:
        parts = name.split(".")[2:]
        for candidate in (package.joinpath(*parts).with_suffix(".py"), package.joinpath(*parts, "__init__.py")):
            if parts and candidate.is_file():
                return candidate
        return None

    found: dict[str, Path] = {}
    todo = list(MEASURING)
    while todo:
        name = todo.pop()
        path = source(name)
        if name in found or path is None:
            continue
        found[name] = path
        # Importing a module runs its packages' __init__ first.
        todo += [name.rsplit(".", i)[0] for i in range(1, name.count(".") - 1)]
        package_name = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith("pipelines.ml.")]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package_name.split(".")[:len(package_name.split(".")) - node.level + 1] + ([base] if base else []))
                if base.startswith("pipelines.ml"):
                    # `from pipelines.ml import fold_results` names a module; `from x import f`, a name in x.
                    todo += [base, *(f"{base}.{a.name}" for a in node.names)]
    return found


def shared_inputs(lakehouse, snapshot, spec) -> dict:
    """What every fold result of a run depends on besides its windows and its model's settings:
    the data files of the snapshot's train and validation splits, which both the network and the
    baselines read (Delta never rewrites a data file, so the same names are the same rows in the
    same order, whatever the table's version number: a night that rewrites only the test split
    changes nothing here); the feature spec as the network sizes itself from it; the code that
    measures a fold (`code_digest`); the libraries' versions."""
    from pipelines.ml.registry import environment
    from pipelines.storage.paths import local_path

    root = local_path(lakehouse.path(snapshot.table))
    files = sorted(os.path.relpath(local_path(f), root) for split in ("train", "validation")
                   for f in snapshot.splits[split].files)
    spec_content = {k: v for k, v in spec.to_dict().items() if k != "version"}
    return {"data_files": _digest(files), "feature_spec": _digest(spec_content), "code": code_digest(),
            "libraries": environment()}


def model_settings(cfg, model: str, fold_training=None, baseline_params: dict | None = None) -> dict:
    """The settings a model's fold result depends on: for the network (`dnn`), every field of
    `fold_training`, the TrainingConfig its folds train with (`backtest.backtest_training`); for a
    baseline, the seed, its tuned parameters and the threshold its metrics are taken at."""
    if model == "dnn":
        return {"training": dataclasses.asdict(fold_training)}
    return {"seed": cfg.training.seed, "params": (baseline_params or {}).get(model, {}),
            "threshold": cfg.training.threshold}


def fingerprint(shared: dict, fold, model: str, settings: dict) -> tuple[str, str]:
    """(the fingerprint of `model`'s result on `fold`, the JSON of the inputs it digests). The
    fold's windows count, not its name: a fold_2 that becomes fold_1 when backtest.folds changes is
    the same measurement."""
    return fingerprint_of({**shared, "model": model, "settings": settings, "train": fold.train,
                           "validation": fold.validation, "stopping": fold.stopping})


def fingerprint_of(inputs: dict) -> tuple[str, str]:
    """(a digest of `inputs`, their JSON): two equal sets of inputs, and only those, give the same."""
    text = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32], text


def record(fold, model: str, fp: str, inputs: str, metrics: dict, **about) -> dict:
    """One row of results.backtest_folds: a fold result, its fingerprint and inputs, and `about`
    it (table_version, spec_version, model_version, best_epoch, seconds, created_at)."""
    return {"fingerprint": fp, "model": model, "fold": fold.name, "train_start": fold.train[0],
            "train_end": fold.train[1], "validation_start": fold.validation[0],
            "validation_end": fold.validation[1], **{k: metrics[k] for k in METRIC_FIELDS}, "inputs": inputs,
            **about}


def recorded_results(lakehouse) -> list[dict]:
    """Every row of results.backtest_folds, oldest first (a small table, read without Spark)."""
    table = lakehouse.table(BACKTEST_FOLDS)
    if not table.exists():
        return []
    return sorted(table.to_arrow().to_pylist(), key=lambda r: r["created_at"])


def record_results(spark, lakehouse, records: list[dict]) -> None:
    """Append the fold results a run computed to results.backtest_folds, in one commit."""
    if records:
        lakehouse.table(BACKTEST_FOLDS).write(spark.createDataFrame(records, RECORD_SCHEMA), mode="append",
                                              description=f"{len(records)} backtest fold results")


def record_scores(spark, lakehouse, scores: dict) -> None:
    """Append the out-of-fold scores of the fold results a run computed ({fingerprint: pandas
    frame of key, label, score}) to results.backtest_scores, in one commit."""
    import pandas as pd

    if scores:
        rows = pd.concat([frame.assign(fingerprint=fp, key=frame["key"].astype(str))
                          for fp, frame in scores.items()], ignore_index=True)
        lakehouse.table(BACKTEST_SCORES).write(
            spark.createDataFrame(rows[["fingerprint", "key", "label", "score"]], SCORES_SCHEMA), mode="append",
            description=f"out-of-fold scores of {len(scores)} backtest fold results")


def recorded_scores(lakehouse, fingerprints) -> dict:
    """{fingerprint: pandas frame of key, label, score} of the `fingerprints` results.backtest_scores
    holds (the latest rows of each, when a result was recorded twice)."""
    table = lakehouse.table(BACKTEST_SCORES)
    wanted = set(fingerprints)
    if not table.exists() or not wanted:
        return {}
    frame = table.to_pandas()
    frame = frame[frame["fingerprint"].isin(wanted)].drop_duplicates(["fingerprint", "key"], keep="last")
    return {fp: rows[["key", "label", "score"]].reset_index(drop=True) for fp, rows in frame.groupby("fingerprint")}


def changed_inputs(before: str, now: str) -> list[str]:
    """The names of the inputs (`shared_inputs`' keys, `settings`) that differ between two records' JSON."""
    a, b = json.loads(before), json.loads(now)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def explain_missing(fold_list: list, keys: dict, found: dict, history: list[dict]) -> None:
    """Log why the fold results not `found` are computed: which inputs changed since the latest
    record of the same model and windows, or that there is none. `keys`: {(fold name, model):
    (fingerprint, inputs)}."""
    reasons: dict[str, int] = {}
    for (name, model), (_, inputs) in keys.items():
        if (name, model) in found:
            continue
        fold = next(f for f in fold_list if f.name == name)
        before = [r for r in history if r["model"] == model and (r["train_start"], r["train_end"]) == fold.train
                  and (r["validation_start"], r["validation_end"]) == fold.validation]
        why = ("changed " + ", ".join(changed_inputs(before[-1]["inputs"], inputs))) if before else "never measured"
        reasons[why] = reasons.get(why, 0) + 1
    if reasons:
        log.info("[backtest] fold results to compute: " + "; ".join(f"{n} {why}" for why, n in reasons.items()))


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]
