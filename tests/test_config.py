"""Layered configuration: base → environment → --set, types, paths, environment variables, and
errors that name the file and the key."""
from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

import pytest
import yaml

from pipelines.config import PROJECT_ROOT, ConfigError, base_value, config_from_dict, config_hash, load_config


def make_conf(root: Path, files: dict[str, dict | str]) -> Path:
    """A conf/ folder under `root`: the project's conf/base (which declares every key), with the
    given `<layer>/<file>.yaml` contents merged over it (a string replaces the file as it is)."""
    conf = root / "conf"
    shutil.copytree(PROJECT_ROOT / "conf" / "base", conf / "base")
    for name, content in files.items():
        path = conf / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict) and path.exists():
            content = _merged(yaml.safe_load(path.read_text()) or {}, content)
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    (conf / "base").mkdir(parents=True, exist_ok=True)
    (conf / "local").mkdir(parents=True, exist_ok=True)
    return conf


def _merged(base: dict, new: dict) -> dict:
    out = dict(base)
    for key, value in new.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.fixture
def conf(tmp_path):
    """A small two-layer conf/ with its lakehouse inside tmp_path."""
    return make_conf(tmp_path, {
        "base/lakehouse.yaml": {"lakehouse": {"root": str(tmp_path / "lh"), "landing": "landing",
                                              "target_file_bytes": 1000}},
        "base/training.yaml": {"training": {"epochs": 6, "batch_size": 512, "hidden_units": [128, 64]}},
        "base/pipeline.yaml": {"pipeline": {"splits": {"train": ["2013-01-01", "2013-09-30"]}}},
        "local/training.yaml": {"training": {"epochs": 3}},
    })


def test_layers_merge_base_then_environment_then_set(conf, tmp_path):
    cfg = load_config("local", conf_root=conf)
    assert cfg.training.epochs == 3                     # local overrides base
    assert cfg.training.batch_size == 512               # base kept where local is silent
    assert cfg.training.hidden_units == [128, 64]
    assert cfg.training.learning_rate == base_value("training.learning_rate")  # conf/base where no file speaks
    assert cfg.env == "local"

    cfg = load_config("local", ["training.epochs=2", "training.hidden_units=[8]",
                                "spark.conf.spark.sql.shuffle.partitions=3", "training.use_gpu=true"],
                      conf_root=conf)
    assert cfg.training.epochs == 2 and cfg.training.hidden_units == [8]
    assert cfg.training.use_gpu is True
    assert cfg.spark.conf["spark.sql.shuffle.partitions"] == "3"
    assert cfg.spark.conf["spark.sql.adaptive.enabled"] == "true"  # conf/base's other properties kept
    assert cfg.split("train") == (date(2013, 1, 1), date(2013, 9, 30))
    # Each dataset is a folder of its own in the lakehouse and in the landing folder.
    assert cfg.root == tmp_path / "lh" / "nycflights13" and cfg.landing == tmp_path / "lh" / "landing" / "nycflights13"


def test_the_hash_changes_with_the_configuration(conf):
    assert config_hash(load_config("local", conf_root=conf)) == config_hash(load_config("local", conf_root=conf))
    assert config_hash(load_config("local", ["training.epochs=4"], conf_root=conf)) != \
        config_hash(load_config("local", conf_root=conf))


def test_a_stored_configuration_rebuilds_the_same_config_and_names_itself_in_errors(conf):
    cfg = load_config("local", ["training.epochs=7"], conf_root=conf)
    stored = json.loads(json.dumps(cfg.to_dict()))          # what the model registry keeps
    again = config_from_dict(stored)
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert again.lakehouse.root == cfg.lakehouse.root         # the dataset's folder is not added twice
    stored["training"]["epochs"] = "seven"
    with pytest.raises(ConfigError, match="model m1's configuration: key 'training.epochs' must be an integer"):
        config_from_dict(stored, source="model m1's configuration")


