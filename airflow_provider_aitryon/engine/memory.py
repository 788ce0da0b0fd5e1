"""What the engines have learned, kept between processes: each model's task latency, per connection.

A worker waits in a fresh process every time, and a triggerer restarts: without a memory each would
begin blind (the widening schedule) until a task of the model ends. Engines inside Airflow keep
their learned latencies in one Airflow Variable per connection, ``aitryon_latency_<conn id>``
(JSON: ``{"<model>": {"mean": s, "spread": s, "seen": n}, "_saved_at": epoch}``), read when the
engine starts and written at most once a minute while tasks end. It is a hint, never a
correctness matter: a missing, stale or unreadable value only means a blind start.
Outside Airflow (scripts, unit tests) nothing is kept.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from airflow_provider_aitryon.registry.stores import in_airflow

log = logging.getLogger(__name__)

PREFIX = "aitryon_latency_"
# Older than this, a remembered latency is not trusted (the service's load changes).
MAX_AGE_SECONDS = 7 * 24 * 3600.0


def load(conn_id: str) -> dict[str, Any]:
    """The latencies remembered for a connection ({} when none, outside Airflow, or unreadable)."""
    if not in_airflow():
        return {}
    from airflow.sdk import Variable

    try:
        data = json.loads(Variable.get(PREFIX + conn_id, default=None) or "{}")
    except Exception as exc:  # a hint: never fail a wait over it
        log.debug("Could not read the remembered latencies of %s: %s", conn_id, exc)
        return {}
    if not isinstance(data, dict) or time.time() - float(data.get("_saved_at") or 0) > MAX_AGE_SECONDS:
        return {}
    return {k: v for k, v in data.items() if not k.startswith("_") and isinstance(v, dict)}


def save(conn_id: str, latencies: dict[str, Any]) -> None:
    """Remember a connection's learned latencies for the next process."""
    if not in_airflow() or not latencies:
        return
    from airflow.sdk import Variable

    try:
        Variable.set(PREFIX + conn_id, json.dumps({**latencies, "_saved_at": time.time()}, sort_keys=True),
                     description="airflow-provider-aitryon: task latencies learned per model (a hint)")  # fmt: skip
    except Exception as exc:
        log.debug("Could not remember the latencies of %s: %s", conn_id, exc)
