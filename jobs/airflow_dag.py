"""Airflow DAG of the nightly job: one spark-submit per night, for the day that just ended.

Copy this file into Airflow's dags/ folder and set the Airflow Variables `lakehouse_dl_home` (the
folder holding jobs/ and what `make dist` built: dist/lakehouse_dl-0.1.0.zip and dist/conf/) and
`spark_master`. The job is idempotent and refuses to run beside another run on the same
lakehouse, so retries and catch-up runs are safe. After it, `maintain` compacts and vacuums.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

SPARK_SUBMIT = (
    "cd {{ var.value.lakehouse_dl_home }} && "
    "LAKEHOUSE_DL_CONF=$PWD/dist/conf "
    "spark-submit --master {{ var.value.spark_master }} "
    "--packages io.delta:delta-spark_2.12:3.3.2 "
    "--py-files dist/lakehouse_dl-0.1.0.zip "
    "jobs/nightly.py --env cluster --log-format json --date {{ ds }}"
)

with DAG(
    dag_id="lakehouse_dl_nightly",
    description="landing → bronze → silver → gold → train or reuse → score → evaluate → report",
    schedule="30 2 * * *",
    start_date=datetime(2013, 1, 29),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10)},
    tags=["lakehouse-dl"],
) as dag:
    # What conf/cluster reads from the environment. Templates (`env` is a templated field), not
    # Variable.get: the scheduler parses this file every few seconds, and a Variable read at parse
    # time is a database query each time.
    cluster_env = {"LAKEHOUSE_ROOT": "{{ var.value.get('lakehouse_root', '/data/lakehouse') }}",
                   "LAKEHOUSE_LANDING": "{{ var.value.get('lakehouse_landing', '/data/landing') }}",
                   "SPARK_MASTER": "{{ var.value.get('spark_master', 'local[*]') }}"}
    nightly = BashOperator(task_id="nightly", bash_command=SPARK_SUBMIT, env=cluster_env, append_env=True)
    # Compaction and vacuum after the night's writes (pipelines/ops/maintenance.py): no Spark, seconds.
    maintain = BashOperator(task_id="maintain",
                            bash_command="cd {{ var.value.lakehouse_dl_home }} && "
                                         "LAKEHOUSE_DL_CONF=$PWD/dist/conf PYTHONPATH=dist/lakehouse_dl-0.1.0.zip "
                                         "python -m pipelines.cli maintain --env cluster --log-format json",
                            env=cluster_env, append_env=True)
    nightly >> maintain
