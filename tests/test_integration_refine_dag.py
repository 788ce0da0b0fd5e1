"""The example DAG in real Airflow (`airflow dags test`) against the emulator over real HTTP."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from harness import airflow_env, dags_test, make_coarse_image, migrate, task_states, xcom_value
from packaging.version import Version

from airflow_provider_aitryon import compat
from airflow_provider_aitryon.emulator import Emulator, EmulatorConfig

# Also in `make test-matrix`: a real DAG run, deferred to a triggerer, on every supported Airflow but
# 3.2, whose `airflow dags test` cannot start any task, this provider's or not: its in-process execution
# API answers before its start-up has registered its services ("'State' object has no attribute
# 'svcs_registry'"); 3.3 waits for the start-up (docs/versions.rst).
pytestmark = [
    pytest.mark.integration,
    pytest.mark.matrix,
    pytest.mark.skipif(
        Version("3.2") <= compat.AIRFLOW_VERSION < Version("3.3"), reason="airflow dags test is broken on Airflow 3.2"
    ),
]

SECRET_KEY = "sk-integration-SECRET-5be1d0c4"
DAG_ID = "aitryon_refine"


class Run:
    """One `airflow dags test` and what Airflow recorded of it."""

    def __init__(self, home: Path, env: dict[str, str], conf: dict[str, Any]) -> None:
        self.result = dags_test(env, DAG_ID, conf, timeout=300)
        self.output = self.result.stdout + self.result.stderr
        self.states = task_states(home, DAG_ID)
        OUTPUTS.append(self.output)


OUTPUTS: list[str] = []


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    # The refiner takes long enough that the sensor must defer to the trigger, not find it done, also
    # on a loaded machine (4 s was once too short between the submit and the sensor's first look).
    with Emulator(EmulatorConfig(latency=0.5, latency_by_model={"aitryon-refiner": 10.0}, api_key=SECRET_KEY)) as emu:
        yield emu


@pytest.fixture(scope="module")
def airflow(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    home = tmp_path_factory.mktemp("airflow_home")
    env = airflow_env(home, emulator.base_url, api_key=SECRET_KEY)
    migrate(env)
    return home, env


@pytest.fixture(scope="module")
def coarse_url(airflow: tuple[Path, dict[str, str]]) -> str:
    return make_coarse_image(airflow[1])


def submits(emulator: Emulator, model: str = "aitryon-refiner") -> int:
    return int(emulator.stats()["submits_by_model"].get(model, 0))


def test_refine_dag_succeeds_and_returns_the_emulator_result(emulator, airflow, coarse_url):
    home, env = airflow
    before = submits(emulator)
    run = Run(home, env, {"coarse_image_url": coarse_url})
    assert run.result.returncode == 0, run.output[-4000:]
    assert run.states == {
        "submit_refiner": "success",
        "wait_for_refiner": "success",
        "report_refined_image": "success",
    }
    assert submits(emulator) == before + 1
    (task,) = [t for t in emulator.tasks() if t["model"] == "aitryon-refiner" and t["status"] == "SUCCEEDED"]
    image_url = xcom_value(home, DAG_ID, "report_refined_image")
    assert image_url == f"{emulator.base_url}/results/{task['task_id']}.png"
    assert xcom_value(home, DAG_ID, "submit_refiner") == task["task_id"]
    sensor_result = xcom_value(home, DAG_ID, "wait_for_refiner")
    assert sensor_result["task_status"] == "SUCCEEDED"
    assert sensor_result["usage"] == {"image_count": 1}
    assert requests.get(image_url, timeout=10).content[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Pausing task as DEFERRED" in run.output  # the sensor really went through the trigger
    # The deferred wait says when a kill could not cancel the DashScope task (before Airflow 3.3).
    assert ("is not canceled" in run.output) == (not compat.TRIGGER_ON_KILL), run.output[-4000:]


def test_failed_task_fails_the_sensor_with_code_and_message(emulator, airflow, coarse_url):
    home, env = airflow
    before = submits(emulator)
    blank = f"{emulator.base_url}/samples/blank_person.png"
    run = Run(home, env, {"person_image_url": blank, "coarse_image_url": coarse_url})
    assert run.states["submit_refiner"] == "success"
    assert run.states["wait_for_refiner"] == "failed"
    assert run.states["report_refined_image"] == "upstream_failed"
    assert "InvalidPerson" in run.output
    assert submits(emulator) == before + 1  # a permanent failure is not retried, not resubmitted


def test_throttled_submit_is_retried_with_backoff(emulator, airflow, coarse_url):
    home, env = airflow
    before_submits, before_429 = submits(emulator), emulator.stats()["throttled_429"]
    emulator.update(throttle_submits=2)
    run = Run(home, env, {"coarse_image_url": coarse_url})
    assert run.result.returncode == 0, run.output[-4000:]
    assert run.states["report_refined_image"] == "success"
    assert emulator.stats()["throttled_429"] == before_429 + 2
    assert submits(emulator) == before_submits + 1
    assert "Throttling" in run.output


def test_api_key_appears_only_in_the_authorization_header(emulator, airflow):
    """Runs last in this module: scans everything the runs above left behind."""
    home, _ = airflow
    assert OUTPUTS, "the DAG runs above must have run first"
    for output in OUTPUTS:
        assert SECRET_KEY not in output
    for path in (home / "logs").rglob("*"):
        if path.is_file():
            assert SECRET_KEY not in path.read_text(errors="replace"), path
    with sqlite3.connect(home / "airflow.db") as db:
        dump = "\n".join(db.iterdump())
    assert "aitryon_refine" in dump  # the dump really holds the runs (xcom, trigger, rendered fields)
    assert SECRET_KEY not in dump
    log = [entry for entry in emulator.requests() if entry["path"].startswith("/api/")]
    assert log
    for entry in log:
        headers = {k.lower(): v for k, v in entry["headers"].items()}
        # The log keeps that a key was sent, and which, but never the key itself.
        assert headers.get("authorization") == "[redacted]"
        assert entry["api_key_fingerprint"] == emulator.key_fingerprint(SECRET_KEY)
        rest = {k: v for k, v in entry.items() if k not in ("headers", "raw_headers")}
        others = [(k, v) for k, v in entry.get("raw_headers", entry["headers"].items()) if k.lower() != "authorization"]
        assert SECRET_KEY not in repr(rest) + repr(others)
