"""An exclusive, expiring claim on an output partition, kept on the storage the output uses.

Two runs over one partition at once (a scheduled run and a manual rerun: ``max_active_runs=2``
allows it) would each submit every item. The partition's *lease* lets one run work on it; the
other fails at once, in one sentence naming the run that holds it. A run that crashes does not hold
the partition forever: the lease expires ``ttl`` seconds after its holder last renewed it (the chunk
triggers renew it while they work).

How it is exclusive without a lock server: the lease is a sequence of generation files
``<output>/registry/lease/<generation>.json``; the highest generation is the lease. Taking it creates
the next generation with an exclusive create (``O_EXCL`` on local and POSIX file systems), so of
two runs that race for it exactly one creates the file. A holder that finds a newer generation than
its own has lost the lease. Object stores without exclusive create fall back to create-then-read-
back, which narrows the race to the store's write latency; the per-item registry entries remain the
second line of defence there.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from airflow_provider_aitryon.errors import DashScopeConfigError

DEFAULT_TTL_SECONDS = 15 * 60
_KEEP_GENERATIONS = 5


def _alive(check: Callable[[str], bool], holder: str) -> bool:
    try:
        return bool(check(holder))
    except Exception:  # cannot tell: a live lease stands
        return True


_READ_TRIES = 20


def _modified(path: Any) -> float:
    """When a file was last written (epoch seconds); now, if the store cannot tell."""
    try:
        info = path.fs.info(path.path)
    except Exception:
        return time.time()
    for key in ("mtime", "LastModified", "last_modified", "updated"):
        value = info.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
    return time.time()


class PartitionBusy(DashScopeConfigError):
    """Another run holds the partition's lease."""


@dataclass
class LeaseState:
    generation: int
    holder: str
    expires_at: float
    released: bool = False

    @property
    def live(self) -> bool:
        return not self.released and time.time() < self.expires_at


class PartitionLease:
    """The lease on one output partition.

    :param folder: the lease folder (``<output>/registry/lease``), a path or ObjectStoragePath URI.
    :param holder: who asks: the DAG run (``<dag_id>/<run_id>``); the same holder may take it again.
    :param ttl: seconds the lease lasts after each renewal.
    :param conn_id: connection of the object store, if any.
    """

    def __init__(self, folder: str, holder: str, *, ttl: float = DEFAULT_TTL_SECONDS, conn_id: str | None = None):
        from airflow_provider_aitryon.storage import resolve_destination

        self.folder, _ = resolve_destination(folder.rstrip("/") + "/", conn_id=conn_id, field_name="lease folder")
        self.holder = holder
        self.ttl = float(ttl)
        self.generation: int | None = None

    # ------------------------------------------------------------------ reading

    def _files(self) -> dict[int, Any]:
        if not self.folder.exists():
            return {}
        found = {}
        for path in self.folder.iterdir():
            stem = path.name[: -len(".json")] if path.name.endswith(".json") else ""
            if stem.isdigit():
                found[int(stem)] = path
        return found

    def current(self) -> LeaseState | None:
        files = self._files()
        if not files:
            return None
        generation = max(files)
        path = files[generation]
        data: dict[str, Any] = {}
        for _ in range(_READ_TRIES):
            try:
                data = json.loads(path.read_text())
                break
            except (OSError, ValueError):
                # Exclusive create makes the file before its content lands: the winner of a race
                # is still writing. Read again rather than take an empty file for a lapsed lease.
                time.sleep(0.05)
        if not data:
            # Still unreadable: a holder died mid-write. It holds the lease for a TTL from the write.
            return LeaseState(generation, "an unknown run", _modified(path) + self.ttl)
        return LeaseState(
            generation=generation,
            holder=str(data.get("holder") or "an unknown run"),
            expires_at=float(data.get("expires_at") or 0),
            released=bool(data.get("released")),
        )

    # ------------------------------------------------------------------ taking, keeping, giving back

    def acquire(self, holder_alive: Callable[[str], bool] | None = None) -> None:
        """Take the lease, or raise PartitionBusy naming the run that holds it.

        :param holder_alive: tells whether the run holding a live lease is still running (Airflow
            knows: a run marked failed, or finished without giving the lease back, holds nothing);
            without it a lease is held until it expires.
        """
        for _ in range(5):
            state = self.current()
            held = state is not None and state.live and state.holder != self.holder
            if held and (holder_alive is None or _alive(holder_alive, state.holder)):  # type: ignore[union-attr]
                raise self._busy(state)
            generation = (state.generation if state else 0) + 1
            if self._create(generation):
                self.generation = generation
                self._tidy(generation)
                return
        raise self._busy(self.current())

    def renew(self) -> None:
        """Extend the lease; raise PartitionBusy if another run has taken it meanwhile."""
        state = self.current()
        if (
            state is None
            or state.holder != self.holder
            or (self.generation is not None and state.generation != self.generation)
        ):
            if state is not None and state.live and state.holder != self.holder:
                raise self._busy(state)
            self.acquire()
            return
        self.generation = state.generation
        self._write(state.generation, released=False)

    def release(self) -> None:
        state = self.current()
        if state is not None and state.holder == self.holder and not state.released:
            self._write(state.generation, released=True)

    # ------------------------------------------------------------------ plumbing

    def _payload(self, released: bool) -> bytes:
        return json.dumps(
            {"holder": self.holder, "expires_at": time.time() + self.ttl, "released": released, "at": time.time()}
        ).encode()

    def _create(self, generation: int) -> bool:
        path = self.folder / f"{generation:012d}.json"
        self.folder.mkdir(parents=True, exist_ok=True)
        data = self._payload(released=False)
        try:
            with path.fs.open(path.path, "xb") as out:
                out.write(data)
            return True
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError, TypeError):
            # A store without exclusive create: create if absent, then read back who won.
            if path.exists():
                return False
            path.write_bytes(data)
            time.sleep(0.2)
            try:
                return bool(json.loads(path.read_text()).get("holder") == self.holder)
            except (OSError, ValueError):
                return False

    def _write(self, generation: int, *, released: bool) -> None:
        from airflow_provider_aitryon.storage import atomic_write

        atomic_write(self._payload(released), self.folder / f"{generation:012d}.json")

    def _tidy(self, generation: int) -> None:
        for old, path in self._files().items():
            if old <= generation - _KEEP_GENERATIONS:
                with contextlib.suppress(OSError):
                    path.unlink()

    def _busy(self, state: LeaseState | None) -> PartitionBusy:
        holder = state.holder if state else "another run"
        left = max(0.0, state.expires_at - time.time()) if state else self.ttl
        return PartitionBusy(
            f"output {str(self.folder).rsplit('/registry/', 1)[0]} is being refined by {holder}, which holds its "
            f"lease for another {left:.0f} s; wait for that run to finish (or, if it died, for the lease to "
            "expire) and then rerun this partition."
        )
