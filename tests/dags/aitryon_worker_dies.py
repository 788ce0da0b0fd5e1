"""Test DAG: the worker is killed (SIGKILL) right after its first submit, before the task returns.

Run it twice with the same logical date: the second run has the same run id, so the submission
registry must hand it the task the killed try paid for instead of submitting again.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG

from airflow_provider_aitryon.operators.tryon import TryOnSubmitOperator

SAMPLES = os.environ.get("AITRYON_SAMPLES_URL", "http://127.0.0.1:8089/samples").rstrip("/")


class DiesOnceAfterSubmitting(TryOnSubmitOperator):
    def submit_once(self, context: Any, hook: Any, call: Any) -> Any:
        entry = super().submit_once(context, hook, call)
        marker = Path(os.environ["AITRYON_TEST_KILL_MARKER"])
        if not marker.exists():
            marker.write_text(entry.task_id)
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: a lost worker
        return entry


with DAG(
    dag_id="aitryon_worker_dies",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
) as dag:
    DiesOnceAfterSubmitting(
        task_id="submit_coarse_and_wait",
        person_image_url=f"{SAMPLES}/person.png",
        top_garment_url=f"{SAMPLES}/top.png",
        wait_for_completion=True,
        poll_interval=0.5,
    )


if __name__ == "__main__":
    # `airflow dags test` stamps each run with the current time, so two runs never share a task
    # instance; dag.test() with a fixed run_after runs the same task instance again, as a retry would.
    import sys

    when = pendulum.parse(sys.argv[1])
    run = dag.test(run_after=when, logical_date=when)
    sys.exit(0 if run.state == "success" else 1)
