"""The provider in a real, running Airflow: scheduler, dag processor, triggerer and API server.

Unlike ``airflow dags test`` (one process), these tests run the components the way a deployment
does (LocalExecutor on SQLite, all on 127.0.0.1; see scripts/real_airflow.py) and break them:

* the triggerer is restarted, politely (SIGTERM) and by a crash (SIGKILL of its process group),
  while the sensor is deferred on a PENDING DashScope task: the run still succeeds, nothing is
  submitted twice and nothing is canceled;
* the whole worker (task process and its supervisor) is SIGKILLed right after it submitted: the
  scheduler's heartbeat-timeout detection retries the task and the retry reuses the paid task;
* a user marks a deferred sensor failed through the REST API: the trigger's on_kill cancels the
  PENDING DashScope task;
* afterwards the API key is found nowhere (task logs, component output, metadata DB including
  decrypted trigger kwargs and Variables, the emulator's request log) but in the Authorization
  header the emulator received.

The emulator runs in this process, so its counters and request log are read directly. To keep a
task PENDING for as long as a test needs, a "blocker" task holds the account's only running slot
(``max_running=1``) until the test releases it: deterministic, no sleeps.

The tests share one Airflow and run in file order; the secrecy scan must run last.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from real_airflow import TASK_HEARTBEAT_TIMEOUT, RealAirflow

from airflow_provider_aitryon import api
from airflow_provider_aitryon.emulator import Emulator, EmulatorConfig

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parent.parent
API_KEY = "sk-real-airflow-SECRET-4e8b1f0a9c27d35b"
PIPELINE = "aitryon_pipeline"
WORKER_KILLED = "real_worker_killed"
KILLED_IN_WORKER = "real_killed_in_worker"
BLOCKER_MODEL = api.MODEL_TRYON_PLUS  # only the blocker uses it, so per-model counts stay exact
PIPELINE_TASKS = {
    "plan_output",
    "submit_coarse",
    "wait_for_coarse",
    "submit_refiner",
    "wait_for_refiner",
    "save_coarse",
    "save_refined",
    "contact_sheet",
    "report_cost",
}

# What the earlier tests leave for the secrecy scan: run ids, DashScope task ids, DB snapshots.
DONE: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    config = EmulatorConfig(
        latency=0.5,
        latency_by_model={api.MODEL_TRYON: 2.0, BLOCKER_MODEL: 3600.0},
        api_key=API_KEY,
        log_requests=False,
    )
    with Emulator(config) as emu:
        yield emu


@pytest.fixture(scope="module")
def airflow(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealAirflow]:
    workdir = tmp_path_factory.mktemp("real_airflow")
    kill_dir = workdir / "kill_markers"
    kill_dir.mkdir()
    with RealAirflow.started(
        workdir,
        emulator.base_url,
        API_KEY,
        dag_files=[
            REPO / "dags" / "aitryon_pipeline.py",
            REPO / "tests" / "dags" / "real_worker_killed.py",
            REPO / "tests" / "dags" / "real_killed_in_worker.py",
        ],
        dag_ids=[PIPELINE, WORKER_KILLED, KILLED_IN_WORKER],
        AITRYON_REAL_KILL_DIR=str(kill_dir),
    ) as real:
        yield real


@pytest.fixture
def triggerer(airflow: RealAirflow) -> None:
    """A test that broke the triggerer must not leave the next one without."""
    if not any(c.name == "triggerer" and c.alive() for c in airflow.components):
        airflow.start("triggerer")
    airflow.wait_until(lambda: airflow.alive_job_id("TriggererJob"), 60, "a triggerer heartbeat")


# ---------------------------------------------------------------------- emulator helpers


@contextmanager
def queue_blocked(emulator: Emulator) -> Iterator[str]:
    """One slot per account and a task that holds it: every task submitted meanwhile stays PENDING."""
    emulator.update(max_running=1)
    call = api.tryon_call(
        person_image_url=emulator.sample_url("person.png"),
        top_garment_url=emulator.sample_url("top.png"),
        model=BLOCKER_MODEL,
    )
    response = requests.post(emulator.base_url + call.path, json=call.body, headers=call.headers(API_KEY), timeout=30)
    response.raise_for_status()
    try:
        yield str(response.json()["output"]["task_id"])
    finally:
        emulator.update(max_running=5)  # the blocker keeps one slot; whatever queued behind it starts


def emulator_task(emulator: Emulator, task_id: str) -> dict[str, Any]:
    (task,) = [t for t in emulator.tasks() if t["task_id"] == task_id]
    return task


def polls(emulator: Emulator, task_id: str) -> int:
    """How many times the task's status was queried (sensor pokes and trigger polls)."""
    path = api.task_path(task_id)
    return sum(1 for e in emulator.requests() if e["method"] == "GET" and e["path"] == path)


