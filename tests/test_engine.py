"""The per-account engine: every wait of a process through one poll loop that asks when a task should end.

The emulator counts the queries; the waits are real triggers (and a worker-side wait) over HTTP.
A blind poller at the same ``poll_interval`` would spend ten times the queries these tests allow.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from typing import Any

import pytest
from conftest import quiet_emulator_config, set_connection

from airflow_provider_aitryon import api
from airflow_provider_aitryon.emulator import Emulator
from airflow_provider_aitryon.engine import AccountEngine, QueueModel, Watch, engine_for, forget_engines
from airflow_provider_aitryon.hooks.dashscope import DashScopeHook
from airflow_provider_aitryon.models import TaskResult, TaskStatus
from airflow_provider_aitryon.triggers.dashscope import DashScopeTaskTrigger

LATENCY = 0.6
POLL = 0.05  # a blind poller would ask ~12 times per task at this interval


@pytest.fixture(autouse=True)
def fresh_engines() -> Any:
    forget_engines()
    yield
    forget_engines()


def submit_many(base_url: str, count: int) -> list[tuple[str, float]]:
    hook = DashScopeHook()
    out = []
    for n in range(count):
        call = api.refiner_call(person_image_url=f"{base_url}/samples/person.png?n={n}",
                                top_garment_url=f"{base_url}/samples/top.png?n={n}",
                                coarse_image_url=f"{base_url}/samples/person.png?n={n}", gender="woman")  # fmt: skip
        out.append((hook.submit(call).task_id, time.time()))
    return out


async def wait_all(tasks: list[tuple[str, float]]) -> list[dict[str, Any]]:
    async def one(task_id: str, submitted_at: float) -> dict[str, Any]:
        trigger = DashScopeTaskTrigger(dashscope_task_id=task_id, poll_interval=POLL, end_time=time.time() + 120,
                                       model=api.MODEL_REFINER, submitted_at=submitted_at)  # fmt: skip
        (event,) = [event.payload async for event in trigger.run()]  # exactly one event
        return event

    return await asyncio.gather(*(one(*t) for t in tasks))


def queries_per_task(emu: Emulator, task_ids: set[str]) -> float:
    gets = [e for e in emu.state.request_log() if e["method"] == "GET" and e["path"].rsplit("/", 1)[-1] in task_ids]
    return len(gets) / len(task_ids)


@pytest.mark.parametrize("report_times", [True, False])
def test_many_waits_in_one_loop_ask_about_each_task_near_its_end(monkeypatch, report_times):
    """12 tasks, 5 run at a time: the queue model predicts every end, with or without the service's times."""
    config = quiet_emulator_config(latency=LATENCY, report_times=report_times, query_rate=20.0, log_requests=True)
    with Emulator(config) as emu:
        set_connection(monkeypatch, emu.base_url)
        tasks = submit_many(emu.base_url, 12)
        events = asyncio.run(wait_all(tasks))
        assert [e["status"] for e in events] == ["success"] * 12
        per_task = queries_per_task(emu, {t for t, _ in tasks})
        # A blind poller at POLL would need ~12; a loaded machine renders late and costs a late look or two.
        assert per_task <= (3.0 if report_times else 4.0), per_task
        assert emu.stats()["throttled_by_endpoint"]["query"] == 0


def test_a_second_task_of_a_model_is_asked_about_once(monkeypatch):
    """Once the process has seen one end of the model, the next task is predicted, not probed."""
    with Emulator(quiet_emulator_config(latency=LATENCY, log_requests=True)) as emu:
        set_connection(monkeypatch, emu.base_url)

        async def main() -> None:
            (first,) = submit_many(emu.base_url, 1)
            await wait_all([first])
            (second,) = submit_many(emu.base_url, 1)
            (event,) = await wait_all([second])
            assert event["status"] == "success"
            assert queries_per_task(emu, {second[0]}) <= 2

        asyncio.run(main())


def test_waits_in_a_worker_use_the_same_engine(monkeypatch):
    """deferrable=False: the operator waits through the engine in the worker.

    The worker's loop it replaced asked at once and then every ``poll_interval`` (2 queries here);
    the engine's first look comes a second after the submit, when this 0.2 s task has ended.
    """
    from conftest import FakeTI

    from airflow_provider_aitryon.operators.refiner import RefinerSubmitOperator

    with Emulator(quiet_emulator_config(latency=0.2, log_requests=True)) as emu:
        set_connection(monkeypatch, emu.base_url)
        # The same inputs once before, so the emulator's render is cached and the measured task
        # ends at its 0.2 s latency however loaded this machine is.
        hook = DashScopeHook()
        warm = hook.submit(api.refiner_call(person_image_url=emu.sample_url("person.png"),
                                            top_garment_url=emu.sample_url("top.png"),
                                            coarse_image_url=emu.sample_url("person.png"), gender="woman")).task_id
        while not hook.get_task(warm).status.is_terminal:
            time.sleep(0.05)
        op = RefinerSubmitOperator(task_id="r", person_image_url=emu.sample_url("person.png"),
                                   top_garment_url=emu.sample_url("top.png"),
                                   coarse_image_url=emu.sample_url("person.png"), gender="woman",
                                   wait_for_completion=True, deferrable=False, poll_interval=5.0,
                                   validate_inputs=False)  # fmt: skip
        result = op.execute({"ti": FakeTI()})
        assert result["task_status"] == "SUCCEEDED"
        assert queries_per_task(emu, {result["task_id"]}) == 1


