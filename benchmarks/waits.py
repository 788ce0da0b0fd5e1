"""Benchmark (not a test) of single-task waits against the built-in emulator: part of `make bench`.

    python benchmarks/waits.py                        # every scenario, with the peers (~12 min)
    python benchmarks/waits.py --scenarios single     # single task vs the SDK only (~2 min)
    python benchmarks/waits.py --scenarios many --waits 60 --latency 2 --peers none   # a quick look

The emulator runs in this process with the account limits the vendor documents (10 submits/s,
20 queries/s, 5 running) and counts every request; each figure below is read from its request log
and task times, never from the clients' own counters.

* ``single``: one task at a time, at latencies 5, 12.5 and 37.5 s. ``provider first`` waits through
  the engine of a fresh process (no latency known yet); ``provider learned`` is the next task in
  the same process, after one end was seen; ``sdk`` is the official ``dashscope`` SDK's
  ``BaseAsyncApi.wait``; ``loop`` polls every 5 s (what the sensor's trigger did before the engine).
* ``many``: W tasks submitted at once by 5 worker threads; every wait runs in ONE event loop, as
  deferred sensors / submit-and-wait operators do in one triggerer (each is a
  ``DashScopeTaskTrigger``, run as the triggerer runs it). Peers: the SDK's ``wait`` in W threads,
  and the 5-s polling loop in one event loop.
* ``processes``: P processes with W/P tasks each on ONE account (HA triggerers, many workers),
  each submitting its own tasks and waiting for them as in ``many``; nothing coordinates them.

Figures: ``queries/task`` (task GETs the emulator saw, per task), ``429 %`` (query requests it
refused), ``lag`` (from the task's end at the emulator to the moment its waiter had the answer:
p50 and max) and ``wall_s``. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

API_KEY = "bench-key"
CONN_ID = "dashscope_default"
REFINER = "aitryon-refiner"
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"}
LOOP_POLL_SECONDS = 5.0
GOALS = {
    "single": "fewer queries than the SDK at every latency and lag no worse; learned: lag <= 0.5 s, <= 2 queries",
    "many": "0 x 429, <= 2 queries per task, lag p50 <= 1 s",
    "processes": "<= 2 % of queries throttled, <= 3 queries per task",
}


@dataclass
class Figures:
    scenario: str
    client: str
    latency: float
    tasks: int
    queries_per_task: float = 0.0
    throttled_pct: float = 0.0
    lag_p50: float = 0.0
    lag_max: float = 0.0
    wall_s: float = 0.0
    failed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ set-up


def start_emulator(latency: float) -> Any:
    from airflow_provider_aitryon.emulator import Emulator, EmulatorConfig

    config = EmulatorConfig(host="127.0.0.1", latency=latency, request_log_size=200_000, api_key=API_KEY,
                            log_requests=False)
    return Emulator(config).start()


def point_at(base_url: str) -> None:
    """The provider's connection and the SDK's base URL, both at the emulator."""
    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps(
        {"conn_type": "dashscope", "host": base_url, "password": API_KEY}
    )
    try:
        import dashscope

        dashscope.base_http_api_url = base_url + "/api/v1"
    except ImportError:  # the sdk peer is skipped without it
        pass


def refiner_call(base_url: str, n: int) -> Any:
    from airflow_provider_aitryon import api

    tag = f"?n={n}"  # every request distinct, so the provider's request fingerprint differs too
    return api.refiner_call(
        person_image_url=f"{base_url}/samples/person.png{tag}",
        top_garment_url=f"{base_url}/samples/top.png{tag}",
        bottom_garment_url=f"{base_url}/samples/bottom.png{tag}",
        coarse_image_url=f"{base_url}/samples/person.png{tag}",
        gender="woman",
    )


def submit_provider(base_url: str, n: int) -> tuple[str, float]:
    """Submit as the submit operators do (the hook, its retries); the task id and epoch submit time."""
    from airflow_provider_aitryon.hooks.dashscope import DashScopeHook

    hook = _local_hook()
    assert isinstance(hook, DashScopeHook)
    submitted = hook.submit(refiner_call(base_url, n))
    return submitted.task_id, time.time()


_local = threading.local()


def _local_hook() -> Any:
    from airflow_provider_aitryon.hooks.dashscope import DashScopeHook

    hook = getattr(_local, "hook", None)
    if hook is None:
        hook = _local.hook = DashScopeHook(dashscope_conn_id=CONN_ID)
    return hook


def submit_sdk(base_url: str, n: int) -> Any:
    from dashscope.client.base_api import BaseAsyncApi

    call = refiner_call(base_url, n)
    body = call.body or {}
    for _ in range(60):
        submitted = BaseAsyncApi.async_call(
            model=REFINER, input=body["input"], task_group="aigc", task="image2image", function="image-synthesis",
            api_key=API_KEY, **body.get("parameters", {}),
        )  # fmt: skip
        if submitted.status_code == 200:
            return submitted
        time.sleep(0.5)  # the SDK does not retry a throttled submit; a DAG task would be retried
    raise RuntimeError(f"the SDK's submit kept failing: HTTP {submitted.status_code} {submitted.code}")


# ------------------------------------------------------------------------------------------ waiting


async def provider_wait(task_id: str, submitted_at: float, deadline: float) -> float:
    """Wait as a deferred operator does: the DashScopeTaskTrigger, run as the triggerer runs it."""
    from airflow_provider_aitryon.triggers.dashscope import DashScopeTaskTrigger

    trigger = DashScopeTaskTrigger(
        dashscope_task_id=task_id, dashscope_conn_id=CONN_ID, poll_interval=5.0, end_time=deadline,
        model=REFINER, submitted_at=submitted_at,
    )  # fmt: skip
    async for event in trigger.run():
        if event.payload["status"] not in ("success", "failure"):
            raise RuntimeError(f"task {task_id}: {event.payload}")
    return time.monotonic()


async def loop_wait(client: Any, base_url: str, task_id: str, deadline: float) -> float:
    """The 5-second polling loop (what the sensor's trigger did before the engine)."""
    while time.time() < deadline:
        reply = await client.get(f"{base_url}/api/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {API_KEY}"})
        if reply.status_code == 200 and reply.json()["output"]["task_status"] in TERMINAL:
            return time.monotonic()
        await asyncio.sleep(LOOP_POLL_SECONDS)
    raise RuntimeError(f"task {task_id} did not end in time")


