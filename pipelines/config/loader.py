"""Layered YAML configuration loaded into typed, validated objects.

`conf/base/*.yaml` holds what every environment shares; `conf/<env>/*.yaml` overrides only what
differs; `--set key=value` overrides single keys. Every value is checked against the dataclasses
of `pipelines.config.settings` before Spark starts, and an error names the file and the key that caused it. Values may
refer to environment variables as `${NAME}` (the only place secrets may come from).

    >>> cfg = load_config(env="local", overrides=["training.epochs=2"])
    >>> cfg.training.epochs
    2
"""
from __future__ import annotations

import dataclasses
import os
import re
import typing
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml

from pipelines.config.settings import BASELINES, Config

# The project folder: conf/ and the default lakehouse lie beside the package. Imported from the zip
# `make dist` builds (spark-submit --py-files), it is the folder holding the zip, dist/, where
# `make dist` put conf/: a job on a cluster finds its configuration without LAKEHOUSE_DL_CONF.
_ABOVE_PACKAGE = Path(__file__).resolve().parents[2]
PROJECT_ROOT = _ABOVE_PACKAGE.parent if _ABOVE_PACKAGE.is_file() else _ABOVE_PACKAGE


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names where."""


# --------------------------------------------------------------------------------------------
# Loading


def conf_dir() -> Path:
    """The configuration folder: $LAKEHOUSE_DL_CONF, else `conf/` beside the package (or beside
    the zip it was imported from)."""
    return Path(os.environ.get("LAKEHOUSE_DL_CONF", PROJECT_ROOT / "conf"))


def load_config(env: str = "local", overrides: list[str] | tuple[str, ...] = (),
                conf_root: Path | None = None) -> Config:
    """Merge `base`, then `env`, then `overrides` (``key=value``), and validate the result."""
    conf_root = Path(conf_root or conf_dir())
    if not (conf_root / env).is_dir():
        known = sorted(p.name for p in conf_root.iterdir() if p.is_dir() and p.name != "base")
        raise ConfigError(f"unknown environment '{env}': no folder {conf_root / env} (known: {', '.join(known)})")
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for layer in ("base", env):
        for path in sorted((conf_root / layer).glob("*.yaml")):
            _merge(merged, _read_yaml(path), origin, str(path), prefix="")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, for example training.epochs=3")
        key, raw = item.split("=", 1)
        try:
            value = yaml.load(raw, Loader=_Loader) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: the value is not valid YAML: {exc}") from exc
        nested: Any = value
        for part in reversed(_split_key(key.strip())):
            nested = {part: nested}
        _merge(merged, nested, origin, f"--set {key}", prefix="")
    merged = _interpolate(merged, origin, prefix="")
    merged["env"] = env
    cfg = _build(Config, merged, origin, prefix="")
    _apply_dataset(cfg, origin, conf_root)
    _check_semantics(cfg, origin)
    # Every dataset is a lakehouse of its own inside the configured one (see _apply_dataset).
    cfg.lakehouse.root = _join(cfg.lakehouse.root, cfg.pipeline.dataset)
    cfg.lakehouse.landing = _join(cfg.lakehouse.landing, cfg.pipeline.dataset)
    return cfg


def dataset_path(name: str, conf_root: Path | None = None) -> Path:
    """The declaration of dataset `name`: `conf/base/datasets/<name>.yaml`."""
    return Path(conf_root or conf_dir()) / "base" / "datasets" / f"{name}.yaml"


def _apply_dataset(cfg: Config, origin: dict[str, str], conf_root: Path) -> None:
    """Give the configuration its dataset's defaults.

    Every dataset is a lakehouse of its own inside the configured one: its tables, models, reports
    and lock under `<lakehouse.root>/<dataset>/`, its raw files under `<lakehouse.landing>/<dataset>/`,
    so two datasets live side by side and never see each other's tables. The split windows, the
    default run date and the dataset's `training:` and `backtest:` settings come from the dataset's
    YAML unless `pipeline.splits`, `nightly.default_date` or an environment or `--set` key override
    them (a test slice does): the dataset's values replace conf/base's only. The rest of the YAML is
    `pipelines.datasets`' to read.
    """
    name = cfg.pipeline.dataset
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ConfigError(f"{_where(origin, 'pipeline.dataset')}: key 'pipeline.dataset' must be a dataset name "
                          f"(lower case letters, digits and _), got {name!r}")
    path = dataset_path(name, conf_root)
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"{_where(origin, 'pipeline.dataset')}: key 'pipeline.dataset' names {name!r}, but there "
                          f"is no {path} (datasets declared: {', '.join(known) or 'none'})")
    declared = _read_yaml(path)
    if not cfg.pipeline.splits:
        splits = declared.get("splits")
        if not splits:
            raise ConfigError(f"{path}: key 'splits' is required (or set pipeline.splits)")
        origin["pipeline.splits"] = f"{path} (splits)"
        cfg.pipeline.splits = {str(k): [str(d) for d in v] for k, v in splits.items()}
    if not cfg.nightly.default_date:
        # A live feed without a replay date runs for today.
        cfg.nightly.default_date = str(declared.get("default_run_date") or date.today().isoformat())
    training = declared.get("training") or {}
    if not isinstance(training, dict):
        raise ConfigError(f"{path}: key 'training' must be a mapping of training settings, got {training!r}")
    # The head the dataset's nightly trains and serves is declared with its prediction.
    prediction = declared.get("prediction")
    head = prediction.get("head") if isinstance(prediction, dict) else None
    if head is not None:
        if "head" in training and training["head"] != head:
            raise ConfigError(f"{path}: key 'training.head' ({training['head']}) contradicts 'prediction.head' "
                              f"({head}); declare the head once, as prediction.head")
        training = {**training, "head": head}
    backtest = declared.get("backtest") or {}
    if not isinstance(backtest, dict):
        raise ConfigError(f"{path}: key 'backtest' must be a mapping of backtest settings, got {backtest!r}")
    base = str(conf_root / "base")
    for section, settings in (("training", training), ("backtest", backtest)):
        target = getattr(cfg, section)
        hints = typing.get_type_hints(type(target))
        for key, value in settings.items():
            dotted = f"{section}.{key}"
            if key not in hints:
                raise ConfigError(f"{path}: key '{dotted}' is not a {section} setting (allowed: {', '.join(sorted(hints))})")
            if origin.get(dotted, base).startswith(base):
                origin[dotted] = f"{path} ({section})"
                setattr(target, key, _coerce(hints[key], value, origin, dotted))
    _check_splits(cfg, origin)


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}" if "://" in root else str(Path(root) / name)


class _Loader(yaml.SafeLoader):
    """YAML without implicit timestamps: dates stay strings and are checked as dates where they are used."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