def watch(submitted_at: float, **kwargs: Any) -> Watch:
    return Watch(task_id=f"t{submitted_at}", model="m", submitted_at=submitted_at, **kwargs)


def test_the_queue_model_runs_five_at_a_time_first_come_first_served():
    model = QueueModel(max_running=5)
    model.learn_latency("m", 10.0)
    watches = [watch(float(i) / 100) for i in range(7)]
    model.plan(watches, now=0.1)
    ends = [round(w.predicted_end, 2) for w in watches]
    assert ends[:5] == [10.0, 10.01, 10.02, 10.03, 10.04]
    assert ends[5:] == [20.0, 20.01]  # they start when the first two end


def test_a_restored_task_seen_running_without_times_is_not_dated_by_the_uptime():
    """The bug the engine replaced: a default start of 0 put the start at half the machine's uptime."""
    model = QueueModel()
    model.learn_latency("m", 10.0)
    now = 1_000_000.0  # a machine up 11 days
    w = watch(now - 3.0)
    model.plan([w], now)
    model.observe(w, TaskResult(task_id=w.task_id, status=TaskStatus.RUNNING, raw_status="RUNNING"), now)
    assert w.started_at is not None and now - 3.0 <= w.started_at <= now
    model.plan([w], now)
    assert model.due(w, now, set()) <= now + 10.0


def test_other_processes_slots_shrink_the_share_and_early_ends_grow_it():
    model = QueueModel(max_running=5)
    model.learn_latency("m", 10.0)
    late = watch(0.0)
    model.plan([late], 0.0)
    model.observe(late, TaskResult(task_id="x", status=TaskStatus.PENDING, raw_status="PENDING"), 5.0)
    assert model.share < 5  # predicted running at 5 s, still queued: slots are taken elsewhere
    shrunk = model.share
    early = watch(20.0)
    early.predicted_start = 100.0  # predicted far back in the queue
    model.observe(early, TaskResult(task_id="y", status=TaskStatus.RUNNING, raw_status="RUNNING"), 21.0)
    assert model.share > shrunk


def test_an_unknown_latency_is_probed_by_the_oldest_task_only():
    model = QueueModel()
    watches = [watch(0.0, max_interval=5.0), watch(1.0, max_interval=5.0)]
    model.plan(watches, 1.0)
    probes = model.probes(watches)
    assert model.due(watches[0], 1.0, probes) == pytest.approx(1.0)  # 1 s after its submit
    assert model.due(watches[1], 1.0, probes) == math.inf  # waits for what the probe's end teaches


def test_the_engine_loop_stops_when_nothing_is_watched_and_starts_again():
    class Idle:
        async def asettings(self) -> Any:
            from airflow_provider_aitryon.connection import ConnectionSettings

            return ConnectionSettings(conn_id="c", api_key="k", base_url="http://127.0.0.1:9")

        async def arun_once(self, call: api.ApiCall) -> dict[str, Any]:
            task_id = call.path.rsplit("/", 1)[-1]
            return {"output": {"task_id": task_id, "task_status": "SUCCEEDED",
                               "results": {"image_url": f"http://results.example/{task_id}.png"}}}  # fmt: skip

        async def aclose(self) -> None:
            pass

    async def main() -> None:
        engine = engine_for("c", connect=Idle)
        assert isinstance(engine, AccountEngine)
        for task_id in ("a", "b"):
            w = engine.watch(task_id, poll_now=True)
            result = await asyncio.wait_for(w.done, 5)
            assert result.task_id == task_id and result.status is TaskStatus.SUCCEEDED
            for _ in range(100):
                if engine._runner is None:
                    break
                await asyncio.sleep(0.01)
            assert engine._runner is None  # idle: no loop left spinning in the triggerer
        assert engine.queries == 2

    asyncio.run(main())


