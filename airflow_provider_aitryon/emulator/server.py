"""HTTP plumbing of the emulator: routing, fault execution, the request log and ``Emulator``.

Why a threaded stdlib server: tasks fetch their input images over HTTP, usually from this same
server (``/samples/...`` or a previous task's ``/results/...``), so a request must never wait for
another; ``ThreadingHTTPServer`` gives each connection its own daemon thread and needs nothing
beyond the standard library. HTTP/1.1 keep-alive is on, like the real gateway, so clients with
connection pools are exercised realistically (including a pooled connection being dropped).

Faults are applied only to the DashScope API routes (the upload-policy call included), never to
``/samples``, ``/results``, ``/health``, the temporary storage's OSS upload (``/_oss_upload``,
authorised by the signed policy in its form, see ``temp_storage``) or the ``/_emulator`` control
routes, so a test can inject chaos into the client under test while its own bookkeeping stays
reliable.

Lost replies (``lost_reply_submits``) are executed here once the service logic has accepted the
submit and flagged its ``Reply``: ``504`` sends a Tengine-style HTML "504 Gateway Time-out" page,
``502`` the HTML "502 Bad Gateway" page, ``empty`` an HTTP 200 with no body, ``drop`` closes the
connection without a response. The request log's ``fault`` says e.g. ``lost_reply_504``. Being
deterministic, a lost reply takes precedence over a random after-the-fact ``drop``/``malformed``
drawn for the same request (the reply is lost either way; it is counted once).

Every response's ``Date`` header is the host's real time plus ``clock_skew_seconds`` (the current
value), like a service whose clock is off, so clients that trust ``Date`` see the same skew as in
the task times.

The request log records every non-control request with its headers as received (name case and
order kept), except that the value of ``Authorization`` (and ``Proxy-Authorization``) is replaced by
``[redacted]``: the log never holds a client's API key. Secrecy tests still see where the key
travels: each entry's ``api_key_fingerprint`` is a short keyed hash of the bearer key (compare it
with ``Emulator.key_fingerprint(key)``; the hash key is random per emulator, so the fingerprint
cannot be reversed by guessing keys elsewhere). The one-line-per-request stderr log never prints
headers.

The control routes (``/_emulator/...``) change what the emulator does and show what clients sent,
so they are guarded (see ``_Handler._guard``): every request must carry the emulator's control
token in ``X-Emulator-Token`` (generated at start-up: ``Emulator.control_token``, printed by the
CLI), a request from a browser page of another origin (an ``Origin`` header other than the
emulator's own) is refused, and a control ``POST`` must be ``Content-Type: application/json``, which
a cross-site form or ``fetch`` cannot send without a CORS preflight this server never grants. What
the emulator reads from disk (``samples_dir``) and whether it fetches beyond loopback
(``allow_external_fetch``) are start-up settings: ``POST /_emulator/config`` refuses them.
``/samples/<name>`` serves only regular files directly inside ``samples_dir`` (no path separators
after percent-decoding, no dot files, no symlink leading out of the folder).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import mimetypes
import secrets
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from airflow_provider_aitryon.api import SUBMIT_PATH, TASKS_PATH
from airflow_provider_aitryon.emulator.config import EmulatorConfig
from airflow_provider_aitryon.emulator.protocol import MSG_INTERNAL, MSG_MODEL_UNAVAILABLE, MSG_THROTTLING
from airflow_provider_aitryon.emulator.samples import sample_images
from airflow_provider_aitryon.emulator.state import EmulatorState, FaultPlan, Reply
from airflow_provider_aitryon.emulator.temp_storage import FORM_OVERHEAD, OSS_RESOLVE_HEADER, UPLOAD_ROUTE
from airflow_provider_aitryon.uploads import UPLOADS_PATH

CONTROL_PREFIX = "/_emulator/"
# The header that carries the control token on every /_emulator/ request.
CONTROL_TOKEN_HEADER = "X-Emulator-Token"
# Settings POST /_emulator/config refuses: what the emulator reads from disk or the network is
# decided when it starts (Python callers may still pass them to Emulator.update).
HTTP_REFUSED_SETTINGS = {
    "clock": "clock cannot be set over HTTP",
    "samples_dir": "samples_dir is a start-up option (--samples) and cannot be changed over HTTP",
    "allow_external_fetch": "allow_external_fetch is a start-up option (--allow-external-fetch) and cannot be "
    "changed over HTTP",
}
# Request headers whose values the request log never keeps.
REDACTED_HEADERS = frozenset({"authorization", "proxy-authorization"})
REDACTED = "[redacted]"
_PROXY_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>Tengine</center>\r\n</body>\r\n</html>\r\n"
)
# What Alibaba's gateway (Tengine, an nginx fork) answers when the service behind it is too slow.
_PROXY_504 = (
    b"<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n"
    b"<center><h1>504 Gateway Time-out</h1></center>\r\n<hr><center>Tengine</center>\r\n</body>\r\n</html>\r\n"
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Benchmarks open many connections at once; the socketserver default backlog of 5 would
    # turn a burst into connection resets that the real service would not produce.
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], state: EmulatorState, control_token: str) -> None:
        self.state = state
        self.control_token = control_token
        self.own_origins: frozenset[str] = frozenset()  # set once the port is known
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-response (or our own stop() closing pooled connections) is
        # normal life for a server, not a traceback on stderr.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def close_all_connections(self) -> None:
        # Keep-alive handler threads would otherwise keep answering on pooled connections
        # after stop().
        with self.connections_lock:
            conns = list(self.connections)
            self.connections.clear()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "aitryon-emulator/0.1"
    sys_version = ""
    timeout = 120  # idle keep-alive connections are closed after this
    server: _Server

    # ------------------------------------------------------------------ plumbing

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The ``Date`` header: real time shifted by the service's ``clock_skew_seconds``.

        ``send_response`` (and so ``send_error``) calls this for every response, which is why the
        skew lives here rather than in ``_send``.
        """
        if timestamp is None:
            timestamp = time.time() + self.server.state.config.clock_skew_seconds
        return super().date_time_string(timestamp)

    def log_message(self, format: str, *args: Any) -> None:
        # The stock access log is replaced by _log_line, which never includes headers.
        pass

    def _log_line(self, status: int | str) -> None:
        if self.server.state.config.log_requests:
            path = urllib.parse.urlsplit(self.path).path
            sys.stderr.write(f"[aitryon-emulator] {self.command} {path} {status}\n")
            sys.stderr.flush()

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline(65537).split(b";", 1)[0].strip()
                size = int(size_line or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537).strip():
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(3)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", headers)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # ------------------------------------------------------------------ dispatch

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        path = parts.path
        if path == UPLOAD_ROUTE and self._upload_too_large():
            return
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self._send_json(400, {"code": "InvalidParameter", "message": "unreadable request body"})
            self.close_connection = True
            return
        if path.startswith(CONTROL_PREFIX):
            if self._guard():
                self._control(path[len(CONTROL_PREFIX) :].strip("/"), body)
            return
        raw_headers = [[k, REDACTED if k.lower() in REDACTED_HEADERS else v] for k, v in self.headers.items()]
        entry = self.server.state.record_request(
            {
                "method": self.command,
                "path": self.path,
                "headers": dict(raw_headers),
                "raw_headers": raw_headers,
                "api_key_fingerprint": self._key_fingerprint(),
                # An upload's form holds the file and the policy's signature: the log keeps its size only.
                "body": f"[form upload, {len(body)} bytes]"
                if path == UPLOAD_ROUTE
                else body.decode("utf-8", "replace"),
                "status": None,
                "fault": None,
            }
        )
        status: int | str = self._route(path, parts.query, body, entry)
        entry["status"] = status
        self._log_line(status)

    def _route(self, path: str, query: str, body: bytes, entry: dict[str, Any]) -> int | str:
        state = self.server.state
        method = self.command
        if path == "/health":
            self._send_json(200, {"status": "ok"})
            return 200
        if path.startswith("/samples/") and method in ("GET", "HEAD"):
            return self._serve_sample(path[len("/samples/") :])
        if path.startswith("/results/") and method in ("GET", "HEAD"):
            if (unavailable := state.config.results_unavailable_status) is not None:
                self._send_json(unavailable, {"code": "ServiceUnavailable", "message": "Please try again later."})
                return unavailable
            name = path[len("/results/") :]
            png = state.result_png(name[: -len(".png")]) if name.endswith(".png") else None
            if png is None:
                self._send_json(404, {"code": "NoSuchKey", "message": "The specified key does not exist."})
                return 404
            self._send(200, png, "image/png")
            return 200
        if path == UPLOAD_ROUTE:
            # OSS PostObject: authorised by the signed policy in the form, never by an API key.
            if method != "POST":
                return self._not_allowed()
            status, xml = state.handle_upload(self.headers.get("Content-Type"), body)
            self._send(status, xml, "application/xml" if xml else "text/plain")
            return status

        auth = self.headers.get("Authorization")
        tasks_prefix = TASKS_PATH + "/"
        if path.rstrip("/") == SUBMIT_PATH:
            if method != "POST":
                return self._not_allowed()
            return self._api(
                "submit",
                entry,
                lambda: state.handle_submit(
                    auth, self.headers.get("X-DashScope-Async"), body, self.headers.get(OSS_RESOLVE_HEADER)
                ),
            )
        if path.rstrip("/") == UPLOADS_PATH:
            if method != "GET":
                return self._not_allowed()
            return self._api(
                "upload_policy", entry, lambda: state.handle_upload_policy(auth, urllib.parse.parse_qs(query))
            )
        if path.rstrip("/") == TASKS_PATH:
            if method != "GET":
                return self._not_allowed()
            return self._api("list", entry, lambda: state.handle_list(auth, urllib.parse.parse_qs(query)))
        if path.startswith(tasks_prefix):
            rest = path[len(tasks_prefix) :].strip("/")
            if rest.endswith("/cancel") and rest.count("/") == 1:
                if method != "POST":
                    return self._not_allowed()
                task_id = rest[: -len("/cancel")]
                return self._api("cancel", entry, lambda: state.handle_cancel(auth, task_id))
            if rest and "/" not in rest:
                if method != "GET":
                    return self._not_allowed()
                return self._api("query", entry, lambda: state.handle_query(auth, rest))
        self._send_json(404, {"request_id": "", "code": "NotFound", "message": f"No route for {method} {path}"})
        return 404

    def _upload_too_large(self) -> bool:
        """Refuse an upload whose declared body is over the policy's limit before reading it (as OSS does)."""
        try:
            declared = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            declared = 0
        limit = self.server.state.config.upload_max_file_size_mb * 1024 * 1024 + FORM_OVERHEAD
        if declared <= limit:
            return False
        self.server.state.handle_upload_too_large()
        body = (
            b'<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n  <Code>EntityTooLarge</Code>\n'
            b"  <Message>Your proposed upload exceeds the maximum allowed size.</Message>\n</Error>\n"
        )
        # Read and drop a moderately large body, never keeping it: a client still sending when the
        # connection closes would see a reset instead of this answer. Past that, just close.
        left = declared if declared <= 16 * limit else 0
        with contextlib.suppress(OSError):
            while left > 0 and (chunk := self.rfile.read(min(left, 64 * 1024))):
                left -= len(chunk)
        self.close_connection = True  # whatever is unread must not be taken for the next request
        self._send(400, body, "application/xml")
        self._log_line(400)
        return True

    def _not_allowed(self) -> int:
        self._send_json(405, {"request_id": "", "code": "MethodNotAllowed", "message": f"{self.command} not allowed"})
        return 405

    def _api(self, kind: str, entry: dict[str, Any], call: Any) -> int | str:
        """Run one API call through the fault plan drawn for it."""
        state = self.server.state
        state.note_request(kind)
        plan: FaultPlan = state.draw_fault()
        if plan.slow:
            entry["fault"] = "slow"
            time.sleep(state.config.slow_seconds)
        if plan.kind is not None:
            entry["fault"] = plan.kind + ("_after" if plan.after and plan.kind in ("drop", "malformed") else "")
        if plan.kind == "5xx":
            if plan.server_error_status == 500:
                self._send_json(500, {"request_id": "", "code": "InternalError", "message": MSG_INTERNAL})
            else:
                self._send_json(503, {"request_id": "", "code": "ModelUnavailable", "message": MSG_MODEL_UNAVAILABLE})
            return plan.server_error_status
        if plan.kind == "429":
            # Deliberately without Retry-After: the vendor does not promise one.
            self._send_json(429, {"request_id": "", "code": "Throttling", "message": MSG_THROTTLING})
            return 429
        if plan.kind == "drop" and not plan.after:
            self._drop()
            return "dropped"
        if plan.kind == "malformed" and not plan.after:
            self._send(502, _PROXY_502, "text/html")
            return 502

        reply: Reply = call()
        if reply.lost_reply is not None:
            entry["fault"] = f"lost_reply_{reply.lost_reply}"
            return self._lose_reply(reply.lost_reply)
        if plan.kind == "drop":
            if reply.accepted_task is not None:
                state.note_lost_submit()
            self._drop()
            return "dropped"
        if plan.kind == "malformed":
            if reply.accepted_task is not None:
                state.note_lost_submit()
            data = json.dumps(reply.body).encode()
            self._send(reply.status, data[: max(1, len(data) // 2)], "application/json", reply.headers)
            return reply.status
        self._send_json(reply.status, reply.body, reply.headers)
        return reply.status

    def _lose_reply(self, kind: str) -> int | str:
        """Lose an accepted submit's reply the way a gateway does; the task already exists."""
        if kind == "504":
            self._send(504, _PROXY_504, "text/html")
            return 504
        if kind == "502":
            self._send(502, _PROXY_502, "text/html")
            return 502
        if kind == "empty":
            # The status line and headers made it through, the JSON body did not.
            self._send(200, b"", "application/json")
            return 200
        self._drop()
        return "dropped"

    def _key_fingerprint(self) -> str | None:
        """The request log's stand-in for the bearer key (``None``: no key sent)."""
        _, _, key = (self.headers.get("Authorization") or "").strip().partition(" ")
        return self.server.state.key_fingerprint(key.strip()) if key.strip() else None

    def _serve_sample(self, quoted: str) -> int:
        cfg = self.server.state.config
        data: bytes | None = None
        name = urllib.parse.unquote(quoted)
        safe = bool(name) and not any(ch in name for ch in "/\\\0") and not name.startswith(".")
        if safe and cfg.samples_dir is not None:
            root = Path(cfg.samples_dir).resolve()
            # Read the resolved file, and only if it is directly inside the folder: a symlink that
            # leads out of it (or a swapped one) is not followed out.
            with contextlib.suppress(OSError, RuntimeError):  # a name too long, a symlink loop
                target = (root / name).resolve()
                if target.parent == root and target.is_file():
                    data = target.read_bytes()
        if safe and data is None:
            # The built-in samples are always available, also next to a --samples directory.
            data = sample_images().get(name)
        if data is None:
            self._send_json(404, {"code": "NoSuchKey", "message": "The specified key does not exist."})
            return 404
        self._send(200, data, mimetypes.guess_type(name)[0] or "application/octet-stream")
        return 200

    # ------------------------------------------------------------------ control

    def _guard(self) -> bool:
        """Admit a control request, or answer it with a refusal (False): the checks of the module doc."""
        origin = self.headers.get("Origin")
        if origin is not None and origin.rstrip("/") not in self.server.own_origins:
            self._send_json(403, {"error": "control requests from web pages of another origin are refused"})
            return False
        token = self.headers.get(CONTROL_TOKEN_HEADER)
        if not token:
            self._send_json(401, {"error": f"control requests need the emulator's control token in the "
                                           f"{CONTROL_TOKEN_HEADER} header (printed when it starts)"})  # fmt: skip
            return False
        if not hmac.compare_digest(token.encode(), self.server.control_token.encode()):
            self._send_json(403, {"error": f"the {CONTROL_TOKEN_HEADER} header does not match this emulator's "
                                           "control token"})  # fmt: skip
            return False
        content_type = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if self.command == "POST" and content_type != "application/json":
            self._send_json(415, {"error": "control POSTs must be sent as Content-Type: application/json"})
            return False
        return True

    def _control(self, name: str, body: bytes) -> None:
        state = self.server.state
        method = self.command
        if name == "stats" and method == "GET":
            self._send_json(200, state.stats())
        elif name == "tasks" and method == "GET":
            self._send_json(200, state.tasks())
        elif name == "requests" and method == "GET":
            self._send_json(200, state.request_log())
        elif name == "config" and method == "GET":
            self._send_json(200, state.config.public_dict())
        elif name == "config" and method == "POST":
            try:
                updates = json.loads(body.decode("utf-8") or "{}")
                if not isinstance(updates, dict):
                    raise ValueError("the body must be a JSON object of settings")
                for key, refusal in HTTP_REFUSED_SETTINGS.items():
                    if key in updates:
                        raise ValueError(refusal)
                new = state.update(updates, started=True)
            except (ValueError, TypeError) as exc:
                self._send_json(400, {"error": str(exc)})
                return
            self._send_json(200, new.public_dict())
        elif name == "reset" and method == "POST":
            state.reset()
            self._send_json(200, {"reset": True})
        else:
            self._send_json(404, {"error": f"unknown control endpoint {method} {CONTROL_PREFIX}{name}"})


class Emulator:
    """An in-process DashScope try-on emulator on a background thread.

    ``Emulator(EmulatorConfig(port=0))`` picks a free port; ``start()`` binds and serves;
    ``base_url`` is then e.g. ``http://127.0.0.1:54321``. Usable as a context manager.
    Keyword overrides are applied on top of ``config``: ``Emulator(latency=0.1)``.

    ``control_token`` is the secret the ``/_emulator/`` routes require in ``X-Emulator-Token``
    (``control_headers`` has it); random unless given. The in-process helpers (``update``,
    ``stats``, ``requests``...) need no token.
    """

    def __init__(self, config: EmulatorConfig | None = None, *, control_token: str | None = None,
                 **overrides: Any) -> None:  # fmt: skip
        cfg = config if config is not None else EmulatorConfig()
        self.control_token = control_token or secrets.token_urlsafe(32)
        self.state = EmulatorState(cfg)
        if overrides:
            self.state.update(overrides, started=False)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def config(self) -> EmulatorConfig:
        return self.state.config

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        host = self.config.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def sample_url(self, name: str) -> str:
        return f"{self.base_url}/samples/{name}"

    @property
    def control_headers(self) -> dict[str, str]:
        """Headers for calling the ``/_emulator/`` routes over HTTP: the control token."""
        return {CONTROL_TOKEN_HEADER: self.control_token}

    def key_fingerprint(self, api_key: str) -> str:
        """What this emulator's request log shows (``api_key_fingerprint``) for requests with ``api_key``."""
        return self.state.key_fingerprint(api_key)

    def start(self) -> Emulator:
        if self._server is not None:
            return self
        cfg = self.config
        server = _Server((cfg.host, cfg.port), self.state, self.control_token)
        self._server = server
        self.state.base_url = self.base_url
        port = self.port
        server.own_origins = frozenset(
            {self.base_url, f"http://localhost:{port}", f"http://127.0.0.1:{port}", f"http://[::1]:{port}"}
        )
        self.state.start_workers()
        # Draw the built-in samples now rather than inside the first task's fetch.
        threading.Thread(target=sample_images, name="aitryon-emulator-samples", daemon=True).start()
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="aitryon-emulator-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_all_connections()
        server.server_close()
        self.state.stop_workers()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ control, in-process

    def update(self, **settings: Any) -> EmulatorConfig:
        """Change settings at runtime (faults, limits, latency, result_shape, api_key, clock...)."""
        return self.state.update(settings, started=self._server is not None)

    def reset(self) -> None:
        self.state.reset()

    def stats(self) -> dict[str, Any]:
        """Same dict as ``GET /_emulator/stats``."""
        return self.state.stats()

    def tasks(self) -> list[dict[str, Any]]:
        """Same list as ``GET /_emulator/tasks``."""
        return self.state.tasks()

    def tasks_per_request(self) -> dict[str, int]:
        """Client-submitted tasks per ``request_digest`` (same as ``stats()["tasks_per_request"]``)."""
        return self.state.tasks_per_request()

    def requests(self) -> list[dict[str, Any]]:
        """Same list as ``GET /_emulator/requests``."""
        return self.state.request_log()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until every submitted task's render is done (useful before moving a ManualClock)."""
        return self.state.wait_idle(timeout)