def sdk_wait(submitted: Any) -> float:
    from dashscope.client.base_api import BaseAsyncApi

    done = BaseAsyncApi.wait(submitted, api_key=API_KEY)
    if done.status_code != 200:
        raise RuntimeError(f"the SDK's wait failed: HTTP {done.status_code} {done.code}")
    return time.monotonic()


# ------------------------------------------------------------------------------------------ measuring


def measure(emu: Any, scenario: str, client: str, latency: float, waited: dict[str, float | None], t0: float,
            seq_from: int) -> Figures:  # fmt: skip
    """Figures of the tasks in `waited` (task id → monotonic time its waiter had the answer, None: it failed)."""
    detected = {task_id: at for task_id, at in waited.items() if at is not None}
    failed = len(waited) - len(detected)
    log = [e for e in emu.state.request_log() if e["seq"] > seq_from and e["method"] == "GET"]
    queries = [e for e in log if e["path"].split("?")[0].rsplit("/", 1)[-1] in waited]
    throttled = sum(1 for e in queries if e["status"] == 429)
    ended = {t["task_id"]: t["ended"] for t in emu.state.tasks() if t["task_id"] in detected}
    lags = sorted(max(0.0, detected[task_id] - end) for task_id, end in ended.items() if end is not None)
    return Figures(
        scenario=scenario,
        client=client,
        latency=latency,
        tasks=len(waited),
        queries_per_task=round(len(queries) / max(1, len(waited)), 3),
        throttled_pct=round(100.0 * throttled / max(1, len(queries)), 2),
        lag_p50=round(statistics.median(lags), 3) if lags else float("nan"),
        lag_max=round(lags[-1], 3) if lags else float("nan"),
        wall_s=round(max(detected.values(), default=t0) - t0, 2),
        failed=failed,
    )


