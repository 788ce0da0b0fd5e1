"""The DashScope try-on emulator, driven over real HTTP (requests) in-process and as a process."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import quiet_emulator_config as config
from PIL import Image

from airflow_provider_aitryon.api import (
    MODEL_REFINER,
    MODEL_TRYON,
    MODEL_TRYON_PLUS,
    SUBMIT_PATH,
    TASKS_PATH,
    cancel_path,
    task_path,
)
from airflow_provider_aitryon.emulator import Emulator, ManualClock, make_samples, sample_images
from airflow_provider_aitryon.emulator.imaging import is_uniform, run_task
from airflow_provider_aitryon.image_rules import check_image

KEY = "sk-emulator-test-0001"
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN")


def headers(key: str | None = KEY, *, async_: bool = True) -> dict[str, str]:
    out = {"Content-Type": "application/json"}
    if key is not None:
        out["Authorization"] = f"Bearer {key}"
    if async_:
        out["X-DashScope-Async"] = "enable"
    return out


def coarse_body(emu: Emulator, person: str = "person.png", **params: Any) -> dict[str, Any]:
    return {
        "model": MODEL_TRYON,
        "input": {
            "person_image_url": emu.sample_url(person),
            "top_garment_url": emu.sample_url("top.png"),
            "bottom_garment_url": emu.sample_url("bottom.png"),
        },
        "parameters": params,
    }


def submit(emu: Emulator, body: Any, *, key: str | None = KEY, async_: bool = True) -> requests.Response:
    return requests.post(emu.base_url + SUBMIT_PATH, json=body, headers=headers(key, async_=async_), timeout=10)


def submit_ok(emu: Emulator, body: Any, key: str = KEY) -> str:
    r = submit(emu, body, key=key)
    assert r.status_code == 200, r.text
    return str(r.json()["output"]["task_id"])


def query(emu: Emulator, task_id: str, key: str = KEY) -> dict[str, Any]:
    r = requests.get(emu.base_url + task_path(task_id), headers=headers(key, async_=False), timeout=10)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def wait_terminal(emu: Emulator, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = query(emu, task_id)
        if body["output"]["task_status"] in TERMINAL or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def status_of(emu: Emulator, task_id: str) -> str:
    return str(query(emu, task_id)["output"]["task_status"])


def result_url(body: dict[str, Any]) -> str:
    return str(body["output"]["results"]["image_url"])





@pytest.fixture
def slow_emu(clock: ManualClock) -> Iterator[Emulator]:
    """Simulated time only: tasks take 10 clock seconds, the clock moves when the test says so."""
    with Emulator(config(latency=10.0, clock=clock, epoch=1767232800.0)) as e:
        yield e


# ---------------------------------------------------------------------------- happy path


def test_submit_pending_then_succeeded_and_result_png_opens(emu: Emulator) -> None:
    r = submit(emu, coarse_body(emu))
    assert r.status_code == 200
    body = r.json()
    assert body["output"]["task_status"] == "PENDING"
    assert set(body) == {"output", "request_id"}
    done = wait_terminal(emu, body["output"]["task_id"])
    out = done["output"]
    assert out["task_status"] == "SUCCEEDED", done
    assert done["usage"] == {"image_count": 1}
    for stamp in ("submit_time", "scheduled_time", "end_time"):
        assert len(out[stamp]) == len("2026-01-01 10:00:00.123")
    url = result_url(done)
    assert url == f"{emu.base_url}/results/{out['task_id']}.png"
    png = requests.get(url, timeout=10)
    assert png.status_code == 200
    assert png.headers["Content-Type"] == "image/png"
    img = Image.open(io.BytesIO(png.content))
    assert img.format == "PNG" and img.size == (576, 1024)
    check_image(png.content, field="coarse_image_url")  # usable as the refiner's input


def test_resolution_parameter_sets_output_size(emu: Emulator) -> None:
    ids = {res: submit_ok(emu, coarse_body(emu, resolution=res)) for res in (1024, 1280)}
    sizes = {
        res: Image.open(io.BytesIO(requests.get(result_url(wait_terminal(emu, tid)), timeout=10).content)).size
        for res, tid in ids.items()
    }
    assert sizes == {1024: (576, 1024), 1280: (720, 1280)}


def test_refiner_on_coarse_result_keeps_size(emu: Emulator) -> None:
    coarse = wait_terminal(emu, submit_ok(emu, coarse_body(emu)))
    body = {
        "model": MODEL_REFINER,
        "input": {
            "person_image_url": emu.sample_url("person.png"),
            "top_garment_url": emu.sample_url("top.png"),
            "bottom_garment_url": emu.sample_url("bottom.png"),
            "coarse_image_url": result_url(coarse),
        },
        "parameters": {"gender": "woman"},
    }
    refined = wait_terminal(emu, submit_ok(emu, body))
    assert refined["output"]["task_status"] == "SUCCEEDED", refined
    before = requests.get(result_url(coarse), timeout=10).content
    after = requests.get(result_url(refined), timeout=10).content
    assert Image.open(io.BytesIO(after)).size == Image.open(io.BytesIO(before)).size
    assert after != before


def test_output_is_deterministic(emu: Emulator) -> None:
    a, b = (submit_ok(emu, coarse_body(emu)) for _ in range(2))
    dress_input = {"person_image_url": emu.sample_url("person.png"), "top_garment_url": emu.sample_url("dress.png")}
    dress = submit_ok(emu, {"model": MODEL_TRYON_PLUS, "input": dress_input})
    pngs = [requests.get(result_url(wait_terminal(emu, t)), timeout=10).content for t in (a, b, dress)]
    assert pngs[0] == pngs[1]
    assert pngs[0] != pngs[2]
    # An independent render, outside the emulator and its render cache, gives the same bytes.
    samples = sample_images()
    fresh = run_task(
        MODEL_TRYON,
        coarse_body(emu)["input"],
        {"resolution": -1, "restore_face": True},
        lambda url: samples[url.rsplit("/", 1)[1]],
    )
    assert fresh.png == pngs[0]


@pytest.mark.parametrize(
    ("shape", "path"),
    [("list", ("results", 0, "image_url")), ("flat", ("image_url",)), ("object", ("results", "image_url"))],
)
def test_result_shapes(emu: Emulator, shape: str, path: tuple[Any, ...]) -> None:
    emu.update(result_shape=shape)
    node: Any = wait_terminal(emu, submit_ok(emu, coarse_body(emu)))["output"]
    for step in path:
        node = node[step]
    assert node.endswith(".png") and node.startswith(emu.base_url)


# ---------------------------------------------------------------------------- scheduling


def test_at_most_five_running_and_fifo_start_times(slow_emu: Emulator, clock: ManualClock) -> None:
    ids = []
    for i in range(7):
        clock.set(1000.0 + i)
        ids.append(submit_ok(slow_emu, coarse_body(slow_emu)))
    assert slow_emu.wait_idle(60)
    assert [status_of(slow_emu, t) for t in ids] == ["RUNNING"] * 5 + ["PENDING"] * 2
    clock.set(1010.5)  # task 0 ended at 1010; task 5 started at that instant, task 6 still waits
    statuses = [status_of(slow_emu, t) for t in ids]
    assert statuses == ["SUCCEEDED"] + ["RUNNING"] * 5 + ["PENDING"]
    first, sixth = query(slow_emu, ids[0])["output"], query(slow_emu, ids[5])["output"]
    assert sixth["scheduled_time"] == first["end_time"]
    assert first["submit_time"] == first["scheduled_time"] == "2026-01-01 10:00:00.000"  # epoch, UTC+8
    assert first["end_time"] == "2026-01-01 10:00:10.000"
    clock.set(1100.0)  # jump far ahead: the whole history is replayed exactly
    tasks = {t["task_id"]: t for t in slow_emu.tasks()}
    started = [tasks[t]["started"] for t in ids]
    ended = [tasks[t]["ended"] for t in ids]
    assert started == [1000.0, 1001.0, 1002.0, 1003.0, 1004.0, 1010.0, 1011.0]
    assert ended == [s + 10.0 for s in started]
    stats = slow_emu.stats()
    assert stats["max_running_observed"] == 5
    assert stats["tasks_by_status"]["SUCCEEDED"] == 7


def test_max_running_is_per_api_key(slow_emu: Emulator) -> None:
    for key in ("sk-account-a", "sk-account-b"):
        for _ in range(5):
            submit_ok(slow_emu, coarse_body(slow_emu), key=key)
    stats = slow_emu.stats()
    assert stats["running_now"] == 10 and stats["pending_now"] == 0
    assert stats["max_running_observed"] == 5


def test_task_of_another_key_reads_unknown(slow_emu: Emulator) -> None:
    tid = submit_ok(slow_emu, coarse_body(slow_emu))
    assert query(slow_emu, tid, key="sk-someone-else")["output"]["task_status"] == "UNKNOWN"


def test_never_succeeded_before_output_ready(clock: ManualClock) -> None:
    # Zero latency and a frozen clock: the only thing that can end the task is its render.
    with Emulator(config(latency=0.0, clock=clock)) as emu:
        tid = submit_ok(emu, coarse_body(emu))
        first = status_of(emu, tid)
        if first == "SUCCEEDED":  # the render raced ahead; the output must then exist
            assert requests.get(f"{emu.base_url}/results/{tid}.png", timeout=10).status_code == 200
        assert emu.wait_idle(30)
        assert status_of(emu, tid) == "SUCCEEDED"
        assert requests.get(f"{emu.base_url}/results/{tid}.png", timeout=10).status_code == 200


# ---------------------------------------------------------------------------- rate limits


def test_submit_rate_limit_429_creates_no_task(clock: ManualClock) -> None:
    with Emulator(config(latency=10.0, clock=clock, submit_rate=3)) as emu:
        for _ in range(3):
            submit_ok(emu, coarse_body(emu))
        r = submit(emu, coarse_body(emu))
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "1"
        assert r.json()["code"] == "Throttling.RateQuota"
        stats = emu.stats()
        assert stats["tasks_total"] == 3 and stats["submits_accepted"] == 3
        assert stats["throttled_429"] == 1 and stats["throttled_by_endpoint"]["submit"] == 1
        clock.advance(1.0)  # the 1-second window slides
        submit_ok(emu, coarse_body(emu))
        assert emu.stats()["tasks_total"] == 4


def test_throttle_submits_answers_the_next_n_submits_429(emu: Emulator) -> None:
    emu.update(throttle_submits=2)
    for _ in range(2):
        r = submit(emu, coarse_body(emu))
        assert r.status_code == 429
        assert r.json()["code"] == "Throttling.RateQuota"
        assert r.headers["Retry-After"] == "1"
    submit_ok(emu, coarse_body(emu))
    stats = emu.stats()
    assert stats["throttled_by_endpoint"]["submit"] == 2
    assert stats["submits_accepted"] == 1


def test_query_rate_limit(clock: ManualClock) -> None:
    with Emulator(config(latency=10.0, clock=clock, query_rate=2)) as emu:
        tid = submit_ok(emu, coarse_body(emu))
        url = emu.base_url + task_path(tid)
        codes = [requests.get(url, headers=headers(), timeout=10).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        assert emu.stats()["throttled_by_endpoint"]["query"] == 1


# ---------------------------------------------------------------------------- synchronous errors


def test_api_key_checks() -> None:
    with Emulator(config(api_key=KEY)) as emu:
        wrong = submit(emu, coarse_body(emu), key="sk-wrong")
        assert wrong.status_code == 401 and wrong.json()["code"] == "InvalidApiKey"
        missing = submit(emu, coarse_body(emu), key=None)
        assert missing.status_code == 401
        empty = requests.post(
            emu.base_url + SUBMIT_PATH,
            json=coarse_body(emu),
            headers={"Authorization": "Bearer ", "X-DashScope-Async": "enable"},
            timeout=10,
        )
        assert empty.status_code == 401
        q = requests.get(emu.base_url + task_path("x"), headers=headers("sk-wrong"), timeout=10)
        assert q.status_code == 401
        assert submit(emu, coarse_body(emu)).status_code == 200
        assert emu.stats()["tasks_total"] == 1


def test_error_body_shape_and_missing_async_header(emu: Emulator) -> None:
    r = submit(emu, coarse_body(emu), async_=False)
    assert r.status_code == 403
    body = r.json()
    assert set(body) == {"request_id", "code", "message"}
    assert body["code"] == "AccessDenied"
    assert body["message"] == "current user api does not support synchronous calls"


def test_unknown_model_404(emu: Emulator) -> None:
    body = coarse_body(emu)
    body["model"] = "aitryon-ultra"
    r = submit(emu, body)
    assert r.status_code == 404 and r.json()["code"] == "ModelNotFound"


def test_trailing_slash_submit_path_accepted(emu: Emulator) -> None:
    r = requests.post(emu.base_url + SUBMIT_PATH + "/", json=coarse_body(emu), headers=headers(), timeout=10)
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("model", "drop", "field"),
    [
        (MODEL_TRYON, "person_image_url", "input.person_image_url"),
        (MODEL_TRYON_PLUS, "model", "model"),
        (MODEL_REFINER, "coarse_image_url", "input.coarse_image_url"),
        (MODEL_REFINER, "top_garment_url", "input.top_garment_url"),
    ],
)
def test_missing_field_400_names_it(emu: Emulator, model: str, drop: str, field: str) -> None:
    body: dict[str, Any] = {
        "model": model,
        "input": {
            "person_image_url": emu.sample_url("person.png"),
            "top_garment_url": emu.sample_url("top.png"),
            "coarse_image_url": emu.sample_url("person.png"),
        },
        "parameters": {"gender": "man"} if model == MODEL_REFINER else {},
    }
    if drop == "model":
        del body["model"]
    else:
        del body["input"][drop]
    r = submit(emu, body)
    assert r.status_code == 400
    assert r.json()["code"] == "InvalidParameter"
    assert field in r.json()["message"]
    assert emu.stats()["tasks_total"] == 0


def test_coarse_needs_a_garment_and_valid_parameters(emu: Emulator) -> None:
    body = coarse_body(emu)
    del body["input"]["top_garment_url"], body["input"]["bottom_garment_url"]
    r = submit(emu, body)
    assert r.status_code == 400 and "garment" in r.json()["message"]
    r = submit(emu, coarse_body(emu, resolution=720))
    assert r.status_code == 400 and "parameters.resolution" in r.json()["message"]
    r = submit(emu, coarse_body(emu, restore_face="yes"))
    assert r.status_code == 400 and "parameters.restore_face" in r.json()["message"]


def test_bad_url_and_non_json_body(emu: Emulator) -> None:
    body = coarse_body(emu)
    body["input"]["top_garment_url"] = "ftp://example.invalid/top.png"
    r = submit(emu, body)
    assert r.status_code == 400 and r.json()["code"] == "InvalidURL"
    assert "input.top_garment_url" in r.json()["message"]
    raw = requests.post(emu.base_url + SUBMIT_PATH, data=b"{not json", headers=headers(), timeout=10)
    assert raw.status_code == 400 and raw.json()["code"] == "InvalidParameter"


@pytest.mark.parametrize("gender", ["female", None, 1])
def test_refiner_gender_must_be_woman_or_man(emu: Emulator, gender: Any) -> None:
    body = {
        "model": MODEL_REFINER,
        "input": {
            "person_image_url": emu.sample_url("person.png"),
            "top_garment_url": emu.sample_url("top.png"),
            "coarse_image_url": emu.sample_url("person.png"),
        },
        "parameters": {} if gender is None else {"gender": gender},
    }
    r = submit(emu, body)
    assert r.status_code == 400
    assert r.json()["code"] == "InvalidParameter"
    assert "parameters.gender" in r.json()["message"]


# ---------------------------------------------------------------------------- cancel and expiry


def test_cancel_pending_vs_running(clock: ManualClock) -> None:
    with Emulator(config(latency=10.0, clock=clock, max_running=1)) as emu:
        running, pending = submit_ok(emu, coarse_body(emu)), submit_ok(emu, coarse_body(emu))
        assert (status_of(emu, running), status_of(emu, pending)) == ("RUNNING", "PENDING")
        ok = requests.post(emu.base_url + cancel_path(pending), headers=headers(), timeout=10)
        assert ok.status_code == 200 and set(ok.json()) == {"request_id"}
        assert status_of(emu, pending) == "CANCELED"
        refused = requests.post(emu.base_url + cancel_path(running), headers=headers(), timeout=10)
        assert refused.status_code == 400
        assert refused.json()["code"] == "UnsupportedOperation"
        assert "PENDING" in refused.json()["message"]
        unknown = requests.post(emu.base_url + cancel_path("no-such-task"), headers=headers(), timeout=10)
        assert unknown.status_code == 404 and unknown.json()["code"] == "NotFound"
        assert emu.wait_idle(30)
        clock.advance(30)
        assert status_of(emu, running) == "SUCCEEDED"
        assert status_of(emu, pending) == "CANCELED"  # never started
        assert emu.stats()["tasks_by_status"]["CANCELED"] == 1


def test_expiry_unknown_and_result_gone(clock: ManualClock) -> None:
    with Emulator(config(latency=5.0, clock=clock, expiry_seconds=100.0)) as emu:
        tid = submit_ok(emu, coarse_body(emu))
        assert emu.wait_idle(30)
        clock.advance(5.0)
        done = query(emu, tid)
        assert done["output"]["task_status"] == "SUCCEEDED"
        url = result_url(done)
        assert requests.get(url, timeout=10).status_code == 200
        clock.advance(99.9)
        assert status_of(emu, tid) == "SUCCEEDED"
        clock.advance(0.1)
        assert query(emu, tid)["output"] == {"task_id": tid, "task_status": "UNKNOWN"}
        assert requests.get(url, timeout=10).status_code == 404
        assert emu.stats()["tasks_by_status"]["EXPIRED"] == 1
        assert status_of(emu, "never-existed") == "UNKNOWN"


# ---------------------------------------------------------------------------- failed tasks


def failed(emu: Emulator, body: dict[str, Any]) -> dict[str, Any]:
    out = wait_terminal(emu, submit_ok(emu, body))["output"]
    assert out["task_status"] == "FAILED", out
    assert "results" not in out and "image_url" not in out
    return dict(out)


def test_blank_person_fails_invalid_person(emu: Emulator) -> None:
    out = failed(emu, coarse_body(emu, person="blank_person.png"))
    assert out["code"] == "InvalidPerson"
    assert "no human body" in out["message"]


def test_refiner_size_mismatch_fails_invalid_parameter(emu: Emulator) -> None:
    body = {
        "model": MODEL_REFINER,
        "input": {
            "person_image_url": emu.sample_url("person.png"),
            "top_garment_url": emu.sample_url("top.png"),
            "coarse_image_url": emu.sample_url("coarse_mismatch.png"),
        },
        "parameters": {"gender": "man"},
    }
    out = failed(emu, body)
    assert out["code"] == "InvalidParameter"
    assert out["message"] == "The size of person image and coarse_image are not the same."


def test_refiner_refuses_coarse_made_without_restore_face(emu: Emulator) -> None:
    coarse = wait_terminal(emu, submit_ok(emu, coarse_body(emu, restore_face=False)))
    body = {
        "model": MODEL_REFINER,
        "input": {
            "person_image_url": emu.sample_url("person.png"),
            "top_garment_url": emu.sample_url("top.png"),
            "coarse_image_url": result_url(coarse),
        },
        "parameters": {"gender": "woman"},
    }
    assert failed(emu, body)["code"] == "InvalidParameter"


def test_unfetchable_and_too_small_inputs(tmp_path: Path) -> None:
    tiny = io.BytesIO()
    Image.new("RGB", (400, 400), (10, 20, 30)).save(tiny, format="PNG")
    (tmp_path / "tiny.png").write_bytes(tiny.getvalue())
    (tmp_path / "flat_top.png").write_bytes(sample_images()["blank_person.png"])
    with Emulator(config(samples_dir=tmp_path)) as emu:
        assert requests.get(emu.sample_url("person.png"), timeout=10).status_code == 200  # built-in fallback
        body = coarse_body(emu)
        body["input"]["top_garment_url"] = emu.sample_url("missing.png")
        out = failed(emu, body)
        assert out["code"] == "InvalidURL"
        body["input"]["top_garment_url"] = emu.sample_url("tiny.png")
        out = failed(emu, body)
        assert out["code"] == "InvalidInputLength"
        assert "5KB to 5MB" in out["message"]
        body["input"]["top_garment_url"] = emu.sample_url("flat_top.png")
        assert failed(emu, body)["code"] == "InvalidGarment"
        details = [t["failure_detail"] for t in emu.tasks()]
        assert "top_garment_url" in details[1]


def test_external_urls_are_not_fetched_by_default(emu: Emulator) -> None:
    body = coarse_body(emu)
    body["input"]["person_image_url"] = "https://dashscope-swap.oss-cn-beijing.aliyuncs.com/aa-test/sample-person.png"
    assert failed(emu, body)["code"] == "InvalidURL"
    assert "loopback" in emu.tasks()[0]["failure_detail"]


# ---------------------------------------------------------------------------- faults


def test_fault_5xx(emu: Emulator) -> None:
    emu.update(fault_5xx=1.0)
    responses = [submit(emu, coarse_body(emu)) for _ in range(8)]
    seen = {(r.status_code, r.json()["code"]) for r in responses}
    assert seen <= {(500, "InternalError"), (503, "ModelUnavailable")} and len(seen) == 2
    stats = emu.stats()
    assert stats["faults"]["5xx"] == 8 and stats["tasks_total"] == 0


def test_fault_429(emu: Emulator) -> None:
    emu.update(fault_429=1.0)
    r = submit(emu, coarse_body(emu))
    assert r.status_code == 429 and r.json()["code"] == "Throttling"
    assert "Retry-After" not in r.headers
    assert emu.stats()["faults"]["429"] == 1 and emu.stats()["tasks_total"] == 0


def test_fault_drop_loses_some_accepted_submits(emu: Emulator) -> None:
    emu.update(fault_drop=1.0)
    for _ in range(10):
        with pytest.raises(requests.ConnectionError):
            submit(emu, coarse_body(emu))
    stats = emu.stats()
    assert stats["faults"]["drop"] == 10
    assert 0 < stats["faults"]["lost_submit_responses"] < 10
    assert stats["tasks_total"] == stats["faults"]["lost_submit_responses"] == stats["submits_accepted"]
    # Control, samples and health are never faulted.
    assert requests.get(emu.base_url + "/health", timeout=10).status_code == 200
    assert requests.get(emu.sample_url("top.png"), timeout=10).status_code == 200
    assert requests.get(emu.base_url + "/_emulator/stats", headers=emu.control_headers, timeout=10).status_code == 200


def test_fault_slow_still_answers(emu: Emulator) -> None:
    emu.update(fault_slow=1.0, slow_seconds=0.05)
    assert submit(emu, coarse_body(emu)).status_code == 200
    assert emu.stats()["faults"]["slow"] == 1
    submits = [e for e in emu.requests() if e["path"] == SUBMIT_PATH]
    assert submits[0]["fault"] == "slow"


def test_fault_malformed_html_or_truncated_json(emu: Emulator) -> None:
    emu.update(fault_malformed=1.0)
    kinds = set()
    for _ in range(12):
        r = requests.get(emu.base_url + task_path("some-id"), headers=headers(), timeout=10)
        if r.status_code == 502:
            assert r.headers["Content-Type"].startswith("text/html")
            assert "<html>" in r.text
            kinds.add("html")
        else:
            assert r.status_code == 200
            with pytest.raises(ValueError):
                json.loads(r.text)
            kinds.add("truncated")
    assert kinds == {"html", "truncated"}
    assert emu.stats()["faults"]["malformed"] == 12


def test_faults_repeat_with_the_same_seed() -> None:
    def run() -> list[int]:
        with Emulator(config(fault_5xx=0.3, fault_429=0.3, seed=7)) as emu:
            return [
                requests.get(emu.base_url + task_path("t"), headers=headers(), timeout=10).status_code
                for _ in range(20)
            ]

    first = run()
    assert first == run()
    assert len(set(first)) > 1


# ---------------------------------------------------------------------------- introspection


def test_request_log_keeps_headers_but_never_the_key_and_stderr_hides_it(capfd: pytest.CaptureFixture[str]) -> None:
    with Emulator(config(log_requests=True)) as emu:
        tid = submit_ok(emu, coarse_body(emu))
        wait_terminal(emu, tid)
        log = emu.requests()
        fingerprint = emu.key_fingerprint(KEY)
    first = log[0]
    assert first["method"] == "POST" and first["path"] == SUBMIT_PATH
    assert first["headers"]["Authorization"] == "[redacted]"
    assert first["api_key_fingerprint"] == fingerprint and KEY not in repr(log)
    assert ["X-DashScope-Async", "enable"] in first["raw_headers"]
    assert json.loads(first["body"])["model"] == MODEL_TRYON
    assert first["status"] == 200
    fetches = [e for e in log if e["path"].startswith("/samples/")]
    assert fetches and all("Authorization" not in e["headers"] for e in fetches)
    err = capfd.readouterr().err
    assert f"POST {SUBMIT_PATH} 200" in err
    assert KEY not in err


def test_control_endpoints_over_http(emu: Emulator) -> None:
    base = emu.base_url + "/_emulator"
    control = emu.control_headers
    tid = submit_ok(emu, coarse_body(emu))
    wait_terminal(emu, tid)
    stats = requests.get(base + "/stats", headers=control, timeout=10).json()
    for key in (
        "submits_accepted",
        "submits_by_model",
        "submits_rejected",
        "queries",
        "throttled_429",
        "faults",
        "tasks_by_status",
        "max_running_observed",
    ):
        assert key in stats
    assert stats["submits_by_model"] == {MODEL_TRYON: 1}
    assert stats["faults"]["lost_submit_responses"] == 0
    tasks = requests.get(base + "/tasks", headers=control, timeout=10).json()
    assert tasks[0]["task_id"] == tid and tasks[0]["model"] == MODEL_TRYON
    assert tasks[0]["input"]["person_image_url"].endswith("/samples/person.png")
    assert tasks[0]["status"] == "SUCCEEDED"
    reqs = requests.get(base + "/requests", headers=control, timeout=10).json()
    assert all(not r["path"].startswith("/_emulator") for r in reqs)
    cfg = requests.post(base + "/config", json={"fault_429": 0.5, "max_running": 2}, headers=control, timeout=10)
    assert cfg.status_code == 200 and cfg.json()["fault_429"] == 0.5
    assert emu.config.max_running == 2
    assert requests.post(base + "/config", json={"fault_429": 2}, headers=control, timeout=10).status_code == 400
    assert requests.post(base + "/config", json={"no_such": 1}, headers=control, timeout=10).status_code == 400
    assert requests.post(base + "/reset", json={}, headers=control, timeout=10).status_code == 200
    after = emu.stats()
    assert after["tasks_total"] == 0 and after["submits_accepted"] == 0
    assert status_of(emu, tid) == "UNKNOWN"
    assert requests.get(emu.base_url + "/health", timeout=10).json() == {"status": "ok"}


def test_list_tasks(slow_emu: Emulator) -> None:
    ids = [submit_ok(slow_emu, coarse_body(slow_emu)) for _ in range(3)]
    r = requests.get(slow_emu.base_url + TASKS_PATH, params={"page_size": 2}, headers=headers(async_=False), timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert body["total"] == 3 and body["total_page"] == 2
    assert [row["task_id"] for row in body["data"]] == ids[::-1][:2]


def test_make_samples(tmp_path: Path) -> None:
    written = make_samples(tmp_path / "s")
    assert {"person.png", "top.png", "bottom.png", "dress.png", "blank_person.png", "coarse_mismatch.png"} <= set(
        written
    )
    for name, path in written.items():
        data = path.read_bytes()
        check_image(data, field=name)  # every sample obeys the 5 KB - 5 MB and side rules
        assert data == sample_images()[name]
    assert Image.open(written["person.png"]).size == (576, 1024)
    assert Image.open(written["coarse_mismatch.png"]).size != (576, 1024)
    assert is_uniform(Image.open(written["blank_person.png"]).convert("RGB"))
    assert not is_uniform(Image.open(written["person.png"]).convert("RGB"))


# ---------------------------------------------------------------------------- process mode


def test_process_mode_starts_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    url_file = tmp_path / "url"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_aitryon.emulator",
            "--port",
            "0",
            "--url-file",
            str(url_file),
            "--latency",
            "0.1",
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("DashScope emulator listening on http://127.0.0.1:")
        base = url_file.read_text().strip()
        assert line.endswith(base)
        assert requests.get(base + "/health", timeout=10).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
