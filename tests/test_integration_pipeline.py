"""The full pipeline DAG and the no-double-charge guarantee, in real Airflow against the emulator."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from harness import REPO, airflow_env, dags_test, migrate, task_states, xcom_value
from PIL import Image

from airflow_provider_aitryon.contact_sheet import sheet_size
from airflow_provider_aitryon.emulator import Emulator, EmulatorConfig

pytestmark = pytest.mark.integration

API_KEY = "sk-pipeline-test"


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(latency=1.0, api_key=API_KEY)) as emu:
        yield emu


@pytest.fixture(scope="module")
def airflow(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    home = tmp_path_factory.mktemp("airflow_home")
    env = airflow_env(home, emulator.base_url, api_key=API_KEY)
    migrate(env)
    return home, env


def fetch(url: str) -> bytes:
    response = requests.get(url, timeout=10)
    response.raise_for_status()
    return response.content


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_pipeline_saves_both_images_and_a_contact_sheet(emulator, airflow, tmp_path):
    home, env = airflow
    before = dict(emulator.stats()["submits_by_model"])
    result = dags_test(env, "aitryon_pipeline", {"output": str(tmp_path)}, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    states = task_states(home, "aitryon_pipeline")
    assert set(states.values()) == {"success"}, states
    assert len(states) == 9

    after = emulator.stats()["submits_by_model"]
    assert after["aitryon"] == before.get("aitryon", 0) + 1
    assert after["aitryon-refiner"] == before.get("aitryon-refiner", 0) + 1

    coarse_result = xcom_value(home, "aitryon_pipeline", "wait_for_coarse")
    refined_result = xcom_value(home, "aitryon_pipeline", "wait_for_refiner")
    saved_coarse = xcom_value(home, "aitryon_pipeline", "save_coarse")
    saved_refined = xcom_value(home, "aitryon_pipeline", "save_refined")
    (run_folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert Path(saved_coarse["uri"]) == run_folder / "coarse.png"
    assert Path(saved_refined["uri"]) == run_folder / "refined.png"
    coarse_bytes = fetch(coarse_result["image_url"])
    refined_bytes = fetch(refined_result["image_url"])
    assert (run_folder / "coarse.png").read_bytes() == coarse_bytes
    assert (run_folder / "refined.png").read_bytes() == refined_bytes
    assert saved_refined["sha256"] == sha(refined_bytes)
    assert not [p for p in run_folder.iterdir() if p.name.startswith(".")]  # no temp files left

    # The refiner was given the coarse stage's result and the same person and garment URLs.
    tasks = {t["task_id"]: t for t in emulator.tasks()}
    refiner_input = tasks[refined_result["task_id"]]["input"]
    coarse_input = tasks[coarse_result["task_id"]]["input"]
    assert refiner_input["coarse_image_url"] == coarse_result["image_url"]
    for field in ("person_image_url", "top_garment_url", "bottom_garment_url"):
        assert refiner_input[field] == coarse_input[field]
    assert tasks[coarse_result["task_id"]]["parameters"] == {"resolution": -1, "restore_face": True}

    sheet_path = run_folder / "contact_sheet.png"
    with Image.open(sheet_path) as sheet:
        sheet.load()
        inputs = [fetch(coarse_input[f]) for f in ("person_image_url", "top_garment_url", "bottom_garment_url")]
        sizes = [Image.open(io.BytesIO(data)).size for data in [*inputs, coarse_bytes, refined_bytes]]
        assert sheet.size == sheet_size(sizes)
        assert sheet.format == "PNG"

    cost = xcom_value(home, "aitryon_pipeline", "report_cost")
    assert cost["images"] == {"aitryon": 1, "aitryon-refiner": 1}
    assert cost["total_cny"] == "0.50"
    assert cost["charged"]["images"] == cost["images"] and cost["charged"]["total"] == "0.50"
    assert [line["charges"] for line in cost["charged"]["lines"]] == [
        [{"images": 1, "unit_price": "0.20"}],
        [{"images": 1, "unit_price": "0.30"}],
    ]
    assert cost["contact_sheet"] == str(run_folder / "contact_sheet.png")
    # The review gallery: one card with the person, both garments, coarse and refined thumbnails.
    assert cost["report"] == str(run_folder / "report.html")
    page = (run_folder / "report.html").read_text()
    assert page.count('class="item"') == 1 and 'data-status="succeeded"' in page
    assert page.count('<img class="thumb"') == 5 and "CNY 0.50" in page

    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = ?",
            ("aitryon_refined_image",),
        ).fetchall()
        (report_extra,) = db.execute(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = ?",
            ("aitryon_pipeline_report",),
        ).fetchone()
    # The run's report event says what it was charged and where its gallery is.
    assert json.loads(report_extra)["charged"] == cost["charged"]
    assert json.loads(report_extra)["report"] == cost["report"]
    assert rows, "the saved refined image must emit an asset event"
    assert json.loads(rows[-1][0])["uri"] == saved_refined["uri"]


def test_a_worker_killed_after_submitting_does_not_pay_twice(emulator, airflow, tmp_path):
    home, _ = airflow
    env = airflow_env(
        home,
        emulator.base_url,
        api_key=API_KEY,
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "tests" / "dags"),
        AITRYON_TEST_KILL_MARKER=str(tmp_path / "killed"),
    )
    logical_date = "2026-03-01T00:00:00+00:00"
    before = emulator.stats()["submits_accepted"]

    first = dags_test_at(env, logical_date)
    assert first.returncode == -9, (first.stdout + first.stderr)[-3000:]  # SIGKILL: the worker is gone
    killed_task_id = (tmp_path / "killed").read_text()
    assert emulator.stats()["submits_accepted"] == before + 1

    second = dags_test_at(env, logical_date)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-4000:]
    assert task_states(home, "aitryon_worker_dies") == {"submit_coarse_and_wait": "success"}
    assert emulator.stats()["submits_accepted"] == before + 1  # nothing new was submitted
    assert f"Reusing DashScope task {killed_task_id}" in output
    result = xcom_value(home, "aitryon_worker_dies", "submit_coarse_and_wait")
    assert result["task_id"] == killed_task_id
    assert result["task_status"] == "SUCCEEDED"


def dags_test_at(env: dict[str, str], logical_date: str) -> subprocess.CompletedProcess[str]:
    """DAG.test(), what `airflow dags test` runs, with a fixed run_after so both runs share a run id."""
    script = REPO / "tests" / "dags" / "aitryon_worker_dies.py"
    return subprocess.run(
        [sys.executable, str(script), logical_date], env=env, capture_output=True, text=True, timeout=300
    )
