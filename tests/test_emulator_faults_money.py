"""The emulator's deterministic money-audit faults, over real HTTP: lost replies, clock skew, a neighbour submitter.

These faults exist so audit tests can prove the client never pays twice for one request and never
mistakes someone else's task for its own; each test here pins one promise the audits rely on.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import io
import json
import math
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from conftest import quiet_emulator_config as config
from PIL import Image
from test_emulator import KEY, coarse_body, headers, query, submit, submit_ok, wait_terminal

from airflow_provider_aitryon.api import MODEL_TRYON, SUBMIT_PATH, TASKS_PATH, task_path
from airflow_provider_aitryon.emulator import Emulator, EmulatorConfig, ManualClock, sample_images
from airflow_provider_aitryon.emulator.__main__ import build_parser
from airflow_provider_aitryon.emulator.imaging import META_MARKER, RenderCache, run_task

EPOCH = 1767232800.0  # 2026-01-01 02:00:00 UTC = 10:00:00 in the service's +08:00 zone
TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def wait_succeeded(emu: Emulator, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
    body = wait_terminal(emu, task_id, timeout)
    assert body["output"]["task_status"] == "SUCCEEDED", body
    return body


def list_tasks(emu: Emulator, **params: str) -> dict[str, Any]:
    r = requests.get(emu.base_url + TASKS_PATH, params=params, headers=headers(async_=False), timeout=10)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def parse_time(text: str) -> float:
    """Vendor wall-clock text (service zone +08:00) to Unix seconds."""
    stamp = dt.datetime.strptime(text, TIME_FORMAT).replace(tzinfo=dt.timezone(dt.timedelta(hours=8)))
    return stamp.timestamp()


def date_header(r: requests.Response) -> float:
    return email.utils.parsedate_to_datetime(r.headers["Date"]).timestamp()


def submit_log(emu: Emulator, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Submit entries of the request log, once complete.

    The server writes an entry's ``status`` only after the reply has left (or the connection was
    dropped), so the client can be faster than the log; wait for it rather than race it.
    """
    deadline = time.monotonic() + timeout
    while True:
        entries = [e for e in emu.requests() if e["path"] == SUBMIT_PATH]
        if all(e["status"] is not None for e in entries) or time.monotonic() > deadline:
            return entries
        time.sleep(0.01)


@pytest.fixture
def sim_emu(clock: ManualClock) -> Iterator[Emulator]:
    """Simulated time only: tasks take 10 clock seconds, reported times are reproducible."""
    with Emulator(config(latency=10.0, clock=clock, epoch=EPOCH)) as e:
        yield e


# ---------------------------------------------------------------------------- lost replies


@pytest.mark.parametrize("kind", ["504", "502", "empty", "drop"])
def test_lost_reply_creates_exactly_one_task_and_loses_the_reply(emu: Emulator, kind: str) -> None:
    emu.update(lost_reply_submits=1, lost_reply_kind=kind)
    if kind == "drop":
        with pytest.raises(requests.ConnectionError):
            submit(emu, coarse_body(emu))
    else:
        r = submit(emu, coarse_body(emu))
        if kind == "empty":
            assert r.status_code == 200
            assert r.content == b"" and r.headers["Content-Length"] == "0"
        else:
            title = {"504": "504 Gateway Time-out", "502": "502 Bad Gateway"}[kind]
            assert r.status_code == int(kind)
            assert r.headers["Content-Type"].startswith("text/html")
            assert f"<title>{title}</title>" in r.text and "Tengine" in r.text

    stats = emu.stats()
    assert stats["submits_accepted"] == 1 and stats["tasks_total"] == 1
    assert stats["faults"]["lost_submit_responses"] == 1
    assert stats["neighbor_tasks"] == 0
    assert emu.config.lost_reply_submits == 0
    (entry,) = submit_log(emu)
    assert entry["fault"] == f"lost_reply_{kind}"
    assert entry["status"] == ("dropped" if kind == "drop" else int(kind) if kind != "empty" else 200)

    # The task the client never heard of is real: it runs and succeeds, and it was charged.
    (row,) = emu.tasks()
    assert row["submitter"] == "client"
    wait_succeeded(emu, row["task_id"])

    # The count is spent: the next submit is answered normally.
    nxt = submit(emu, coarse_body(emu))
    assert nxt.status_code == 200 and nxt.json()["output"]["task_status"] == "PENDING"
    assert emu.stats()["faults"]["lost_submit_responses"] == 1


