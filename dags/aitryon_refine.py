"""Refine one coarse try-on image with DashScope's aitryon-refiner.

submit_refiner → wait_for_refiner (deferred to the triggerer) → report_refined_image.

Run it against the built-in emulator with `make demo`, or trigger it with your own URLs:
    airflow dags test aitryon_refine -c '{"person_image_url": "https://…", "top_garment_url": "https://…",
        "coarse_image_url": "https://…", "gender": "woman"}'
"""

from __future__ import annotations

import os
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_aitryon.operators.refiner import RefinerSubmitOperator
from airflow_provider_aitryon.sensors.refiner import RefinerTaskSensor

# Defaults point at the emulator's sample images so the DAG runs offline out of the box.
SAMPLES = os.environ.get("AITRYON_SAMPLES_URL", "http://127.0.0.1:8089/samples").rstrip("/")

with DAG(
    dag_id="aitryon_refine",
    description="Refine a coarse try-on image with DashScope aitryon-refiner",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["aitryon", "dashscope"],
    params={
        "person_image_url": Param(f"{SAMPLES}/person.png", type="string", description="Person image URL"),
        "top_garment_url": Param(f"{SAMPLES}/top.png", type="string", description="Top garment (or dress)"),
        "bottom_garment_url": Param(
            f"{SAMPLES}/bottom.png", type=["string", "null"], description="Bottom garment; empty for a dress"
        ),
        "coarse_image_url": Param(
            f"{SAMPLES}/coarse.png", type="string", description="Coarse try-on result (the emulator has a sample)"
        ),
        "gender": Param("woman", enum=["woman", "man"], description="Gender of the person"),
    },
) as dag:
    submit = RefinerSubmitOperator(
        task_id="submit_refiner",
        person_image_url="{{ params.person_image_url }}",
        top_garment_url="{{ params.top_garment_url }}",
        bottom_garment_url="{{ params.bottom_garment_url or '' }}",
        coarse_image_url="{{ params.coarse_image_url }}",
        gender="{{ params.gender }}",
        retries=2,
    )

    wait = RefinerTaskSensor(
        task_id="wait_for_refiner",
        dashscope_task_id=submit.output,
        poke_interval=2,
        timeout=30 * 60,
    )

    @task
    def report_refined_image(result: dict[str, Any]) -> str:
        print(
            f"Refined image: {result['image_url']} (DashScope task {result['task_id']}, "
            f"usage {result['usage']}). The URL expires 24 hours after the task ended."
        )
        return str(result["image_url"])

    report_refined_image(wait.output)