def cancel_requests(emulator: Emulator) -> list[dict[str, Any]]:
    return [e for e in emulator.requests() if e["method"] == "POST" and e["path"].rstrip("/").endswith("/cancel")]


def submits_by_model(emulator: Emulator) -> dict[str, int]:
    return dict(emulator.stats()["submits_by_model"])


# ---------------------------------------------------------------------- Airflow helpers


def wait_for_deferred_sensor(
    airflow: RealAirflow, emulator: Emulator, dag_id: str, run_id: str, task_id: str, submit_task: str
) -> tuple[dict[str, Any], str]:
    """Wait until the sensor is deferred, its trigger row exists, a triggerer holds it and it polls."""

    def deferred() -> dict[str, Any] | None:
        row = airflow.ti(dag_id, run_id, task_id)
        if row and row["state"] == "deferred" and row["trigger_id"] is not None:
            return row if row["trigger_triggerer_id"] is not None else None
        return None

    ti = airflow.wait_until(deferred, 120, f"{task_id} of {run_id} to be deferred to a triggerer", run=(dag_id, run_id))
    assert ti is not None
    assert ti["trigger_classpath"] == "airflow_provider_aitryon.triggers.dashscope.DashScopeTaskTrigger"
    dashscope_task_id = str(airflow.xcom(dag_id, run_id, submit_task))
    # The sensor pokes once before deferring; a second query comes from the trigger itself.
    airflow.wait_until(lambda: polls(emulator, dashscope_task_id) >= 2, 60, "the trigger's first poll")
    return ti, dashscope_task_id


def resumed_by_new_triggerer(
    airflow: RealAirflow, emulator: Emulator, dag_id: str, run_id: str, task_id: str, trigger_id: int, old_job: int
) -> int:
    """Wait until a newer triggerer job holds the same trigger row and its trigger polls again."""

    def newer_job() -> int:
        job = airflow.alive_job_id("TriggererJob")
        return job if job is not None and job != old_job else 0

    new_job = airflow.wait_until(newer_job, 60, "the new triggerer's heartbeat")
    airflow.wait_until(
        lambda: (row := airflow.ti(dag_id, run_id, task_id)) and row["trigger_triggerer_id"] == new_job,
        60,
        f"trigger {trigger_id} to be taken over by triggerer job {new_job}",
    )
    row = airflow.ti(dag_id, run_id, task_id)
    assert row is not None
    assert row["state"] == "deferred"
    assert row["trigger_id"] == trigger_id  # the same trigger row resumes; nothing was re-deferred
    return new_job


def task_log(airflow: RealAirflow, dag_id: str, run_id: str, task_id: str, attempt: int) -> str:
    folder = airflow.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    logs = list(folder.glob(f"attempt={attempt}*"))
    assert logs, f"no log of attempt {attempt} under {folder}"
    return "\n".join(path.read_text(errors="replace") for path in logs)


def trigger_logs(airflow: RealAirflow, dag_id: str, run_id: str, task_id: str) -> dict[str, str]:
    """What each triggerer that ran the task's trigger logged for it (one file per triggerer job)."""
    folder = airflow.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    return {path.name: path.read_text(errors="replace") for path in folder.glob("attempt=*.log.trigger.*.log")}


