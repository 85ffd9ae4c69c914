"""Configuration: layered YAML (`conf/base` → `conf/<env>` → `--set`) into typed, validated objects.

    >>> from pipelines.config import load_config
    >>> cfg = load_config("local", ["training.epochs=2"])
"""
from pipelines.config.loader import (PROJECT_ROOT, ConfigError, base_value, conf_dir, config_from_dict, config_hash,
                                     load_config)
from pipelines.config.settings import (Config, LakehouseConfig, NightlyConfig, PipelineConfig, SparkConfig,
                                       TrainingConfig)

__all__ = ["load_config", "config_from_dict", "config_hash", "base_value", "conf_dir", "ConfigError", "PROJECT_ROOT",
           "Config", "SparkConfig", "LakehouseConfig", "PipelineConfig", "TrainingConfig", "NightlyConfig"]
