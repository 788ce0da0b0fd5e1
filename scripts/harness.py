"""Run real Airflow against the emulator: shared by `make demo`, the integration tests and benchmarks.

Everything stays inside the repository (or a folder the caller names) and on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "dags"


@dataclass
class EmulatorProcess:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    control_token: str = ""  # read from the token file the emulator writes next to its URL file

    @property
    def control_headers(self) -> dict[str, str]:
        return {"X-Emulator-Token": self.control_token}

    def stats(self) -> dict[str, Any]:
        import requests

        reply = requests.get(f"{self.base_url}/_emulator/stats", headers=self.control_headers, timeout=10)
        reply.raise_for_status()
        return dict(reply.json())

    def tasks(self) -> list[dict[str, Any]]:
        import requests

        reply = requests.get(f"{self.base_url}/_emulator/tasks", headers=self.control_headers, timeout=10)
        reply.raise_for_status()
        return list(reply.json())

    def configure(self, **settings: Any) -> None:
        import requests

        requests.post(f"{self.base_url}/_emulator/config", json=settings, headers=self.control_headers,
                      timeout=10).raise_for_status()  # fmt: skip


@contextmanager
def emulator_process(workdir: Path, *args: str, startup_timeout: float = 30.0) -> Iterator[EmulatorProcess]:
    """Start `python -m airflow_provider_aitryon.emulator` on a free port; stop it on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    url_file = workdir / "emulator.url"
    url_file.unlink(missing_ok=True)
    url_file.with_name(url_file.name + ".token").unlink(missing_ok=True)
    samples = workdir / "samples"
    log_path = workdir / "emulator.log"
    command = [
        sys.executable, "-m", "airflow_provider_aitryon.emulator",
        "--port", "0", "--url-file", str(url_file),
        "--samples", str(samples), "--make-samples", str(samples), *args,
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + startup_timeout
        while not (url_file.exists() and url_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"The emulator did not start; see {log_path}:\n{log_path.read_text()}")
            time.sleep(0.05)
        token_file = url_file.with_name(url_file.name + ".token")  # written before the URL file
        yield EmulatorProcess(url_file.read_text().strip(), process, log_path, token_file.read_text().strip())
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def airflow_env(home: Path, base_url: str, api_key: str = "demo-api-key", **extra: str) -> dict[str, str]:
    """Environment for Airflow CLI processes: a private SQLite home and a connection to the emulator."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
        # Airflow writes "default_deferrable = false" into a new airflow.cfg, which the operators
        # follow; this deployment chooses deferrable waits, as the provider's docs recommend.
        AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE="True",
        AIRFLOW_CONN_DASHSCOPE_DEFAULT=json.dumps(
            {
                "conn_type": "dashscope",
                "host": base_url,
                "password": api_key,
                "extra": {"backoff_base": 0.2, "backoff_max": 2.0},
            }
        ),
        AITRYON_SAMPLES_URL=f"{base_url}/samples",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    env.update(extra)
    return env


def airflow(env: Mapping[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    airflow_bin = Path(sys.executable).with_name("airflow")
    return subprocess.run(
        [str(airflow_bin), *args], env=dict(env), capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def migrate(env: Mapping[str, str]) -> None:
    result = airflow(env, "db", "migrate")
    if result.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{result.stdout}\n{result.stderr}")


def dags_test(
    env: Mapping[str, str], dag_id: str, conf: Mapping[str, Any] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    args = ["dags", "test", dag_id]
    if conf:
        args += ["-c", json.dumps(conf)]
    return airflow(env, *args, timeout=timeout)


def task_states(home: Path, dag_id: str) -> dict[str, str]:
    """Final state of each task in the latest run of `dag_id`, read from the metadata DB."""
    with sqlite3.connect(home / "airflow.db") as db:
        run_id = db.execute("SELECT run_id FROM dag_run WHERE dag_id=? ORDER BY id DESC LIMIT 1", (dag_id,)).fetchone()
        if not run_id:
            return {}
        rows = db.execute(
            "SELECT task_id, map_index, state FROM task_instance WHERE dag_id=? AND run_id=?",
            (dag_id, run_id[0]),
        ).fetchall()
    return {task if index < 0 else f"{task}[{index}]": state for task, index, state in rows}


def xcom_value(home: Path, dag_id: str, task_id: str, key: str = "return_value") -> Any:
    """The latest XCom value of a task, as Airflow stored it (JSON)."""
    with sqlite3.connect(home / "airflow.db") as db:
        row = db.execute(
            "SELECT value FROM xcom WHERE dag_id=? AND task_id=? AND key=? ORDER BY timestamp DESC LIMIT 1",
            (dag_id, task_id, key),
        ).fetchone()
    if row is None:
        return None
    value = row[0]
    if isinstance(value, bytes):
        value = value.decode()
    return json.loads(value) if isinstance(value, str) else value


def make_coarse_image(env: Mapping[str, str], *, timeout: float = 120) -> str:
    """Run a coarse try-on of the sample images with the provider's hook; return the result URL.

    The refiner refines a coarse try-on, so examples that start at the refiner need one first.
    """
    from airflow_provider_aitryon import api
    from airflow_provider_aitryon.hooks.dashscope import DashScopeHook

    os.environ["AIRFLOW_CONN_DASHSCOPE_HARNESS"] = env["AIRFLOW_CONN_DASHSCOPE_DEFAULT"]
    hook = DashScopeHook(dashscope_conn_id="dashscope_harness")
    samples = env["AITRYON_SAMPLES_URL"]
    task_id = hook.submit(
        api.tryon_call(
            person_image_url=f"{samples}/person.png",
            top_garment_url=f"{samples}/top.png",
            bottom_garment_url=f"{samples}/bottom.png",
        )
    ).task_id
    deadline = time.monotonic() + timeout
    while not (result := hook.get_task(task_id)).status.is_terminal:
        if time.monotonic() > deadline:
            raise RuntimeError(f"The coarse try-on {task_id} did not finish in {timeout:g}s.")
        time.sleep(0.2)
    if not result.image_url:
        raise RuntimeError(f"The coarse try-on {task_id} failed: {result.code} {result.message}")
    return result.image_url


_DAG_TEST_AT = """
import json, runpy, sys
import pendulum
namespace = runpy.run_path(sys.argv[1])
dag = next(v for v in namespace.values() if type(v).__name__ == "DAG")
when = pendulum.parse(sys.argv[2])
run = dag.test(run_after=when, logical_date=when, run_conf=json.loads(sys.argv[3]) or None)
sys.exit(0 if run.state == "success" else 1)
"""


def dag_test_command(dag_file: Path, logical_date: str, conf: Mapping[str, Any] | None = None) -> list[str]:
    """`DAG.test()` (what `airflow dags test` runs) with a fixed logical date.

    Running it again with the same date reuses the run id and clears its task instances first,
    exactly as a user's "Clear" of that run does: the way to test what a clear or rerun pays for.
    """
    return [sys.executable, "-c", _DAG_TEST_AT, str(dag_file), logical_date, json.dumps(dict(conf or {}))]


def dag_test_at(
    env: Mapping[str, str],
    dag_file: Path,
    logical_date: str,
    conf: Mapping[str, Any] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        dag_test_command(dag_file, logical_date, conf), env=dict(env), capture_output=True, text=True,
        timeout=timeout, cwd=REPO,
    )  # fmt: skip
