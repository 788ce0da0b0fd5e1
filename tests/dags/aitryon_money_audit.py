"""Test DAG of the money audit: submit a refiner task, wait for it, save the image.

The audit runs it with `DAG.test()` at a fixed logical date, so a second run is a clear of the
same run (same run id), and points the emulator's faults at it (lost replies, clock skew, a second
submitter). The output folder and the sensor's timeout come from the environment.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_aitryon.operators.refiner import RefinerSubmitOperator
from airflow_provider_aitryon.operators.storage import SaveTryOnResultOperator
from airflow_provider_aitryon.sensors.refiner import RefinerTaskSensor

SAMPLES = os.environ.get("AITRYON_SAMPLES_URL", "http://127.0.0.1:8089/samples").rstrip("/")
OUTPUT = os.environ.get("AITRYON_AUDIT_OUTPUT", "/tmp/aitryon-audit").rstrip("/")
SENSOR_TIMEOUT = float(os.environ.get("AITRYON_AUDIT_SENSOR_TIMEOUT", "300"))

with DAG(
    dag_id="aitryon_money_audit",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "person_image_url": Param(f"{SAMPLES}/person.png", type="string"),
        "coarse_image_url": Param(f"{SAMPLES}/coarse.png", type="string"),
    },
) as dag:
    submit = RefinerSubmitOperator(
        task_id="submit",
        person_image_url="{{ params.person_image_url }}",
        top_garment_url=f"{SAMPLES}/top.png",
        bottom_garment_url=f"{SAMPLES}/bottom.png",
        coarse_image_url="{{ params.coarse_image_url }}",
        gender="woman",
    )
    wait = RefinerTaskSensor(task_id="wait", dashscope_task_id=submit.output, poke_interval=0.5, timeout=SENSOR_TIMEOUT)
    SaveTryOnResultOperator(task_id="save", image_url=wait.output, destination=f"{OUTPUT}/")
