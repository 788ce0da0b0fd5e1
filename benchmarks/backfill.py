"""Benchmark (not a test) of the catalog backfill path against the built-in emulator: `make bench`.

    python benchmarks/backfill.py --items 1000 --latency 1.0          # the goal case (~10 min)
    python benchmarks/backfill.py --items 100 --latency 0.5 --peers none   # a quick look
    make bench BENCH_ARGS="--items 200"                                # installs .[dev,bench] first

It starts the emulator in this process with the documented account limits (10 submits/s, 20
queries/s, 5 tasks running) and a per-task latency L, makes ONE coarse try-on (before any timing)
so every catalog item is exactly one ``aitryon-refiner`` task, and then runs N items through:

* ``batch`` — the provider's batch path as Airflow runs it: ``plan_chunks`` → one
  ``RefineCatalogChunkOperator`` per chunk, whose ``execute`` defers; the triggers (rebuilt from
  ``serialize()`` as a triggerer does) all run in ONE asyncio event loop; ``execute_complete``
  gets each event and writes the chunk's manifest rows; then ``merge_manifest``;
* ``sdk`` — the official ``dashscope`` SDK (``BaseAsyncApi.async_call`` + ``wait``) in 5 threads,
  one item per call, each result downloaded and saved;
* ``loop`` — one blocking submit-and-poll loop per item (``requests``; sleep ``--poll-interval``
  between queries; download and save), as a plain PythonOperator would, in 5 worker slots.

Each scenario gets a fresh emulator and a fresh account budget. Figures per scenario:
``ideal_s = max(N/10, ceil(N/5)*L)`` (the account's physical limit with exactly N submissions),
``wall_s`` (first execute / first submit → every result saved), ``ratio_to_ideal``,
``queries_per_item`` (task GETs seen by the emulator / N), ``throttled_429``, ``lost`` (items
with neither a saved image nor a recorded failure; for the peers, which record nothing, every item
without an image), ``duplicates`` (refiner submissions beyond one per item), and
``worker_slot_s_per_item`` (seconds a worker slot is held / N: for ``batch`` the time inside
``execute`` and ``execute_complete``; for the peers the time each thread is busy with an item).

The human summary goes to stdout, then, as the LAST line, one JSON object: the batch path's
figures, with the peers' under ``peers``. Loopback only; every scenario is bounded in time
(``--timeout-factor`` * ideal + 120 s) and fails with a message past that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

API_KEY = "bench-key"
CONN_ID = "dashscope_default"
MAX_RUNNING = 5
SUBMIT_RATE = 10.0
QUERY_RATE = 20.0
REFINER = "aitryon-refiner"
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"}
GOALS = {  # the goals at N=1000, L=1 s, for the batch path
    "ratio_to_ideal": 1.10,
    "queries_per_item": 2.0,
    "lost": 0,
    "duplicates": 0,
    "worker_slot_s_per_item": 0.05,
}


class BenchError(RuntimeError):
    """A scenario could not be measured (it overran its time bound, or the set-up failed)."""


# ------------------------------------------------------------------------------------------ set-up


def ideal_seconds(items: int, latency: float) -> float:
    return max(items / SUBMIT_RATE, math.ceil(items / MAX_RUNNING) * latency)


def time_bound(ideal: float, factor: float) -> float:
    return factor * ideal + 120.0


def start_emulator(latency: float, report_times: bool = True) -> Any:
    from airflow_provider_aitryon.emulator import Emulator, EmulatorConfig

    config = EmulatorConfig(
        host="127.0.0.1",
        latency=latency,
        max_running=MAX_RUNNING,
        submit_rate=SUBMIT_RATE,
        query_rate=QUERY_RATE,
        log_requests=False,
        report_times=report_times,
    )
    return Emulator(config).start()


def make_coarse(emu: Any, timeout: float = 60.0) -> str:
    """One coarse try-on of the samples (resolution -1, restore_face): the refiner's input."""
    import requests

    from airflow_provider_aitryon import api

    call = api.tryon_call(
        person_image_url=emu.sample_url("person.png"),
        top_garment_url=emu.sample_url("top.png"),
        bottom_garment_url=emu.sample_url("bottom.png"),
    )
    with requests.Session() as session:
        reply = session.post(emu.base_url + call.path, json=call.body, headers=call.headers(API_KEY, None), timeout=30)
        reply.raise_for_status()
        task_id = reply.json()["output"]["task_id"]
        deadline = time.monotonic() + timeout
        while True:
            body = session.get(f"{emu.base_url}/api/v1/tasks/{task_id}", headers=_auth(), timeout=30).json()
            status = body["output"]["task_status"]
            if status in TERMINAL:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"the coarse try-on {task_id} did not finish in {timeout:g}s")
            time.sleep(0.05)
    if status != "SUCCEEDED":
        raise BenchError(f"the coarse try-on ended {status}: {body['output']}")
    return str(api.parse_task(body, task_id).image_url)


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def sku_of(n: int) -> str:
    return f"item-{n:06d}"


