"""The money audit: the ordinary situations that used to pay twice or lose a paid image.

Each test drives real Airflow (`DAG.test()` in its own process, as `airflow dags test` runs it)
against the emulator over HTTP, and proves its claim with the emulator's own count of the tasks it
created for the request and with the bytes saved on disk, never with log lines alone. The README's
"No double charge" table lists the same situations.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from harness import REPO, airflow_env, dag_test_at, dag_test_command, make_coarse_image, migrate, task_states

from airflow_provider_aitryon.emulator import Emulator, EmulatorConfig
from airflow_provider_aitryon.registry import sku_file_stem

pytestmark = pytest.mark.integration

AUDIT_DAG = REPO / "tests" / "dags" / "aitryon_money_audit.py"
BACKFILL_DAG = REPO / "dags" / "aitryon_catalog_backfill.py"
API_KEY = "sk-money-audit"


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(latency=0.5)) as emu:
        yield emu


@pytest.fixture(scope="module")
def home(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("airflow_home")
    migrate(airflow_env(home, emulator.base_url, api_key=API_KEY))
    return home


@pytest.fixture(scope="module")
def coarse_url(emulator: Emulator, home: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A coarse try-on, served as a sample: the result downloads a test breaks must not break it."""
    made = make_coarse_image(airflow_env(home, emulator.base_url, api_key=API_KEY))
    samples = tmp_path_factory.mktemp("samples")
    (samples / "audit-coarse.png").write_bytes(requests.get(made, timeout=10).content)
    emulator.update(samples_dir=str(samples))
    return emulator.sample_url("audit-coarse.png")


@pytest.fixture(autouse=True)
def calm(emulator: Emulator) -> Iterator[None]:
    yield
    emulator.update(latency=0.5, lost_reply_submits=0, clock_skew_seconds=0.0, neighbor_submit_seconds=None,
                    results_unavailable_status=None)  # fmt: skip


def env_for(home: Path, emulator: Emulator, tmp_path: Path, **extra: Any) -> dict[str, str]:
    """Airflow's environment; the connection's own settings (`extra`) on top of short backoffs."""
    env = airflow_env(home, emulator.base_url, api_key=API_KEY, AITRYON_AUDIT_OUTPUT=str(tmp_path / "out"),
                      AIRFLOW__CORE__DAGS_FOLDER=str(AUDIT_DAG.parent))  # fmt: skip
    settings = {"backoff_base": 0.2, "backoff_max": 1.0, "lost_submit_grace": 0.5, **extra}
    env["AIRFLOW_CONN_DASHSCOPE_DEFAULT"] = json.dumps(
        {"conn_type": "dashscope", "host": emulator.base_url, "password": API_KEY, "extra": settings}
    )
    return env


def unique_person(emulator: Emulator) -> str:
    """The sample person image under a URL of its own: each test's request is a request of its own."""
    return f"{emulator.sample_url('person.png')}?audit={uuid.uuid4().hex[:8]}"


def paid_tasks(emulator: Emulator, person_url: str, model: str = "aitryon-refiner") -> list[dict[str, Any]]:
    """Tasks the emulator created for our request (a client's, not the second submitter's)."""
    return [
        t for t in emulator.tasks()
        if t["input"].get("person_image_url") == person_url and t["model"] == model and t["submitter"] == "client"
    ]  # fmt: skip


def result_bytes(emulator: Emulator, task_id: str) -> bytes:
    response = requests.get(f"{emulator.base_url}/results/{task_id}.png", timeout=10)
    response.raise_for_status()
    return response.content


def saved_images(folder: Path) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in folder.glob("*.png")} if folder.exists() else {}


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def tail(result: subprocess.CompletedProcess[str]) -> str:
    return output_of(result)[-6000:]


# ------------------------------------------------------------------------------ operators