def last_seq(emu: Any) -> int:
    log = emu.state.request_log()
    return int(log[-1]["seq"]) if log else 0


# ------------------------------------------------------------------------------------------ scenarios


def run_single(latencies: list[float], peers: list[str]) -> list[Figures]:
    out: list[Figures] = []
    for latency in latencies:
        emu = start_emulator(latency)
        try:
            point_at(emu.base_url)
            asyncio.run(single_at(emu, latency, peers, out))
        finally:
            emu.stop()
    return out


async def single_at(emu: Any, latency: float, peers: list[str], out: list[Figures]) -> None:
    """One process (one engine): the first task teaches it this model's latency; the peers run beside it."""
    from airflow_provider_aitryon.engine import forget_engines

    forget_engines()
    for label, n in (("provider first", 1), ("provider learned", 2)):
        seq, t0 = last_seq(emu), time.monotonic()
        peer = asyncio.ensure_future(asyncio.to_thread(single_peer, emu, peers, n, latency)) if n == 1 else None
        task_id, at = await asyncio.to_thread(submit_provider, emu.base_url, n)
        detected = await provider_wait(task_id, at, time.time() + 10 * latency + 60)
        out.append(measure(emu, "single", label, latency, {task_id: detected}, t0, seq))
        if peer is not None:
            out.extend(await peer)


def single_peer(emu: Any, peers: list[str], n: int, latency: float) -> list[Figures]:
    """The peers' single tasks, run beside the provider's first one."""
    out = []
    if "sdk" in peers:
        seq, t0 = last_seq(emu), time.monotonic()
        submitted = submit_sdk(emu.base_url, 100 + n)
        try:
            detected: float | None = sdk_wait(submitted)
        except RuntimeError:
            detected = None
        out.append(measure(emu, "single", "sdk", latency, {submitted.output["task_id"]: detected}, t0, seq))
    if "loop" in peers:
        import httpx

        seq, t0 = last_seq(emu), time.monotonic()
        task_id, _ = submit_provider(emu.base_url, 200 + n)

        async def one() -> float:
            async with httpx.AsyncClient(timeout=30) as client:
                return await loop_wait(client, emu.base_url, task_id, time.time() + 10 * latency + 60)

        out.append(measure(emu, "single", "loop", latency, {task_id: asyncio.run(one())}, t0, seq))
    return out


def run_many(waits: int, latency: float, peers: list[str]) -> list[Figures]:
    out = []
    for client in ["provider", *peers]:
        emu = start_emulator(latency)
        try:
            point_at(emu.base_url)
            seq, t0 = last_seq(emu), time.monotonic()
            detected = many_in_one_process(emu.base_url, client, range(waits), latency)
            out.append(measure(emu, "many", client, latency, detected, t0, seq))
        finally:
            emu.stop()
    return out


def many_in_one_process(base_url: str, client: str, numbers: Any, latency: float) -> dict[str, float | None]:
    """Submit every task from 5 worker threads; wait for each as `client` does.

    Task id → when its waiter had the answer (monotonic), or None if the waiter failed.
    """
    numbers = list(numbers)
    deadline = time.time() + len(numbers) * latency + 300
    if client == "sdk":
        with ThreadPoolExecutor(max_workers=len(numbers)) as pool:
            submit_pool = ThreadPoolExecutor(max_workers=5)

            def one(n: int) -> tuple[str, float | None]:
                submitted = submit_pool.submit(submit_sdk, base_url, n).result()
                try:
                    return submitted.output["task_id"], sdk_wait(submitted)
                except RuntimeError:  # the SDK's wait gives up on a 429: the task is lost to its waiter
                    return submitted.output["task_id"], None

            done = dict(pool.map(one, numbers))
            submit_pool.shutdown()
            return done

    async def main() -> dict[str, float | None]:
        import httpx

        from airflow_provider_aitryon.engine import forget_engines

        forget_engines()
        loop = asyncio.get_running_loop()
        submit_pool = ThreadPoolExecutor(max_workers=5)
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as http:

            async def one(n: int) -> tuple[str, float | None]:
                task_id, at = await loop.run_in_executor(submit_pool, submit_provider, base_url, n)
                try:
                    if client == "loop":
                        return task_id, await loop_wait(http, base_url, task_id, deadline)
                    return task_id, await provider_wait(task_id, at, deadline)
                except RuntimeError:
                    return task_id, None

            pairs = await asyncio.gather(*(one(n) for n in numbers))
        submit_pool.shutdown()
        return dict(pairs)

    return asyncio.run(main())