def make_items(emu: Any, coarse_url: str, count: int) -> list[dict[str, str]]:
    """Catalog lines: the sample images, each URL tagged with the sku so every task is traceable.

    The emulator ignores the query string when serving, so every item renders the same (cached)
    image and the benchmark measures the clients, not Pillow.
    """
    items = []
    for n in range(count):
        tag = "?" + urllib.parse.urlencode({"sku": sku_of(n)})
        items.append(
            {
                "sku": sku_of(n),
                "person_image_url": emu.sample_url("person.png") + tag,
                "top_garment_url": emu.sample_url("top.png") + tag,
                "bottom_garment_url": emu.sample_url("bottom.png") + tag,
                "coarse_image_url": coarse_url + tag,
                "gender": "woman",
            }
        )
    return items


def refiner_body(item: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    inputs = {k: item[k] for k in ("person_image_url", "top_garment_url", "bottom_garment_url", "coarse_image_url")}
    return inputs, {"gender": item["gender"]}


# ------------------------------------------------------------------------------------------ results


@dataclass
class Result:
    name: str
    items: int
    latency: float
    ideal_s: float
    wall_s: float = 0.0
    queries: int = 0
    throttled_429: int = 0
    throttled_by_endpoint: dict[str, int] = field(default_factory=dict)
    submits_accepted: int = 0
    saved: int = 0
    failed: int = 0
    lost: int = 0
    duplicates: int = 0
    worker_slot_s: float = 0.0
    failures: Counter[str] = field(default_factory=Counter)
    extra: dict[str, Any] = field(default_factory=dict)

    def figures(self) -> dict[str, Any]:
        n = max(1, self.items)
        return {
            "items": self.items,
            "ideal_s": round(self.ideal_s, 3),
            "wall_s": round(self.wall_s, 3),
            "ratio_to_ideal": round(self.wall_s / self.ideal_s, 4) if self.ideal_s else None,
            "queries_per_item": round(self.queries / n, 4),
            "throttled_429": self.throttled_429,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "worker_slot_s_per_item": round(self.worker_slot_s / n, 5),
            "saved": self.saved,
            "failed": self.failed,
            "submits": self.submits_accepted,
        }


def account_figures(emu: Any, before: dict[str, Any], result: Result, skus: set[str], t0: float,
                    saved_at: dict[str, float] | None = None) -> None:  # fmt: skip
    """Fill the emulator-side figures: deltas of its counters and what its task list shows.

    ``saved_at``: sku → monotonic time its image was saved, for the lag behind the task's end.
    """
    after = emu.stats()
    result.queries = after["queries"] - before["queries"]
    result.throttled_429 = after["throttled_429"] - before["throttled_429"]
    result.throttled_by_endpoint = {
        k: v - before["throttled_by_endpoint"].get(k, 0) for k, v in after["throttled_by_endpoint"].items()
    }
    result.submits_accepted = after["submits_by_model"].get(REFINER, 0) - before["submits_by_model"].get(REFINER, 0)
    tasks = [t for t in emu.tasks() if t["model"] == REFINER]
    per_sku: Counter[str] = Counter()
    lags = []
    for task in tasks:
        sku = urllib.parse.parse_qs(urllib.parse.urlsplit(task["input"]["person_image_url"]).query).get("sku", [""])[0]
        per_sku[sku] += 1
        if saved_at and sku in saved_at and task["ended"] is not None and task["status"] == "SUCCEEDED":
            lags.append(saved_at[sku] - task["ended"])
    if lags:
        lags.sort()
        result.extra["saved_after_end_s_median"] = round(lags[len(lags) // 2], 3)
        result.extra["saved_after_end_s_p90"] = round(lags[int(len(lags) * 0.9)], 3)
        result.extra["saved_after_end_s_max"] = round(lags[-1], 3)
    result.duplicates = sum(c - 1 for sku, c in per_sku.items() if c > 1) + sum(
        c for sku, c in per_sku.items() if sku not in skus
    )
    result.extra["extra_submits"] = result.submits_accepted - len(per_sku & Counter(dict.fromkeys(skus, 1)))
    result.extra["max_running_observed"] = after["max_running_observed"]
    result.extra["tasks_by_status"] = {k: v for k, v in after["tasks_by_status"].items() if v}
    result.extra.update(slot_use(tasks, t0))


def slot_use(tasks: list[dict[str, Any]], t0: float) -> dict[str, Any]:
    """How busy the account's 5 running slots were, from the emulator's task times (same clock)."""
    ran = [t for t in tasks if t["started"] is not None and t["ended"] is not None]
    if not ran:
        return {}
    first_submit = min(t["submitted"] for t in ran)
    last_end = max(t["ended"] for t in ran)
    busy = sum(t["ended"] - t["started"] for t in ran)
    span = last_end - first_submit
    waits = sorted(t["started"] - t["submitted"] for t in ran)
    return {
        "first_submit_after_s": round(first_submit - t0, 3),
        "last_task_end_after_s": round(last_end - t0, 3),
        "slot_utilisation": round(busy / (MAX_RUNNING * span), 4) if span > 0 else None,
        "queue_wait_s_median": round(waits[len(waits) // 2], 3),
        "queue_wait_s_max": round(waits[-1], 3),
    }


def image_path(images: Path, sku: str) -> Path:
    """Where every scenario saves an item's image: the provider's collision-free name for the sku."""
    from airflow_provider_aitryon.registry import sku_file_stem

    return images / f"{sku_file_stem(sku)}.png"


def saved_files(images: Path, skus: list[str]) -> set[str]:
    present = set()
    for sku in skus:
        path = image_path(images, sku)
        if path.is_file() and path.stat().st_size > 0:
            present.add(sku)
    return present


# ------------------------------------------------------------------------------------------ batch path


class StubTI:
    """What an operator may touch of ``context["ti"]`` outside a task runner."""

    dag_id = "aitryon_catalog_backfill"
    run_id = "bench"
    map_index = -1
    try_number = 1

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def as_task_runner(op: Any, method: Callable[..., Any], context: dict[str, Any]) -> Any:
    """Call an operator method as Airflow's task runner does (past ExecutorSafeguard's check)."""
    from airflow.sdk.bases.operator import ExecutorSafeguard

    ctx = contextvars.copy_context()
    ctx.run(ExecutorSafeguard.tracker.set, op)
    return ctx.run(method, context)


def run_batch(emu: Any, items: list[dict[str, str]], latency: float, chunk_size: int, work: Path, bound: float,
              ideal: float, expected_latency: float | None = None) -> Result:  # fmt: skip
    from airflow.sdk.exceptions import TaskDeferred
    from airflow.sdk.module_loading import import_string

    from airflow_provider_aitryon.budget import forget_budgets
    from airflow_provider_aitryon.catalog import merge_manifest, plan_chunks
    from airflow_provider_aitryon.operators.batch import RefineCatalogChunkOperator

    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps(
        {"conn_type": "dashscope", "host": emu.base_url, "password": API_KEY}
    )
    forget_budgets()
    catalog = work / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(item) + "\n" for item in items))
    output = work / "output"
    result = Result("batch", len(items), latency, ideal)
    skus = [item["sku"] for item in items]

    plan_t = time.perf_counter()
    chunks = plan_chunks(str(catalog), str(output), chunk_size=chunk_size)
    result.extra["plan_s"] = round(time.perf_counter() - plan_t, 3)
    result.extra["chunks"] = len(chunks)
    before = emu.stats()

    t0 = time.monotonic()
    slot = 0.0
    deferred: list[tuple[Any, dict[str, Any], Any]] = []
    for i, uri in enumerate(chunks):
        op = RefineCatalogChunkOperator(
            task_id=f"refine_chunk_{i}", chunk=uri, output_dir=str(output), chunk_timeout=bound,
            expected_latency=latency if expected_latency is None else expected_latency,
        )  # fmt: skip
        context: dict[str, Any] = {"ti": StubTI(op.task_id)}
        start = time.perf_counter()
        try:
            as_task_runner(op, op.execute, context)
        except TaskDeferred as deferral:
            slot += time.perf_counter() - start
            classpath, kwargs = deferral.trigger.serialize()
            deferred.append((op, context, import_string(classpath)(**kwargs)))  # rebuilt, as a triggerer does
        else:
            raise BenchError(f"chunk {uri}: execute returned instead of deferring")
    result.extra["execute_s"] = round(slot, 4)

    async def first_event(trigger: Any) -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise BenchError("a trigger ended without an event")

    async def triggerer() -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(first_event(trigger) for _, _, trigger in deferred)))

    try:
        events = asyncio.run(asyncio.wait_for(triggerer(), timeout=bound + 60))
    except asyncio.TimeoutError:
        raise BenchError(f"batch: the triggers did not finish within {bound + 60:.0f}s") from None
    triggers_done = time.monotonic()

    complete_s = 0.0
    for (op, context, _), event in zip(deferred, events, strict=True):
        start = time.perf_counter()
        try:
            op.execute_complete(context, event)  # type: ignore[arg-type]
        except Exception as exc:  # an unfinished chunk raises so Airflow retries it; report, go on
            result.failures[f"chunk {op.task_id}: {type(exc).__name__}: {exc}"[:200]] += 1
        complete_s += time.perf_counter() - start
    result.wall_s = time.monotonic() - t0
    result.worker_slot_s = slot + complete_s
    result.extra["execute_complete_s"] = round(complete_s, 4)
    result.extra["triggers_s"] = round(triggers_done - t0, 3)

    merge_t = time.perf_counter()
    rows = merge_manifest(str(output))
    result.extra["merge_manifest_s"] = round(time.perf_counter() - merge_t, 3)
    present = saved_files(output / "images", skus)
    result.saved = len(present)
    for sku in skus:
        row = rows.get(sku)
        if sku in present and row and row.get("status") == "succeeded":
            continue
        if row and row.get("status") == "failed":
            result.failed += 1
            result.failures[str(row.get("code"))] += 1
        else:
            result.lost += 1
    counts: Counter[str] = Counter()
    for event in events:
        counts.update({k: v for k, v in (event.get("counts") or {}).items() if isinstance(v, int)})
        if event.get("status") != "done":
            result.failures[f"event {event.get('status')}: {event.get('message')}"[:200]] += 1
    result.extra["trigger_counts"] = dict(counts)
    result.extra["dag_worker_s_per_item"] = round(
        (result.extra["plan_s"] + result.worker_slot_s + result.extra["merge_manifest_s"]) / len(skus), 5
    )
    account_figures(emu, before, result, set(skus), t0, images_saved_at(output / "images", skus))
    return result


def images_saved_at(images: Path, skus: list[str]) -> dict[str, float]:
    """sku → when its image file was written (atomically: complete when it appears), on the monotonic clock."""
    offset = time.time() - time.monotonic()
    saved = {}
    for sku in skus:
        path = image_path(images, sku)
        if path.is_file():
            saved[sku] = path.stat().st_mtime - offset
    return saved


# ------------------------------------------------------------------------------------------ peers


_local = threading.local()


def _session() -> Any:
    import requests

    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
    return session


def download(url: str, path: Path) -> None:
    reply = _session().get(url, timeout=60)
    reply.raise_for_status()
    tmp = path.with_suffix(".part")
    tmp.write_bytes(reply.content)
    tmp.replace(path)


def run_threads(name: str, emu: Any, items: list[dict[str, str]], latency: float, work: Path, bound: float,
                ideal: float, one: Callable[[dict[str, str], Path, float], str | None],
                threads: int) -> Result:  # fmt: skip
    """Run ``one(item, images_dir, deadline)`` for every item in ``threads`` worker slots."""
    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    result = Result(name, len(items), latency, ideal)
    skus = [item["sku"] for item in items]
    busy = [0.0]
    saved_at: dict[str, float] = {}
    lock = threading.Lock()
    before = emu.stats()
    t0 = time.monotonic()
    deadline = t0 + bound

    def slot(item: dict[str, str]) -> str | None:
        start = time.perf_counter()
        try:
            if time.monotonic() > deadline:
                return "BenchTimeout"
            outcome = one(item, images, deadline)
            if outcome is None:
                saved_at[item["sku"]] = time.monotonic()
            return outcome
        except Exception as exc:
            return f"{type(exc).__name__}"
        finally:
            with lock:
                busy[0] += time.perf_counter() - start

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name) as pool:
        outcomes = list(pool.map(slot, items))
    result.wall_s = time.monotonic() - t0
    result.worker_slot_s = busy[0]
    if any(o == "BenchTimeout" for o in outcomes):
        raise BenchError(f"{name}: the scenario exceeded its bound of {bound:.0f}s")
    present = saved_files(images, skus)
    result.saved = len(present)
    for item, outcome in zip(items, outcomes, strict=True):
        if item["sku"] not in present:
            result.lost += 1  # the peers keep no record: an item without an image is lost to the backfill
            result.failures[outcome or "no image"] += 1
    account_figures(emu, before, result, set(skus), t0, saved_at)
    return result


