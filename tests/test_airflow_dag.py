"""The Airflow DAG (jobs/airflow_dag.py), imported by Airflow itself and its task graph checked.

Airflow 2.10 cannot share the stack's environment (its pins collide with TensorFlow's and
PySpark's), so it lives in `.venv-airflow/`, built once by uv (about 20 s; pip takes about 15
minutes to resolve it) and reused like `.venv`. A machine that cannot reach PyPI skips the test
and says why.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
VENV = PROJECT / ".venv-airflow"
AIRFLOW = "apache-airflow==2.10.5"
STAMP = VENV / f".installed-{AIRFLOW}"

# Run by Airflow's Python: the DagBag's view of the file, and the nightly task's command rendered
# for the run Airflow starts on 2013-12-31 at 02:30 (its data interval: 2013-12-30).
INSPECT = """
import json, sys
import pendulum
from airflow.models import DagBag
bag = DagBag(dag_folder=sys.argv[1], include_examples=False)
out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
for dag in bag.dags.values():
    start = pendulum.datetime(2013, 12, 30, 2, 30, tz="UTC")
    interval = dag.timetable.infer_manual_data_interval(run_after=pendulum.datetime(2013, 12, 31, 2, 30, tz="UTC"))
    task = dag.get_task("nightly")
    context = {"ds": interval.start.to_date_string(), "var": {"value": {"lakehouse_dl_home": "/opt/lakehouse-dl",
                                                                      "spark_master": "spark://m:7077"}}}
    out["dags"][dag.dag_id] = {
        "schedule": str(dag.schedule_interval),
        "tasks": {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks},
        "nightly": task.render_template(task.bash_command, context),
        "maintain": dag.get_task("maintain").bash_command,
        "interval_start": interval.start.to_date_string(),
    }
print(json.dumps(out))
"""


def airflow_python() -> Path:
    """`.venv-airflow/bin/python`, built with uv the first time; skips where PyPI is out of reach."""
    python = VENV / "bin" / "python"
    if STAMP.exists():
        return python
    tools = VENV / "uv"
    steps = [[sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", str(tools), "uv"],
             [sys.executable, "-m", "uv", "venv", "-q", "--allow-existing", "-p", sys.executable, str(VENV)],
             [sys.executable, "-m", "uv", "pip", "install", "-q", "-p", str(python), AIRFLOW]]
    env = {**os.environ, "PYTHONPATH": str(tools)}
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=900, env=env)
        if done.returncode != 0:
            pytest.skip(f"Airflow could not be installed into {VENV}: {' '.join(step[-3:])} failed: "
                        f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    STAMP.touch()
    return python


@pytest.fixture(scope="module")
def dag(tmp_path_factory):
    python = airflow_python()
    home = tmp_path_factory.mktemp("airflow_home")
    done = subprocess.run([str(python), "-c", INSPECT, str(PROJECT / "jobs" / "airflow_dag.py")],
                          capture_output=True, text=True, timeout=300,
                          env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                               "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_dag_imports_in_airflow_with_its_task_graph(dag):
    assert dag["errors"] == {}
    nightly = dag["dags"]["lakehouse_dl_nightly"]
    assert nightly["schedule"] == "30 2 * * *"
    assert nightly["tasks"] == {"nightly": ["maintain"], "maintain": []}
    # Logs a scheduler collects: one JSON object per line, from both tasks.
    assert "--log-format json" in nightly["nightly"] and "--log-format json" in nightly["maintain"]


def test_the_dag_and_the_cron_line_pass_the_same_date_as_nightly_date(dag):
    """The run of 2013-12-31 02:30 is for the day that just ended, as the cron line of docs/cluster.md
    (`date -d yesterday`) and `lakehouse-dl nightly --date` mean it."""
    nightly = dag["dags"]["lakehouse_dl_nightly"]
    ran_on = date(2013, 12, 31)
    assert nightly["interval_start"] == (ran_on - timedelta(days=1)).isoformat()
    assert nightly["nightly"].endswith("jobs/nightly.py --env cluster --log-format json --date 2013-12-30")
    assert "spark-submit --master spark://m:7077" in nightly["nightly"]
    cron = next(line for line in (PROJECT / "docs" / "cluster.md").read_text().splitlines()
                if line.startswith("30 2 * * *"))
    assert "nightly --date $(date -d yesterday +\\%F)" in cron
