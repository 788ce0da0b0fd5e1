"""Official-provider conventions: deferrable default from config, on_kill, extra links, templated models."""

from __future__ import annotations

import configparser
import threading
import time
from typing import Any

import pytest
from conftest import FakeTI, quiet_emulator_config, set_connection

from airflow_provider_aitryon import api
from airflow_provider_aitryon.compat import AirflowFailException
from airflow_provider_aitryon.emulator import Emulator
from airflow_provider_aitryon.links import SavedImageLink, TryOnResultLink, browsable, remember_result
from airflow_provider_aitryon.operators.batch import RefineCatalogChunkOperator
from airflow_provider_aitryon.operators.refiner import RefinerSubmitOperator
from airflow_provider_aitryon.operators.storage import SaveTryOnResultOperator
from airflow_provider_aitryon.operators.tryon import TryOnSubmitOperator
from airflow_provider_aitryon.operators.waiting import _airflow_conf, default_deferrable
from airflow_provider_aitryon.sensors.refiner import RefinerTaskSensor

ENV = "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE"


# ---------------------------------------------------------------------- deferrable default


@pytest.fixture
def unset_option(monkeypatch: pytest.MonkeyPatch) -> Any:
    """No environment variable and no airflow.cfg line: the deployment did not choose."""
    for suffix in ("", "_CMD", "_SECRET"):
        monkeypatch.delenv(ENV + suffix, raising=False)
    conf = _airflow_conf()
    assert not configparser.RawConfigParser.has_option(conf, "operators", "default_deferrable")
    return conf


def test_deferrable_when_the_deployment_does_not_choose(unset_option):
    # Airflow's built-in default for the option is false; only a deployment's own choice counts.
    assert unset_option.getboolean("operators", "default_deferrable") is False
    assert default_deferrable() is True
    assert TryOnSubmitOperator(task_id="t", person_image_url="http://x/p.png", top_garment_url="http://x/t.png").deferrable
    assert RefinerTaskSensor(task_id="s", dashscope_task_id="id").deferrable


@pytest.mark.parametrize(("value", "expected"), [("false", False), ("True", True), ("0", False)])
def test_an_environment_choice_is_followed(unset_option, monkeypatch, value, expected):
    monkeypatch.setenv(ENV, value)
    assert default_deferrable() is expected
    assert RefinerTaskSensor(task_id="s", dashscope_task_id="id").deferrable is expected
    op = RefinerSubmitOperator(task_id="r", person_image_url="a", top_garment_url="b", coarse_image_url="c")
    assert op.deferrable is expected


def test_an_airflow_cfg_choice_is_followed(unset_option):
    unset_option.set("operators", "default_deferrable", "false")
    try:
        assert default_deferrable() is False
        assert RefinerTaskSensor(task_id="s", dashscope_task_id="id", deferrable=True).deferrable is True
    finally:
        unset_option.remove_option("operators", "default_deferrable")


# ---------------------------------------------------------------------- templated models


@pytest.mark.parametrize(
    ("operator", "field"),
    [(TryOnSubmitOperator, "model"), (RefinerSubmitOperator, "model"), (RefineCatalogChunkOperator, "coarse_model")],
)
def test_every_submit_operator_templates_its_model(operator, field):
    assert field in operator.template_fields


# ---------------------------------------------------------------------- on_kill


@pytest.fixture
def blocked_emulator(monkeypatch: pytest.MonkeyPatch) -> Any:
    """One running slot held by a day-long task: whatever is submitted next stays PENDING."""
    config = quiet_emulator_config(latency_by_model={api.MODEL_TRYON_PLUS: 86400.0}, max_running=1)
    with Emulator(config) as emu:
        set_connection(monkeypatch, emu.base_url)
        TryOnSubmitOperator(
            task_id="blocker", model=api.MODEL_TRYON_PLUS, validate_inputs=False,
            person_image_url=emu.sample_url("person.png"), top_garment_url=emu.sample_url("top.png"),
        ).execute({"ti": FakeTI()})  # fmt: skip
        yield emu


def _status(emu: Emulator, task_id: str) -> str:
    return next(t["status"] for t in emu.tasks() if t["task_id"] == task_id)


