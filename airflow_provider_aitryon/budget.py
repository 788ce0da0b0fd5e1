"""Old home of the account budgets; they live in the engine now (`airflow_provider_aitryon.engine`).

The names stay importable from here: ``AccountBudget`` is the account's engine, ``account_budget``
its lookup and ``forget_budgets`` drops every engine.
"""

from __future__ import annotations

import time
from typing import Any

from airflow_provider_aitryon.engine.account import AccountEngine, engine_for, forget_engines
from airflow_provider_aitryon.engine.limits import AccountLimits, Clock, RateLimiter, Slot

AccountBudget = AccountEngine
forget_budgets = forget_engines

__all__ = ["AccountBudget", "RateLimiter", "Slot", "account_budget", "forget_budgets"]


def account_budget(
    conn_id: str,
    *,
    submit_rate: float = 10.0,
    query_rate: float = 20.0,
    max_running: int = 5,
    clock: Clock = time.monotonic,
    **_: Any,
) -> AccountEngine:
    """The shared engine of a connection in the running event loop (created on first use)."""
    return engine_for(conn_id, AccountLimits(submit_rate, query_rate, max_running), clock)
