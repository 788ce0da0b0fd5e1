"""The one downloader against hosts that misbehave at the socket level: every download ends, in one sentence."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from test_hook_bounds import RawServer, dripping_headers

from airflow_provider_aitryon.downloads import AddressPolicy, DownloadBounds, DownloadError, fetch
from airflow_provider_aitryon.errors import DashScopeConfigError
from airflow_provider_aitryon.preflight import InputInspector


@pytest.fixture
def raw() -> Iterator[Callable[[Callable[[socket.socket], None]], str]]:
    servers: list[RawServer] = []

    def make(behave: Callable[[socket.socket], None]) -> str:
        server = RawServer(behave)
        servers.append(server)
        return server.base_url

    yield make
    for server in servers:
        server.close()


def endless_body(sent: list[int]) -> Callable[[socket.socket], None]:
    def behave(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n\r\n")
        for _ in range(100_000):
            conn.sendall(b"\0" * 65536)
            sent[0] += 65536

    return behave


def redirect_to(location: str) -> Callable[[socket.socket], None]:
    def behave(conn: socket.socket) -> None:
        # The server closes each connection after one reply, so it says so (HTTP/1.1 keeps it open otherwise).
        conn.sendall(f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                     .encode())  # fmt: skip

    return behave


def test_dripping_headers_end_at_the_deadline(raw):
    url = raw(dripping_headers) + "/img.png"
    with pytest.raises(DownloadError) as info:
        fetch(url, bounds=DownloadBounds(read_timeout=5, deadline=1))
    assert info.value.kind == "overdue"
    assert info.value.reason == "took more than 1 s to send the image"


def test_an_endless_body_is_abandoned_at_the_cap(raw):
    sent = [0]
    with pytest.raises(DownloadError) as info:
        fetch(raw(endless_body(sent)) + "/img.png", bounds=DownloadBounds(max_bytes=1024 * 1024))
    assert info.value.kind == "too_large"
    time.sleep(0.2)
    assert sent[0] < 64 * 1024 * 1024  # the host would have sent 6.5 GB


def test_a_redirect_to_another_scheme_is_refused(raw):
    with pytest.raises(DownloadError, match="redirected to a URL that is not http"):
        fetch(raw(redirect_to("file:///etc/passwd")) + "/img.png", bounds=DownloadBounds())


def test_a_redirect_loop_is_refused(raw):
    base = raw(redirect_to("/again"))
    with pytest.raises(DownloadError, match="redirected more than 2 times"):
        fetch(base + "/img.png", bounds=DownloadBounds(max_redirects=2))


def test_preflight_ends_a_host_dripping_headers_in_one_sentence(raw):
    url = raw(dripping_headers) + "/person.png?Signature=SECRET"
    with (
        InputInspector(max_seconds=1, attempts=1, policy=AddressPolicy(allow_private=True)) as inspector,
        pytest.raises(DashScopeConfigError) as info,
    ):
        inspector.inspect("person_image_url", url)
    message = str(info.value)
    assert message.startswith("person_image_url: http://127.0.0.1:")
    assert "took more than 1 s to send the image" in message
    assert "SECRET" not in message


def test_sync_downloads_from_many_threads_share_one_io_loop(raw):
    """Worker threads (the emulator's renders, to_thread saves) all fetch at once through the one loop."""
    hits = []

    def ok(conn: socket.socket) -> None:
        hits.append(1)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    url = raw(ok) + "/x"
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(fetch(url, bounds=DownloadBounds()).body))
               for _ in range(8)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [b"ok"] * 8