def sdk_item(item: dict[str, str], images: Path, deadline: float) -> str | None:
    """The official SDK, as its docs use the async task API: async_call, then wait, then download."""
    from dashscope.client.base_api import BaseAsyncApi

    inputs, parameters = refiner_body(item)
    submitted = BaseAsyncApi.async_call(
        model=REFINER, input=inputs, task_group="aigc", task="image2image", function="image-synthesis",
        api_key=API_KEY, **parameters,
    )  # fmt: skip
    if submitted.status_code != 200:
        return f"submit HTTP {submitted.status_code} {submitted.code}"
    remaining = max(1, int(deadline - time.monotonic()))
    done = BaseAsyncApi.wait(submitted, api_key=API_KEY, wait_timeout=remaining)
    if done.status_code != 200:
        return f"wait HTTP {done.status_code} {done.code}"
    output = done.output or {}
    if output.get("task_status") != "SUCCEEDED":
        return f"task {output.get('task_status')} {output.get('code')}"
    results = output.get("results")
    url = results.get("image_url") if isinstance(results, dict) else output.get("image_url")
    download(str(url), image_path(images, item["sku"]))
    return None


def loop_item_factory(base_url: str, poll_interval: float) -> Callable[[dict[str, str], Path, float], str | None]:
    def loop_item(item: dict[str, str], images: Path, deadline: float) -> str | None:
        """What a plain PythonOperator does: submit, sleep-and-GET until terminal, download."""
        session = _session()
        inputs, parameters = refiner_body(item)
        reply = session.post(
            f"{base_url}/api/v1/services/aigc/image2image/image-synthesis",
            json={"model": REFINER, "input": inputs, "parameters": parameters},
            headers={**_auth(), "X-DashScope-Async": "enable"},
            timeout=60,
        )
        if reply.status_code != 200:
            return f"submit HTTP {reply.status_code} {reply.json().get('code')}"
        task_id = reply.json()["output"]["task_id"]
        while True:
            if time.monotonic() > deadline:
                return "BenchTimeout"
            time.sleep(poll_interval)
            reply = session.get(f"{base_url}/api/v1/tasks/{task_id}", headers=_auth(), timeout=60)
            if reply.status_code != 200:
                return f"query HTTP {reply.status_code} {reply.json().get('code')}"
            output = reply.json()["output"]
            if output["task_status"] in TERMINAL:
                break
        if output["task_status"] != "SUCCEEDED":
            return f"task {output['task_status']} {output.get('code')}"
        results = output.get("results")
        url = results.get("image_url") if isinstance(results, dict) else output.get("image_url")
        download(str(url), image_path(images, item["sku"]))
        return None

    return loop_item


