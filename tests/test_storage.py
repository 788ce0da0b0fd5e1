"""save_image and SaveTryOnResultOperator against a real HTTP server on loopback.

The server misbehaves on demand (HTML with 200, 404, a body cut short, a stalled body, a body
without a length) so each failure path is exercised over a real socket, not a mock.
"""

from __future__ import annotations

import hashlib
import io
import random
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from airflow_provider_aitryon.failures import AirflowException, AirflowFailException
from airflow_provider_aitryon.operators.storage import (
    DEFAULT_MAX_BYTES,
    SaveTryOnResultOperator,
    atomic_write,
    resolve_destination,
    save_image,
)


def make_image(fmt: str = "PNG", size: tuple[int, int] = (64, 48), seed: int = 0) -> bytes:
    # Random pixels do not compress, so the body is big enough to be cut in half meaningfully.
    rng = random.Random(seed)
    image = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


PNG = make_image()
JPEG = make_image("JPEG", (40, 30), seed=1)

Handler = Callable[[BaseHTTPRequestHandler], None]


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client hanging up on a cut-short or stalled body is the point of those tests


class LoopbackServer:
    """Routes are set per test; every request path is recorded."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.requests: list[str] = []
        self.release = threading.Event()  # unblocks stalled handlers at teardown
        server = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                server.requests.append(path)
                route = server.routes.get(path)
                if route is None:
                    send(self, 404, b"<html>Not Found</html>", "text/html")
                else:
                    route(self)

        self.httpd = QuietServer(("127.0.0.1", 0), RequestHandler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str = "image/png") -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def serve(body: bytes, status: int = 200, content_type: str = "image/png") -> Handler:
    return lambda handler: send(handler, status, body, content_type)


def serve_without_length(body: bytes) -> Handler:
    """A close-delimited body: the only size check possible is counting while streaming."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        handler.wfile.write(body)

    return route


def serve_cut_short(body: bytes) -> Handler:
    """Announce the whole body, send half, then drop the connection."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body[: len(body) // 2])
        handler.wfile.flush()
        handler.close_connection = True
        handler.connection.shutdown(2)

    return route


def serve_stalled(server: LoopbackServer, body: bytes) -> Handler:
    """Send half the body, then go silent until the test ends."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body[: len(body) // 2])
        handler.wfile.flush()
        server.release.wait(30)
        handler.close_connection = True

    return route


def serve_dripping(server: LoopbackServer, body: bytes) -> Handler:
    """Send a few bytes at a time, fast enough to never trip a read timeout."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        for start in range(0, len(body), 16):
            if server.release.wait(0.01):
                break
            handler.wfile.write(body[start : start + 16])
            handler.wfile.flush()
        handler.close_connection = True

    return route


def serve_sequence(*routes: Handler) -> Handler:
    """Answer the n-th request with the n-th route; the last one repeats."""
    queue = list(routes)

    def route(handler: BaseHTTPRequestHandler) -> None:
        (queue.pop(0) if len(queue) > 1 else queue[0])(handler)

    return route


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    srv = LoopbackServer()
    yield srv
    srv.close()


def files_under(root: Path) -> list[str]:
    """Every file below root, hidden ones included: a leftover .part file must show up."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


FAST: dict[str, Any] = {"attempts": 2, "backoff": 0.0}


# --------------------------------------------------------------------------------------------
# Success paths
# --------------------------------------------------------------------------------------------


def test_saves_exact_bytes_to_a_file_path(server: LoopbackServer, tmp_path: Path) -> None:
    server.routes["/results/abc.png"] = serve(PNG)
    url = server.url("/results/abc.png") + "?Expires=1&Signature=secret"
    target = tmp_path / "nested" / "dir" / "result.png"

    result = save_image(url, str(target), **FAST)

    assert target.read_bytes() == PNG
    assert result == {
        "uri": str(target),
        "bytes": len(PNG),
        "sha256": hashlib.sha256(PNG).hexdigest(),
        "format": "PNG",
        "width": 64,
        "height": 48,
        "source_url": url,
    }
    assert files_under(tmp_path) == ["nested/dir/result.png"]


def test_directory_with_trailing_slash_names_the_file_after_the_task_id(server: LoopbackServer, tmp_path: Path) -> None:
    server.routes["/r/x.png"] = serve(PNG)
    sensor_output = {"task_id": "a8532587-fa8c", "task_status": "SUCCEEDED", "image_url": server.url("/r/x.png")}

    result = save_image(sensor_output, f"{tmp_path}/out/", **FAST)

    assert result["uri"] == str(tmp_path / "out" / "a8532587-fa8c.png")
    assert (tmp_path / "out" / "a8532587-fa8c.png").read_bytes() == PNG