def test_lost_reply_counter_counts_down_over_http(emu: Emulator) -> None:
    base = emu.base_url + "/_emulator/config"
    control = emu.control_headers
    r = requests.post(base, json={"lost_reply_submits": 2, "lost_reply_kind": "502"}, headers=control, timeout=10)
    assert r.status_code == 200 and r.json()["lost_reply_submits"] == 2
    assert submit(emu, coarse_body(emu)).status_code == 502
    assert requests.get(base, headers=control, timeout=10).json()["lost_reply_submits"] == 1
    assert submit(emu, coarse_body(emu)).status_code == 502
    assert requests.get(base, headers=control, timeout=10).json()["lost_reply_submits"] == 0
    assert submit(emu, coarse_body(emu)).status_code == 200
    stats = emu.stats()
    assert stats["submits_accepted"] == 3 and stats["faults"]["lost_submit_responses"] == 2


def test_rejected_submits_do_not_consume_the_lost_reply() -> None:
    clock = ManualClock(0.0)
    with Emulator(config(api_key=KEY, submit_rate=2.0, clock=clock)) as emu:
        emu.update(lost_reply_submits=1, throttle_submits=1)
        # Throttled (429, forced), wrong key (401), no async header (403), invalid body (400).
        assert submit(emu, coarse_body(emu)).status_code == 429
        assert submit(emu, coarse_body(emu), key="sk-wrong").status_code == 401
        assert submit(emu, coarse_body(emu), async_=False).status_code == 403
        bad = submit(emu, {"model": MODEL_TRYON, "input": {}})
        assert bad.status_code == 400 and bad.json()["code"] == "InvalidParameter"
        # Over the submit rate (429): the window already holds the 400 above.
        assert submit(emu, {"model": MODEL_TRYON, "input": {}}).status_code == 400
        limited = submit(emu, coarse_body(emu))
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
        assert emu.config.lost_reply_submits == 1
        stats = emu.stats()
        assert stats["tasks_total"] == 0 and stats["faults"]["lost_submit_responses"] == 0
        assert all(e["fault"] is None for e in submit_log(emu))

        clock.advance(1.0)  # the rate window slides; the next submit is accepted
        assert submit(emu, coarse_body(emu)).status_code == 504
        assert emu.config.lost_reply_submits == 0
        assert emu.stats()["tasks_total"] == 1