def sdk_version() -> str:
    try:
        from importlib.metadata import version

        return version("dashscope")
    except Exception:
        return "not installed"


def run_sdk(emu: Any, items: list[dict[str, str]], latency: float, work: Path, bound: float, ideal: float,
            threads: int) -> Result:  # fmt: skip
    try:
        import dashscope
    except ImportError:
        raise BenchError("the dashscope SDK is not installed: pip install -c constraints.txt -e '.[bench]'") from None
    dashscope.base_http_api_url = emu.base_url + "/api/v1"
    dashscope.api_key = API_KEY
    return run_threads("sdk", emu, items, latency, work, bound, ideal, sdk_item, threads)


def run_loop(emu: Any, items: list[dict[str, str]], latency: float, work: Path, bound: float, ideal: float,
             threads: int, poll_interval: float) -> Result:  # fmt: skip
    one = loop_item_factory(emu.base_url, poll_interval)
    result = run_threads("loop", emu, items, latency, work, bound, ideal, one, threads)
    result.extra["poll_interval_s"] = poll_interval
    return result


# ------------------------------------------------------------------------------------------ report


ROWS = [
    ("wall_s", "wall s", "{:.1f}"),
    ("ratio_to_ideal", "wall / ideal", "{:.3f}"),
    ("queries_per_item", "queries / item", "{:.2f}"),
    ("throttled_429", "429 throttled", "{}"),
    ("submits", "refiner submits", "{}"),
    ("saved", "images saved", "{}"),
    ("failed", "failed (recorded)", "{}"),
    ("lost", "lost", "{}"),
    ("duplicates", "duplicates", "{}"),
    ("worker_slot_s_per_item", "worker slot s / item", "{:.4f}"),
]
EXTRA_ROWS = [
    ("slot_utilisation", "5-slot utilisation", "{:.3f}"),
    ("max_running_observed", "max running observed", "{}"),
    ("first_submit_after_s", "first submit after s", "{:.2f}"),
    ("last_task_end_after_s", "last task end after s", "{:.1f}"),
    ("queue_wait_s_median", "queue wait s (median)", "{:.2f}"),
    ("queue_wait_s_max", "queue wait s (max)", "{:.2f}"),
    ("saved_after_end_s_median", "saved after end s (med)", "{:.2f}"),
    ("saved_after_end_s_p90", "saved after end s (p90)", "{:.2f}"),
    ("saved_after_end_s_max", "saved after end s (max)", "{:.2f}"),
]


