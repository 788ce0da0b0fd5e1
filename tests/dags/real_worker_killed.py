"""Test DAG for tests/test_real_airflow.py: the whole worker dies (SIGKILL) right after it submitted.

Under the LocalExecutor a task runs in a task process forked by its supervisor, which is a
LocalExecutor worker process of the scheduler. On its first try (no marker file for this run yet)
``submit_coarse`` submits, records the marker, then SIGKILLs its supervisor and itself: nobody is
left to report the task's end, so only the scheduler's heartbeat-timeout detection can notice it
and retry it. The retry must reuse the DashScope task the killed try paid for (submission ledger).

The supervisor is only killed if it really is a LocalExecutor worker of this test's Airflow (the
task carries the test's ``AITRYON_REAL_AIRFLOW_TOKEN``, the parent's process title says so and it
is in the same session); otherwise (e.g. under ``airflow dags test``) only the task process dies.
"""

from __future__ import annotations

import os
import re
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG

from airflow_provider_aitryon.operators.tryon import TryOnSubmitOperator
from airflow_provider_aitryon.sensors.refiner import RefinerTaskSensor

SAMPLES = os.environ.get("AITRYON_SAMPLES_URL", "http://127.0.0.1:8089/samples").rstrip("/")


def _is_our_localexecutor_worker(pid: int) -> bool:
    """The parent is a LocalExecutor worker of the test's Airflow: same session, right process title.

    (Its /proc environ cannot tell: setproctitle overwrites that memory.)
    """
    if not os.environ.get("AITRYON_REAL_AIRFLOW_TOKEN"):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        same_session = os.getsid(pid) == os.getsid(0)
    except OSError:
        return False
    return same_session and b"airflow worker -- LocalExecutor" in cmdline


class SubmitThenWorkerDies(TryOnSubmitOperator):
    def submit_once(self, context: Any, hook: Any, call: Any) -> Any:
        entry = super().submit_once(context, hook, call)
        kill_dir = os.environ.get("AITRYON_REAL_KILL_DIR")
        if kill_dir:
            marker = Path(kill_dir) / (re.sub(r"[^A-Za-z0-9_.-]+", "_", context["run_id"]) + ".killed")
            if not marker.exists():
                marker.write_text(entry.task_id)
                supervisor = os.getppid()
                if _is_our_localexecutor_worker(supervisor):
                    os.kill(supervisor, signal.SIGKILL)
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: a lost worker
        return entry


with DAG(
    dag_id="real_worker_killed",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
) as dag:
    submit = SubmitThenWorkerDies(
        task_id="submit_coarse",
        person_image_url=f"{SAMPLES}/person.png",
        top_garment_url=f"{SAMPLES}/top.png",
        retries=1,
        retry_delay=timedelta(seconds=1),
    )
    RefinerTaskSensor(task_id="wait_for_coarse", dashscope_task_id=submit.output, poke_interval=1, timeout=600)
