"""The money audit: the ordinary situations that used to pay twice or lose a paid image.

Each test drives real Airflow (`DAG.test()` in its own process, as `airflow dags test` runs it)
against the emulator over HTTP, and proves its claim with the emulator's own count of the tasks it
created for the request and with the bytes saved on disk, never with log lines alone. The README's
"No double charge" table lists the same situations.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from harness import REPO, airflow_env, dag_test_at, make_coarse_image, migrate, task_states

from airflow_provider_aitryon.emulator import Emulator, EmulatorConfig

pytestmark = pytest.mark.integration

AUDIT_DAG = REPO / "tests" / "dags" / "aitryon_money_audit.py"
BACKFILL_DAG = REPO / "dags" / "aitryon_catalog_backfill.py"
API_KEY = "sk-money-audit"


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(latency=0.5)) as emu:
        yield emu


@pytest.fixture(scope="module")
def home(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("airflow_home")
    migrate(airflow_env(home, emulator.base_url, api_key=API_KEY))
    return home


@pytest.fixture(scope="module")
def coarse_url(emulator: Emulator, home: Path) -> str:
    return make_coarse_image(airflow_env(home, emulator.base_url, api_key=API_KEY))


@pytest.fixture(autouse=True)
def calm(emulator: Emulator) -> Iterator[None]:
    yield
    emulator.update(latency=0.5, lost_reply_submits=0, clock_skew_seconds=0.0, neighbor_submit_seconds=None,
                    results_unavailable_status=None)  # fmt: skip


def env_for(home: Path, emulator: Emulator, tmp_path: Path, **extra: Any) -> dict[str, str]:
    """Airflow's environment; the connection's own settings (`extra`) on top of short backoffs."""
    env = airflow_env(home, emulator.base_url, api_key=API_KEY, AITRYON_AUDIT_OUTPUT=str(tmp_path / "out"),
                      AIRFLOW__CORE__DAGS_FOLDER=str(AUDIT_DAG.parent))  # fmt: skip
    settings = {"backoff_base": 0.2, "backoff_max": 1.0, "lost_submit_grace": 0.5, **extra}
    env["AIRFLOW_CONN_DASHSCOPE_DEFAULT"] = json.dumps(
        {"conn_type": "dashscope", "host": emulator.base_url, "password": API_KEY, "extra": settings}
    )
    return env


def unique_person(emulator: Emulator) -> str:
    """The sample person image under a URL of its own: each test's request is a request of its own."""
    return f"{emulator.sample_url('person.png')}?audit={uuid.uuid4().hex[:8]}"


def paid_tasks(emulator: Emulator, person_url: str, model: str = "aitryon-refiner") -> list[dict[str, Any]]:
    """Tasks the emulator created for our request (a client's, not the second submitter's)."""
    return [
        t for t in emulator.tasks()
        if t["input"].get("person_image_url") == person_url and t["model"] == model and t["submitter"] == "client"
    ]  # fmt: skip


def result_bytes(emulator: Emulator, task_id: str) -> bytes:
    response = requests.get(f"{emulator.base_url}/results/{task_id}.png", timeout=10)
    response.raise_for_status()
    return response.content


def saved_images(folder: Path) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in folder.glob("*.png")} if folder.exists() else {}


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def tail(result: subprocess.CompletedProcess[str]) -> str:
    return output_of(result)[-6000:]


# ------------------------------------------------------------------------------ operators


def test_4_a_clear_after_the_sensor_timed_out_reuses_the_running_task(emulator, home, coarse_url, tmp_path):
    person = unique_person(emulator)
    conf = {"person_image_url": person, "coarse_image_url": coarse_url}
    emulator.update(latency=8.0)
    env = env_for(home, emulator, tmp_path)
    first = dag_test_at({**env, "AITRYON_AUDIT_SENSOR_TIMEOUT": "2"}, AUDIT_DAG, "2026-04-04T00:00:00+00:00", conf)
    assert first.returncode != 0, tail(first)
    assert task_states(home, "aitryon_money_audit")["wait"] == "failed"  # timed out, task still RUNNING
    (task,) = paid_tasks(emulator, person)
    assert task["status"] == "RUNNING"

    # The usual reaction: clear the run. The submit task runs again and finds the running task.
    second = dag_test_at(env, AUDIT_DAG, "2026-04-04T00:00:00+00:00", conf)
    assert second.returncode == 0, tail(second)
    assert [t["task_id"] for t in paid_tasks(emulator, person)] == [task["task_id"]]  # still one paid task
    assert saved_images(tmp_path / "out") == {task["task_id"]: result_bytes(emulator, task["task_id"])}
    assert f"Reusing DashScope task {task['task_id']}" in output_of(second)


