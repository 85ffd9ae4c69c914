"""How the training function reaches Horovod's rank processes on a cluster.

`horovod.spark.run` starts each rank as a new Python process (`python -m horovod.spark.task.gloo_exec_fn`)
beside a Spark task, in the executor's working folder. Spark puts the files of `--py-files` (the
package's zip from `make dist`) on the path of its own Python workers only, so a rank could not
import the package on a node where it is not installed. The entry below travels by value (it is
the only code a rank unpickles before the package can be imported): it puts the executor's copies
of the py-files on the path, then unpickles the plan and calls the rank side.

    >>> horovod.spark.run(rank_entry, args=(cloudpickle.dumps(plan), shipped_files(spark)), num_proc=2)
"""
from __future__ import annotations

import sys

import cloudpickle


def shipped_files(spark) -> list[str]:
    """The names of the files spark-submit shipped with --py-files (none in local mode)."""
    listed = spark.sparkContext.getConf().get("spark.submit.pyFiles", "") or ""
    return [entry.rstrip("/").rsplit("/", 1)[-1] for entry in listed.split(",") if entry.strip()]


def rank_entry(plan_bytes: bytes, py_files: list[str]) -> dict:
    """What every Horovod rank runs: the shipped py-files first on the path, then the rank side."""
    import os
    import pickle

    folder = os.environ.get("HOROVOD_SPARK_WORK_DIR", os.getcwd())
    for name in reversed(py_files):
        path = os.path.join(folder, name)
        if os.path.exists(path) and path not in sys.path:
            sys.path.insert(0, path)
    from pipelines.ml.training.worker import run_training

    return run_training(pickle.loads(plan_bytes))


# Pickled by value: a rank must be able to load `rank_entry` before it can import this package.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
