"""What a notebook needs to explore the lakehouse: the configuration, Spark and the tables.

Notebooks call `open_lakehouse()` first. The environment variables `LAKEHOUSE_DL_ENV` and
`LAKEHOUSE_DL_SET` (overrides separated by spaces, as `--set` takes them) point a notebook at
another lakehouse; the test suite uses them to run the notebooks on a small slice.
"""
from __future__ import annotations

import os
import shlex

from pipelines.config import load_config
from pipelines.console import configure_logging
from pipelines.storage import Lakehouse
from pipelines.storage.spark import build_spark


def open_lakehouse(*overrides: str):
    """Return (cfg, spark, lakehouse) for the configured environment.

        >>> cfg, spark, lh = open_lakehouse()
        >>> lh.table("silver.flights").read().count()
    """
    env = os.environ.get("LAKEHOUSE_DL_ENV", "local")
    sets = shlex.split(os.environ.get("LAKEHOUSE_DL_SET", "")) + list(overrides)
    cfg = load_config(env, sets)
    configure_logging()   # the stages' progress lines appear under the cell
    spark = build_spark(cfg, app_name="lakehouse-dl notebook")
    return cfg, spark, Lakehouse.from_config(cfg, spark)
