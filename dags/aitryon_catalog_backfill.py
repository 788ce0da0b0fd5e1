"""Refine a whole catalog, one daily partition per run, with `airflow backfill` for history.

plan → refine_chunk (mapped over chunks; each chunk waits in ONE trigger) → finalize

    airflow backfill create --dag-id aitryon_catalog_backfill --from-date 2026-01-01 --to-date 2026-01-31

Params: ``catalog`` (a JSONL path or object-storage URI; default ``$AITRYON_CATALOG_ROOT/<ds>.jsonl``)
and ``output`` (default ``$AITRYON_BACKFILL_OUTPUT/<ds>``). Every item gets one line in
``<output>/manifest.jsonl``. Items that fail for good (e.g. InvalidPerson) are recorded and do not
fail the run; the run fails only if items are left undone. A rerun of a partition submits nothing
for items already succeeded and retries only the transient failures; a task paid for by an earlier
run is reused, not paid for again. One run at a time works on a partition: ``plan`` takes its lease,
``finalize`` gives it back; a second run over the same output meanwhile fails in ``plan``, naming
the run that holds it.
"""

from __future__ import annotations

import os
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_aitryon.operators.batch import RefineCatalogChunkOperator

CATALOG_ROOT = os.environ.get("AITRYON_CATALOG_ROOT", "/tmp/aitryon-catalog").rstrip("/")
OUTPUT_ROOT = os.environ.get("AITRYON_BACKFILL_OUTPUT", "/tmp/aitryon-backfill").rstrip("/")
# Optional pool that bounds how many chunk tasks start at once (create it with `airflow pools set`).
SUBMITTER_POOL = os.environ.get("AITRYON_SUBMITTER_POOL", "default_pool")

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
    },
) as dag:

    @task(multiple_outputs=True)
    def locate(params: dict[str, Any], ds: str) -> dict[str, str]:
        """The partition's catalog and output: the params, or per-day defaults from the logical date."""
        return {
            "catalog": params.get("catalog") or f"{CATALOG_ROOT}/{ds}.jsonl",
            "output": params.get("output") or f"{OUTPUT_ROOT}/{ds}",
        }

    @task
    def plan(catalog: str, output: str, params: dict[str, Any], dag_run: Any = None, ti: Any = None) -> list[str]:
        """Take the partition's lease, then chunk the items that still need work (the manifest says which)."""
        from airflow_provider_aitryon.catalog import airflow_run_alive, plan_chunks
        from airflow_provider_aitryon.failures import airflow_errors

        holder = f"{dag_run.dag_id}/{dag_run.run_id}" if dag_run is not None else None
        alive = airflow_run_alive(ti) if ti is not None else None
        with airflow_errors():
            chunks = plan_chunks(catalog, output, chunk_size=int(params["chunk_size"]), holder=holder,
                                 holder_alive=alive)  # fmt: skip
        print(f"Catalog {catalog}: {len(chunks)} chunk(s) to run; output {output}")
        return chunks

    where = locate()
    chunks = plan(where["catalog"], where["output"])

    refined = RefineCatalogChunkOperator.partial(
        task_id="refine_chunk",
        output_dir="{{ ti.xcom_pull(task_ids='locate', key='output') }}",
        expected_latency="{{ params.expected_latency }}",
        pool=SUBMITTER_POOL,
        retries=3,
    ).expand(chunk=chunks)

    @task(trigger_rule="all_done")
    def finalize(catalog: str, output: str, dag_run: Any = None) -> dict[str, Any]:
        """Merge the chunks' rows into manifest.jsonl, give the partition back; fail if an item is undone."""
        from airflow_provider_aitryon.catalog import merge_manifest, partition_lease, read_catalog
        from airflow_provider_aitryon.failures import AirflowException, AirflowFailException
        from airflow_provider_aitryon.pricing import estimate_cost, format_cost

        lease = partition_lease(output, f"{dag_run.dag_id}/{dag_run.run_id}") if dag_run is not None else None
        holder = lease.current() if lease is not None else None
        if lease is not None and holder is not None and holder.live and holder.holder != lease.holder:
            # plan refused this run: the manifest is the other run's to write.
            raise AirflowFailException(
                f"This run did not refine {output}: {holder.holder} holds it; its own finalize writes the manifest."
            )
        items, bad = read_catalog(catalog)
        rows = merge_manifest(output)
        if lease is not None:
            lease.release()
        skus = [item.sku for item in items] + [row.sku for row in bad]
        undone = [sku for sku in skus if sku not in rows]
        succeeded = [rows[sku] for sku in skus if sku in rows and rows[sku]["status"] == "succeeded"]
        summary = {
            "items": len(skus),
            "succeeded": len(succeeded),
            "failed": len(skus) - len(undone) - len(succeeded),
            "undone": len(undone),
            "adopted": sum(bool(rows[sku].get("adopted")) for sku in skus if sku in rows),
            "manifest": f"{output.rstrip('/')}/manifest.jsonl",
        }
        images = {
            "aitryon": sum("coarse" in row.get("task_ids", {}) for row in succeeded),
            "aitryon-refiner": len(succeeded),
        }
        print(f"Backfill summary: {summary}\nEstimated list price:\n{format_cost(estimate_cost(images))}")
        if undone:
            raise AirflowException(
                f"{len(undone)} catalog items are left undone (first: {', '.join(undone[:5])}); "
                "clear the failed refine_chunk tasks or rerun the partition to finish them."
            )
        return summary

    refined >> finalize(where["catalog"], where["output"])
