"""Test DAG for tests/test_real_airflow.py: a user kills tasks that wait in the worker.

``submit_and_wait`` submits and waits in its worker (``deferrable=False``); ``poke`` is a sensor in
poke mode on a task ``submit`` made. The test marks both failed through the REST API while their
DashScope tasks are PENDING: Airflow SIGTERMs the task processes, whose ``on_kill`` must cancel
the tasks so they are never charged.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

from airflow_provider_aitryon.operators.tryon import TryOnSubmitOperator
from airflow_provider_aitryon.sensors.refiner import RefinerTaskSensor

SAMPLES = os.environ.get("AITRYON_SAMPLES_URL", "http://127.0.0.1:8089/samples").rstrip("/")
IMAGES = {"person_image_url": f"{SAMPLES}/person.png", "top_garment_url": f"{SAMPLES}/top.png"}

with DAG(
    dag_id="real_killed_in_worker",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
) as dag:
    TryOnSubmitOperator(
        task_id="submit_and_wait", wait_for_completion=True, deferrable=False, poll_interval=1, **IMAGES
    )
    submit = TryOnSubmitOperator(task_id="submit", **IMAGES)
    RefinerTaskSensor(
        task_id="poke", dashscope_task_id=submit.output, deferrable=False, mode="poke", poke_interval=1, timeout=600
    )
