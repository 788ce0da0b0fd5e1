"""The per-account waiting engine: budgets, the queue and latency model, and one poll loop.

Read in this order: `limits` (adaptive request rates), `model` (when does each task end, when to
ask), `account` (the engine every waiter registers its tasks with, and `wait_for_task`).
"""

from __future__ import annotations

from airflow_provider_aitryon.engine.account import (
    EVENT_ERROR,
    EVENT_TIMEOUT,
    AccountEngine,
    engine_for,
    forget_engines,
    monotonic_from_epoch,
    task_event,
    wait_for_task,
)
from airflow_provider_aitryon.engine.limits import AccountLimits, RateLimiter, Slot
from airflow_provider_aitryon.engine.model import QueueModel, Watch

__all__ = [
    "EVENT_ERROR",
    "EVENT_TIMEOUT",
    "AccountEngine",
    "AccountLimits",
    "QueueModel",
    "RateLimiter",
    "Slot",
    "Watch",
    "engine_for",
    "forget_engines",
    "monotonic_from_epoch",
    "task_event",
    "wait_for_task",
]
