"""Riding through a flaky service: every kind of injected fault at once, nothing lost, nothing paid twice.

The emulator answers 10 % of API calls with 500/503, 10 % with 429, drops 5 % of connections (half
of the dropped submits after the task was accepted: a lost reply), delays 5 % beyond the client's
read timeout and garbles 5 % (proxy HTML or truncated JSON, also after accepting a submit).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import set_connection
from harness import airflow_env, dags_test, migrate, task_states, xcom_value

from airflow_provider_aitryon.budget import forget_budgets
from airflow_provider_aitryon.catalog import plan_chunks, read_chunk, rows_from_registry
from airflow_provider_aitryon.emulator import Emulator, EmulatorConfig
from airflow_provider_aitryon.registry import partition_registry
from airflow_provider_aitryon.triggers.batch import DashScopeBatchTrigger

pytestmark = pytest.mark.integration

FAULTS = {
    "fault_5xx": 0.10,
    "fault_429": 0.10,
    "fault_drop": 0.05,
    "fault_slow": 0.05,
    "fault_malformed": 0.05,
    "slow_seconds": 1.5,  # beyond the connection's read timeout below
    "seed": 7,
}
CLIENT = {
    "read_timeout": 1.0,
    "connect_timeout": 1.0,
    "backoff_base": 0.05,
    "backoff_max": 0.5,
    "max_attempts": 8,
    "lost_submit_grace": 1.0,
}


@pytest.fixture
def flaky() -> Iterator[Emulator]:
    forget_budgets()
    with Emulator(EmulatorConfig(latency=0.3)) as emu:
        yield emu
    forget_budgets()


def make_coarse(emu: Emulator) -> str:
    """A coarse result made before the faults are switched on (it is input, not under test)."""
    import requests

    headers = {"Authorization": "Bearer sk-faults", "X-DashScope-Async": "enable"}
    body = {
        "model": "aitryon",
        "input": {"person_image_url": emu.sample_url("person.png"), "top_garment_url": emu.sample_url("top.png")},
        "parameters": {"resolution": -1, "restore_face": True},
    }
    url = f"{emu.base_url}/api/v1/services/aigc/image2image/image-synthesis"
    task_id = requests.post(url, json=body, headers=headers, timeout=10).json()["output"]["task_id"]
    for _ in range(400):
        output = requests.get(f"{emu.base_url}/api/v1/tasks/{task_id}", headers=headers, timeout=10).json()["output"]
        if output["task_status"] == "SUCCEEDED":
            return str(output["results"]["image_url"])
        asyncio.run(asyncio.sleep(0.05))
    raise AssertionError("the coarse image was not made")


@pytest.mark.slow  # about 2.5 minutes: `make test-slow` (CI runs it after `make test`)
def test_a_200_item_batch_finishes_with_nothing_lost_or_paid_twice(flaky, tmp_path, monkeypatch):
    coarse = make_coarse(flaky)
    set_connection(monkeypatch, flaky.base_url, **CLIENT)
    catalog = tmp_path / "catalog.jsonl"
    items = [
        {"sku": f"sku-{i:03d}", "person_image_url": flaky.sample_url("person.png"),
         "top_garment_url": flaky.sample_url("top.png"), "coarse_image_url": coarse, "gender": "woman"}
        for i in range(200)
    ]  # fmt: skip
    catalog.write_text("\n".join(json.dumps(item) for item in items))
    output = str(tmp_path / "out")
    chunks = plan_chunks(str(catalog), output, chunk_size=100)
    flaky.update(**FAULTS)
    before = flaky.stats()

    async def run_all() -> list[dict[str, Any]]:
        triggers = [
            DashScopeBatchTrigger(
                chunk_uri=c, output=output, expected_latency=0.3
            )
            for c in chunks
        ]

        async def one(trigger: DashScopeBatchTrigger) -> dict[str, Any]:
            (event,) = [event.payload async for event in trigger.run()]
            return event

        return await asyncio.gather(*(one(t) for t in triggers))

    events = asyncio.run(asyncio.wait_for(run_all(), timeout=600))
    after = flaky.stats()

    faults = {kind: after["faults"][kind] - before["faults"][kind] for kind in after["faults"]}
    for kind in ("5xx", "429", "drop", "slow", "malformed", "lost_submit_responses"):
        assert faults[kind] > 0, f"no {kind} fault was injected: {faults}"  # the faults really happened
    assert [e["status"] for e in events] == ["done", "done"]

    rows = []
    for chunk in chunks:
        chunk_rows, undone = rows_from_registry(read_chunk(chunk), partition_registry(output))
        assert undone == []  # lost = 0
        rows.extend(chunk_rows)
    assert sorted(r.sku for r in rows) == [item["sku"] for item in items]
    assert all(r.status == "succeeded" for r in rows), [r for r in rows if r.status != "succeeded"][:3]
    assert all(Path(r.image).read_bytes()[:4] == b"\x89PNG" for r in rows)
    refine_tasks = [r.task_ids["refine"] for r in rows]
    assert len(set(refine_tasks)) == 200
    assert after["submits_accepted"] - before["submits_accepted"] == 200  # duplicates = 0
    print(f"faults injected and survived: {faults}")


def test_the_pipeline_dag_finishes_through_faults(flaky, tmp_path):
    home = tmp_path / "home"
    env = airflow_env(home, flaky.base_url, api_key="sk-faults-dag")
    env["AIRFLOW_CONN_DASHSCOPE_DEFAULT"] = json.dumps(
        {"conn_type": "dashscope", "host": flaky.base_url, "password": "sk-faults-dag", "extra": CLIENT}
    )
    migrate(env)
    flaky.update(**FAULTS)
    before = flaky.stats()
    result = dags_test(env, "aitryon_pipeline", {"output": str(tmp_path / "out")}, timeout=600)
    after = flaky.stats()
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert set(task_states(home, "aitryon_pipeline").values()) == {"success"}
    assert after["submits_accepted"] - before["submits_accepted"] == 2  # one coarse, one refiner
    assert Path(xcom_value(home, "aitryon_pipeline", "save_refined")["uri"]).is_file()
    injected = sum(after["faults"][k] - before["faults"][k] for k in ("5xx", "429", "drop", "slow", "malformed"))
    assert injected > 0