def test_4_a_clear_after_the_sensor_timed_out_reuses_the_running_task(emulator, home, coarse_url, tmp_path):
    person = unique_person(emulator)
    conf = {"person_image_url": person, "coarse_image_url": coarse_url}
    emulator.update(latency=8.0)
    env = env_for(home, emulator, tmp_path)
    first = dag_test_at({**env, "AITRYON_AUDIT_SENSOR_TIMEOUT": "2"}, AUDIT_DAG, "2026-04-04T00:00:00+00:00", conf)
    assert first.returncode != 0, tail(first)
    assert task_states(home, "aitryon_money_audit")["wait"] == "failed"  # timed out, task still RUNNING
    (task,) = paid_tasks(emulator, person)
    assert task["status"] == "RUNNING"

    # The usual reaction: clear the run. The submit task runs again and finds the running task.
    second = dag_test_at(env, AUDIT_DAG, "2026-04-04T00:00:00+00:00", conf)
    assert second.returncode == 0, tail(second)
    assert [t["task_id"] for t in paid_tasks(emulator, person)] == [task["task_id"]]  # still one paid task
    assert saved_images(tmp_path / "out") == {task["task_id"]: result_bytes(emulator, task["task_id"])}
    assert f"Reusing DashScope task {task['task_id']}" in output_of(second)


@pytest.mark.parametrize("kind", ["504"])  # 502 and an empty 200: tests/test_retry.py
def test_5_a_gateway_error_after_the_service_took_the_submit_is_looked_up(emulator, home, coarse_url, tmp_path, kind):
    person = unique_person(emulator)
    emulator.update(lost_reply_submits=1, lost_reply_kind=kind)
    run = dag_test_at(env_for(home, emulator, tmp_path), AUDIT_DAG, "2026-04-05T00:00:00+00:00",
                      {"person_image_url": person, "coarse_image_url": coarse_url})  # fmt: skip
    assert run.returncode == 0, tail(run)
    (task,) = paid_tasks(emulator, person)  # one task: the lost reply was not answered by a second submit
    assert emulator.config.lost_reply_submits == 0  # the reply really was lost
    assert saved_images(tmp_path / "out") == {task["task_id"]: result_bytes(emulator, task["task_id"])}
    assert "adopting it instead of submitting again" in output_of(run)


@pytest.mark.parametrize("skew", [-5.0, 240.0])
def test_6_a_lost_reply_is_found_whatever_the_services_clock_says(emulator, home, coarse_url, tmp_path, skew):
    person = unique_person(emulator)
    emulator.update(lost_reply_submits=1, lost_reply_kind="504", clock_skew_seconds=skew)
    run = dag_test_at(env_for(home, emulator, tmp_path), AUDIT_DAG, "2026-04-06T00:00:00+00:00",
                      {"person_image_url": person, "coarse_image_url": coarse_url})  # fmt: skip
    assert run.returncode == 0, tail(run)
    (task,) = paid_tasks(emulator, person)
    assert saved_images(tmp_path / "out") == {task["task_id"]: result_bytes(emulator, task["task_id"])}


def test_7_a_task_another_submitter_created_a_second_earlier_is_never_adopted(emulator, home, coarse_url, tmp_path):
    person = unique_person(emulator)
    emulator.update(lost_reply_submits=1, lost_reply_kind="504", neighbor_submit_seconds=1.0)
    run = dag_test_at(env_for(home, emulator, tmp_path), AUDIT_DAG, "2026-04-07T00:00:00+00:00",
                      {"person_image_url": person, "coarse_image_url": coarse_url})  # fmt: skip
    assert run.returncode == 0, tail(run)
    (ours,) = paid_tasks(emulator, person)
    (neighbour,) = [
        t for t in emulator.tasks() if t["submitter"] == "neighbor" and t["input"]["person_image_url"] == person
    ]
    saved = saved_images(tmp_path / "out")
    # Our own task, adopted and marked; the other submitter's image is nowhere.
    assert saved == {ours["task_id"]: result_bytes(emulator, ours["task_id"])}
    assert result_bytes(emulator, neighbour["task_id"]) not in saved.values()
    assert xcom(home, "aitryon_money_audit", "submit", "adopted") is True


def test_7_with_adoption_off_a_lost_reply_fails_in_one_sentence(emulator, home, coarse_url, tmp_path):
    person = unique_person(emulator)
    emulator.update(lost_reply_submits=1, lost_reply_kind="504", neighbor_submit_seconds=1.0)
    env = env_for(home, emulator, tmp_path, adopt_lost_submits=False)
    run = dag_test_at(env, AUDIT_DAG, "2026-04-08T00:00:00+00:00",
                      {"person_image_url": person, "coarse_image_url": coarse_url})  # fmt: skip
    assert run.returncode != 0
    assert "adopt_lost_submits is off for connection 'dashscope_default'" in output_of(run)
    assert len(paid_tasks(emulator, person)) == 1  # nothing sent twice, nothing guessed
    assert saved_images(tmp_path / "out") == {}


