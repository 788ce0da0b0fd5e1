"""`make demo`: run the example DAGs in real Airflow against the built-in emulator, offline.

Prepares a SQLite Airflow home in .demo/ (git-ignored), generates sample images, starts the
emulator, runs `airflow dags test` for the full pipeline (coarse → refine → save → contact sheet →
report), for the refiner-only DAG and for one small catalog backfill partition (priced before it
pays, with a review gallery), stops the emulator and says where the images and galleries are.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import requests
from harness import REPO, airflow_env, dags_test, emulator_process, migrate, task_states, xcom_value

DEMO = REPO / ".demo"


def run(env: dict[str, str], home: Path, dag_id: str, conf: dict[str, object]) -> bool:
    print(f"Running `airflow dags test {dag_id}` ...")
    result = dags_test(env, dag_id, conf)
    log = DEMO / f"{dag_id}.log"
    log.write_text(result.stdout + result.stderr)
    states = task_states(home, dag_id)
    print("  task states:", ", ".join(f"{task}={state}" for task, state in sorted(states.items())))
    if result.returncode != 0 or any(state != "success" for state in states.values()):
        print(f"  the run failed; its Airflow log is {log}", file=sys.stderr)
        return False
    print(f"  Airflow log: {log}")
    return True


def main() -> int:
    home = DEMO / "airflow"
    output = DEMO / "output"
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(output, ignore_errors=True)
    home.mkdir(parents=True)
    output.mkdir(parents=True)
    print("Starting the DashScope emulator (offline; no request leaves this machine) ...")
    with emulator_process(DEMO / "emulator", "--latency", "2") as emulator:
        print(f"Emulator at {emulator.base_url}; sample images in {DEMO / 'emulator' / 'samples'}")
        env = airflow_env(home, emulator.base_url)
        print(f"Preparing the Airflow metadata DB in {home} ...")
        migrate(env)

        if not run(env, home, "aitryon_pipeline", {"output": str(output / "pipeline")}):
            return 1
        refined = xcom_value(home, "aitryon_pipeline", "save_refined")
        sheet = xcom_value(home, "aitryon_pipeline", "contact_sheet")
        cost = xcom_value(home, "aitryon_pipeline", "report_cost")
        coarse_url = xcom_value(home, "aitryon_pipeline", "wait_for_coarse")["image_url"]

        # The refiner-only DAG, fed the coarse result the pipeline made.
        if not run(env, home, "aitryon_refine", {"coarse_image_url": coarse_url}):
            return 1
        refined_url = xcom_value(home, "aitryon_refine", "report_refined_image")
        refine_only = output / "refine_only" / "refined.png"
        refine_only.parent.mkdir(parents=True, exist_ok=True)
        refine_only.write_bytes(requests.get(refined_url, timeout=30).content)

        # One catalog partition: five looks, one of them with a person DashScope cannot find.
        samples = env["AITRYON_SAMPLES_URL"]
        catalog = DEMO / "catalog" / "2026-01-05.jsonl"
        catalog.parent.mkdir(parents=True, exist_ok=True)
        looks = [
            {"sku": f"look-{i}", "person_image_url": f"{samples}/{'blank_person' if i == 3 else 'person'}.png",
             "top_garment_url": f"{samples}/top.png", "bottom_garment_url": f"{samples}/bottom.png",
             "gender": "woman"}
            for i in range(5)
        ]  # fmt: skip
        catalog.write_text("".join(json.dumps(look) + "\n" for look in looks))
        partition = output / "backfill" / "2026-01-05"
        conf = {"catalog": str(catalog), "output": str(partition), "chunk_size": 3, "expected_latency": 2}
        if not run(env, home, "aitryon_catalog_backfill", conf):
            return 1
        spend = xcom_value(home, "aitryon_catalog_backfill", "plan", key="spend")
        partition_summary = xcom_value(home, "aitryon_catalog_backfill", "finalize")

    print()
    print(
        f"Refined image (pipeline):     {refined['uri']}  ({refined['width']}x{refined['height']}, "
        f"sha256 {refined['sha256'][:12]}…)"
    )
    print(f"Contact sheet (open it):      {sheet['uri']}")
    print(f"Refined image (refiner DAG):  {refine_only}")
    print(f"Charged for the pipeline run: CNY {cost['total_cny']} for {cost['images']}")
    print(f"Review gallery (pipeline):    {cost['report']}")
    print(f"Backfill plan, before paying: {spend['text']}")
    charged = partition_summary["charged"]
    print(
        f"Backfill charged:             CNY {charged['total']} for {charged['images']} "
        f"({partition_summary['succeeded']} succeeded, {partition_summary['failed']} failed)"
    )
    print(f"Review gallery (backfill):    {partition_summary['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
