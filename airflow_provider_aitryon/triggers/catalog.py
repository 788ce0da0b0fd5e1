"""CatalogChunkTrigger: run one chunk of a catalog backfill in the triggerer, without a worker slot."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_aitryon.catalog.scheduler import ChunkJob, ChunkRun
from airflow_provider_aitryon.hooks.dashscope import DashScopeHook


class CatalogChunkTrigger(BaseTrigger):
    """Carry one chunk of catalog items through DashScope and save the results (in the triggerer).

    A thin adapter: `catalog.scheduler.ChunkRun` does the work. The trigger serialises the chunk's
    settings (a `ChunkJob`: the chunk file, the output, the connection id, the account's limits,
    an absolute deadline; never the key) and yields the run's one small event (status, message
    and counts).

    :param chunk_uri: JSONL file of the chunk's items (written by the planning task).
    :param journal_uri: unused; accepted so triggers serialized by earlier releases still load.
    :param settings: the other `ChunkJob` fields (``output``, ``dashscope_conn_id``, ``end_time``,
        ``lease_holder``, the rates...), documented there.
    """

    def __init__(self, chunk_uri: str, journal_uri: str | None = None, **settings: Any) -> None:
        super().__init__()
        self.journal_uri = journal_uri
        self.job = ChunkJob(chunk_uri=chunk_uri, **settings)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {**dataclasses.asdict(self.job), "journal_uri": self.journal_uri},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        conn_id = self.job.dashscope_conn_id
        hook = DashScopeHook(dashscope_conn_id=conn_id)
        try:
            connect = lambda: DashScopeHook(dashscope_conn_id=conn_id)  # noqa: E731
            event = await ChunkRun(self.job, hook, self.log, connect=connect).run()
        finally:
            await hook.aclose()
        yield TriggerEvent(event)