# ---------------------------------------------------------------------- tests


def test_triggerer_restarts_while_the_sensor_is_deferred(emulator, airflow, triggerer, tmp_path, record_property):
    started = time.monotonic()
    run_id = "real_triggerer_restart"
    submits_before = submits_by_model(emulator)
    cancels_before = cancel_requests(emulator)

    with queue_blocked(emulator):
        airflow.trigger(PIPELINE, run_id, {"output": str(tmp_path)})
        deferred, coarse_id = wait_for_deferred_sensor(
            airflow, emulator, PIPELINE, run_id, "wait_for_coarse", "submit_coarse"
        )
        assert emulator_task(emulator, coarse_id)["status"] == "PENDING"  # on_kill would cancel this one
        trigger_id = deferred["trigger_id"]
        snapshot = airflow.snapshot_db("sensor_deferred")

        # A polite restart (SIGTERM): Airflow >= 3.3 cancels the trigger without calling on_kill.
        first = airflow.running("triggerer")
        first_job = deferred["trigger_triggerer_id"]
        assert airflow.kill(first, signal.SIGTERM, timeout=60) == 0, first.log_tail()
        assert airflow.ti_state(PIPELINE, run_id, "wait_for_coarse") == "deferred"
        polled = polls(emulator, coarse_id)
        airflow.start("triggerer")
        second_job = resumed_by_new_triggerer(
            airflow, emulator, PIPELINE, run_id, "wait_for_coarse", trigger_id, first_job
        )
        airflow.wait_until(lambda: polls(emulator, coarse_id) > polled, 30, "a poll by the second triggerer")

        # A crash: SIGKILL of the triggerer's whole process group, no chance to clean up.
        second = airflow.running("triggerer")
        airflow.kill(second, signal.SIGKILL)
        assert second.process.returncode == -signal.SIGKILL
        assert airflow.ti_state(PIPELINE, run_id, "wait_for_coarse") == "deferred"
        polled = polls(emulator, coarse_id)
        airflow.start("triggerer")
        resumed_by_new_triggerer(airflow, emulator, PIPELINE, run_id, "wait_for_coarse", trigger_id, second_job)
        airflow.wait_until(lambda: polls(emulator, coarse_id) > polled, 30, "a poll by the third triggerer")

        assert emulator_task(emulator, coarse_id)["status"] == "PENDING"
        assert cancel_requests(emulator) == cancels_before  # neither restart canceled the waiting task
    # Released: the coarse task runs, and the rest of the pipeline after it.

    assert airflow.wait_for_run(PIPELINE, run_id, timeout=180) == "success", airflow.task_states(PIPELINE, run_id)
    states = airflow.task_states(PIPELINE, run_id)
    assert set(states) == PIPELINE_TASKS
    assert set(states.values()) == {"success"}, states

    submits_after = submits_by_model(emulator)
    assert submits_after.get(api.MODEL_TRYON, 0) == submits_before.get(api.MODEL_TRYON, 0) + 1
    assert submits_after.get(api.MODEL_REFINER, 0) == submits_before.get(api.MODEL_REFINER, 0) + 1
    assert cancel_requests(emulator) == cancels_before
    coarse_result = airflow.xcom(PIPELINE, run_id, "wait_for_coarse")
    assert coarse_result["task_id"] == coarse_id
    assert coarse_result["task_status"] == "SUCCEEDED"
    assert emulator_task(emulator, coarse_id)["status"] == "SUCCEEDED"
    refined = airflow.xcom(PIPELINE, run_id, "wait_for_refiner")
    assert refined["task_id"] == airflow.xcom(PIPELINE, run_id, "submit_refiner")
    assert (Path(airflow.xcom(PIPELINE, run_id, "save_refined")["uri"])).read_bytes()[:4] == b"\x89PNG"

    # The extra links were computed from the live operators' results: no XCom look-ups that fail
    # (each deferral used to log "XCom not found"), and the links point at the result and the copy.
    for task_id in PIPELINE_TASKS:
        assert "XCom not found" not in task_log(airflow, PIPELINE, run_id, task_id, 1), task_id
    assert airflow.xcom(PIPELINE, run_id, "wait_for_coarse", key="_link_TryOnResultLink") == coarse_result["image_url"]
    saved = airflow.xcom(PIPELINE, run_id, "save_refined")
    assert airflow.xcom(PIPELINE, run_id, "save_refined", key="_link_SavedImageLink") == Path(saved["uri"]).as_uri()
    report = airflow.xcom(PIPELINE, run_id, "report_cost")["report"]
    assert airflow.xcom(PIPELINE, run_id, "report_cost", key="_link_ReviewGalleryLink") == Path(report).as_uri()

    assert [t["classpath"] for t in snapshot["triggers"]] == [
        "airflow_provider_aitryon.triggers.dashscope.DashScopeTaskTrigger"
    ]
    assert coarse_id in snapshot["triggers"][0]["kwargs"]
    logs = trigger_logs(airflow, PIPELINE, run_id, "wait_for_coarse")
    assert len(logs) == 3, sorted(logs)  # one per triggerer: the same trigger ran in all three
    assert not [name for name, text in logs.items() if "on_kill" in text]
    elapsed = time.monotonic() - started
    record_property("wall_seconds", round(elapsed, 1))
    print(f"\ntriggerer restart test: {elapsed:.1f}s")
    DONE["restart"] = {"run_id": run_id, "task_id": coarse_id, "snapshot": snapshot}


