"""MLflow tracking of every trained model: parameters, per-epoch and per-split metrics, the Delta
table versions it read (as MLflow datasets), the model with its signature and input example, the
SavedModel, and a registered model version per registry entry (alias `champion` for the blessed
model, `previous` for the one it replaced).

The Delta registry (`results.models`) stays the source of truth: it names the MLflow run and
model version (`mlflow_run_id`, `mlflow_model_version`); MLflow is where a person browses them.
By default the store is embedded: SQLite and artifacts under `<dataset folder>/mlflow/`
(`lakehouse.tracking_uri: ""`); any tracking URI may be configured instead.

    >>> run_id, version = log_model_run(cfg, lakehouse, result, entry, metrics, example)
    $ mlflow ui --backend-store-uri sqlite:///lakehouse/nycflights13/mlflow/mlflow.db
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from typing import Mapping, Sequence

from pipelines.catalog import FEATURE_SPEC

log = logging.getLogger(__name__)

TRACKING_DIR = "mlflow"
CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous", "challenger"


def tracking_uri(cfg) -> str:
    """The configured tracking URI, or the embedded SQLite store inside the dataset's folder."""
    if cfg.lakehouse.tracking_uri:
        return cfg.lakehouse.tracking_uri
    return f"sqlite:///{os.path.abspath(os.path.join(cfg.root, TRACKING_DIR, 'mlflow.db'))}"


def open_tracking(cfg) -> str:
    """Point MLflow at the store of `cfg` and select the dataset's experiment; returns its name."""
    import mlflow

    uri = tracking_uri(cfg)
    # Embedded: the artifacts beside the database, which starts as a copy of an empty one.
    artifacts = None if cfg.lakehouse.tracking_uri else "file://" + os.path.abspath(
        os.path.join(cfg.root, TRACKING_DIR, "artifacts"))
    if uri.startswith("sqlite:///"):
        database = uri[len("sqlite:///"):]
        os.makedirs(os.path.dirname(database), exist_ok=True)
        if artifacts:
            new_embedded_store(database, artifacts)
    mlflow.set_tracking_uri(uri)
    name = cfg.pipeline.dataset
    if mlflow.get_experiment_by_name(name) is None:
        mlflow.create_experiment(name, artifact_location=artifacts)
    mlflow.set_experiment(name)
    return name


def new_embedded_store(path: str, artifacts: str) -> bool:
    """Start the embedded store at `path`, when there is none, as a copy of an empty store made once
    per MLflow version (`empty_store`): MLflow builds a new SQLite store by running each of its
    schema migrations (opening a new lakehouse's store took 1.4 s, a copy 0.8 s). Its `Default`
    experiment keeps its artifacts under `artifacts` too (MLflow would put them in `./mlruns` of
    whatever folder the first run started in). False when a store was there already."""
    import shutil
    import sqlite3

    if os.path.exists(path):
        return False
    try:
        template = empty_store()
    except OSError as exc:     # no cache to write (a read-only home): MLflow makes the store itself
        log.debug(f"no empty MLflow store to copy ({exc}); MLflow creates {path}")
        return False
    part = f"{path}.{os.getpid()}.part"
    try:
        shutil.copyfile(template, part)
        with sqlite3.connect(part) as db:
            db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (f"{artifacts}/0",))
        db.close()
        os.replace(part, path)
    except BaseException:
        # A copy cut short (a full disk, an interrupt) leaves no half store beside the lakehouse's.
        with contextlib.suppress(OSError):
            os.remove(part)
        raise
    return True


def empty_store() -> str:
    """The path of an empty MLflow SQLite store of the installed MLflow's schema, made on first use
    in the user's cache (`$XDG_CACHE_HOME`, else `~/.cache`, then `lakehouse-dl/`)."""
    import mlflow
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lakehouse-dl")
    path = os.path.join(cache, f"mlflow-{mlflow.__version__}-empty.db")
    if not os.path.exists(path):
        os.makedirs(cache, exist_ok=True)
        part = f"{path}.{os.getpid()}.part"
        try:
            store = SqlAlchemyStore(f"sqlite:///{part}", "file:///nowhere")
            store.engine.dispose()
            os.replace(part, path)     # whole or not at all, when two processes make it at once
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(part)
            raise
    return path