def test_unknown_key_names_the_file_and_the_key(conf):
    (conf / "local" / "typo.yaml").write_text("training:\n  epoch: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config("local", conf_root=conf)
    assert str(conf / "local" / "typo.yaml") in str(err.value)
    assert "unknown key 'training.epoch'" in str(err.value) and "epochs" in str(err.value)


def test_unknown_key_from_set_names_the_option(conf):
    with pytest.raises(ConfigError, match=r"--set training.epoch: unknown key 'training.epoch'"):
        load_config("local", ["training.epoch=3"], conf_root=conf)
    with pytest.raises(ConfigError, match="unknown key 'nosuch'"):
        load_config("local", ["nosuch.key=1"], conf_root=conf)
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config("local", ["training.epochs"], conf_root=conf)


@pytest.mark.parametrize("override, message", [
    ("training.epochs=three", "key 'training.epochs' must be an integer, got 'three'"),
    ("training.epochs=2.5", "must be an integer"),
    ("training.use_gpu=maybe", "must be true or false"),
    ("training.hidden_units=128", "must be a list"),
    ("training.optimizer=adagrad", "must be one of adam, sgd, rmsprop"),
    ("lakehouse.engine=spark", "must be one of auto, delta-rs, jvm"),
    ("training.dropout=yes", "must be a number"),
    ("spark=local", "key 'spark' must be a mapping"),
])
def test_wrong_type_is_refused(conf, override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config("local", [override], conf_root=conf)


def test_wrong_type_in_a_file_names_the_file(conf):
    (conf / "local" / "training.yaml").write_text("training:\n  batch_size: [1, 2]\n")
    with pytest.raises(ConfigError, match=rf"{conf / 'local' / 'training.yaml'}: key 'training.batch_size' must be an integer"):
        load_config("local", conf_root=conf)


def test_broken_yaml_names_the_file(conf):
    (conf / "local" / "broken.yaml").write_text("training: [\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_config("local", conf_root=conf)
    (conf / "local" / "broken.yaml").write_text("- a list, not sections\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: the top level must be a mapping"):
        load_config("local", conf_root=conf)


def test_a_root_that_cannot_be_a_folder_is_refused(conf, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(ConfigError, match=rf"key 'lakehouse.root' is not a folder that can be created or written: {a_file}"):
        load_config("local", [f"lakehouse.root={a_file / 'lakehouse'}"], conf_root=conf)


def test_relative_root_is_relative_to_the_project_not_the_working_folder(conf, tmp_path, monkeypatch):
    from pipelines.config import PROJECT_ROOT

    monkeypatch.chdir(tmp_path)
    cfg = load_config("local", ["lakehouse.root=./lakehouse"], conf_root=conf)
    assert cfg.lakehouse.root == str(PROJECT_ROOT / "lakehouse" / "nycflights13")


def test_landing_outside_the_lakehouse_root_is_refused(conf, tmp_path):
    outside = tmp_path / "elsewhere"
    with pytest.raises(ConfigError, match=rf"key 'lakehouse.landing' must lie inside the lakehouse root {tmp_path / 'lh'}"):
        load_config("local", [f"lakehouse.landing={outside}"], conf_root=conf)
    with pytest.raises(ConfigError, match="must lie inside"):
        load_config("local", ["lakehouse.landing=../escape"], conf_root=conf)
    inside = load_config("local", [f"lakehouse.landing={tmp_path / 'lh' / 'raw'}"], conf_root=conf)
    assert inside.lakehouse.landing == str(tmp_path / "lh" / "raw" / "nycflights13")


def test_environment_variables_are_interpolated(conf, tmp_path, monkeypatch):
    (conf / "local" / "lakehouse.yaml").write_text("lakehouse:\n  root: ${LH_TEST_ROOT}/house\n")
    monkeypatch.setenv("LH_TEST_ROOT", str(tmp_path / "shared"))
    cfg = load_config("local", conf_root=conf)
    assert cfg.lakehouse.root == str(tmp_path / "shared" / "house" / "nycflights13")


def test_a_missing_environment_variable_names_the_file_key_and_variable(conf, monkeypatch):
    (conf / "local" / "lakehouse.yaml").write_text("lakehouse:\n  root: ${LH_TEST_UNSET}/house\n")
    monkeypatch.delenv("LH_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError) as err:
        load_config("local", conf_root=conf)
    assert str(conf / "local" / "lakehouse.yaml") in str(err.value)
    assert "key 'lakehouse.root' needs the environment variable LH_TEST_UNSET" in str(err.value)


@pytest.mark.parametrize("window, message", [
    ('["2013-02-30", "2013-03-31"]', "holds a date that does not exist"),
    ('["2013-03-31", "2013-03-01"]', "starts after it ends"),
    ('["2013-03-01"]', "must be \\[start, end\\]"),
])
def test_split_windows_must_be_real_ordered_dates(conf, window, message):
    with pytest.raises(ConfigError, match=rf"key 'pipeline.splits.validation' {message}"):
        load_config("local", [f"pipeline.splits.validation={window}"], conf_root=conf)


def test_an_unquoted_date_that_does_not_exist_names_the_file_and_key(conf):
    # PyYAML would raise a bare ValueError for an unquoted 2013-02-30; the loader keeps dates as text.
    (conf / "local" / "pipeline.yaml").write_text("pipeline:\n  splits:\n    test: [2013-02-30, 2013-03-31]\n")
    with pytest.raises(ConfigError, match=r"local/pipeline\.yaml: key 'pipeline.splits.test' holds a date that does not exist"):
        load_config("local", conf_root=conf)
    (conf / "local" / "pipeline.yaml").unlink()
    with pytest.raises(ConfigError, match=r"--set pipeline.splits.test: key 'pipeline.splits.test' holds a date"):
        load_config("local", ["pipeline.splits.test=[2013-02-30, 2013-03-31]"], conf_root=conf)
    cfg = load_config("local", ["pipeline.splits.test=[2013-12-01, 2013-12-31]"], conf_root=conf)
    assert cfg.split("test") == (date(2013, 12, 1), date(2013, 12, 31))


@pytest.mark.parametrize("override, message", [
    ("training.num_proc=-1", "key 'training.num_proc' must be at least 1, got -1"),
    ("training.num_proc=0", "must be at least 1, got 0"),
    ("training.batch_size=0", "key 'training.batch_size' must be at least 1"),
    ("training.dropout=1.0", "key 'training.dropout' must be in \\[0, 1\\)"),
    ("training.threshold=0", "key 'training.threshold' must be in \\(0, 1\\)"),
    ("lakehouse.target_file_bytes=0", "key 'lakehouse.target_file_bytes' must be at least 1"),
])
def test_counts_and_ranges_are_checked(conf, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("local", [override], conf_root=conf)


def test_unknown_environment_lists_the_known_ones(conf):
    (conf / "cluster").mkdir()
    with pytest.raises(ConfigError, match=r"unknown environment 'prod'.*known: cluster, local"):
        load_config("prod", conf_root=conf)


# ------------------------------------------------------------------------------------------------
# The project's own conf/


def test_the_project_local_environment_loads():
    cfg = load_config("local")
    assert cfg.lakehouse.engine == "delta-rs"
    assert cfg.spark.master.startswith("local")
    assert cfg.training.num_proc == 2
    for name in cfg.pipeline.splits:
        start, end = cfg.split(name)
        assert start <= end


def test_the_cluster_environment_loads_when_its_variables_are_set(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKEHOUSE_ROOT", str(tmp_path / "shared" / "lakehouse"))
    monkeypatch.setenv("LAKEHOUSE_LANDING", str(tmp_path / "shared" / "lakehouse" / "landing"))
    monkeypatch.setenv("SPARK_MASTER", "spark://head:7077")
    cfg = load_config("cluster")
    assert cfg.env == "cluster"
    assert cfg.lakehouse.root == str(tmp_path / "shared" / "lakehouse" / "nycflights13")
    assert cfg.lakehouse.engine == "jvm"
    assert cfg.spark.master == "spark://head:7077"
    assert cfg.training.use_gpu is True and cfg.training.num_proc >= 1
    assert cfg.spark.conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"


def test_the_cpu_cluster_environment_runs_the_cluster_path_with_delta_rs(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKEHOUSE_ROOT", str(tmp_path / "shared" / "lakehouse"))
    monkeypatch.setenv("LAKEHOUSE_LANDING", str(tmp_path / "shared" / "lakehouse" / "landing"))
    monkeypatch.setenv("SPARK_MASTER", "spark://head:7077")
    cfg = load_config("cluster-cpu")
    assert (cfg.lakehouse.engine, cfg.training.use_gpu, cfg.training.num_proc) == ("delta-rs", False, 2)
    assert "spark.sql.extensions" not in cfg.spark.conf and cfg.spark.master == "spark://head:7077"


def test_imported_from_the_dist_zip_the_configuration_is_the_conf_beside_it(tmp_path):
    """spark-submit --py-files dist/lakehouse_dl-<v>.zip: the driver finds dist/conf by itself."""
    import subprocess
    import sys
    import zipfile

    dist = tmp_path / "dist"
    shutil.copytree(PROJECT_ROOT / "conf", dist / "conf")
    archive = dist / "lakehouse_dl-test.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in (PROJECT_ROOT / "pipelines").rglob("*.py"):
            zf.write(path, str(path.relative_to(PROJECT_ROOT)))
    probe = ("import pipelines, pipelines.config as c; "
             "print(pipelines.__file__); print(c.PROJECT_ROOT); print(c.conf_dir())")
    env = {k: v for k, v in __import__("os").environ.items() if k != "LAKEHOUSE_DL_CONF"}
    out = subprocess.run([sys.executable, "-c", probe], env={**env, "PYTHONPATH": str(archive)}, cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == [str(archive / "pipelines" / "__init__.py"), str(dist), str(dist / "conf")]


def test_the_cluster_environment_without_its_variables_says_which(monkeypatch):
    for name in ("LAKEHOUSE_ROOT", "LAKEHOUSE_LANDING", "SPARK_MASTER"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match=r"cluster/\w+\.yaml: key '[a-z_.]+' needs the environment variable "
                                          r"(LAKEHOUSE_ROOT|LAKEHOUSE_LANDING|SPARK_MASTER)"):
        load_config("cluster")


def test_a_key_no_layer_sets_is_named_as_missing(tmp_path):
    conf = make_conf(tmp_path, {})
    text = (conf / "base" / "training.yaml").read_text().replace("  seed: 42\n", "")
    (conf / "base" / "training.yaml").write_text(text)
    with pytest.raises(ConfigError, match="key 'training.seed' is not set in any layer: conf/base declares every key"):
        load_config("local", conf_root=conf)


def test_a_dataset_brings_its_splits_run_date_and_training_settings_and_the_environment_still_wins(tmp_path):
    conf = make_conf(tmp_path, {
        "base/lakehouse.yaml": {"lakehouse": {"root": str(tmp_path / "lh")}},
        "local/training.yaml": {"training": {"epochs": 3}},
        "base/datasets/shop.yaml": {
            "name": "shop", "sources": {},
            "splits": {"train": ["2020-01-01", "2020-06-30"], "validation": ["2020-07-01", "2020-09-30"],
                       "test": ["2020-10-01", "2020-12-31"]},
            "default_run_date": "2020-12-30",
            "training": {"batch_size": 64, "epochs": 40, "hidden_units": [16]},
            "backtest": {"min_fold_rows": 300, "folds": 2}},
    })
    cfg = load_config("local", ["pipeline.dataset=shop", "training.hidden_units=[8]", "backtest.folds=4"], conf_root=conf)
    assert cfg.split("validation") == (date(2020, 7, 1), date(2020, 9, 30))
    assert cfg.nightly.default_date == "2020-12-30"
    assert cfg.training.batch_size == 64           # the dataset's, over conf/base
    assert cfg.training.epochs == 3                # the environment's, over the dataset
    assert cfg.training.hidden_units == [8]        # --set, over the dataset
    assert cfg.backtest.min_fold_rows == 300 and cfg.backtest.folds == 4   # its backtest section, likewise
    assert cfg.lakehouse.root == str(tmp_path / "lh" / "shop")
    assert cfg.lakehouse.landing == str(tmp_path / "lh" / "landing" / "shop")

    (conf / "base" / "datasets" / "shop.yaml").write_text(yaml.safe_dump(
        {"name": "shop", "sources": {}, "splits": {"train": ["2020-01-01", "2020-06-30"]},
         "training": {"batch_sise": 64}}))
    with pytest.raises(ConfigError, match=r"shop\.yaml: key 'training.batch_sise' is not a training setting"):
        load_config("local", ["pipeline.dataset=shop"], conf_root=conf)
    (conf / "base" / "datasets" / "shop.yaml").write_text(yaml.safe_dump(
        {"name": "shop", "sources": {}, "splits": {"train": ["2020-01-01", "2020-06-30"]},
         "backtest": {"min_rows": 300}}))
    with pytest.raises(ConfigError, match=r"shop\.yaml: key 'backtest.min_rows' is not a backtest setting"):
        load_config("local", ["pipeline.dataset=shop"], conf_root=conf)
    with pytest.raises(ConfigError, match=r"key 'pipeline.dataset' names 'nowhere', but there is no .*nowhere\.yaml"):
        load_config("local", ["pipeline.dataset=nowhere"], conf_root=conf)
    with pytest.raises(ConfigError, match=r"key 'pipeline.dataset' must be a dataset name"):
        load_config("local", ["pipeline.dataset=../etc"], conf_root=conf)