def test_worker_killed_right_after_submitting_is_retried_and_reuses_the_task(emulator, airflow, triggerer):
    run_id = "real_worker_killed"
    submits_before = emulator.stats()["submits_accepted"]

    airflow.trigger(WORKER_KILLED, run_id)
    marker = Path(airflow.env["AITRYON_REAL_KILL_DIR"]) / f"{run_id}.killed"
    airflow.wait_until(marker.exists, 120, "the first try to submit and kill its worker", run=(WORKER_KILLED, run_id))
    killed_task_id = marker.read_text()
    assert emulator.stats()["submits_accepted"] == submits_before + 1
    snapshot = airflow.snapshot_db("worker_killed")  # the ledger entry of the dead try is in it
    assert [v for v in snapshot["variables"].values() if killed_task_id in v], snapshot["variables"]

    # Nobody reports the end of try 1: only the scheduler's heartbeat-timeout detection can.
    airflow.wait_until(
        lambda: (row := airflow.ti(WORKER_KILLED, run_id, "submit_coarse")) and row["try_number"] >= 2,
        TASK_HEARTBEAT_TIMEOUT + 90,
        "the scheduler to retry the task whose worker died",
        run=(WORKER_KILLED, run_id),
    )
    assert airflow.wait_for_run(WORKER_KILLED, run_id, timeout=120) == "success", airflow.task_states(
        WORKER_KILLED, run_id
    )
    assert airflow.task_states(WORKER_KILLED, run_id) == {"submit_coarse": "success", "wait_for_coarse": "success"}
    row = airflow.ti(WORKER_KILLED, run_id, "submit_coarse")
    assert row is not None and row["try_number"] == 2
    events = [
        event
        for (event,) in airflow.query(
            "SELECT event FROM log WHERE dag_id = ? AND run_id = ? AND task_id = ?",
            (WORKER_KILLED, run_id, "submit_coarse"),
        )
    ]
    assert "heartbeat timeout" in events  # the scheduler noticed the lost worker, not its supervisor

    assert emulator.stats()["submits_accepted"] == submits_before + 1  # the retry did not pay again
    assert airflow.xcom(WORKER_KILLED, run_id, "submit_coarse") == killed_task_id
    result = airflow.xcom(WORKER_KILLED, run_id, "wait_for_coarse")
    assert result["task_id"] == killed_task_id
    assert result["task_status"] == "SUCCEEDED"
    assert f"Reusing DashScope task {killed_task_id}" in task_log(
        airflow, WORKER_KILLED, run_id, "submit_coarse", attempt=2
    )
    DONE["worker_killed"] = {"run_id": run_id, "task_id": killed_task_id, "snapshot": snapshot}


