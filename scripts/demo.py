"""`make demo`: run the example DAG in real Airflow against the built-in emulator, offline.

Prepares a SQLite Airflow home in .demo/ (git-ignored), generates sample images, starts the
emulator, runs `airflow dags test aitryon_refine`, stops the emulator and says where the refined
image is.
"""

from __future__ import annotations

import shutil
import sys

import requests
from harness import (
    REPO,
    airflow_env,
    dags_test,
    emulator_process,
    make_coarse_image,
    migrate,
    task_states,
    xcom_value,
)

DEMO = REPO / ".demo"


def main() -> int:
    home = DEMO / "airflow"
    output = DEMO / "output"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    output.mkdir(parents=True, exist_ok=True)
    print("Starting the DashScope emulator (offline; no request leaves this machine)...")
    with emulator_process(DEMO / "emulator", "--latency", "2") as emulator:
        print(f"Emulator at {emulator.base_url}; sample images in {DEMO / 'emulator' / 'samples'}")
        env = airflow_env(home, emulator.base_url)
        print(f"Preparing the Airflow metadata DB in {home} ...")
        migrate(env)
        coarse_url = make_coarse_image(env)
        print(f"Coarse try-on image (the refiner's input): {coarse_url}")
        print("Running `airflow dags test aitryon_refine` ...")
        result = dags_test(env, "aitryon_refine", {"coarse_image_url": coarse_url})
        (DEMO / "dags_test.log").write_text(result.stdout + result.stderr)
        states = task_states(home, "aitryon_refine")
        print("Task states:", ", ".join(f"{task}={state}" for task, state in sorted(states.items())))
        image_url = xcom_value(home, "aitryon_refine", "report_refined_image")
        if result.returncode != 0 or not image_url:
            print(f"The DAG run failed; the full log is in {DEMO / 'dags_test.log'}", file=sys.stderr)
            return 1
        refined = output / "refined.png"
        response = requests.get(image_url, timeout=30)
        response.raise_for_status()
        refined.write_bytes(response.content)
    print()
    print(f"Refined image URL (served by the emulator while it ran): {image_url}")
    print(f"Refined image saved to: {refined}")
    print(f"Airflow log of the run: {DEMO / 'dags_test.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