def _wait(predicate: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_killing_a_submit_and_wait_in_the_worker_cancels_its_pending_task(blocked_emulator):
    emu = blocked_emulator
    op = TryOnSubmitOperator(
        task_id="submit", wait_for_completion=True, deferrable=False, poll_interval=0.2, validate_inputs=False,
        person_image_url=emu.sample_url("person.png"), top_garment_url=emu.sample_url("top.png"),
    )  # fmt: skip
    ti = FakeTI()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = op.execute({"ti": ti})
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    task_id = _wait(lambda: op._waiting_on, "the operator to wait on its task")
    assert task_id == ti.pushed["dashscope_task_id"]
    assert _status(emu, task_id) == "PENDING"

    op.on_kill()  # what Airflow's task runner calls on SIGTERM

    assert _status(emu, task_id) == "CANCELED"
    worker.join(30)
    assert isinstance(outcome.get("error"), AirflowFailException)
    assert f"DashScope task {task_id} was canceled" in str(outcome["error"])
    assert emu.stats()["submits_by_model"][api.MODEL_TRYON] == 1


def test_killing_a_poking_sensor_cancels_its_pending_task(blocked_emulator):
    emu = blocked_emulator
    task_id = TryOnSubmitOperator(
        task_id="submit", validate_inputs=False,
        person_image_url=emu.sample_url("person.png"), top_garment_url=emu.sample_url("top.png"),
    ).execute({"ti": FakeTI()})  # fmt: skip
    sensor = RefinerTaskSensor(task_id="wait", dashscope_task_id=task_id, deferrable=False, mode="poke")
    assert sensor.poke({}).is_done is False
    sensor.on_kill()
    assert _status(emu, task_id) == "CANCELED"
    sensor.on_kill()  # a second kill has nothing left to cancel
    cancels = [r for r in emu.requests() if r["path"].endswith("/cancel")]
    assert len(cancels) == 1


def test_on_kill_leaves_a_finished_wait_and_an_idle_operator_alone(emu, monkeypatch):
    set_connection(monkeypatch, emu.base_url)
    op = TryOnSubmitOperator(
        task_id="submit", wait_for_completion=True, deferrable=False, poll_interval=0.2, validate_inputs=False,
        person_image_url=emu.sample_url("person.png"), top_garment_url=emu.sample_url("top.png"),
    )  # fmt: skip
    op.on_kill()  # not started
    result = op.execute({"ti": FakeTI()})
    assert result["task_status"] == "SUCCEEDED"
    op.on_kill()  # already done
    assert [r for r in emu.requests() if r["path"].endswith("/cancel")] == []


def test_cancel_on_kill_false_keeps_the_task(blocked_emulator):
    emu = blocked_emulator
    task_id = TryOnSubmitOperator(
        task_id="submit", validate_inputs=False,
        person_image_url=emu.sample_url("person.png"), top_garment_url=emu.sample_url("top.png"),
    ).execute({"ti": FakeTI()})  # fmt: skip
    sensor = RefinerTaskSensor(task_id="wait", dashscope_task_id=task_id, deferrable=False, cancel_on_kill=False)
    sensor.poke({})
    sensor.on_kill()
    assert _status(emu, task_id) == "PENDING"


def test_a_deferred_wait_hands_cancel_on_kill_to_its_trigger(emu, monkeypatch):
    from airflow_provider_aitryon.compat import TaskDeferred

    set_connection(monkeypatch, emu.base_url)
    op = TryOnSubmitOperator(
        task_id="submit", wait_for_completion=True, deferrable=True, cancel_on_kill=False, validate_inputs=False,
        person_image_url=emu.sample_url("person.png"), top_garment_url=emu.sample_url("top.png"),
    )  # fmt: skip
    with pytest.raises(TaskDeferred) as deferred:
        op.execute({"ti": FakeTI()})
    assert deferred.value.trigger.serialize()[1]["cancel_on_kill"] is False


# ---------------------------------------------------------------------- extra links


def test_links_come_from_the_live_operators_result_never_from_xcom(monkeypatch, tmp_path):
    from airflow.sdk.execution_time.xcom import XCom

    def no_xcom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an extra link must not look up XCom (a deferring task logs 'XCom not found')")

    monkeypatch.setattr(XCom, "get_value", no_xcom)
    monkeypatch.setattr(XCom, "get_one", no_xcom)
    sensor = RefinerTaskSensor(task_id="wait", dashscope_task_id="id")
    assert TryOnResultLink().get_link(sensor, ti_key=None) == ""  # deferring: no result yet
    remember_result(sensor, {"image_url": "http://emu/results/id.png", "task_id": "id"})
    assert TryOnResultLink().get_link(sensor, ti_key=None) == "http://emu/results/id.png"

    save = SaveTryOnResultOperator(task_id="save", image_url="http://emu/r.png", destination=str(tmp_path) + "/")
    assert SavedImageLink().get_link(save, ti_key=None) == ""
    remember_result(save, {"uri": str(tmp_path / "r.png")})
    assert SavedImageLink().get_link(save, ti_key=None) == (tmp_path / "r.png").as_uri()
    assert any(isinstance(link, SavedImageLink) for link in save.operator_extra_links)


@pytest.mark.parametrize(
    ("uri", "link"),
    [
        ("/data/looks/a b.png", "file:///data/looks/a%20b.png"),
        ("file:///data/x.png", "file:///data/x.png"),
        ("s3://bucket/looks/x 1.png", "https://s3.console.aws.amazon.com/s3/object/bucket?prefix=looks/x%201.png"),
        ("gs://bucket/looks/x.png", "https://console.cloud.google.com/storage/browser/_details/bucket/looks/x.png"),
        ("oss://bucket/looks/x.png", "oss://bucket/looks/x.png"),
    ],
)
def test_saved_copies_get_a_link_a_browser_can_open(uri, link):
    assert browsable(uri) == link