# Mappings whose own keys contain dots (Spark properties): `--set spark.conf.spark.x.y=1`.
FREE_FORM_MAPPINGS = ("spark.conf",)


def _split_key(key: str) -> list[str]:
    for prefix in FREE_FORM_MAPPINGS:
        if key.startswith(prefix + ".") and len(key) > len(prefix) + 1:
            return [*prefix.split("."), key[len(prefix) + 1:]]
    return key.split(".")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(), Loader=_Loader) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def _merge(into: dict, new: dict, origin: dict[str, str], source: str, prefix: str) -> None:
    for key, value in new.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, origin, source, dotted + ".")
        else:
            into[key] = value
            origin[dotted] = source
            if isinstance(value, dict):
                for sub in _leaf_keys(value, dotted + "."):
                    origin[sub] = source


def _leaf_keys(d: dict, prefix: str) -> list[str]:
    out = []
    for k, v in d.items():
        out.append(prefix + str(k))
        if isinstance(v, dict):
            out.extend(_leaf_keys(v, f"{prefix}{k}."))
    return out


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _interpolate(value: Any, origin: dict[str, str], prefix: str) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, origin, f"{prefix}{k}.") for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, origin, prefix) for v in value]
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            name = m.group(1)
            if name not in os.environ:
                key = prefix.rstrip(".")
                raise ConfigError(f"{_where(origin, key)}: key '{key}' needs the environment variable {name}, which is not set")
            return os.environ[name]
        return _ENV_REF.sub(sub, value)
    return value


def _where(origin: dict[str, str], key: str) -> str:
    while key and key not in origin:
        key = key.rpartition(".")[0]
    return origin.get(key, "configuration")


