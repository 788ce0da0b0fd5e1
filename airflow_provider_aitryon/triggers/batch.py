"""Old home of the catalog chunk trigger; the name stays so DAGs and serialized triggers still load.

It never ran a DashScope batch API: it runs catalog chunks. See `triggers.catalog` and
`catalog.scheduler`.
"""

from __future__ import annotations

from airflow_provider_aitryon.catalog.scheduler import ChunkRun as BatchRun
from airflow_provider_aitryon.catalog.scheduler import ItemState
from airflow_provider_aitryon.triggers.catalog import CatalogChunkTrigger

DashScopeBatchTrigger = CatalogChunkTrigger

__all__ = ["BatchRun", "CatalogChunkTrigger", "DashScopeBatchTrigger", "ItemState"]