@pytest.mark.parametrize(
    "settings",
    [
        {"lost_reply_kind": "503"},
        {"lost_reply_kind": None},
        {"lost_reply_submits": -1},
        {"lost_reply_submits": 1.5},
        {"lost_reply_submits": True},
        {"clock_skew_seconds": "60"},
        {"clock_skew_seconds": math.nan},
        {"clock_skew_seconds": math.inf},
        {"neighbor_submit_seconds": -1},
        {"neighbor_submit_seconds": math.inf},
        {"neighbor_submit_seconds": "10"},
    ],
)
def test_new_settings_are_validated(emu: Emulator, settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        emu.update(**settings)
    with pytest.raises(ValueError):
        EmulatorConfig(**settings)
    if all(not isinstance(v, float) or math.isfinite(v) for v in settings.values()):  # NaN/inf are not JSON
        r = requests.post(emu.base_url + "/_emulator/config", json=settings, headers=emu.control_headers, timeout=10)
        assert r.status_code == 400


def test_new_settings_are_in_the_cli_help() -> None:
    text = build_parser().format_help()
    for flag in ("--lost-reply-submits", "--lost-reply-kind", "--clock-skew-seconds", "--neighbor-submit-seconds"):
        assert flag in text
    args = build_parser().parse_args(["--lost-reply-kind", "drop", "--clock-skew-seconds", "-30"])
    assert args.lost_reply_kind == "drop" and args.clock_skew_seconds == -30.0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--lost-reply-kind", "418"])


# ---------------------------------------------------------------------------- clock skew


@pytest.mark.parametrize("skew", [3600.0, -5400.0])
def test_skew_shifts_the_date_header_of_every_response(emu: Emulator, skew: float) -> None:
    emu.update(clock_skew_seconds=skew)
    base = emu.base_url
    responses = []
    for call in (
        lambda: submit(emu, coarse_body(emu)),
        lambda: submit(emu, {"model": MODEL_TRYON}),  # 400
        lambda: requests.get(base + task_path("nope"), headers=headers(async_=False), timeout=10),
        lambda: requests.get(base + TASKS_PATH, headers=headers(async_=False), timeout=10),
        lambda: requests.get(base + "/health", timeout=10),
        lambda: requests.get(emu.sample_url("top.png"), timeout=10),
        lambda: requests.get(base + "/no/such/route", timeout=10),
        lambda: requests.get(base + "/_emulator/stats", headers=emu.control_headers, timeout=10),
        lambda: requests.patch(base + "/health", timeout=10),  # 501 from the stdlib's send_error
    ):
        before = time.time()
        r = call()
        after = time.time()
        responses.append(r.status_code)
        # Date has whole seconds: allow one second either side.
        assert before + skew - 1 <= date_header(r) <= after + skew + 1, (r.url, r.status_code, r.headers["Date"])
    assert 400 in responses and 501 in responses

    # A runtime change applies to the very next reply.
    requests.post(base + "/_emulator/config", json={"clock_skew_seconds": 0}, headers=emu.control_headers,
                  timeout=10).raise_for_status()  # fmt: skip
    now = time.time()
    assert abs(date_header(requests.get(base + "/health", timeout=10)) - now) <= 1.5


def test_skew_shifts_every_reported_time(sim_emu: Emulator, clock: ManualClock) -> None:
    tid = submit_ok(sim_emu, coarse_body(sim_emu))
    out = query(sim_emu, tid)["output"]
    assert out["submit_time"] == "2026-01-01 10:00:00.000"
    assert out["scheduled_time"] == "2026-01-01 10:00:00.000"

    sim_emu.update(clock_skew_seconds=90.5)
    out = query(sim_emu, tid)["output"]
    assert out["submit_time"] == "2026-01-01 10:01:30.500"
    assert out["scheduled_time"] == "2026-01-01 10:01:30.500"
    (row,) = list_tasks(sim_emu)["data"]
    assert row["gmt_create"] == row["start_time"] == "2026-01-01 10:01:30.500"
    (task,) = sim_emu.tasks()
    assert task["submit_time"] == task["scheduled_time"] == "2026-01-01 10:01:30.500"
    assert task["submitted"] == 1000.0  # stored instants are simulated-clock seconds, never skewed

    assert sim_emu.wait_idle()
    clock.advance(10.0)
    sim_emu.update(clock_skew_seconds=-3600.0)
    out = wait_succeeded(sim_emu, tid)["output"]
    assert out["submit_time"] == "2026-01-01 09:00:00.000"
    assert out["end_time"] == "2026-01-01 09:00:10.000"
    (row,) = list_tasks(sim_emu)["data"]
    assert row["end_time"] == "2026-01-01 09:00:10.000"
    assert sim_emu.tasks()[0]["end_time"] == "2026-01-01 09:00:10.000"


def test_skew_with_the_real_clock_moves_submit_time_and_date_together() -> None:
    skew = 7200.0
    with Emulator(config(clock_skew_seconds=skew)) as emu:
        before = time.time()
        r = submit(emu, coarse_body(emu))
        after = time.time()
        submitted = parse_time(query(emu, r.json()["output"]["task_id"])["output"]["submit_time"])
        assert before + skew - 0.01 <= submitted <= after + skew + 0.01
        assert abs(date_header(r) - submitted) <= 1.0


def test_list_filter_reads_skewed_wall_times(sim_emu: Emulator) -> None:
    tid = submit_ok(sim_emu, coarse_body(sim_emu))

    def ids(**params: str) -> list[str]:
        return [row["task_id"] for row in list_tasks(sim_emu, **params)["data"]]

    # Unskewed: submitted at 10:00:00 service time.
    assert ids(start_time="20260101095900") == [tid]
    assert ids(start_time="20260101113000") == []
    assert ids(end_time="20260101113000") == [tid]

    # Two hours ahead: the same task was created at 12:00:00 on the service's clock.
    sim_emu.update(clock_skew_seconds=7200.0)
    assert ids(start_time="20260101113000") == [tid]
    assert ids(end_time="20260101113000") == []
    assert ids(start_time="20260101115959", end_time="20260101120001") == [tid]

    # Ten minutes behind: 09:50:00.
    sim_emu.update(clock_skew_seconds=-600.0)
    assert ids(start_time="20260101095500") == []
    assert ids(start_time="20260101094500", end_time="20260101095500") == [tid]


# ---------------------------------------------------------------------------- neighbour submitter


def test_neighbor_task_is_backdated_succeeds_and_differs(sim_emu: Emulator, clock: ManualClock) -> None:
    body = coarse_body(sim_emu)
    sim_emu.update(lost_reply_submits=1, lost_reply_kind="504", neighbor_submit_seconds=30.0)
    assert submit(sim_emu, body).status_code == 504

    neighbor, ours = sim_emu.tasks()
    assert neighbor["submitter"] == "neighbor" and ours["submitter"] == "client"
    assert neighbor["seq"] < ours["seq"]  # created first, so it queues ahead of ours
    assert neighbor["model"] == ours["model"] and neighbor["input"] == ours["input"]
    assert neighbor["parameters"] == ours["parameters"]
    assert neighbor["request_digest"] == ours["request_digest"]
    assert ours["submitted"] - neighbor["submitted"] == 30.0
    assert neighbor["submit_time"] == "2026-01-01 09:59:30.000"
    assert ours["submit_time"] == "2026-01-01 10:00:00.000"

    listed = {row["task_id"]: row for row in list_tasks(sim_emu)["data"]}
    assert set(listed) == {neighbor["task_id"], ours["task_id"]}  # same account: the client sees it too
    gap = parse_time(listed[ours["task_id"]]["gmt_create"]) - parse_time(listed[neighbor["task_id"]]["gmt_create"])
    assert gap == pytest.approx(30.0)

    assert sim_emu.wait_idle()
    clock.advance(10.0)
    pngs = []
    for task_id in (neighbor["task_id"], ours["task_id"]):
        url = wait_succeeded(sim_emu, task_id)["output"]["results"]["image_url"]
        r = requests.get(url, timeout=10)
        assert r.status_code == 200
        pngs.append(r.content)
    assert pngs[0] != pngs[1]
    theirs_img, ours_img = (Image.open(io.BytesIO(p)) for p in pngs)
    assert theirs_img.size == ours_img.size
    assert theirs_img.info.get(META_MARKER) == "neighbor" and META_MARKER not in ours_img.info
    assert theirs_img.convert("RGB").tobytes() != ours_img.convert("RGB").tobytes()

    stats = sim_emu.stats()
    assert stats["submits_accepted"] == 2 and stats["neighbor_tasks"] == 1
    assert stats["faults"]["lost_submit_responses"] == 1
    assert stats["tasks_by_status"]["SUCCEEDED"] == 2
    assert stats["tasks_per_request"] == {ours["request_digest"]: 1}


def test_our_result_is_unaffected_by_the_neighbor(emu: Emulator) -> None:
    """Our lost task renders exactly what a normal submit renders; only the neighbour's is marked."""
    body = coarse_body(emu)
    normal = wait_succeeded(emu, submit_ok(emu, body))["output"]["results"]["image_url"]
    emu.update(lost_reply_submits=1, lost_reply_kind="empty", neighbor_submit_seconds=5.0)
    assert submit(emu, body).content == b""
    rows = emu.tasks()
    (ours,) = [r for r in rows if r["submitter"] == "client" and r["seq"] == 3]
    (theirs,) = [r for r in rows if r["submitter"] == "neighbor"]
    ours_png = requests.get(wait_succeeded(emu, ours["task_id"])["output"]["results"]["image_url"], timeout=10)
    theirs_png = requests.get(wait_succeeded(emu, theirs["task_id"])["output"]["results"]["image_url"], timeout=10)
    assert ours_png.content == requests.get(normal, timeout=10).content
    assert theirs_png.content != ours_png.content


def test_neighbor_only_comes_with_a_lost_reply(emu: Emulator) -> None:
    emu.update(neighbor_submit_seconds=10.0)
    submit_ok(emu, coarse_body(emu))
    assert emu.stats()["neighbor_tasks"] == 0 and len(emu.tasks()) == 1
    emu.update(lost_reply_submits=2, lost_reply_kind="drop")
    for _ in range(2):
        with pytest.raises(requests.ConnectionError):
            submit(emu, coarse_body(emu))
    stats = emu.stats()
    assert stats["neighbor_tasks"] == 2 and stats["submits_accepted"] == 5 and stats["tasks_total"] == 5
    assert [r["submitter"] for r in emu.tasks()] == ["client", "neighbor", "client", "neighbor", "client"]


def test_marker_is_part_of_the_render_cache_key() -> None:
    samples = sample_images()
    urls = {
        "person_image_url": "http://x/samples/person.png",
        "top_garment_url": "http://x/samples/top.png",
    }

    def fetch(url: str) -> bytes:
        return samples[url.rsplit("/", 1)[1]]

    cache = RenderCache()
    params: dict[str, object] = {"resolution": -1, "restore_face": True}
    plain = run_task(MODEL_TRYON, urls, params, fetch, cache)
    marked = run_task(MODEL_TRYON, urls, params, fetch, cache, marker=True)
    assert marked.png != plain.png and (marked.width, marked.height) == (plain.width, plain.height)
    assert cache.hits == 0
    assert run_task(MODEL_TRYON, urls, params, fetch, cache).png == plain.png
    assert run_task(MODEL_TRYON, urls, params, fetch, cache, marker=True).png == marked.png
    assert cache.hits == 2


# ---------------------------------------------------------------------------- request digests


def test_tasks_per_request_counts_client_tasks_per_digest(emu: Emulator) -> None:
    body_a = coarse_body(emu)
    body_b = coarse_body(emu, resolution=1024)
    submit_ok(emu, body_a)
    # Spelled-out defaults are the same request as omitted ones.
    submit_ok(emu, coarse_body(emu, resolution=-1, restore_face=True))
    submit_ok(emu, body_b)
    emu.update(lost_reply_submits=1, neighbor_submit_seconds=60.0)
    assert submit(emu, body_a).status_code == 504

    rows = emu.tasks()
    digest_a = rows[0]["request_digest"]
    digest_b = rows[2]["request_digest"]
    canonical = json.dumps(
        {"model": MODEL_TRYON, "input": body_a["input"], "parameters": {"resolution": -1, "restore_face": True}},
        sort_keys=True,
        separators=(",", ":"),
    )
    assert digest_a == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert len(digest_b) == 16 and digest_b != digest_a
    assert [r["request_digest"] for r in rows] == [digest_a, digest_a, digest_b, digest_a, digest_a]

    expected = {digest_a: 3, digest_b: 1}  # the neighbour's task on digest_a is not ours
    assert emu.tasks_per_request() == expected
    stats = requests.get(emu.base_url + "/_emulator/stats", headers=emu.control_headers, timeout=10).json()
    assert stats["tasks_per_request"] == expected
    assert stats["neighbor_tasks"] == 1 and stats["submits_accepted"] == 5

    emu.reset()
    assert emu.tasks_per_request() == {} and emu.stats()["neighbor_tasks"] == 0