def run_params(cfg, entry) -> dict[str, str]:
    """What shaped the model: the training section, the split windows, the versions it read."""
    params = {f"training.{k}": v for k, v in cfg.to_dict()["training"].items()}
    params.update({f"split.{k}": f"{v[0]}..{v[1]}" for k, v in cfg.pipeline.splits.items()})
    params.update({"dataset": cfg.pipeline.dataset, "model_version": entry.model_version,
                   "training_table": f"{entry.training_table}@v{entry.training_version}",
                   "feature_spec_version": entry.feature_spec_version, "config_hash": entry.config_hash,
                   "code_version": entry.code_version, "num_proc": entry.num_proc})
    return {k: str(v)[:500] for k, v in params.items()}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def log_inputs(lakehouse, pins: Mapping[str, Sequence[int]], training_table: str, spec_table: str) -> int:
    """Every pinned Delta table version as an MLflow dataset `<table>@v<version>` (its path and
    version as the source); returns how many were logged."""
    import mlflow
    from mlflow.data.delta_dataset_source import DeltaDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    logged = 0
    for table, versions in sorted(pins.items()):
        context = {training_table: "training", spec_table: "feature_spec"}.get(table, "upstream")
        for version in sorted(versions):
            source = DeltaDatasetSource(path=lakehouse.table(table).path, delta_table_version=int(version))
            mlflow.log_input(MetaDataset(source, name=f"{table}@v{version}", digest=f"v{version}"), context=context)
            logged += 1
    return logged


# The distributions MLflow's own inference finds for the Keras model. It finds them by loading the
# model in a subprocess (6-7 s of every train stage); naming the installed versions is the same list.
MODEL_DISTRIBUTIONS = ("mlflow", "cloudpickle", "numpy", "scipy", "tensorflow-cpu", "tensorflow")


def model_requirements() -> list[str]:
    """`MODEL_DISTRIBUTIONS` pinned at their installed versions (those installed)."""
    from importlib.metadata import PackageNotFoundError, version

    pinned = []
    for name in MODEL_DISTRIBUTIONS:
        try:
            pinned.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return pinned


def log_model_run(cfg, lakehouse, entry, metrics: list[dict], history: list[dict], example: dict,
                  saved_model_dir: str | None = None, extra_artifacts: Sequence[str] = ()) -> tuple[str, str]:
    """One MLflow run for registry `entry` (not yet registered in Delta): params, per-epoch
    metrics (`history`), each model's metrics per split, the pinned inputs, the Keras model with
    its signature and `example` (model inputs: {name: array}), the SavedModel and `extra_artifacts`;
    the model is registered under the dataset's name, aliased `champion` when `entry` is blessed
    and `challenger` (the latest candidate not blessed) otherwise.
    Returns (MLflow run id, registered model version)."""
    import mlflow
    from mlflow.models import infer_signature

    from pipelines.console import quiet_tensorflow
    from pipelines.ml.model import load_model

    name = open_tracking(cfg)
    keras_model = load_model(entry.path)
    with mlflow.start_run(run_name=entry.model_version) as run:
        mlflow.set_tags({"model_version": entry.model_version, "status": entry.status, "reason": entry.reason,
                         "run_id": entry.run_id, "run_date": str(entry.run_date)})
        mlflow.log_params(run_params(cfg, entry))
        for epoch in history:
            step = int(epoch.get("epoch", 0))
            mlflow.log_metrics({k: float(v) for k, v in epoch.items() if k != "epoch" and _finite(v)}, step=step)
        for m in metrics:
            mlflow.log_metrics({f"{m['split']}_{m['model']}_{k}": float(v) for k, v in m.items()
                                if k not in ("model_version", "model", "split") and _finite(v)})
        pins = json.loads(entry.pins) if entry.pins else {}
        log_inputs(lakehouse, pins, entry.training_table, FEATURE_SPEC)
        quiet_tensorflow()   # MLflow's own predictions would print Keras's progress bars
        prediction = keras_model.predict(example, verbose=0)
        info = mlflow.tensorflow.log_model(keras_model, name="model", signature=infer_signature(example, prediction),
                                           input_example=example, registered_model_name=name,
                                           pip_requirements=model_requirements())
        if saved_model_dir:
            mlflow.log_artifacts(saved_model_dir, artifact_path="saved_model")
        if entry.decisions:
            # Each model's calibration and threshold (pipelines.ml.decision), as the registry keeps them.
            mlflow.log_dict(json.loads(entry.decisions), "decisions.json")
        for path in extra_artifacts:
            mlflow.log_artifact(path)
        version = str(info.registered_model_version)
    if entry.status == "blessed":
        crown(name, version)
    else:
        # The latest candidate the registry did not bless: what to compare the champion with.
        from mlflow import MlflowClient

        MlflowClient().set_registered_model_alias(name, CHALLENGER, version)
    log.info(f"[train] MLflow run {run.info.run_id}, registered model {name} version {version}")
    return run.info.run_id, version


def crown(name: str, version: str) -> None:
    """Alias `version` of registered model `name` `champion`; the former champion becomes `previous`."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        current = client.get_model_version_by_alias(name, CHAMPION).version
    except MlflowException:
        current = None
    if current is not None and str(current) != str(version):
        client.set_registered_model_alias(name, PREVIOUS, current)
    client.set_registered_model_alias(name, CHAMPION, version)


def log_report(cfg, mlflow_run_id: str, report_dir: str) -> None:
    """The report's plots and page, logged to the model's run under `report/`."""
    import mlflow

    open_tracking(cfg)
    with mlflow.start_run(run_id=mlflow_run_id):
        mlflow.log_artifacts(report_dir, artifact_path="report")

