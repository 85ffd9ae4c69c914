"""MLflow tracking: the embedded store under the lakehouse, a run per model with its parameters,
metrics and pinned Delta inputs, and registered versions whose aliases follow the blessed model."""
import json
from datetime import date
from pathlib import Path

import numpy as np


def tiny_model(path):
    import tensorflow as tf

    num = tf.keras.Input((1,), name="num_distance", dtype=tf.float32)
    cat = tf.keras.Input((1,), name="cat_carrier", dtype=tf.int32)
    emb = tf.keras.layers.Flatten()(tf.keras.layers.Embedding(4, 2, name="cat_carrier_embedding")(cat))
    out = tf.keras.layers.Dense(1, activation="sigmoid")(tf.keras.layers.Concatenate()([num, emb]))
    path.parent.mkdir(parents=True)
    tf.keras.Model({"num_distance": num, "cat_carrier": cat}, out).save(str(path))
    return str(path)


def entry_for(version: str, path: str, status: str):
    from pipelines.ml import registry

    pins = {"gold.model_input": [3], "gold.feature_spec": [2], "silver.flights": [5, 6]}
    return registry.ModelEntry(model_version=version, created_at=registry.now(), run_id=f"nightly-{version}",
                               run_date=date(2013, 3, 20), path=path, training_table="gold.model_input",
                               training_version=3, feature_spec_version=2, config_hash="abc", code_version="test",
                               metrics="{}", status=status, reason="test", pins=json.dumps(pins), num_proc=1)