def test_existing_directory_uses_the_url_basename_and_the_real_format(server: LoopbackServer, tmp_path: Path) -> None:
    # JPEG bytes behind a .png name and a text/plain header: the content decides, not the labels.
    server.routes["/r/result-7.png"] = serve(JPEG, content_type="text/plain")

    result = save_image(server.url("/r/result-7.png") + "?sig=1", str(tmp_path), **FAST)

    assert result["format"] == "JPEG"
    assert (result["width"], result["height"]) == (40, 30)
    assert files_under(tmp_path) == ["result-7.jpg"]
    assert (tmp_path / "result-7.jpg").read_bytes() == JPEG


def test_explicit_name_overrides_the_derived_one(server: LoopbackServer, tmp_path: Path) -> None:
    server.routes["/r/x.png"] = serve(PNG)
    save_image({"task_id": "t1", "image_url": server.url("/r/x.png")}, f"{tmp_path}/", name="look 1", **FAST)
    assert files_under(tmp_path) == ["look_1.png"]


def test_file_uri_destination(server: LoopbackServer, tmp_path: Path) -> None:
    server.routes["/r/x.png"] = serve(PNG)
    uri = (tmp_path / "via-uri.png").as_uri()

    result = save_image(server.url("/r/x.png"), uri, **FAST)

    assert result["uri"] == uri
    assert (tmp_path / "via-uri.png").read_bytes() == PNG


