"""The batch trigger against the emulator over real HTTP: pacing, query budget, restarts, failures."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from airflow.sdk.module_loading import import_string
from conftest import set_connection

from airflow_provider_aitryon.budget import forget_budgets
from airflow_provider_aitryon.catalog import plan_chunks, read_chunk, rows_from_registry
from airflow_provider_aitryon.emulator import Emulator, EmulatorConfig
from airflow_provider_aitryon.registry import partition_registry
from airflow_provider_aitryon.triggers.batch import DashScopeBatchTrigger


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    forget_budgets()
    with Emulator(EmulatorConfig(latency=0.3)) as emu:
        set_connection(monkeypatch, emu.base_url, backoff_base=0.01)
        yield emu
    forget_budgets()


def coarse_image(emu: Emulator) -> str:
    body = {
        "model": "aitryon",
        "input": {"person_image_url": emu.sample_url("person.png"), "top_garment_url": emu.sample_url("top.png")},
        "parameters": {"resolution": -1, "restore_face": True},
    }
    headers = {"Authorization": "Bearer sk-x", "X-DashScope-Async": "enable"}
    base = emu.base_url
    task_id = requests.post(f"{base}/api/v1/services/aigc/image2image/image-synthesis", json=body, headers=headers,
                            timeout=10).json()["output"]["task_id"]  # fmt: skip
    for _ in range(200):
        output = requests.get(f"{base}/api/v1/tasks/{task_id}", headers=headers, timeout=10).json()["output"]
        if output["task_status"] == "SUCCEEDED":
            return str(output["results"]["image_url"])
        asyncio.run(asyncio.sleep(0.05))
    raise AssertionError("coarse image not made")


def catalog(tmp: Path, emu: Emulator, count: int, *, coarse: str | None, bad: dict[int, dict[str, str]] | None = None):
    lines = []
    for i in range(count):
        item: dict[str, Any] = {
            "sku": f"sku-{i:03d}",
            "person_image_url": emu.sample_url("person.png"),
            "top_garment_url": emu.sample_url("top.png"),
            "gender": "woman",
        }
        if coarse:
            item["coarse_image_url"] = coarse
        item.update((bad or {}).get(i, {}))
        lines.append(json.dumps(item))
    path = tmp / "catalog.jsonl"
    path.write_text("\n".join(lines))
    return str(path)


def trigger_for(chunk: str, output: str, **kwargs: Any) -> DashScopeBatchTrigger:
    kwargs.setdefault("expected_latency", 0.3)
    return DashScopeBatchTrigger(chunk_uri=chunk, output=output, **kwargs)


async def run_to_event(trigger: DashScopeBatchTrigger) -> dict[str, Any]:
    events = [event.payload async for event in trigger.run()]
    assert len(events) == 1
    assert json.loads(json.dumps(events[0])) == events[0]
    return events[0]


def test_a_chunk_is_refined_with_one_submit_per_item_and_few_queries(emulator, tmp_path):
    coarse = coarse_image(emulator)
    # Warm the emulator's render cache (every item has the same inputs), so task durations are
    # its configured latency and not this machine's CPU load: the figure under test is queries.
    (warm_up,) = plan_chunks(catalog(tmp_path, emulator, 1, coarse=coarse), str(tmp_path / "warm"))
    asyncio.run(run_to_event(trigger_for(warm_up, str(tmp_path / "warm"))))
    forget_budgets()  # what the warm-up learned about the account (latency 0.3 s) would not hold
    time.sleep(1.1)  # and a fresh budget does not know the service's current one-second windows
    emulator.update(latency=1.0)
    before = emulator.stats()
    output = str(tmp_path / "out")
    (chunk,) = plan_chunks(catalog(tmp_path, emulator, 14, coarse=coarse), output, chunk_size=50)
    event = asyncio.run(run_to_event(trigger_for(chunk, output, expected_latency=1.0)))
    after = emulator.stats()
    assert event["status"] == "done"
    assert event["counts"]["succeeded"] == 14
    assert after["submits_accepted"] - before["submits_accepted"] == 14  # no duplicates
    assert after["throttled_429"] == before["throttled_429"]  # paced within 10 submits/s
    assert after["max_running_observed"] <= 5
    queries = after["queries"] - before["queries"]
    # Spent where completions are due: about one query per task, never round-robin over the queue.
    assert queries <= 1.5 * 14, f"{queries} queries for 14 items"
    rows, undone = rows_from_registry(read_chunk(chunk), partition_registry(output))
    assert undone == []
    for row in rows:
        saved = Path(row.image)
        assert saved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert row.task_ids.keys() == {"refine"}


def test_items_without_a_coarse_image_run_both_stages(emulator, tmp_path):
    output = str(tmp_path / "out")
    (chunk,) = plan_chunks(catalog(tmp_path, emulator, 3, coarse=None), output)
    event = asyncio.run(run_to_event(trigger_for(chunk, output)))
    assert event["counts"]["succeeded"] == 3
    tasks = {t["task_id"]: t for t in emulator.tasks()}
    rows, _ = rows_from_registry(read_chunk(chunk), partition_registry(output))
    for row in rows:
        coarse_task, refine_task = tasks[row.task_ids["coarse"]], tasks[row.task_ids["refine"]]
        assert coarse_task["model"] == "aitryon"
        assert coarse_task["parameters"] == {"resolution": -1, "restore_face": True}
        assert refine_task["input"]["coarse_image_url"].endswith(f"/results/{row.task_ids['coarse']}.png")


def test_permanent_failures_are_recorded_and_do_not_stop_the_chunk(emulator, tmp_path):
    coarse = coarse_image(emulator)
    output = str(tmp_path / "out")
    bad = {1: {"person_image_url": emulator.sample_url("blank_person.png")}}
    (chunk,) = plan_chunks(catalog(tmp_path, emulator, 4, coarse=coarse, bad=bad), output)
    event = asyncio.run(run_to_event(trigger_for(chunk, output)))
    assert event["counts"] == {**event["counts"], "succeeded": 3, "failed": 1, "outstanding": 0}
    rows, _ = rows_from_registry(read_chunk(chunk), partition_registry(output))
    (failed,) = [r for r in rows if r.status == "failed"]
    assert (failed.sku, failed.code, failed.retryable) == ("sku-001", "InvalidPerson", False)


def test_a_rebuilt_trigger_resumes_and_submits_nothing_twice(emulator, tmp_path):
    coarse = coarse_image(emulator)
    emulator.update(latency=1.0)
    before = emulator.stats()["submits_accepted"]
    output = str(tmp_path / "out")
    (chunk,) = plan_chunks(catalog(tmp_path, emulator, 12, coarse=coarse), output)
    first = trigger_for(chunk, output, expected_latency=1.0)

    async def stop_midway() -> None:
        task = asyncio.ensure_future(run_to_event(first))
        while emulator.stats()["submits_accepted"] - before < 6:
            await asyncio.sleep(0.02)
        task.cancel()  # the triggerer goes away with tasks submitted, queued and running
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(stop_midway())
    submitted_before_restart = emulator.stats()["submits_accepted"] - before
    assert 6 <= submitted_before_restart < 12
    entries = partition_registry(output).entries()
    assert sum(bool(e.task_id) for e in entries.values()) == submitted_before_restart

    forget_budgets()  # a new triggerer process starts with fresh budgets
    classpath, kwargs = first.serialize()
    rebuilt = import_string(classpath)(**kwargs)
    event = asyncio.run(run_to_event(rebuilt))
    assert event["counts"]["succeeded"] == 12
    assert emulator.stats()["submits_accepted"] - before == 12  # every item paid for exactly once
    assert event["counts"]["submits"] == 12 - submitted_before_restart


def test_account_wide_errors_stop_the_chunk(emulator, tmp_path, monkeypatch):
    output = str(tmp_path / "out")
    (chunk,) = plan_chunks(catalog(tmp_path, emulator, 3, coarse="http://127.0.0.1:9/c.png"), output)
    emulator.update(api_key="sk-the-right-key")
    event = asyncio.run(run_to_event(trigger_for(chunk, output)))
    assert event["status"] == "error"
    assert "InvalidApiKey" in event["message"]


def test_without_time_fields_in_the_replies_a_chunk_still_finishes_promptly(emulator, tmp_path):
    """The vendor's examples carry no submit/scheduled/end times: the model must not need them.

    Seen RUNNING without times, a task started after it was submitted; guessing "half-way since
    clock zero" put its start at half the machine's uptime and its next query minutes away.
    """
    coarse = coarse_image(emulator)
    emulator.update(report_times=False, latency=0.5)
    before = emulator.stats()
    output = str(tmp_path / "out")
    (chunk,) = plan_chunks(catalog(tmp_path, emulator, 12, coarse=coarse), output, chunk_size=50)

    async def bounded() -> dict[str, Any]:
        return await asyncio.wait_for(run_to_event(trigger_for(chunk, output, expected_latency=0.5)), 60)

    event = asyncio.run(bounded())
    assert event["counts"]["succeeded"] == 12
    queries = emulator.stats()["queries"] - before["queries"]
    assert queries <= 3 * 12, f"{queries} queries for 12 items"


def test_failures_are_logged_by_class_while_the_chunk_works(emulator, tmp_path, capsys):
    coarse = coarse_image(emulator)
    output = str(tmp_path / "out")
    (chunk,) = plan_chunks(catalog(tmp_path, emulator, 6, coarse=coarse), output)
    emulator.update(fault_5xx=0.3, seed=3)
    event = asyncio.run(run_to_event(trigger_for(chunk, output, progress_interval=0.5)))
    assert event["counts"]["succeeded"] == 6
    lines = [line for line in capsys.readouterr().out.splitlines() if "Chunk failures in the last" in line]
    assert lines, "the 5xx answers were never reported"
    assert any("HTTP 500 InternalError" in line or "HTTP 503 ModelUnavailable" in line for line in lines)
    faults = emulator.stats()["faults"]["5xx"]
    reported = sum(int(n) for line in lines for n in re.findall(r"(\d+) x \w+ HTTP 50[03]", line))
    assert reported == faults  # every failure counted once, none invented


def test_a_trigger_serialized_by_an_earlier_release_still_loads():
    """Deferred chunks outlive upgrades: the old classpath and kwargs rebuild the same chunk run."""
    from airflow.sdk.module_loading import import_string

    from airflow_provider_aitryon.triggers.catalog import CatalogChunkTrigger

    old_kwargs = {
        "chunk_uri": "/data/chunks/c1.jsonl", "journal_uri": "/data/journals/c1.jsonl", "output": "/data/out",
        "dashscope_conn_id": "dashscope_default", "coarse_model": "aitryon", "expected_latency": 10.0,
        "max_outstanding": 20, "submit_rate": 10.0, "query_rate": 20.0, "max_running": 5,
        "end_time": 1_900_000_000.0, "progress_interval": 30.0, "max_task_failures": 2,
        "storage_conn_id": None, "lease_holder": "dag/run",
    }  # fmt: skip
    trigger = import_string("airflow_provider_aitryon.triggers.batch.DashScopeBatchTrigger")(**old_kwargs)
    assert isinstance(trigger, CatalogChunkTrigger)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_aitryon.triggers.catalog.CatalogChunkTrigger"
    # Settings added since take their defaults; nothing of the old kwargs changes.
    assert kwargs == {**old_kwargs, "oss_conn_id": "oss_default", "oss_url_expiry": 21600.0}
    assert import_string(classpath)(**kwargs).serialize() == (classpath, kwargs)


def test_a_lookup_counts_every_task_the_partition_recorded_as_ours(emulator, tmp_path):
    """A run killed between a submit and its record, rerun in other chunks.

    The rerun's chunk with the unrecorded item looks its task up, while the chunk holding the other
    items may not have read their entries yet: the lookup must still know those tasks are ours,
    or it sees several candidates and refuses (the money audit's test 2 caught this once).
    """
    from airflow_provider_aitryon.catalog import item_key
    from airflow_provider_aitryon.hooks.dashscope import DashScopeHook
    from airflow_provider_aitryon.registry import CLAIMS, Submission

    coarse = coarse_image(emulator)
    output = str(tmp_path / "out")
    first, second = plan_chunks(catalog(tmp_path, emulator, 3, coarse=coarse), output, chunk_size=2)
    items = [*read_chunk(first), *read_chunk(second)]
    registry = partition_registry(output)
    hook = DashScopeHook()
    intent_at = time.time() - 1.0  # every task below is created inside the lost item's window
    task_ids = []
    for n, item in enumerate(items):
        call = item.call("refine")
        entry = Submission(scope=f"{output} sku {item.sku} refine", fingerprint=call.fingerprint(),
                           model="aitryon-refiner", owner="aitryon_catalog_backfill/killed")  # fmt: skip
        entry.intent_at = intent_at
        submitted = hook.submit(call)  # the killed run paid for all three
        task_ids.append(submitted.task_id)
        if n < 2:  # recorded before the kill; the third never was
            entry.recorded(submitted.task_id, submitted.request_id)
        registry.put(item_key(item.sku, "refine"), entry)
    CLAIMS.local.clear()  # a new process: nothing read yet
    paid = emulator.stats()["submits_accepted"]

    event = asyncio.run(run_to_event(trigger_for(second, output)))

    assert event["status"] == "done", event
    assert event["counts"]["succeeded"] == 1
    assert emulator.stats()["submits_accepted"] == paid  # found, not paid again
    found = partition_registry(output).get(item_key(items[2].sku, "refine"))
    assert found is not None and found.task_id == task_ids[2] and found.adopted
