"""What a remote host can do to a hook call: an endless reply, a dripping one, a redirect.

Each is a real loopback server misbehaving at the socket level; the hook must end the call with
one sentence, within its deadline and without reading the whole body into memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from airflow_provider_aitryon import api
from airflow_provider_aitryon.errors import DashScopeAPIError
from airflow_provider_aitryon.hooks.dashscope import MAX_API_BODY, DashScopeHook

API_KEY = "sk-bounds-test"


class RawServer:
    """Accepts connections and hands each socket to `behave`, which writes whatever it likes."""

    def __init__(self, behave: Callable[[socket.socket], None]) -> None:
        self.behave = behave
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sent = 0
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)  # the request; its content does not matter here
            with contextlib.suppress(OSError):  # the client hung up: what it should do
                self.behave(conn)

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def endless(server_sent: list[int]) -> Callable[[socket.socket], None]:
    def behave(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"output\": \"")
        block = b"x" * 65536
        for _ in range(100_000):  # 6.5 GB if nobody stops reading: bounded, but far past any cap
            conn.sendall(block)
            server_sent[0] += len(block)

    return behave


def dripping(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(1000):
        conn.sendall(b" ")
        time.sleep(0.2)


def dripping_headers(conn: socket.socket) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
        conn.sendall(bytes([byte]))
        time.sleep(0.2)


def redirecting(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/steal\r\nContent-Length: 0\r\n\r\n")


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., DashScopeHook]]:
    servers: list[RawServer] = []

    def make(behave: Callable[[socket.socket], None], **extra: Any) -> DashScopeHook:
        server = RawServer(behave)
        servers.append(server)
        settings = {"max_attempts": 1, "read_timeout": 5, "request_deadline": 2, **extra}
        monkeypatch.setenv("AIRFLOW_CONN_DASHSCOPE_BOUNDS", json.dumps(
            {"conn_type": "dashscope", "host": server.base_url, "password": API_KEY, "extra": settings}
        ))  # fmt: skip
        return DashScopeHook(dashscope_conn_id="dashscope_bounds")

    yield make
    for server in servers:
        server.close()


def query(hook: DashScopeHook, mode: str) -> Any:
    if mode == "sync":
        return hook.get_task("t-1")

    async def go() -> Any:
        try:
            return await hook.aget_task("t-1")
        finally:
            await hook.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_endless_reply_is_abandoned_at_the_cap(serve, mode):
    sent = [0]
    hook = serve(endless(sent), request_deadline=60)
    with pytest.raises(DashScopeAPIError, match=f"sent a reply over {MAX_API_BODY // 1024} KiB") as info:
        query(hook, mode)
    assert info.value.retryable is True
    # Abandoned near the cap, not read to the end (the server would have sent 6.5 GB).
    time.sleep(0.2)
    assert sent[0] < 50 * MAX_API_BODY


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_dripping_reply_ends_at_the_request_deadline(serve, mode):
    hook = serve(dripping)
    with pytest.raises(DashScopeAPIError, match="did not finish its reply within 2 s"):
        query(hook, mode)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_dripping_headers_end_at_the_request_deadline(serve, mode):
    """A byte of headers every 0.2 s never trips the 5 s read timeout; the 2 s deadline still ends it."""
    hook = serve(dripping_headers)
    with pytest.raises(DashScopeAPIError, match="did not finish its reply within 2 s"):
        query(hook, mode)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_redirect_is_not_followed(serve, mode):
    hook = serve(redirecting)
    with pytest.raises(DashScopeAPIError, match="HTTP 302"):
        query(hook, mode)


def test_a_submit_whose_reply_overflows_is_a_lost_reply(serve):
    hook = serve(endless([0]), request_deadline=60)
    call = api.refiner_call(person_image_url="https://p/p.png", top_garment_url="https://p/t.png",
                            coarse_image_url="https://p/c.png", gender="woman")  # fmt: skip
    with pytest.raises(DashScopeAPIError) as info:
        hook.run(call)
    assert info.value.ambiguous is True  # the service may have taken it: looked up, never resent blindly