def test_relative_path_is_made_absolute(
    server: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.routes["/r/x.png"] = serve(PNG)
    monkeypatch.chdir(tmp_path)
    result = save_image(server.url("/r/x.png"), "rel/out.png", **FAST)
    assert result["uri"] == str(tmp_path / "rel" / "out.png")


def test_overwrite_replaces_an_existing_file(server: LoopbackServer, tmp_path: Path) -> None:
    server.routes["/r/x.png"] = serve(PNG)
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    save_image(server.url("/r/x.png"), str(target), **FAST)
    assert target.read_bytes() == PNG
    assert files_under(tmp_path) == ["out.png"]


def test_transient_errors_are_retried(server: LoopbackServer, tmp_path: Path) -> None:
    server.routes["/r/x.png"] = serve_sequence(
        serve(b"busy", 503, "text/plain"), serve(b"slow down", 429, "text/plain"), serve(PNG)
    )
    result = save_image(server.url("/r/x.png"), str(tmp_path / "x.png"), attempts=3, backoff=0.0)
    assert result["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert server.requests == ["/r/x.png"] * 3


def test_a_cut_short_body_is_retried_and_can_then_succeed(server: LoopbackServer, tmp_path: Path) -> None:
    server.routes["/r/x.png"] = serve_sequence(serve_cut_short(PNG), serve(PNG))
    save_image(server.url("/r/x.png"), str(tmp_path / "x.png"), **FAST)
    assert (tmp_path / "x.png").read_bytes() == PNG
    assert files_under(tmp_path) == ["x.png"]


# --------------------------------------------------------------------------------------------
# Failure paths: each one leaves no file, final or temporary
# --------------------------------------------------------------------------------------------


def test_html_is_not_an_image(server: LoopbackServer, tmp_path: Path) -> None:
    server.routes["/r/x.png"] = serve(b"<html><body>Login</body></html>", content_type="image/png")
    with pytest.raises(AirflowFailException, match="not an image"):
        save_image(server.url("/r/x.png"), str(tmp_path / "x.png"), **FAST)
    assert files_under(tmp_path) == []
    assert len(server.requests) == 1  # permanent: not retried


def test_a_declared_length_over_max_bytes_is_refused(server: LoopbackServer, tmp_path: Path) -> None:
    server.routes["/r/x.png"] = serve(PNG)
    with pytest.raises(AirflowFailException, match="max_bytes"):
        save_image(server.url("/r/x.png"), str(tmp_path / "x.png"), max_bytes=len(PNG) - 1, **FAST)
    assert files_under(tmp_path) == []
    assert len(server.requests) == 1


def test_a_streamed_body_over_max_bytes_is_abandoned(server: LoopbackServer, tmp_path: Path) -> None:
    huge = make_image(size=(400, 400))  # ~480 KB, sent without a Content-Length
    server.routes["/r/huge.png"] = serve_without_length(huge)
    with pytest.raises(AirflowFailException, match="max_bytes"):
        save_image(server.url("/r/huge.png"), f"{tmp_path}/", max_bytes=100_000, **FAST)
    assert files_under(tmp_path) == []


def test_a_body_without_length_under_the_cap_is_fine(server: LoopbackServer, tmp_path: Path) -> None:
    server.routes["/r/x.png"] = serve_without_length(PNG)
    result = save_image(server.url("/r/x.png"), str(tmp_path / "x.png"), **FAST)
    assert result["bytes"] == len(PNG)


@pytest.mark.parametrize("status", [403, 404, 410])
def test_an_expired_url_fails_without_retries(server: LoopbackServer, tmp_path: Path, status: int) -> None:
    server.routes["/r/x.png"] = serve(b"<Error>AccessDenied</Error>", status, "application/xml")
    with pytest.raises(AirflowFailException) as caught:
        save_image(server.url("/r/x.png") + "?Signature=secret", str(tmp_path / "x.png"), attempts=3)
    message = str(caught.value)
    assert "expired" in message
    assert "24 hours" in message
    assert "secret" not in message  # the signed query string stays out of logs
    assert len(server.requests) == 1
    assert files_under(tmp_path) == []


def test_a_body_cut_short_every_time_fails_retryably(server: LoopbackServer, tmp_path: Path) -> None:
    server.routes["/r/x.png"] = serve_cut_short(PNG)
    with pytest.raises(AirflowException) as caught:
        save_image(server.url("/r/x.png"), str(tmp_path / "x.png"), **FAST)
    # Retryable: the task's own retries may still succeed, so it must not be a FailException.
    assert not isinstance(caught.value, AirflowFailException)
    assert len(server.requests) == 2
    assert files_under(tmp_path) == []


def test_a_stalled_body_times_out(server: LoopbackServer, tmp_path: Path) -> None:
    server.routes["/r/x.png"] = serve_stalled(server, PNG)
    with pytest.raises(AirflowException):
        save_image(server.url("/r/x.png"), str(tmp_path / "x.png"), timeout=(5.0, 0.2), attempts=1)
    assert files_under(tmp_path) == []


def test_a_dripping_body_is_bounded_by_max_seconds(server: LoopbackServer, tmp_path: Path) -> None:
    server.routes["/r/x.png"] = serve_dripping(server, PNG)  # ~6 s to send it all
    with pytest.raises(AirflowException, match="max_seconds"):
        save_image(server.url("/r/x.png"), str(tmp_path / "x.png"), max_seconds=0.1, attempts=1)
    assert files_under(tmp_path) == []


def test_persistent_server_errors_end_as_a_retryable_failure(server: LoopbackServer, tmp_path: Path) -> None:
    server.routes["/r/x.png"] = serve(b"oops", 500, "text/plain")
    with pytest.raises(AirflowException) as caught:
        save_image(server.url("/r/x.png"), str(tmp_path / "x.png"), attempts=3, backoff=0.0)
    assert not isinstance(caught.value, AirflowFailException)
    assert "HTTP 500" in str(caught.value)
    assert len(server.requests) == 3


@pytest.mark.parametrize(
    "bad", ["ftp://127.0.0.1/{port}/x.png", "file:///etc/passwd", "127.0.0.1:{port}/r/x.png", "", None, 42]
)
def test_non_http_urls_are_refused_before_any_request(server: LoopbackServer, tmp_path: Path, bad: object) -> None:
    server.routes["/r/x.png"] = serve(PNG)
    if isinstance(bad, str):
        bad = bad.format(port=server.httpd.server_address[1])
    with pytest.raises(AirflowFailException, match="image_url"):
        save_image(bad, str(tmp_path / "x.png"))  # type: ignore[arg-type]
    assert server.requests == []
    assert files_under(tmp_path) == []


def test_a_dict_without_image_url_is_refused(server: LoopbackServer, tmp_path: Path) -> None:
    with pytest.raises(AirflowFailException, match="image_url"):
        save_image({"task_id": "t1", "task_status": "FAILED"}, str(tmp_path / "x.png"))
    assert server.requests == []


def test_overwrite_false_refuses_an_existing_file_before_downloading(server: LoopbackServer, tmp_path: Path) -> None:
    server.routes["/r/x.png"] = serve(PNG)
    target = tmp_path / "x.png"
    target.write_bytes(b"keep me")
    with pytest.raises(AirflowFailException, match="overwrite"):
        save_image(server.url("/r/x.png"), str(target), overwrite=False)
    assert target.read_bytes() == b"keep me"
    assert server.requests == []


@pytest.mark.parametrize("destination", ["", "   ", None, 3.5])
def test_a_bad_destination_is_refused(server: LoopbackServer, destination: object) -> None:
    server.routes["/r/x.png"] = serve(PNG)
    with pytest.raises(AirflowFailException, match="destination"):
        save_image(server.url("/r/x.png"), destination)  # type: ignore[arg-type]
    assert server.requests == []


@pytest.mark.parametrize("field, value", [("max_bytes", 0), ("attempts", 0), ("max_bytes", True)])
def test_bad_limits_are_refused(server: LoopbackServer, tmp_path: Path, field: str, value: object) -> None:
    with pytest.raises(AirflowFailException, match=field):
        save_image(server.url("/r/x.png"), str(tmp_path / "x.png"), **{field: value})  # type: ignore[arg-type]
    assert server.requests == []


# --------------------------------------------------------------------------------------------
# The atomic write on its own
# --------------------------------------------------------------------------------------------


class BreaksHalfway(io.BytesIO):
    def read(self, size: int | None = -1) -> bytes:
        if self.tell() > 0:
            raise OSError("disk went away")
        return super().read(4)


def test_atomic_write_leaves_nothing_when_the_copy_fails(tmp_path: Path) -> None:
    target, is_dir = resolve_destination(str(tmp_path / "a.png"))
    assert not is_dir
    with pytest.raises(OSError, match="disk went away"):
        atomic_write(BreaksHalfway(b"0123456789"), target)
    assert files_under(tmp_path) == []


def test_atomic_write_keeps_the_old_file_when_the_copy_fails(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"old")
    target, _ = resolve_destination(str(tmp_path / "a.png"))
    with pytest.raises(OSError):
        atomic_write(BreaksHalfway(b"0123456789"), target)
    assert files_under(tmp_path) == ["a.png"]
    assert (tmp_path / "a.png").read_bytes() == b"old"


# --------------------------------------------------------------------------------------------
# The operator
# --------------------------------------------------------------------------------------------


def test_operator_template_fields_and_defaults() -> None:
    op = SaveTryOnResultOperator(task_id="save", image_url="{{ ti.xcom_pull('wait') }}", destination="/x/")
    assert set(op.template_fields) == {"image_url", "destination", "conn_id"}
    assert op.max_bytes == DEFAULT_MAX_BYTES
    assert op.overwrite is True


def test_operator_renders_its_templates(tmp_path: Path) -> None:
    op = SaveTryOnResultOperator(
        task_id="save",
        image_url="{{ params.url }}",
        destination=str(tmp_path) + "/{{ ds }}/",
    )
    op.render_template_fields({"params": {"url": "https://example.com/r.png"}, "ds": "2026-01-01"})
    assert op.image_url == "https://example.com/r.png"
    assert op.destination == f"{tmp_path}/2026-01-01/"


def test_operator_execute_saves_and_returns_the_xcom(server: LoopbackServer, tmp_path: Path) -> None:
    from airflow.sdk import Asset

    server.routes["/r/x.png"] = serve(PNG)
    asset = Asset(uri=(tmp_path / "t9.png").as_uri(), name="tryon-t9")
    op = SaveTryOnResultOperator(
        task_id="save",
        image_url={"task_id": "t9", "image_url": server.url("/r/x.png")},
        destination=f"{tmp_path}/",
        outlets=[asset],
    )
    result = op.execute({})  # type: ignore[arg-type]
    assert result["uri"] == str(tmp_path / "t9.png")
    assert result["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert op.outlets == [asset]


def test_operator_maps_an_expired_url_to_a_fail_exception(server: LoopbackServer, tmp_path: Path) -> None:
    op = SaveTryOnResultOperator(task_id="save", image_url=server.url("/gone.png"), destination=f"{tmp_path}/")
    with pytest.raises(AirflowFailException, match="24 hours"):
        op.execute({})  # type: ignore[arg-type]
    assert files_under(tmp_path) == []


def oversized_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height: a few dozen bytes that would decode to gigabytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(
        b"IEND", b""
    )


def test_an_image_declaring_a_huge_size_is_refused_before_decoding(server: LoopbackServer, tmp_path: Path) -> None:
    server.routes["/r/x.png"] = serve(oversized_png(13000, 13000))
    with pytest.raises(AirflowFailException, match=r"is 13000x13000 px, larger than any try-on result"):
        save_image(server.url("/r/x.png"), str(tmp_path / "x.png"), **FAST)
    assert files_under(tmp_path) == []
    assert len(server.requests) == 1  # permanent: not retried