def xcom(home: Path, dag_id: str, task_id: str, key: str) -> Any:
    from harness import xcom_value

    return xcom_value(home, dag_id, task_id, key)


# ------------------------------------------------------------------------------ catalog backfill


def write_catalog(path: Path, emulator: Emulator, coarse_url: str, skus: list[str]) -> dict[str, str]:
    """One line per sku, each with a person URL of its own (so each is a request of its own)."""
    persons = {sku: f"{unique_person(emulator)}&n={i}" for i, sku in enumerate(skus)}
    top = emulator.sample_url("top.png")
    lines = [
        json.dumps({"sku": sku, "person_image_url": persons[sku], "top_garment_url": top,
                    "coarse_image_url": coarse_url, "gender": "woman"})
        for sku in skus
    ]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return persons


def manifest(output: Path) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in (output / "manifest.jsonl").read_text().splitlines() if line.strip()]
    return {row["sku"]: row for row in rows}


def assert_paid_once_and_saved(emulator: Emulator, output: Path, persons: dict[str, str]) -> None:
    """Every item: exactly one paid task, its image saved under its own name, byte for byte."""
    rows = manifest(output)
    files = {p.name for p in (output / "images").glob("*.png")}
    assert len(files) == len(persons)
    for sku, person in persons.items():
        (task,) = paid_tasks(emulator, person)
        row = rows[sku]
        assert row["status"] == "succeeded", row
        assert row["task_ids"]["refine"] == task["task_id"]
        image = Path(row["image"])
        assert image.name == f"{sku_file_stem(sku)}.png"
        assert image.read_bytes() == result_bytes(emulator, task["task_id"])


def backfill_env(home: Path, emulator: Emulator) -> dict[str, str]:
    env = airflow_env(home, emulator.base_url, api_key=API_KEY)
    extra = {"backoff_base": 0.2, "backoff_max": 1.0, "lost_submit_grace": 0.5}
    conn = {"conn_type": "dashscope", "host": emulator.base_url, "password": API_KEY, "extra": extra}
    env["AIRFLOW_CONN_DASHSCOPE_DEFAULT"] = json.dumps(conn)
    return env


def test_1_a_rerun_after_a_failed_download_downloads_again_and_pays_nothing(emulator, home, coarse_url, tmp_path):
    catalog, output = tmp_path / "catalog.jsonl", tmp_path / "out"
    persons = write_catalog(catalog, emulator, coarse_url, ["s1", "s2", "s3"])
    conf = {"catalog": str(catalog), "output": str(output), "chunk_size": 2, "expected_latency": 0.5}
    emulator.update(results_unavailable_status=503)  # every task SUCCEEDS, no image can be fetched
    first = dag_test_at(backfill_env(home, emulator), BACKFILL_DAG, "2026-05-01T00:00:00+00:00", conf)
    assert first.returncode == 0, tail(first)
    assert {row["code"] for row in manifest(output).values()} == {"SaveFailed"}
    assert all(row["retryable"] for row in manifest(output).values())

    emulator.update(results_unavailable_status=None)
    rerun = dag_test_at(backfill_env(home, emulator), BACKFILL_DAG, "2026-05-02T00:00:00+00:00", conf)
    assert rerun.returncode == 0, tail(rerun)
    assert_paid_once_and_saved(emulator, output, persons)