def test_marking_a_deferred_sensor_failed_cancels_its_pending_task(emulator, airflow, triggerer, tmp_path):
    run_id = "real_mark_failed"
    submits_before = submits_by_model(emulator)
    with queue_blocked(emulator):
        airflow.trigger(PIPELINE, run_id, {"output": str(tmp_path)})
        _, coarse_id = wait_for_deferred_sensor(airflow, emulator, PIPELINE, run_id, "wait_for_coarse", "submit_coarse")
        assert emulator_task(emulator, coarse_id)["status"] == "PENDING"

        response = airflow.api(
            "PATCH",
            f"/dags/{PIPELINE}/dagRuns/{run_id}/taskInstances/wait_for_coarse",
            json={"new_state": "failed"},
        )
        assert response.status_code == 200, response.text
        assert response.json()["task_instances"][0]["state"] == "failed"
        airflow.wait_until(
            lambda: emulator_task(emulator, coarse_id)["status"] == "CANCELED",
            60,
            f"the trigger's on_kill to cancel DashScope task {coarse_id}",
            run=(PIPELINE, run_id),
        )

    cancels = [e for e in cancel_requests(emulator) if e["path"].rstrip("/") == api.cancel_path(coarse_id)]
    assert len(cancels) == 1
    assert cancels[0]["status"] == 200
    # The cancel is proven by the emulator above; the trigger's log lines may land a moment later.
    airflow.wait_until(
        lambda: f"Canceled DashScope task {coarse_id}" in "\n".join(
            trigger_logs(airflow, PIPELINE, run_id, "wait_for_coarse").values()
        ),
        60,
        "the trigger's log to say it canceled the task",
        run=(PIPELINE, run_id),
    )
    logs = "\n".join(trigger_logs(airflow, PIPELINE, run_id, "wait_for_coarse").values())
    assert "Trigger cancelled by user action, invoking on_kill" in logs
    submits_after = submits_by_model(emulator)
    assert submits_after.get(api.MODEL_TRYON, 0) == submits_before.get(api.MODEL_TRYON, 0) + 1
    assert submits_after.get(api.MODEL_REFINER, 0) == submits_before.get(api.MODEL_REFINER, 0)
    assert airflow.wait_for_run(PIPELINE, run_id, timeout=120) == "failed"
    states = airflow.task_states(PIPELINE, run_id)
    assert states["wait_for_coarse"] == "failed"
    assert states["submit_refiner"] == "upstream_failed"
    DONE["mark_failed"] = {"run_id": run_id, "task_id": coarse_id}


