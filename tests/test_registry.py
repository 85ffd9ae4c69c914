"""The blessing rule and the registry's history of statuses."""
import json
from dataclasses import replace

from pipelines.config import config_from_dict, config_hash
from pipelines.ml import registry


def entry(version, status, auc):
    return registry.ModelEntry(version, registry.now(), "run", None, f"/m/{version}", "gold.model_input", 3, 1, "cfg",
                               "code", json.dumps({"validation_auc": auc}), status, "")


def test_decide_needs_both_baseline_and_blessed_beaten():
    assert registry.decide(0.70, 0.65, None)[0] == "blessed"
    assert registry.decide(0.70, 0.65, 0.69)[0] == "blessed"
    status, reason = registry.decide(0.70, 0.72, None)
    assert status == "rejected" and "logistic regression" in reason
    status, reason = registry.decide(0.70, 0.65, 0.71)
    assert status == "rejected" and "blessed model" in reason


def test_blessing_retires_the_previous_model(lakehouse):
    registry.register(lakehouse, entry("m1", "blessed", 0.70))
    registry.register(lakehouse, entry("m2", "rejected", 0.60))
    assert registry.blessed(lakehouse).model_version == "m1"
    registry.register(lakehouse, entry("m3", "blessed", 0.75))
    statuses = {e.model_version: e.status for e in registry.entries(lakehouse)}
    assert statuses == {"m1": "retired", "m2": "rejected", "m3": "blessed"}
    assert registry.blessed(lakehouse).path == "/m/m3"
    # Registering the same version again replaces its row, never duplicates it.
    registry.register(lakehouse, entry("m3", "blessed", 0.75))
    assert len(registry.entries(lakehouse)) == 3


OLD_SCHEMA = ("model_version string, created_at timestamp, run_id string, run_date date, path string, "
              "training_table string, training_version long, config_hash string, code_version string, "
              "metrics string, status string, reason string")


def test_an_entry_pins_its_tables_configuration_seeds_and_libraries_and_reads_back_equal(cfg, lakehouse):
    pins = {"gold.feature_spec": [2], "gold.model_input": [5], "silver.flights": [3, 4]}
    pinned = registry.ModelEntry(
        "m1", registry.now(), "run", None, "/m/m1", "gold.model_input", 5, 2, config_hash(cfg), "code",
        json.dumps({"validation_auc": 0.7}), "blessed", "", pins=json.dumps(pins),
        config=json.dumps(cfg.to_dict()), seeds=json.dumps(registry.seeds(cfg.training)),
        libraries=json.dumps(registry.environment(["CPU", "CPU"])), num_proc=2)
    registry.register(lakehouse, pinned)
    back = registry.get(lakehouse, "m1")
    # (Spark reads the timestamp back without its time zone.)
    assert replace(back, created_at=pinned.created_at) == pinned and back.pinned == pins and back.num_proc == 2
    # The full configuration, not a hash: it rebuilds the same typed Config, paths, dates and all.
    assert config_from_dict(json.loads(back.config)) == cfg
    assert json.loads(back.seeds)["training.seed"] == cfg.training.seed
    libraries = json.loads(back.libraries)
    assert libraries["device"] == "CPU" and libraries["tensorflow"] and libraries["horovod"]
    assert {"python", "platform", "pyspark", "petastorm", "delta-rs", "pyarrow", "numpy"} <= set(libraries)


def test_a_registry_written_before_the_pins_reads_and_keeps_its_rows(lakehouse, spark):
    old = spark.createDataFrame([("m0", registry.now(), "run", None, "/m/m0", "gold.model_input", 3, "cfg", "code",
                                  json.dumps({"validation_auc": 0.6}), "blessed", "")], OLD_SCHEMA)
    lakehouse.table("results.models").write(old, mode="overwrite")
    (m0,) = registry.entries(lakehouse)
    assert (m0.feature_spec_version, m0.pins, m0.config, m0.num_proc) == (None, None, None, None)
    assert m0.pinned == {"gold.model_input": [3]}
    registry.register(lakehouse, entry("m1", "blessed", 0.7))
    assert [(e.model_version, e.status) for e in registry.entries(lakehouse)] == [("m0", "retired"), ("m1", "blessed")]
