"""Airflow DAG of the nightly job: one spark-submit per night, for the day that just ended.

Copy this file into Airflow's dags/ folder and set the Airflow Variables `lakehouse_dl_home`
(the folder holding dist/ and jobs/) and `spark_master`. The job is idempotent and refuses to
run beside another run on the same lakehouse, so retries and catch-up runs are safe.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from airflow import DAG
from airflow.models import Variable
from airflow.operators.bash import BashOperator

SPARK_SUBMIT = (
    "cd {{ var.value.lakehouse_dl_home }} && "
    "spark-submit --master {{ var.value.spark_master }} "
    "--packages io.delta:delta-spark_2.12:3.3.2 "
    "--py-files dist/lakehouse_dl-0.1.0.zip "
    "jobs/nightly.py --env cluster --date {{ ds }}"
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
    nightly = BashOperator(task_id="nightly", bash_command=SPARK_SUBMIT,
                           env={"LAKEHOUSE_ROOT": Variable.get("lakehouse_root", "/data/lakehouse"),
                                "LAKEHOUSE_LANDING": Variable.get("lakehouse_landing", "/data/landing"),
                                "SPARK_MASTER": Variable.get("spark_master", "local[*]")},
                           append_env=True)