def test_each_model_is_a_run_with_its_delta_inputs_the_blessed_one_the_champion_a_rejected_one_the_challenger(
        cfg, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from pipelines.ml.tracking import CHALLENGER, CHAMPION, PREVIOUS, log_model_run, tracking_uri
    from pipelines.storage import Lakehouse

    lakehouse = Lakehouse.from_config(cfg)
    example = {"num_distance": np.zeros((2, 1), np.float32), "cat_carrier": np.ones((2, 1), np.int32)}
    history = [{"epoch": 1, "loss": 0.7, "val_auc": 0.6}, {"epoch": 2, "loss": 0.6, "val_auc": float("nan")}]
    metrics = [{"model_version": "v1", "model": "dnn", "split": "test", "auc": 0.71, "rows": 10}]
    runs = {}
    for version, status in (("v1", "blessed"), ("v2", "blessed"), ("v3", "rejected")):
        path = tiny_model(tmp_path / "models" / version / "model.keras")
        runs[version] = log_model_run(cfg, lakehouse, entry_for(version, path, status), metrics, history, example)

    assert tracking_uri(cfg) == f"sqlite:///{cfg.root / 'mlflow' / 'mlflow.db'}" and (cfg.root / "mlflow" / "mlflow.db").exists()
    run = mlflow.get_run(runs["v1"][0])
    assert run.data.params["training_table"] == "gold.model_input@v3" and run.data.metrics["test_dnn_auc"] == 0.71
    assert [m.value for m in MlflowClient().get_metric_history(run.info.run_id, "loss")] == [0.7, 0.6]
    inputs = {(i.dataset.name, i.tags[0].value) for i in run.inputs.dataset_inputs}
    assert inputs == {("gold.model_input@v3", "training"), ("gold.feature_spec@v2", "feature_spec"),
                      ("silver.flights@v5", "upstream"), ("silver.flights@v6", "upstream")}
    source = json.loads(run.inputs.dataset_inputs[0].dataset.source)
    assert source["path"].startswith(str(cfg.root)) and "delta_table_version" in source

    client = MlflowClient()
    name = cfg.pipeline.dataset
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == runs["v2"][1]
    assert str(client.get_model_version_by_alias(name, PREVIOUS).version) == runs["v1"][1]
    # A candidate the registry rejected is registered too, as the challenger; the champion stays.
    assert str(client.get_model_version_by_alias(name, CHALLENGER).version) == runs["v3"][1]
    model = client.get_model_version(name, runs["v2"][1])
    assert model.run_id == runs["v2"][0]
    logged = mlflow.models.get_model_info(f"models:/{name}@{CHAMPION}")
    assert set(logged.signature.inputs.input_names()) == {"num_distance", "cat_carrier"}
    # The model's requirements are the installed versions, named up front (no inference by loading it).
    from importlib.metadata import version as installed

    requirements = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@{CHAMPION}", dst_path=str(tmp_path / "got")))
    pinned = set((requirements / "requirements.txt").read_text().split())
    assert {f"tensorflow-cpu=={installed('tensorflow-cpu')}", f"numpy=={installed('numpy')}"} <= pinned


def test_a_new_lakehouse_store_is_a_copy_of_one_empty_store_and_keeps_every_artifact_inside(tmp_path, monkeypatch):
    """MLflow migrates a new SQLite store step by step (1.4 s, against 0.8 s for a copy): each new
    lakehouse's store starts as a copy of one empty store per MLflow version, made once in the
    user's cache; an existing store is never replaced."""
    import sqlite3

    import mlflow

    from pipelines.config import load_config
    from pipelines.ml.tracking import empty_store, open_tracking, tracking_uri

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = Path(empty_store())
    assert template.parent == tmp_path / "cache" / "lakehouse-dl" and mlflow.__version__ in template.name
    made = template.stat().st_mtime_ns
    cfgs = [load_config("local", [f"lakehouse.root={tmp_path / name}"]) for name in ("first", "second")]
    runs = {}
    for cfg in cfgs:
        open_tracking(cfg)
        with mlflow.start_run() as run:
            mlflow.log_metric("auc", 0.7)
        runs[cfg.root] = run.info.run_id

    assert template.stat().st_mtime_ns == made and Path(empty_store()) == template
    with sqlite3.connect(template) as db:      # the copies' runs and experiments are their own
        assert db.execute("SELECT count(*) FROM runs").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM experiments").fetchone() == (1,)
    for cfg in cfgs:
        mlflow.set_tracking_uri(tracking_uri(cfg))
        artifacts = f"file://{cfg.root / 'mlflow' / 'artifacts'}"
        assert mlflow.get_experiment("0").artifact_location == f"{artifacts}/0"
        assert mlflow.get_experiment_by_name(cfg.pipeline.dataset).artifact_location == artifacts
        [found] = mlflow.search_runs(experiment_names=[cfg.pipeline.dataset], output_format="list")
        assert found.info.run_id == runs[cfg.root] and found.data.metrics == {"auc": 0.7}
    # Opened again, a store is kept as it is.
    open_tracking(cfgs[0])
    assert [r.info.run_id for r in mlflow.search_runs(experiment_names=[cfgs[0].pipeline.dataset],
                                                       output_format="list")] == [runs[cfgs[0].root]]


def test_without_a_cache_to_write_mlflow_makes_the_store_itself(tmp_path, monkeypatch):
    import mlflow

    from pipelines.config import load_config
    from pipelines.ml.tracking import open_tracking

    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-folder"))
    cfg = load_config("local", [f"lakehouse.root={tmp_path / 'lakehouse'}"])
    assert open_tracking(cfg) == cfg.pipeline.dataset
    assert (cfg.root / "mlflow" / "mlflow.db").is_file() and not list((cfg.root / "mlflow").glob("*.part"))
    assert mlflow.get_experiment_by_name(cfg.pipeline.dataset).artifact_location.startswith(f"file://{cfg.root}")


def test_a_store_copy_the_disk_cuts_short_leaves_no_half_written_file(small_disk, tmp_path, monkeypatch):
    """The lakehouse on a real small filesystem with less room than the empty store needs: the copy
    fails with the disk's own error, and nothing is left in the store's folder (a `.part` file
    would stay there for good: `remove_orphans` looks only at table folders)."""
    import errno
    import os
    import shutil

    import pytest

    from pipelines.ml.tracking import empty_store, new_embedded_store

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    size = Path(empty_store()).stat().st_size
    folder = small_disk / "lakehouse" / "mlflow"
    folder.mkdir(parents=True)
    with open(small_disk / "filler", "wb") as fh:
        fh.write(b"\0" * (shutil.disk_usage(small_disk).free - size // 2))
    assert shutil.disk_usage(small_disk).free < size

    with pytest.raises(OSError) as caught:
        new_embedded_store(str(folder / "mlflow.db"), f"file://{folder}/artifacts")

    assert caught.value.errno == errno.ENOSPC
    assert os.listdir(folder) == []
    # Once there is room, the store is made.
    (small_disk / "filler").unlink()
    assert new_embedded_store(str(folder / "mlflow.db"), f"file://{folder}/artifacts")
    assert os.listdir(folder) == ["mlflow.db"]
