"""Where submission entries live: Airflow Variables, JSON files next to the output, or memory.

All three keep JSON objects under string keys behind one small interface, so the registry's rules
(`registry.rules`) never depend on where an entry is stored:

* `VariableStore`: Airflow Variables named ``<prefix><key>``, reachable from every worker and
  triggerer of the deployment through the Task SDK. The submit operators keep their entries here.
* `FileStore`: one ``<key>.json`` file per entry in a folder (a local path or any
  ``ObjectStoragePath`` URI), written atomically. The catalog backfill keeps its entries next to
  the output they describe, so a partition's registry moves, and is deleted, with it.
* `MemoryStore`: a dict, for code outside Airflow (scripts, benchmarks, unit tests).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from typing import Any, Protocol

from airflow_provider_aitryon.errors import DashScopeAPIError

log = logging.getLogger(__name__)


class RegistryUnavailable(DashScopeAPIError):
    """The registry could not be read or written: fail this try (Airflow retries) rather than pay twice."""

    def __init__(self, where: str, exc: BaseException) -> None:
        super().__init__(
            operation="registry",
            message=f"the submission registry in {where} could not be reached ({type(exc).__name__}: "
            f"{str(exc)[:160]}), so whether this request was already paid for is unknown; not submitting",
            retryable=True,
        )


class Store(Protocol):
    """A key → JSON object store. ``where`` names it in logs and messages."""

    where: str

    def get(self, key: str) -> dict[str, Any] | None: ...
    def put(self, key: str, value: dict[str, Any]) -> None: ...
    def delete(self, key: str) -> None: ...
    def list_keys(self) -> list[str]: ...


class MemoryStore:
    """Entries in a dict; thread-safe, lost with the process."""

    where = "memory"

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            value = self.entries.get(key)
            return dict(value) if value is not None else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            self.entries[key] = dict(value)

    def delete(self, key: str) -> None:
        with self._lock:
            self.entries.pop(key, None)

    def list_keys(self) -> list[str]:
        with self._lock:
            return sorted(self.entries)


# One store for code that runs where Airflow Variables cannot be reached (no task runner): the
# whole process shares it, so two operators run by one script still see each other's entries.
_PROCESS_FALLBACK = MemoryStore()
_FALLBACK_SAID = False


def in_airflow() -> bool:
    """Whether this process talks to an Airflow supervisor (a task, a triggerer, `dags test`)."""
    try:
        from airflow.sdk.execution_time import task_runner
    except ImportError:  # pragma: no cover - a Task SDK without the execution-time package
        return False
    return getattr(task_runner, "SUPERVISOR_COMMS", None) is not None


class VariableStore:
    """Entries as Airflow Variables ``<prefix><key>`` holding JSON.

    Outside Airflow (a script, a unit test) Variables cannot be reached: the store then keeps its
    entries in one process-wide memory store and says so once. Inside a task or a triggerer, a read
    or write that fails raises `RegistryUnavailable` (a transient error: Airflow retries the task)
    instead of guessing, since a wrong guess costs a second paid image.
    """

    where = "Airflow Variables"

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def _fallback(self) -> MemoryStore | None:
        if in_airflow():
            return None
        global _FALLBACK_SAID
        if not _FALLBACK_SAID:
            _FALLBACK_SAID = True
            log.info("Not inside Airflow: the submission registry lives in this process's memory.")
        return _PROCESS_FALLBACK

    def get(self, key: str) -> dict[str, Any] | None:
        if (fallback := self._fallback()) is not None:
            return fallback.get(self.prefix + key)
        from airflow.sdk import Variable

        try:
            return _loads(Variable.get(self.prefix + key, default=None))
        except Exception as exc:
            raise RegistryUnavailable(self.where, exc) from None

    def put(self, key: str, value: dict[str, Any]) -> None:
        if (fallback := self._fallback()) is not None:
            fallback.put(self.prefix + key, value)
            return
        from airflow.sdk import Variable

        try:
            Variable.set(self.prefix + key, json.dumps(value, sort_keys=True),
                         description="airflow-provider-aitryon submission registry")  # fmt: skip
        except Exception as exc:
            raise RegistryUnavailable(self.where, exc) from None

    def delete(self, key: str) -> None:
        if (fallback := self._fallback()) is not None:
            fallback.delete(self.prefix + key)
            return
        from airflow.sdk import Variable

        try:
            Variable.delete(self.prefix + key)
        except Exception as exc:
            log.info("Could not delete registry entry %s%s (%s); it expires by itself.", self.prefix, key, exc)

    def list_keys(self) -> list[str]:
        """Keys of this store (Airflow 3.3+ lists Variables from a task; older releases list none)."""
        if (fallback := self._fallback()) is not None:
            names: Iterable[str] = fallback.list_keys()
        else:
            from airflow.sdk import Variable

            lister = getattr(Variable, "keys", None)
            if lister is None:
                return []
            try:
                names = list(lister(prefix=self.prefix))
            except Exception as exc:
                raise RegistryUnavailable(self.where, exc) from None
        return sorted(n[len(self.prefix) :] for n in names if n.startswith(self.prefix))


class FileStore:
    """Entries as ``<root>/<key>.json`` files; ``root`` is a local path or an ObjectStoragePath URI."""

    def __init__(self, root: str, *, conn_id: str | None = None) -> None:
        from airflow_provider_aitryon.storage import resolve_destination

        self.root, _ = resolve_destination(root.rstrip("/") + "/", conn_id=conn_id, field_name="registry folder")
        self.where = str(self.root)

    def _path(self, key: str) -> Any:
        return self.root / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            if not path.exists():
                return None
            return _loads(path.read_text())
        except OSError as exc:
            raise RegistryUnavailable(self.where, exc) from None

    def put(self, key: str, value: dict[str, Any]) -> None:
        from airflow_provider_aitryon.storage import atomic_write

        try:
            atomic_write(json.dumps(value, sort_keys=True).encode(), self._path(key))
        except OSError as exc:
            raise RegistryUnavailable(self.where, exc) from None

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.exists():
            path.unlink()

    def list_keys(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name[: -len(".json")] for p in self.root.iterdir() if p.name.endswith(".json"))


def _loads(raw: Any) -> dict[str, Any] | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None