def run_processes(processes: int, waits: int, latency: float, peers: list[str]) -> list[Figures]:
    out = []
    per = waits // processes
    for client in ["provider", *peers]:
        emu = start_emulator(latency)
        try:
            seq, t0 = last_seq(emu), time.monotonic()
            children = []
            for i in range(processes):
                argv = [sys.executable, __file__, "--child", client, "--base-url", emu.base_url,
                        "--first", str(i * per), "--count", str(per), "--latency", str(latency)]  # fmt: skip
                children.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True))
            detected: dict[str, float | None] = {}
            for child in children:
                stdout, _ = child.communicate(timeout=per * latency * processes + 600)
                if child.returncode != 0:
                    raise RuntimeError(f"a {client} child process failed (exit {child.returncode})")
                detected.update(json.loads(stdout.strip().splitlines()[-1]))
            figures = measure(emu, "processes", client, latency, detected, t0, seq)
            figures.extra["processes"] = processes
            out.append(figures)
        finally:
            emu.stop()
    return out


def child(args: argparse.Namespace) -> int:
    point_at(args.base_url)
    detected = many_in_one_process(args.base_url, args.child, range(args.first, args.first + args.count), args.latency)
    print(json.dumps(detected))
    return 0


# ------------------------------------------------------------------------------------------ report


HEADER = (f"{'scenario':<10} {'client':<17} {'L s':>5} {'tasks':>5} {'failed':>6} {'q/task':>7} {'429 %':>6} "
          f"{'lag p50':>8} {'lag max':>8} {'wall s':>7}")  # fmt: skip


def row(f: Figures) -> str:
    return (f"{f.scenario:<10} {f.client:<17} {f.latency:>5g} {f.tasks:>5} {f.failed:>6} {f.queries_per_task:>7.2f} "
            f"{f.throttled_pct:>6.2f} {f.lag_p50:>8.2f} {f.lag_max:>8.2f} {f.wall_s:>7.1f}")  # fmt: skip


def report(results: list[Figures]) -> None:
    print()
    print(HEADER)
    for f in results:
        print(row(f))
    print()
    for name, goal in GOALS.items():
        print(f"goal {name}: {goal}")
    print(json.dumps({"waits": [asdict(f) for f in results]}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", default="single,many,processes")
    parser.add_argument("--peers", choices=("all", "none", "sdk", "loop"), default="all")
    parser.add_argument("--latencies", default="5,12.5,37.5", help="single: task latencies, seconds")
    parser.add_argument("--waits", type=int, default=150, help="many / processes: tasks in all")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--latency", type=float, default=3.0, help="many / processes: task latency, seconds")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # The submit workers' retried 429s would bury the figures; the figures count them anyway.
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "ERROR")
    if args.child:
        return child(args)
    peers = {"all": ["sdk", "loop"], "none": [], "sdk": ["sdk"], "loop": ["loop"]}[args.peers]
    if "sdk" in peers:
        try:
            import dashscope  # noqa: F401
        except ImportError:
            print("The dashscope SDK is not installed (make bench installs it); skipping the sdk peer.")
            peers.remove("sdk")
    scenarios = args.scenarios.split(",")
    results: list[Figures] = []
    print(HEADER, flush=True)
    runs = {
        "single": lambda: run_single([float(x) for x in args.latencies.split(",")], peers),
        "many": lambda: run_many(args.waits, args.latency, peers),
        "processes": lambda: run_processes(args.processes, args.waits, args.latency, peers),
    }
    for name, run in runs.items():
        if name in scenarios:
            figures = run()
            for f in figures:
                print(row(f), flush=True)  # as measured: a later failure keeps these
            results += figures
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