def test_a_busy_engine_reads_the_connection_again_every_few_minutes():
    """A triggerer that never goes idle still picks up a rotated key: the settings are not cached forever."""
    from airflow_provider_aitryon.connection import ConnectionSettings
    from airflow_provider_aitryon.engine.account import SETTINGS_TTL

    now = [1000.0]
    keys = (f"key-{n}" for n in itertools.count(1))
    seen: list[str] = []

    class Rotating:
        def __init__(self) -> None:
            self.key = next(keys)

        async def asettings(self) -> Any:
            return ConnectionSettings(conn_id="c", api_key=self.key, base_url="http://127.0.0.1:9")

        async def arun_once(self, call: api.ApiCall) -> dict[str, Any]:
            seen.append(self.key)
            task_id = call.path.rsplit("/", 1)[-1]
            status = "SUCCEEDED" if task_id == "done" else "RUNNING"
            return {"output": {"task_id": task_id, "task_status": status,
                               "results": {"image_url": "http://results.example/x.png"}}}  # fmt: skip

        async def aclose(self) -> None:
            pass

    async def main() -> None:
        engine = engine_for("c", clock=lambda: now[0], connect=Rotating)
        running = engine.watch("long", poll_now=True, max_interval=0.01)  # keeps the loop busy
        while not seen:
            await asyncio.sleep(0.01)
        now[0] += SETTINGS_TTL + 1
        done = engine.watch("done", poll_now=True)
        await asyncio.wait_for(done.done, 5)
        engine.forget(running)
        assert (await engine.settings()).api_key != "key-1"
        assert seen[0] == "key-1" and seen[-1] != "key-1"

    asyncio.run(main())


def test_a_latency_learned_by_another_process_spares_the_blind_start():
    """What one process learned primes the next (kept in an Airflow Variable inside Airflow)."""
    taught = QueueModel()
    taught.learn_latency("m", 12.0)
    fresh = QueueModel()
    fresh.prime(taught.snapshot())
    w = watch(0.0, max_interval=5.0)
    fresh.plan([w], 0.0)
    assert not fresh.blind(w)
    assert fresh.due(w, 0.0, fresh.probes([w])) == pytest.approx(12.0 + fresh.margin(w))
    own = QueueModel()
    own.learn_latency("m", 3.0)
    own.prime(taught.snapshot())
    assert own.latency("m") == 3.0  # what a process saw itself wins
    broken = QueueModel()
    broken.prime({"m": {"mean": "nan"}, "n": {"mean": -1}, "o": "garbage"})
    assert broken.latencies == {}


def test_the_engine_starts_from_remembered_latencies(monkeypatch):
    from airflow_provider_aitryon.engine import memory

    saved: list[dict[str, Any]] = []
    monkeypatch.setattr(memory, "load", lambda conn_id: {"aitryon-refiner": {"mean": 7.5, "spread": 0.1, "seen": 9}})
    monkeypatch.setattr(memory, "save", lambda conn_id, latencies: saved.append(latencies))

    class Done:
        async def asettings(self) -> Any:
            from airflow_provider_aitryon.connection import ConnectionSettings

            return ConnectionSettings(conn_id="c", api_key="k", base_url="http://127.0.0.1:9")

        async def arun_once(self, call: api.ApiCall) -> dict[str, Any]:
            return {"output": {"task_id": "t", "task_status": "SUCCEEDED",
                               "scheduled_time": "2026-01-01 10:00:00.000", "end_time": "2026-01-01 10:00:08.000",
                               "results": {"image_url": "http://results.example/x.png"}}}  # fmt: skip

        async def aclose(self) -> None:
            pass

    async def main() -> None:
        engine = engine_for("c", connect=Done)
        await engine.settings()
        assert engine.model.latency("aitryon-refiner") == 7.5
        w = engine.watch("t", model="aitryon-refiner", poll_now=True)
        await asyncio.wait_for(w.done, 5)
        for _ in range(100):
            if saved:
                break
            await asyncio.sleep(0.01)
        assert saved and saved[-1]["aitryon-refiner"]["mean"] == pytest.approx(0.8 * 7.5 + 0.2 * 8.0)

    asyncio.run(main())


def test_worker_threads_of_one_process_share_one_submit_pace(monkeypatch):
    """Submit operators running side by side in one process keep under the account's 10 submits/s."""
    from concurrent.futures import ThreadPoolExecutor

    with Emulator(quiet_emulator_config(latency=0.1, submit_rate=10.0, log_requests=False)) as emu:
        set_connection(monkeypatch, emu.base_url)
        with ThreadPoolExecutor(max_workers=6) as pool:
            ids = list(pool.map(lambda n: submit_many(emu.base_url + f"/x{n}", 1)[0][0], range(30)))
        assert len(set(ids)) == 30
        stats = emu.stats()
        assert stats["submits_accepted"] == 30
        assert stats["throttled_by_endpoint"]["submit"] == 0  # unpaced, 6 threads send ~30 in the first second