def _build(cls: type, data: Any, origin: dict[str, str], prefix: str) -> Any:
    if not isinstance(data, dict):
        key = prefix.rstrip(".")
        raise ConfigError(f"{_where(origin, key)}: key '{key}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            dotted = f"{prefix}{key}"
            raise ConfigError(f"{_where(origin, dotted)}: unknown key '{dotted}' (allowed here: {', '.join(sorted(names))})")
    missing = [f"{prefix}{f.name}" for f in dataclasses.fields(cls) if f.name not in data]
    if missing:
        raise ConfigError(f"key{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)} "
                          f"{'are' if len(missing) > 1 else 'is'} not set in any layer: conf/base declares every key "
                          "with its default value")
    return cls(**{f.name: _coerce(hints[f.name], data[f.name], origin, f"{prefix}{f.name}")
                  for f in dataclasses.fields(cls)})


def _coerce(tp: Any, value: Any, origin: dict[str, str], key: str) -> Any:
    where = _where(origin, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, origin, key + ".")
    if tp is Any:
        return value
    org = typing.get_origin(tp)
    args = typing.get_args(tp)
    if org is Literal:
        if value not in args:
            raise ConfigError(f"{where}: key '{key}' must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if org is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: key '{key}' must be a list, got {type(value).__name__} {value!r}")
        return [_coerce(args[0], v, origin, key) for v in value]
    if org is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: key '{key}' must be a mapping, got {type(value).__name__}")
        return {str(k): _coerce(args[1], v, origin, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: key '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{where}: key '{key}' must be a string, got {value!r}")
        return str(value).lower() if isinstance(value, bool) else str(value)
    raise ConfigError(f"{where}: key '{key}' has an unsupported type {tp}")


def _check_semantics(cfg: Config, origin: dict[str, str]) -> None:
    """Checks that need more than a type: positive counts, real dates, paths that can exist."""
    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{_where(origin, key)}: key '{key}' {message}")

    for key in ("num_proc", "threads_per_proc", "batch_size", "epochs", "embedding_dim", "importance_rows",
                "cross_layers", "sequence_units"):
        if getattr(cfg.training, key) < 1:
            fail(f"training.{key}", f"must be at least 1, got {getattr(cfg.training, key)}")
    if not 0 <= cfg.training.dropout < 1:
        fail("training.dropout", f"must be in [0, 1), got {cfg.training.dropout}")
    if not 0 < cfg.training.threshold < 1:
        fail("training.threshold", f"must be in (0, 1), got {cfg.training.threshold}")
    for key in ("target_file_bytes", "row_group_rows", "model_input_row_group_rows"):
        if getattr(cfg.lakehouse, key) < 1:
            fail(f"lakehouse.{key}", "must be at least 1")
    if cfg.lakehouse.keep_reports < 0:
        fail("lakehouse.keep_reports", f"must be at least 0, got {cfg.lakehouse.keep_reports}")
    if cfg.lakehouse.keep_registered_models < 0:
        fail("lakehouse.keep_registered_models", f"must be at least 0, got {cfg.lakehouse.keep_registered_models}")
    if cfg.lakehouse.lock_lease_seconds <= 0:
        fail("lakehouse.lock_lease_seconds", f"must be more than 0, got {cfg.lakehouse.lock_lease_seconds}")
    try:
        if cfg.nightly.default_date:
            date.fromisoformat(cfg.nightly.default_date)
    except ValueError:
        fail("nightly.default_date", f"is not a date that exists: {cfg.nightly.default_date!r}")
    if cfg.nightly.retrain_every_days < 1 or cfg.nightly.rescore_days < 0 or cfg.nightly.evaluate_days < 1:
        fail("nightly", "needs retrain_every_days >= 1, rescore_days >= 0 and evaluate_days >= 1")
    if cfg.backtest.folds < 0:
        fail("backtest.folds", f"must be 0 (no backtest) or more, got {cfg.backtest.folds}")
    for key in ("epochs", "max_train_rows"):
        if getattr(cfg.backtest, key) < 0:
            fail(f"backtest.{key}", f"must be 0 (the training's) or more, got {getattr(cfg.backtest, key)}")
    if cfg.backtest.min_fold_rows < 0:
        fail("backtest.min_fold_rows", f"must be 0 (a month a fold) or more, got {cfg.backtest.min_fold_rows}")
    for key in ("max_evals", "parallelism"):
        if getattr(cfg.tuning, key) < 1:
            fail(f"tuning.{key}", f"must be at least 1, got {getattr(cfg.tuning, key)}")
    for key in ("epochs", "max_train_rows"):
        if getattr(cfg.tuning, key) < 0:
            fail(f"tuning.{key}", f"must be 0 (the backtest's) or more, got {getattr(cfg.tuning, key)}")
    kinds = {"choice", "uniform", "loguniform", "quniform"}
    settable = {"dnn": {f.name for f in dataclasses.fields(cfg.training)} - {"num_proc", "head", "baselines"},
                **{kind: set(baseline.settings) for kind, baseline in BASELINES.items()}}
    for model, settings in cfg.tuning.space.items():
        if model not in settable:
            fail(f"tuning.space.{model}", f"is not a model that can be tuned (known: {', '.join(settable)})")
        for name, spec in settings.items():
            if name not in settable[model]:
                fail(f"tuning.space.{model}.{name}", f"is not a setting of {model} (allowed: {', '.join(sorted(settable[model]))})")
            if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in kinds:
                fail(f"tuning.space.{model}.{name}", f"must be one of {{choice|uniform|loguniform|quniform: [...]}}, got {spec!r}")
    _resolve_paths(cfg, fail)


def _check_splits(cfg: Config, origin: dict[str, str]) -> None:
    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{_where(origin, key)}: key '{key}' {message}")

    for name, window in cfg.pipeline.splits.items():
        if len(window) != 2:
            fail(f"pipeline.splits.{name}", f"must be [start, end], got {window}")
        try:
            start, end = (date.fromisoformat(d) for d in window)
        except ValueError as exc:
            fail(f"pipeline.splits.{name}", f"holds a date that does not exist: {exc}")
        if start > end:
            fail(f"pipeline.splits.{name}", f"starts after it ends: {window}")


def _resolve_paths(cfg: Config, fail) -> None:
    root = _resolve(cfg.lakehouse.root)
    cfg.lakehouse.root = str(root)
    if "://" not in cfg.lakehouse.root:
        parent = next((p for p in [root, *root.parents] if p.exists()), None)
        if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
            fail("lakehouse.root", f"is not a folder that can be created or written: {root}")
    landing = Path(cfg.lakehouse.landing)
    landing = landing if landing.is_absolute() or "://" in cfg.lakehouse.landing else root / landing
    landing = _resolve(str(landing))
    cfg.lakehouse.landing = str(landing)
    if "://" not in cfg.lakehouse.root and not landing.is_relative_to(root):
        fail("lakehouse.landing", f"must lie inside the lakehouse root {root}, got {landing}")


def _resolve(path: str) -> Path:
    if "://" in path:
        return Path(path)
    p = Path(path).expanduser()
    # Relative paths are relative to the project folder, so a job finds the same lakehouse
    # whatever folder it was started from.
    return (p if p.is_absolute() else PROJECT_ROOT / p).resolve()


def config_from_dict(data: dict[str, Any], source: str = "stored configuration") -> Config:
    """The typed `Config` of a dictionary `dataclasses.asdict(cfg)` gave (the registry stores one
    per model), checked like a loaded one; errors name `source`. Paths are taken as they are:
    they already hold the dataset's folder.

        >>> config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
        True
    """
    origin = {"": source}
    # A configuration stored before a section existed takes that section from conf/base.
    data = {**{f.name: base_value(f.name) for f in dataclasses.fields(Config)
               if f.name not in data and f.name != "env"}, **data}
    cfg = _build(Config, data, origin, prefix="")
    _check_splits(cfg, origin)
    return cfg


def config_hash(cfg: Config) -> str:
    """A short, stable hash of the whole configuration (recorded with each model)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]


def base_value(key: str) -> Any:
    """The value `conf/base` gives a dotted key: the default, for code built without a Config
    (a `Lakehouse(root, spark)` opened in a notebook or test)."""
    merged: dict[str, Any] = {}
    for path in sorted((conf_dir() / "base").glob("*.yaml")):
        _merge(merged, _read_yaml(path), {}, str(path), prefix="")
    value: Any = merged
    for part in _split_key(key):
        if not isinstance(value, dict) or part not in value:
            raise ConfigError(f"conf/base does not declare the key '{key}'")
        value = value[part]
    return value
