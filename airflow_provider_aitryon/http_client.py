"""The one HTTP core: every request this provider makes, bounded the same way.

One async exchange (httpx) serves the API client (hook), the image downloader (`downloads`: pre-
flight, saving results, the catalog, the emulator's input fetches) sync and async alike:

* a connect timeout and a read timeout per socket read;
* an overall **deadline** for the whole exchange, headers included: a host that drips one byte
  every few seconds never trips a read timeout, and must not hold a worker or the triggerer;
* a **size cap** on the body, read as it arrives (the rest is never read);
* **no redirects** here: the API never sends one (and the key must not follow one); the
  downloader follows them itself, to http(s) only.

Sync callers (operators in a worker) run the same coroutine on this process's I/O loop, a daemon
thread started on first use (and again after a fork: Airflow forks task processes), so a sync call
has exactly the async call's bounds.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import IO, Any, TypeVar

import httpx

T = TypeVar("T")

CHUNK = 64 * 1024


@dataclass(frozen=True)
class Bounds:
    """How long and how much one exchange may take.

    :param connect_timeout: seconds to connect.
    :param read_timeout: seconds to wait for each read.
    :param deadline: seconds for the whole exchange, from sending to the body's last byte.
    :param max_bytes: the most body bytes accepted; one more and the exchange is abandoned.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    deadline: float = 120.0
    max_bytes: int = 1024 * 1024


@dataclass
class Reply:
    """A complete HTTP answer, read within its bounds (``body`` is empty when a sink took it)."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes
    url: str
    sent: float  # epoch seconds the request left
    received: float  # epoch seconds the last byte arrived


class TooLarge(Exception):
    """The body went over `Bounds.max_bytes` (or said so in Content-Length); it was abandoned unread."""

    def __init__(self, received: int, declared: int | None) -> None:
        super().__init__(f"over the size cap after {received} bytes")
        self.received, self.declared = received, declared


class Stalled(Exception):
    """A read timed out: before the headers (``answered`` False) or in the body."""

    def __init__(self, received: int, answered: bool) -> None:
        super().__init__("the peer stopped sending")
        self.received, self.answered = received, answered


class Overdue(Exception):
    """The exchange did not finish within `Bounds.deadline` (headers or body)."""

    def __init__(self, received: int) -> None:
        super().__init__(f"past the deadline after {received} bytes")
        self.received = received


async def aexchange(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    bounds: Bounds,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    json: Any = None,
    data: Mapping[str, str] | None = None,
    files: Mapping[str, tuple[str, bytes, str]] | None = None,
    sink: IO[bytes] | None = None,
) -> Reply:
    """One bounded request; raises httpx errors, `TooLarge`, `Stalled` or `Overdue`.

    :param data: form fields; with ``files`` the body is ``multipart/form-data`` (fields first, then
        files, as an OSS PostObject upload needs).
    :param files: form files, ``name -> (file name, bytes, content type)``.
    :param sink: write a 2xx body here instead of returning it (large images spill to disk).
    """
    sent = time.time()
    received = 0
    answered = False
    chunks: list[bytes] = []

    async def run() -> Reply:
        nonlocal received, answered
        timeout = httpx.Timeout(bounds.read_timeout, connect=bounds.connect_timeout)
        async with client.stream(
            method,
            url,
            headers=headers,
            params=params,
            json=json,
            data=data,
            files=files,
            timeout=timeout,
            follow_redirects=False,
        ) as response:
            answered = True
            # An error page or a redirect is not the content: it stays out of the sink.
            target = sink if 200 <= response.status_code < 300 else None
            declared = _content_length(response.headers)
            if declared is not None and declared > bounds.max_bytes and method != "HEAD":
                raise TooLarge(0, declared)
            # Decoded bytes count: a small gzip bomb is as refused as a big body.
            async for chunk in response.aiter_bytes(CHUNK):
                received += len(chunk)
                if received > bounds.max_bytes:
                    raise TooLarge(received, declared)
                if target is not None:
                    # A spool past its memory size writes to disk: not on the loop every caller shares.
                    await asyncio.to_thread(target.write, chunk)
                else:
                    chunks.append(chunk)
            return Reply(
                status=response.status_code,
                reason=response.reason_phrase,
                headers=response.headers,  # case-insensitive
                body=b"".join(chunks),
                url=str(response.url),
                sent=sent,
                received=time.time(),
            )

    try:
        return await asyncio.wait_for(run(), timeout=bounds.deadline)
    except asyncio.TimeoutError:
        raise Overdue(received) from None
    except httpx.ReadTimeout:
        raise Stalled(received, answered) from None


def _content_length(headers: Mapping[str, str]) -> int | None:
    value = headers.get("Content-Length")
    try:
        length = int(str(value).strip()) if value is not None else None
    except ValueError:
        return None
    return length if length is not None and length >= 0 else None


def new_client() -> httpx.AsyncClient:
    """An async client with this provider's defaults: no proxies from the environment for loopback."""
    return httpx.AsyncClient(follow_redirects=False, limits=httpx.Limits(max_connections=100))


# ---------------------------------------------------------------------------------- the I/O loop


class _IOLoop:
    """A daemon thread running an event loop, for sync callers; one per process."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.client: httpx.AsyncClient | None = None
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, name="aitryon-io", daemon=True)
        self.thread.start()
        ready.wait()

    def shared_client(self) -> httpx.AsyncClient:
        if self.client is None:
            self.client = new_client()
        return self.client


_IO: _IOLoop | None = None
_IO_LOCK = threading.Lock()


def io_loop() -> _IOLoop:
    """This process's I/O loop (started on first use, and again in a forked child)."""
    global _IO
    with _IO_LOCK:
        if _IO is None or _IO.pid != os.getpid() or not _IO.thread.is_alive():
            _IO = _IOLoop()
        return _IO


def is_io_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether `loop` is this process's I/O loop (without starting one just to ask)."""
    io = _IO
    return io is not None and io.loop is loop and io.pid == os.getpid()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine of this provider to completion from sync code, on the I/O loop.

    Its own deadlines bound it (every exchange has one); the caller's thread just waits.
    """
    io = io_loop()
    if threading.current_thread() is io.thread:
        coro.close()
        raise RuntimeError("run_sync called on the I/O loop itself; await the coroutine instead")
    return asyncio.run_coroutine_threadsafe(coro, io.loop).result()


def exchange(method: str, url: str, **kwargs: Any) -> Reply:
    """`aexchange` from sync code, with the I/O loop's shared client."""

    async def go() -> Reply:
        return await aexchange(io_loop().shared_client(), method, url, **kwargs)

    return run_sync(go())
