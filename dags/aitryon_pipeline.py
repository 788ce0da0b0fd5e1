"""The whole try-on chain: coarse try-on → refiner → results saved before they expire → contact sheet.

submit_coarse → wait_for_coarse → submit_refiner → wait_for_refiner → save_coarse, save_refined
→ contact_sheet → report_cost (what the run was charged, and its review gallery ``report.html``)

The refiner is given the same person and garment URLs as the coarse stage, and the coarse stage
runs with resolution=-1 and restore_face=true (TryOnSubmitOperator's for_refiner default), as the
refiner requires. Images land under ``<output>/<run>/``; the saved refined image is the Asset
``aitryon_refined_image`` (its event's extra holds the file's URI and sha256), so downstream DAGs
can be scheduled on it.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, Param, task

from airflow_provider_aitryon.operators.refiner import RefinerSubmitOperator
from airflow_provider_aitryon.operators.report import TryOnReportOperator
from airflow_provider_aitryon.operators.storage import SaveTryOnResultOperator
from airflow_provider_aitryon.operators.tryon import TryOnSubmitOperator
from airflow_provider_aitryon.sensors.refiner import RefinerTaskSensor

SAMPLES = os.environ.get("AITRYON_SAMPLES_URL", "http://127.0.0.1:8089/samples").rstrip("/")
DEFAULT_OUTPUT = os.environ.get("AITRYON_OUTPUT", "/tmp/aitryon-output")
COARSE_MODEL = "aitryon"

REFINED_IMAGE = Asset(name="aitryon_refined_image")
# A finished run: its event's extra says what it was charged and where its review gallery is.
RUN_REPORT = Asset(name="aitryon_pipeline_report")

with DAG(
    dag_id="aitryon_pipeline",
    description="Coarse try-on, refine, save before the 24-hour expiry, contact sheet",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["aitryon", "dashscope"],
    params={
        "person_image_url": Param(f"{SAMPLES}/person.png", type="string"),
        "top_garment_url": Param(f"{SAMPLES}/top.png", type=["string", "null"]),
        "bottom_garment_url": Param(f"{SAMPLES}/bottom.png", type=["string", "null"]),
        "gender": Param("woman", enum=["woman", "man"]),
        "output": Param(DEFAULT_OUTPUT, type="string", description="Directory path or object-storage URI"),
    },
) as dag:

    @task
    def plan_output(params: dict[str, Any], run_id: str) -> str:
        """One folder per run, named after the run id with only path-safe characters."""
        return f"{str(params['output']).rstrip('/')}/{re.sub(r'[^A-Za-z0-9_.-]+', '_', run_id)}"

    folder = plan_output()

    urls = {
        "person_image_url": "{{ params.person_image_url }}",
        "top_garment_url": "{{ params.top_garment_url or '' }}",
        "bottom_garment_url": "{{ params.bottom_garment_url or '' }}",
    }
    submit_coarse = TryOnSubmitOperator(task_id="submit_coarse", model=COARSE_MODEL, retries=2, **urls)
    wait_for_coarse = RefinerTaskSensor(
        task_id="wait_for_coarse", dashscope_task_id=submit_coarse.output, poke_interval=2, timeout=30 * 60
    )
    submit_refiner = RefinerSubmitOperator(
        task_id="submit_refiner",
        coarse_image_url="{{ ti.xcom_pull(task_ids='wait_for_coarse')['image_url'] }}",
        gender="{{ params.gender }}",
        retries=2,
        **urls,
    )
    wait_for_refiner = RefinerTaskSensor(
        task_id="wait_for_refiner", dashscope_task_id=submit_refiner.output, poke_interval=2, timeout=30 * 60
    )
    wait_for_coarse >> submit_refiner

    save_coarse = SaveTryOnResultOperator(
        task_id="save_coarse",
        image_url=wait_for_coarse.output,
        destination="{{ ti.xcom_pull(task_ids='plan_output') }}/coarse.png",
        retries=3,
    )
    save_refined = SaveTryOnResultOperator(
        task_id="save_refined",
        image_url=wait_for_refiner.output,
        destination="{{ ti.xcom_pull(task_ids='plan_output') }}/refined.png",
        outlets=[REFINED_IMAGE],
        retries=3,
    )
    folder >> [save_coarse, save_refined]

    @task
    def contact_sheet(folder: str, coarse: dict[str, Any], refined: dict[str, Any], params: dict[str, Any]) -> dict:
        """person | garments | coarse | refined, labelled: judge the result at a glance."""
        from airflow.sdk import ObjectStoragePath

        from airflow_provider_aitryon.contact_sheet import save_contact_sheet
        from airflow_provider_aitryon.hooks.dashscope import DashScopeHook
        from airflow_provider_aitryon.preflight import input_policy
        from airflow_provider_aitryon.sources import read_image

        # The same address rules as pre-flight; oss:// inputs are read with the OSS connection.
        policy = input_policy(DashScopeHook().settings)

        def fetch(name: str) -> bytes | None:
            url = params.get(name)
            return read_image(url, field_name=name, policy=policy) if url else None

        return save_contact_sheet(
            [
                ("person", fetch("person_image_url")),
                ("top garment", fetch("top_garment_url")),
                ("bottom garment", fetch("bottom_garment_url")),
                ("coarse", ObjectStoragePath(coarse["uri"]).read_bytes()),
                ("refined", ObjectStoragePath(refined["uri"]).read_bytes()),
            ],
            f"{folder}/contact_sheet.png",
        )

    sheet = contact_sheet(folder, save_coarse.output, save_refined.output)

    # What the run was charged (its successful tasks, priced by pricing.py's table) and its review gallery.
    report_cost = TryOnReportOperator(
        task_id="report_cost",
        output_dir=folder,
        images={
            "person": "{{ params.person_image_url }}",
            "top garment": "{{ params.top_garment_url or '' }}",
            "bottom garment": "{{ params.bottom_garment_url or '' }}",
            "coarse": "{{ ti.xcom_pull(task_ids='save_coarse')['uri'] }}",
            "refined": "{{ ti.xcom_pull(task_ids='save_refined')['uri'] }}",
        },
        results={COARSE_MODEL: wait_for_coarse.output, "aitryon-refiner": wait_for_refiner.output},
        extra={"contact_sheet": "{{ ti.xcom_pull(task_ids='contact_sheet')['uri'] }}"},
        outlets=[RUN_REPORT],
    )
    sheet >> report_cost