def test_2_a_killed_run_rerun_with_a_new_line_pays_only_for_the_new_item(emulator, home, coarse_url, tmp_path):
    catalog, output = tmp_path / "catalog.jsonl", tmp_path / "out"
    persons = write_catalog(catalog, emulator, coarse_url, ["k1", "k2", "k3"])
    conf = {"catalog": str(catalog), "output": str(output), "chunk_size": 3, "expected_latency": 4.0}
    emulator.update(latency=4.0)
    when = "2026-05-03T00:00:00+00:00"
    run = subprocess.Popen(dag_test_command(BACKFILL_DAG, when, conf), env=backfill_env(home, emulator), cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while sum(len(paid_tasks(emulator, p)) for p in persons.values()) < 3:
            assert time.monotonic() < deadline and run.poll() is None, "the run did not submit its items"
            time.sleep(0.1)
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # mid-wait: three tasks paid, none saved
        run.wait(30)
    assert not (output / "manifest.jsonl").exists()

    persons.update(write_catalog_line(catalog, emulator, coarse_url, "k4"))
    emulator.update(latency=0.5)
    rerun = dag_test_at(backfill_env(home, emulator), BACKFILL_DAG, when, {**conf, "chunk_size": 2})
    assert rerun.returncode == 0, tail(rerun)
    assert_paid_once_and_saved(emulator, output, persons)  # 4 tasks for 4 items: only k4 was new


def write_catalog_line(catalog: Path, emulator: Emulator, coarse_url: str, sku: str) -> dict[str, str]:
    person = f"{unique_person(emulator)}&n=added"
    line = {"sku": sku, "person_image_url": person, "top_garment_url": emulator.sample_url("top.png"),
            "coarse_image_url": coarse_url, "gender": "woman"}  # fmt: skip
    with catalog.open("a") as out:
        out.write(json.dumps(line) + "\n")
    return {sku: person}


def test_3_two_runs_over_one_partition_at_once_pay_once(emulator, home, coarse_url, tmp_path):
    catalog, output = tmp_path / "catalog.jsonl", tmp_path / "out"
    persons = write_catalog(catalog, emulator, coarse_url, [f"c{i}" for i in range(4)])
    conf = {"catalog": str(catalog), "output": str(output), "chunk_size": 2, "expected_latency": 1.0}
    emulator.update(latency=1.0)
    env = backfill_env(home, emulator)
    pipe = {"env": env, "cwd": REPO, "text": True, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
    runs = [
        subprocess.Popen(dag_test_command(BACKFILL_DAG, when, conf), **pipe)  # type: ignore[call-overload]
        for when in ("2026-05-04T00:00:00+00:00", "2026-05-05T00:00:00+00:00")
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    codes = sorted(run.returncode for run in runs)
    assert codes[0] == 0 and codes[1] != 0, [o[-3000:] for o in outputs]
    refused = outputs[[run.returncode for run in runs].index(codes[1])]
    assert "is being refined by aitryon_catalog_backfill/manual__2026-05-0" in refused
    assert_paid_once_and_saved(emulator, output, persons)


def test_8_skus_that_read_alike_get_files_of_their_own(emulator, home, coarse_url, tmp_path):
    long_a, long_b = "L" * 150 + "a" * 150, "L" * 150 + "b" * 150
    skus = ["a/b", "a b", "a:b", "a\\b", "a_b", long_a, long_b]
    catalog, output = tmp_path / "catalog.jsonl", tmp_path / "out"
    persons = write_catalog(catalog, emulator, coarse_url, skus)
    conf = {"catalog": str(catalog), "output": str(output), "chunk_size": 4, "expected_latency": 0.5}
    run = dag_test_at(backfill_env(home, emulator), BACKFILL_DAG, "2026-05-06T00:00:00+00:00", conf)
    assert run.returncode == 0, tail(run)
    assert_paid_once_and_saved(emulator, output, persons)  # 7 successes, 7 files, each its own bytes
    assert len({manifest(output)[sku]["image"] for sku in skus}) == 7


# ------------------------------------------------------------------------------ inspecting the registry


def test_the_registry_can_be_listed_and_purged_where_airflow_runs(emulator, home, coarse_url, tmp_path):
    env = env_for(home, emulator, tmp_path)
    old = {"scope": "some_dag/old_run/submit", "fingerprint": "f" * 64, "model": "aitryon-refiner",
           "task_id": "long-gone", "submitted_at": time.time() - 25 * 3600}  # fmt: skip
    from harness import airflow

    assert airflow(env, "variables", "set", "aitryon_submission_old", json.dumps(old)).returncode == 0
    cli = [sys.executable, "-m", "airflow_provider_aitryon.registry"]
    listed = subprocess.run([*cli, "list"], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert "some_dag/old_run/submit  task long-gone" in listed.stdout
    assert "aitryon_money_audit/manual__2026-04-04" in listed.stdout  # test 4's entry, kept after success
    assert "aitryon_claim_" in listed.stdout
    purged = subprocess.run([*cli, "purge"], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert purged.returncode == 0, purged.stderr[-3000:]
    assert "Deleted 1 expired registry Variables." in purged.stdout
    again = subprocess.run([*cli, "list"], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert "long-gone" not in again.stdout and "aitryon_money_audit/manual__2026-04-04" in again.stdout
