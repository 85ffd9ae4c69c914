"""`lakehouse-dl reproduce`: a model registered by the nightly's train stage (2 Horovod processes)
trained again from its pins after new versions of its tables and a vacuum, on the tiny model input."""
from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from model_input_fixtures import model_input_lakehouse, training_config, write_model_input
from pipelines.catalog import FEATURE_SPEC, MODEL_INPUT
from pipelines.cli import main
from pipelines.config import config_from_dict
from pipelines.ml import registry
from pipelines.ml.candidate import train_and_register
from pipelines.ml.reproduce import ReproductionError, reproduce, unreadable_version
from pipelines.ops.maintenance import maintain


@pytest.fixture
def lakehouse(spark, tmp_path):
    return model_input_lakehouse(spark, tmp_path / "lakehouse")


def registered(spark, lakehouse, *overrides):
    cfg = training_config(lakehouse.root, "training.num_proc=2", "nightly.baselines=[logreg]", *overrides)
    return cfg, train_and_register(cfg, spark, lakehouse, run_id="nightly-test", run_date=date(2013, 1, 28)).entry


@pytest.mark.slow
def test_reproduce_after_new_table_versions_and_vacuum_gives_the_registered_auc_and_weights(spark, lakehouse, capsys):
    cfg, entry = registered(spark, lakehouse)
    # The registry pins every table version the model read, the whole configuration, seeds, libraries.
    pins = entry.pinned
    assert pins[MODEL_INPUT] == [entry.training_version] and pins[FEATURE_SPEC] == [entry.feature_spec_version]
    assert config_from_dict(json.loads(entry.config)) == cfg and entry.num_proc == 2
    assert json.loads(entry.seeds)["training.seed"] == cfg.training.seed
    assert json.loads(entry.libraries)["device"] == "CPU"

    # Later nightlies refit the spec and rewrite the model input (other rows); vacuum with no retention.
    write_model_input(lakehouse, seed=11)
    write_model_input(lakehouse, seed=12)
    maintain(lakehouse, retention_hours=0, row_group_rows=1000)
    for table, versions in pins.items():
        assert lakehouse.table(table).version() > max(versions)
        for version in versions:
            assert unreadable_version(lakehouse.table(table), version) is None, (table, version)

    # The current configuration asks for another training (1 process, 1 epoch, another rate and
    # seed): the model's own configuration is what is trained with.
    root = Path(lakehouse.root).parent
    code = main(["reproduce", entry.model_version, "--json", "--set", f"lakehouse.root={root}",
                 "--set", "spark.master=local[2]", "--set", "training.num_proc=1", "--set", "training.epochs=1",
                 "--set", "training.learning_rate=0.3", "--set", "training.seed=99"])
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{"):])
    assert code == 0, out
    assert report["num_proc"] == 2 and report["device"] == "CPU"
    assert report["table_versions"] == {MODEL_INPUT: entry.training_version, FEATURE_SPEC: entry.feature_spec_version}
    assert report["registered_auc"] == entry.metric["validation_auc"]
    assert report["auc_difference"] <= 1e-4 and report["weights_equal"] is True, out
    assert report["differences"] == [] and report["explanation"].startswith("reproduced"), out
    assert f"validation AUC: registered {entry.metric['validation_auc']:.6f}" in out
    print(f"AUC difference {report['auc_difference']}, weights max |difference| {report['weights_max_difference']}")
    # The registry is untouched: the reproduction is a model folder of its own.
    assert [e.model_version for e in registry.entries(lakehouse)] == [entry.model_version]
    assert "/models/reproduce/" in report["model_path"]


def test_a_pinned_version_that_is_gone_is_named(spark, lakehouse):
    """A pinned model-input version whose files were deleted outside maintenance: a clear error
    naming the table and the version, before any training starts."""
    cfg = training_config(lakehouse.root)
    write_model_input(lakehouse, seed=11)
    registry.register(lakehouse, registry.ModelEntry(
        "m0", registry.now(), "run", None, "/nowhere/model.keras", MODEL_INPUT, 0, 0, "hash", "code",
        json.dumps({"validation_auc": 0.7}), "blessed", "", pins=json.dumps({MODEL_INPUT: [0], FEATURE_SPEC: [0]}),
        config=json.dumps(cfg.to_dict()), num_proc=1))
    lakehouse.table(MODEL_INPUT).vacuum(0)                       # no pins kept: v0's files go
    assert "data files are gone" in unreadable_version(lakehouse.table(MODEL_INPUT), 0)
    with pytest.raises(ReproductionError, match="pinned gold.model_input v0: .* data files are gone"):
        reproduce(cfg, spark, "m0")
    with pytest.raises(ReproductionError, match="no model m9 in the registry"):
        reproduce(cfg, spark, "m9")