def test_killing_tasks_that_wait_in_the_worker_cancels_their_pending_tasks(emulator, airflow):
    """Submit-and-wait and a poke-mode sensor, marked failed by a user: on_kill cancels each task once."""
    run_id = "real_killed_in_worker"
    with queue_blocked(emulator):
        airflow.trigger(KILLED_IN_WORKER, run_id)

        def waiting_ids() -> dict[str, str] | None:
            states = airflow.task_states(KILLED_IN_WORKER, run_id)
            waited = airflow.xcom(KILLED_IN_WORKER, run_id, "submit_and_wait", key="dashscope_task_id")
            poked = airflow.xcom(KILLED_IN_WORKER, run_id, "submit")
            running = states.get("submit_and_wait") == "running" and states.get("poke") == "running"
            if running and waited and poked and polls(emulator, waited) >= 1 and polls(emulator, poked) >= 1:
                return {"submit_and_wait": str(waited), "poke": str(poked)}
            return None

        ids = airflow.wait_until(
            waiting_ids, 120, "both tasks waiting in their workers", run=(KILLED_IN_WORKER, run_id)
        )
        assert ids is not None
        for dashscope_id in ids.values():
            assert emulator_task(emulator, dashscope_id)["status"] == "PENDING"
        for task_id in ids:
            response = airflow.api(
                "PATCH",
                f"/dags/{KILLED_IN_WORKER}/dagRuns/{run_id}/taskInstances/{task_id}",
                json={"new_state": "failed"},
            )
            assert response.status_code == 200, response.text
        for task_id, dashscope_id in ids.items():
            airflow.wait_until(
                lambda dashscope_id=dashscope_id: emulator_task(emulator, dashscope_id)["status"] == "CANCELED",
                60,
                f"on_kill of {task_id} to cancel DashScope task {dashscope_id}",
                run=(KILLED_IN_WORKER, run_id),
            )
    for dashscope_id in ids.values():
        cancels = [e for e in cancel_requests(emulator) if e["path"].rstrip("/") == api.cancel_path(dashscope_id)]
        assert [e["status"] for e in cancels] == [200]
    assert airflow.wait_for_run(KILLED_IN_WORKER, run_id, timeout=120) == "failed"
    log = task_log(airflow, KILLED_IN_WORKER, run_id, "submit_and_wait", 1)
    assert f"Killed while waiting for DashScope task {ids['submit_and_wait']}" in log
    DONE["killed_in_worker"] = {"run_id": run_id, "task_id": ids["poke"]}


def test_api_key_appears_only_in_the_authorization_header(emulator, airflow):
    """Runs last: scans everything the runs above left behind."""
    assert {"restart", "worker_killed", "mark_failed"} <= set(DONE), "the real-Airflow runs above must run first"
    secret = API_KEY.encode()

    # Every file: task logs under AIRFLOW_HOME/logs, the components' and CLI output, the raw DB
    # file, airflow.cfg, DB dumps and the decrypted trigger kwargs and Variables taken meanwhile.
    files = [path for path in airflow.workdir.rglob("*") if path.is_file()]
    task_logs = [path for path in files if airflow.home / "logs" in path.parents]
    assert len(task_logs) >= 10, task_logs
    component_logs = {path.name.rsplit("-", 1)[0] for path in files if path.parent == airflow.component_logs}
    assert {"api-server", "scheduler", "triggerer", "dag-processor", "cli"} <= component_logs
    for path in files:
        assert secret not in path.read_bytes(), path

    # The DB now and as it was while a trigger was waiting and while a ledger entry existed.
    dump = airflow.dump_db()
    assert API_KEY not in dump
    assert 'INSERT INTO "xcom"' in dump and DONE["restart"]["task_id"] in dump
    assert 'INSERT INTO "rendered_task_instance_fields"' in dump
    restart = DONE["restart"]["snapshot"]
    assert 'INSERT INTO "trigger"' in restart["dump"]
    assert DONE["restart"]["task_id"] in restart["triggers"][0]["kwargs"]  # decrypted: the scan saw its content
    assert DONE["worker_killed"]["task_id"] in str(DONE["worker_killed"]["snapshot"]["variables"])
    for snapshot in (restart, DONE["worker_killed"]["snapshot"]):
        assert API_KEY not in str(snapshot)

    # The emulator's request log: the key travels, but only as the bearer token.
    api_calls = [entry for entry in emulator.requests() if entry["path"].startswith("/api/")]
    assert len(api_calls) >= 10
    for entry in api_calls:
        headers = {name.lower(): value for name, value in entry["headers"].items()}
        # The log keeps that a key was sent, and which, but never the key itself.
        assert headers.get("authorization") == "[redacted]", entry["path"]
        assert entry["api_key_fingerprint"] == emulator.key_fingerprint(API_KEY)
        rest = {k: v for k, v in entry.items() if k not in ("headers", "raw_headers")}
        others = [(k, v) for k, v in entry["raw_headers"] if k.lower() != "authorization"]
        assert API_KEY not in repr(rest) + repr(others)
    for entry in emulator.requests():
        if not entry["path"].startswith("/api/"):  # image downloads carry no key at all
            assert API_KEY not in repr(entry)
