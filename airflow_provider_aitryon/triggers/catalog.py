"""CatalogChunkTrigger: run one chunk of a catalog backfill in the triggerer, without a worker slot."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_aitryon import api
from airflow_provider_aitryon.catalog.scheduler import ChunkJob, ChunkRun
from airflow_provider_aitryon.connection import DEFAULT_CONN_ID
from airflow_provider_aitryon.hooks.dashscope import DashScopeHook


class CatalogChunkTrigger(BaseTrigger):
    """Carry one chunk of catalog items through DashScope and save the results (in the triggerer).

    A thin adapter: `catalog.scheduler.ChunkRun` does the work; this serialises its settings (never
    the key) and yields its one small event (status, message and counts).

    :param chunk_uri: JSONL file of the chunk's items (written by the planning task).
    :param journal_uri: unused; accepted so triggers serialized by earlier releases still load.
    :param output: where refined images are saved (``<output>/images/<sku file name>.png``); the
        partition's submission registry lives in ``<output>/registry``.
    :param dashscope_conn_id: connection; its budget is shared with other triggers of it.
    :param expected_latency: first guess of seconds a task runs; learned from the API's times.
    :param max_outstanding: tasks submitted but not ended, per account (account runs 5 at a time).
    :param submit_rate, query_rate, max_running: the account's limits (DashScope: 10/s, 20/s, 5).
    :param end_time: epoch seconds; then the trigger stops with a ``timeout`` event.
    :param progress_interval: seconds between progress lines in the triggerer log.
    :param lease_holder: the run that holds the partition's lease (``<dag_id>/<run_id>``); the
        trigger renews it while it works and stops, in one sentence, if another run holds it.
    """

    def __init__(
        self,
        chunk_uri: str,
        journal_uri: str | None = None,
        output: str = "",
        dashscope_conn_id: str = DEFAULT_CONN_ID,
        coarse_model: str = api.MODEL_TRYON,
        expected_latency: float = 10.0,
        max_outstanding: int = 20,
        submit_rate: float = 10.0,
        query_rate: float = 20.0,
        max_running: int = 5,
        end_time: float | None = None,
        progress_interval: float = 30.0,
        max_task_failures: int = 2,
        storage_conn_id: str | None = None,
        lease_holder: str | None = None,
    ) -> None:
        super().__init__()
        self.chunk_uri = chunk_uri
        self.journal_uri = journal_uri
        self.output = output
        self.dashscope_conn_id = dashscope_conn_id
        self.coarse_model = coarse_model
        self.expected_latency = float(expected_latency)
        self.max_outstanding = int(max_outstanding)
        self.submit_rate = float(submit_rate)
        self.query_rate = float(query_rate)
        self.max_running = int(max_running)
        self.end_time = end_time
        self.progress_interval = float(progress_interval)
        self.max_task_failures = int(max_task_failures)
        self.storage_conn_id = storage_conn_id
        self.lease_holder = lease_holder

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "chunk_uri": self.chunk_uri,
                "journal_uri": self.journal_uri,
                "output": self.output,
                "dashscope_conn_id": self.dashscope_conn_id,
                "coarse_model": self.coarse_model,
                "expected_latency": self.expected_latency,
                "max_outstanding": self.max_outstanding,
                "submit_rate": self.submit_rate,
                "query_rate": self.query_rate,
                "max_running": self.max_running,
                "end_time": self.end_time,
                "progress_interval": self.progress_interval,
                "max_task_failures": self.max_task_failures,
                "storage_conn_id": self.storage_conn_id,
                "lease_holder": self.lease_holder,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = DashScopeHook(dashscope_conn_id=self.dashscope_conn_id)
        try:
            connect = lambda: DashScopeHook(dashscope_conn_id=self.dashscope_conn_id)  # noqa: E731
            event = await ChunkRun(self.job(), hook, self.log, connect=connect).run()
        finally:
            await hook.aclose()
        yield TriggerEvent(event)

    def job(self) -> ChunkJob:
        """The scheduler's settings: every kwarg but the unused journal."""
        _, kwargs = self.serialize()
        kwargs.pop("journal_uri")
        return ChunkJob(**kwargs)