def provider_revision() -> str:
    """The commit measured (read-only git), and whether the provider's files differ from it."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "airflow_provider_aitryon"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + (" (provider files modified)" if dirty else "")


def report(results: list[Result], items: int, latency: float, revision: str) -> None:
    ideal = ideal_seconds(items, latency)
    print()
    print(f"Provider at commit {revision}; dashscope SDK for the sdk peer: {sdk_version()}.")
    print(f"Catalog backfill benchmark: N={items} items, task latency L={latency:g}s, account limits "
          f"{SUBMIT_RATE:g} submits/s, {QUERY_RATE:g} queries/s, {MAX_RUNNING} running.")  # fmt: skip
    print(f"ideal_s = max(N/10, ceil(N/5)*L) = {ideal:.1f}s")
    width = 24
    header = f"{'':{width}}" + "".join(f"{r.name:>14}" for r in results)
    print(header)
    print("-" * len(header))
    for key, label, fmt in ROWS:
        cells = []
        for r in results:
            value = r.figures()[key]
            cells.append(f"{fmt.format(value) if value is not None else '-':>14}")
        print(f"{label:{width}}" + "".join(cells))
    for key, label, fmt in EXTRA_ROWS:
        cells = []
        for r in results:
            value = r.extra.get(key)
            cells.append(f"{fmt.format(value) if value is not None else '-':>14}")
        print(f"{label:{width}}" + "".join(cells))
    for r in results:
        details = {k: v for k, v in r.extra.items() if k not in {key for key, _, _ in EXTRA_ROWS}}
        print(f"{r.name}: {json.dumps(details, sort_keys=True)}")
        if r.throttled_429:
            print(f"{r.name}: 429 by endpoint {r.throttled_by_endpoint}")
        for reason, count in r.failures.most_common(5):
            print(f"{r.name}: {count} x {reason}")
    batch = next((r for r in results if r.name == "batch"), None)
    if batch is not None:
        figures = batch.figures()
        checks = []
        for key, goal in GOALS.items():
            ok = figures[key] is not None and figures[key] <= goal
            checks.append(f"{key} {figures[key]} {'<=' if ok else '>'} {goal} {'ok' if ok else 'MISSED'}")
        note = "" if (items, latency) == (1000, 1.0) else " (the goals are set for N=1000, L=1)"
        print("batch vs goals" + note + ": " + "; ".join(checks))
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=1000, help="catalog items N (default 1000)")
    parser.add_argument("--latency", type=float, default=1.0, help="emulated seconds per task L (default 1.0)")
    parser.add_argument("--chunk-size", type=int, default=200, help="items per chunk / trigger (default 200)")
    parser.add_argument(
        "--expected-latency", type=float, default=None, help="the operators' first guess of task seconds (default: L)"
    )
    parser.add_argument("--peers", choices=("all", "none", "sdk", "loop"), default="all")
    parser.add_argument("--threads", type=int, default=5, help="worker slots of the peers (default 5)")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="the loop peer's sleep (default 1 s)")
    parser.add_argument("--timeout-factor", type=float, default=3.0, help="bound: factor*ideal + 120 s")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (printed)")
    parser.add_argument("--no-times", action="store_true",
                        help="task replies carry no times (as in the vendor page's examples)")  # fmt: skip
    parser.add_argument("--verbose", action="store_true", help="show the provider's INFO logs on stderr")
    args = parser.parse_args(argv)
    if args.items < 1 or args.latency < 0 or args.chunk_size < 1 or args.threads < 1:
        parser.error("--items, --chunk-size and --threads must be >= 1 and --latency >= 0")

    work = Path(tempfile.mkdtemp(prefix="aitryon-bench-"))
    revision = provider_revision()
    # Before Airflow is imported: a private home, and its log level (Airflow's logs go to stdout,
    # where a line per submit would bury the summary).
    os.environ.setdefault("AIRFLOW_HOME", str(work / "airflow-home"))
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "INFO" if args.verbose else "WARNING"
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    for name in ("airflow_provider_aitryon", "airflow", "httpx", "dashscope", "urllib3"):
        logging.getLogger(name).setLevel(logging.INFO if args.verbose else logging.WARNING)

    ideal = ideal_seconds(args.items, args.latency)
    bound = time_bound(ideal, args.timeout_factor)
    scenarios = ["batch"] + {"all": ["sdk", "loop"], "none": [], "sdk": ["sdk"], "loop": ["loop"]}[args.peers]
    results: list[Result] = []
    try:
        for name in scenarios:
            print(f"[{name}] N={args.items} L={args.latency:g}s: ideal {ideal:.1f}s, bound {bound:.0f}s ...",
                  flush=True)  # fmt: skip
            emu = start_emulator(args.latency, report_times=not args.no_times)
            try:
                coarse = make_coarse(emu)
                items = make_items(emu, coarse, args.items)
                scenario_dir = work / name
                scenario_dir.mkdir()
                if name == "batch":
                    result = run_batch(emu, items, args.latency, args.chunk_size, scenario_dir, bound, ideal,
                                       args.expected_latency)  # fmt: skip
                elif name == "sdk":
                    result = run_sdk(emu, items, args.latency, scenario_dir, bound, ideal, args.threads)
                else:
                    result = run_loop(emu, items, args.latency, scenario_dir, bound, ideal, args.threads,
                                      args.poll_interval)  # fmt: skip
            finally:
                emu.stop()
            if result.wall_s > bound:
                raise BenchError(f"{name}: {result.wall_s:.0f}s exceeds the bound of {bound:.0f}s")
            f = result.figures()
            print(
                f"[{name}] wall {f['wall_s']:.1f}s (x{f['ratio_to_ideal']:.3f} ideal), "
                f"{f['queries_per_item']:.2f} queries/item, {f['throttled_429']} x 429, lost {f['lost']}, "
                f"duplicates {f['duplicates']}, slot {f['worker_slot_s_per_item']:.4f}s/item",
                flush=True,
            )
            results.append(result)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    report(results, args.items, args.latency, revision)
    summary = results[0].figures()
    summary["latency"] = args.latency
    summary["peers"] = {r.name: r.figures() for r in results[1:]}
    print(json.dumps(summary, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