@pytest.mark.parametrize("kind", ["504"])  # 502 and an empty 200: tests/test_retry.py
def test_5_a_gateway_error_after_the_service_took_the_submit_is_looked_up(emulator, home, coarse_url, tmp_path, kind):
    person = unique_person(emulator)
    emulator.update(lost_reply_submits=1, lost_reply_kind=kind)
    run = dag_test_at(env_for(home, emulator, tmp_path), AUDIT_DAG, "2026-04-05T00:00:00+00:00",
                      {"person_image_url": person, "coarse_image_url": coarse_url})  # fmt: skip
    assert run.returncode == 0, tail(run)
    (task,) = paid_tasks(emulator, person)  # one task: the lost reply was not answered by a second submit
    assert emulator.config.lost_reply_submits == 0  # the reply really was lost
    assert saved_images(tmp_path / "out") == {task["task_id"]: result_bytes(emulator, task["task_id"])}
    assert "adopting it instead of submitting again" in output_of(run)


@pytest.mark.parametrize("skew", [-5.0, 240.0])
def test_6_a_lost_reply_is_found_whatever_the_services_clock_says(emulator, home, coarse_url, tmp_path, skew):
    person = unique_person(emulator)
    emulator.update(lost_reply_submits=1, lost_reply_kind="504", clock_skew_seconds=skew)
    run = dag_test_at(env_for(home, emulator, tmp_path), AUDIT_DAG, "2026-04-06T00:00:00+00:00",
                      {"person_image_url": person, "coarse_image_url": coarse_url})  # fmt: skip
    assert run.returncode == 0, tail(run)
    (task,) = paid_tasks(emulator, person)
    assert saved_images(tmp_path / "out") == {task["task_id"]: result_bytes(emulator, task["task_id"])}


def test_7_a_task_another_submitter_created_a_second_earlier_is_never_adopted(emulator, home, coarse_url, tmp_path):
    person = unique_person(emulator)
    emulator.update(lost_reply_submits=1, lost_reply_kind="504", neighbor_submit_seconds=1.0)
    run = dag_test_at(env_for(home, emulator, tmp_path), AUDIT_DAG, "2026-04-07T00:00:00+00:00",
                      {"person_image_url": person, "coarse_image_url": coarse_url})  # fmt: skip
    assert run.returncode == 0, tail(run)
    (ours,) = paid_tasks(emulator, person)
    (neighbour,) = [
        t for t in emulator.tasks() if t["submitter"] == "neighbor" and t["input"]["person_image_url"] == person
    ]
    saved = saved_images(tmp_path / "out")
    # Our own task, adopted and marked; the other submitter's image is nowhere.
    assert saved == {ours["task_id"]: result_bytes(emulator, ours["task_id"])}
    assert result_bytes(emulator, neighbour["task_id"]) not in saved.values()
    assert xcom(home, "aitryon_money_audit", "submit", "adopted") is True


def test_7_with_adoption_off_a_lost_reply_fails_in_one_sentence(emulator, home, coarse_url, tmp_path):
    person = unique_person(emulator)
    emulator.update(lost_reply_submits=1, lost_reply_kind="504", neighbor_submit_seconds=1.0)
    env = env_for(home, emulator, tmp_path, adopt_lost_submits=False)
    run = dag_test_at(env, AUDIT_DAG, "2026-04-08T00:00:00+00:00",
                      {"person_image_url": person, "coarse_image_url": coarse_url})  # fmt: skip
    assert run.returncode != 0
    assert "adopt_lost_submits is off for connection 'dashscope_default'" in output_of(run)
    assert len(paid_tasks(emulator, person)) == 1  # nothing sent twice, nothing guessed
    assert saved_images(tmp_path / "out") == {}


def xcom(home: Path, dag_id: str, task_id: str, key: str) -> Any:
    from harness import xcom_value

    return xcom_value(home, dag_id, task_id, key)
