"""Refine a whole catalog, one daily partition per run, with `airflow backfill` for history.

plan → approve_spend → refine_chunk (mapped over chunks; each chunk waits in ONE trigger) → finalize

    airflow backfill create --dag-id aitryon_catalog_backfill --from-date 2026-01-01 --to-date 2026-01-31

Params: ``catalog`` (a JSONL path or object-storage URI; default ``$AITRYON_CATALOG_ROOT/<ds>.jsonl``)
and ``output`` (default ``$AITRYON_BACKFILL_OUTPUT/<ds>``). Every item gets one line in
``<output>/manifest.jsonl``. Items that fail for good (e.g. InvalidPerson) are recorded and do not
fail the run; the run fails only if items are left undone. A rerun of a partition submits nothing
for items already succeeded and retries only the transient failures; a task paid for by an earlier
run is reused, not paid for again. One run at a time works on a partition: ``plan`` takes its lease,
``finalize`` gives it back; a second run over the same output meanwhile fails in ``plan``, naming
the run that holds it.

Spend: ``plan`` prices the images this run may pay for before anything is submitted (XCom
``spend``, its log, ``<output>/summary.json``). Above ``max_cost`` the run fails there; above
``approve_above`` ``approve_spend`` waits for a person (Airflow's human-in-the-loop approval; a
reject skips the submission). Both default to the connection's extras of the same names.
``finalize`` writes what the run was charged and the review gallery ``<output>/report.html``
(its "Review gallery" link, and the ``aitryon_catalog_partition`` asset event's extra).
"""

from __future__ import annotations

import os
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, Param, XComArg, task

from airflow_provider_aitryon.operators.approval import SpendApprovalOperator
from airflow_provider_aitryon.operators.batch import FinalizeCatalogOperator, RefineCatalogChunkOperator

CATALOG_ROOT = os.environ.get("AITRYON_CATALOG_ROOT", "/tmp/aitryon-catalog").rstrip("/")
OUTPUT_ROOT = os.environ.get("AITRYON_BACKFILL_OUTPUT", "/tmp/aitryon-backfill").rstrip("/")
# Optional pool that bounds how many chunk tasks start at once (create it with `airflow pools set`).
SUBMITTER_POOL = os.environ.get("AITRYON_SUBMITTER_POOL", "default_pool")
COARSE_MODEL = "aitryon"
# A partition's run, done: its event's extra says what it cost and where its review gallery is.
CATALOG_PARTITION = Asset(name="aitryon_catalog_partition")

with DAG(
    dag_id="aitryon_catalog_backfill",
    description="Refine a catalog partition in chunks within the account's limits",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=2,
    tags=["aitryon", "dashscope", "backfill"],
    params={
        "catalog": Param(None, type=["null", "string"], description="Catalog JSONL; default: per-day partition"),
        "output": Param(None, type=["null", "string"], description="Output directory or URI; default per day"),
        "chunk_size": Param(200, type="integer", minimum=1, description="Items per chunk (one trigger each)"),
        "expected_latency": Param(10.0, type="number", minimum=0, description="First guess of task seconds"),
        "max_cost": Param(
            None, type=["null", "number"], minimum=0,
            description="Spending limit in CNY: a run estimated above it fails before paying; default: the "
            "connection's max_cost extra (none: no limit)",
        ),
        "approve_above": Param(
            None, type=["null", "number"], minimum=0,
            description="Estimate in CNY above which the run waits for approval; default: the connection's "
            "approve_above extra (none: never asks)",
        ),
    },
) as dag:

    @task(multiple_outputs=True)
    def locate(params: dict[str, Any], ds: str | None = None, dag_run: Any = None) -> dict[str, str]:
        """The partition's catalog and output: the params, or per-day defaults from the logical date
        (a run triggered without one, e.g. `airflow dags trigger`, takes the day it was asked for)."""
        day = ds or (dag_run.run_after.strftime("%Y-%m-%d") if dag_run is not None else None)
        return {
            "catalog": params.get("catalog") or f"{CATALOG_ROOT}/{day}.jsonl",
            "output": params.get("output") or f"{OUTPUT_ROOT}/{day}",
        }

    @task
    def plan(catalog: str, output: str, params: dict[str, Any], dag_run: Any = None, ti: Any = None) -> list[str]:
        """Take the partition's lease, price the items that still need work, check max_cost, write the chunks."""
        from airflow_provider_aitryon.catalog import airflow_run_alive, plan_partition
        from airflow_provider_aitryon.failures import airflow_errors
        from airflow_provider_aitryon.hooks.dashscope import DashScopeHook
        from airflow_provider_aitryon.spend import SpendLimits

        holder = f"{dag_run.dag_id}/{dag_run.run_id}" if dag_run is not None else None
        alive = airflow_run_alive(ti) if ti is not None else None
        with airflow_errors():
            limits = SpendLimits.resolve(params, DashScopeHook().settings.spend_limits)
            planned = plan_partition(catalog, output, chunk_size=int(params["chunk_size"]), holder=holder,
                                     holder_alive=alive, limits=limits, coarse_model=COARSE_MODEL)  # fmt: skip
        print(f"Catalog {catalog}: {len(planned.chunks)} chunk(s) to run; output {output}\n{planned.spend.text}")
        if ti is not None:
            ti.xcom_push(key="spend", value=planned.to_dict()["spend"])  # what approve_spend shows
        return planned.chunks  # what refine_chunk is mapped over

    where = locate()
    planned = plan(where["catalog"], where["output"])

    approve_spend = SpendApprovalOperator(task_id="approve_spend", spend=XComArg(planned.operator, key="spend"))

    refined = RefineCatalogChunkOperator.partial(
        task_id="refine_chunk",
        output_dir="{{ ti.xcom_pull(task_ids='locate', key='output') }}",
        coarse_model=COARSE_MODEL,
        expected_latency="{{ params.expected_latency }}",
        pool=SUBMITTER_POOL,
        retries=3,
    ).expand(chunk=planned)

    finalize = FinalizeCatalogOperator(
        task_id="finalize",
        catalog=where["catalog"],
        output_dir=where["output"],
        approval_task_id="approve_spend",
        outlets=[CATALOG_PARTITION],
        trigger_rule="all_done",
    )
    approve_spend >> refined >> finalize
