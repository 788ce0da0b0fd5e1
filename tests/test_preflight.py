"""Pre-flight validation of input images (airflow_provider_aitryon.preflight), over real loopback HTTP.

An ``ImageHost`` (a tiny ThreadingHTTPServer started per test) serves crafted files and counts the
requests and the bytes it sent; the in-process emulator serves its real samples and counts submits.
"""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import replies
from conftest import FakeTI, remember, set_connection
from PIL import Image

from airflow_provider_aitryon import api
from airflow_provider_aitryon.compat import AirflowFailException
from airflow_provider_aitryon.emulator import Emulator, EmulatorConfig
from airflow_provider_aitryon.emulator.state import EMULATOR_FETCH_AGENT
from airflow_provider_aitryon.errors import DashScopeConfigError
from airflow_provider_aitryon.image_rules import MAX_BYTES
from airflow_provider_aitryon.operators.refiner import RefinerSubmitOperator
from airflow_provider_aitryon.operators.tryon import TryOnSubmitOperator
from airflow_provider_aitryon.preflight import AddressPolicy, InputInspector, shown_url

PUBLIC = "DashScope must be able to fetch the image from a public http(s) URL without credentials."
FORMATS = "allowed formats are JPEG, PNG and BMP (also WEBP and HEIC where Pillow reads them)."
HUGE_BODY = 64 * 1024 * 1024
# The image hosts below listen on loopback: the inspector is told it may fetch from them.
LOCAL = AddressPolicy(allow_private=True)


def image(width: int, height: int, fmt: str = "PNG", *, pad_to: int | None = 8 * 1024) -> bytes:
    """A flat image; trailing padding (ignored by decoders) lifts it over the 5 KB minimum."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 160, 200)).save(buf, format=fmt)
    data = buf.getvalue()
    if pad_to is not None and len(data) < pad_to:
        data += b"\0" * (pad_to - len(data))
    return data


# ---------------------------------------------------------------------------- the image host


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    head_status: int | None = None  # None: answer HEAD like GET, without the body
    head_headers: dict[str, str] | None = None
    stream_bytes: int = 0  # > 0: no Content-Length, send this many bytes, then close
    redirect_to: str | None = None
    then: Route | None = None  # after the first GET, answer with this route
    drip: float = 0.0  # seconds between the body's bytes on GET


@dataclass
class Hit:
    method: str
    path: str
    sent: int = 0
    agent: str = ""


class ImageHost:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: list[Hit] = []
        self.done = threading.Event()
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer()

            def do_GET(self) -> None:
                self._answer()

            def _answer(self) -> None:
                path = self.path.split("?", 1)[0]
                hit = Hit(self.command, self.path, agent=self.headers.get("User-Agent", ""))
                host.hits.append(hit)
                route = host.routes.get(path) or Route(404, b"not here")
                if self.command == "GET" and route.then is not None:
                    host.routes[path] = route.then
                status, headers = route.status, dict(route.headers)
                if self.command == "HEAD":
                    status = route.head_status or status
                    if route.head_headers is not None:
                        headers = dict(route.head_headers)
                if route.redirect_to is not None:
                    status, headers = 302, {"Location": route.redirect_to}
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if route.stream_bytes and self.command == "GET":
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.close_connection = True
                    self._stream(hit, route.stream_bytes)
                    return
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                if self.command == "GET" and route.drip:
                    try:
                        for byte in route.body:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            hit.sent += 1
                            time.sleep(route.drip)
                    except OSError:
                        pass  # the client gave up: what it should do
                elif self.command == "GET":
                    self.wfile.write(route.body)
                    hit.sent = len(route.body)

            def _stream(self, hit: Hit, total: int) -> None:
                chunk = b"\x89PNG" + b"\0" * (64 * 1024 - 4)
                try:
                    while hit.sent < total:
                        self.wfile.write(chunk)
                        hit.sent += len(chunk)
                except OSError:
                    pass  # the client hung up: exactly what a bounded reader does
                finally:
                    host.done.set()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"

    def serve(self, path: str, body: bytes = b"", **route: Any) -> str:
        self.routes[path] = Route(body=body, **route)
        return self.url(path)

    def methods(self, path: str) -> list[str]:
        return [h.method for h in self.hits if h.path.split("?", 1)[0] == path]

    def __enter__(self) -> ImageHost:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def host() -> Iterator[ImageHost]:
    with ImageHost() as server:
        yield server


@pytest.fixture
def inspector() -> Iterator[InputInspector]:
    with InputInspector(backoff_base=0.0, policy=LOCAL) as inspector:
        yield inspector


def refused(inspector: InputInspector, field_name: str, url: str) -> str:
    with pytest.raises(DashScopeConfigError) as info:
        inspector.inspect(field_name, url)
    return str(info.value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- the rules, one each


def test_a_good_image_passes_with_its_facts(host, inspector):
    facts = inspector.inspect("person_image_url", host.serve("/p.png", image(576, 1024)))
    assert (facts.format, facts.width, facts.height) == ("PNG", 576, 1024)
    assert host.methods("/p.png") == ["HEAD", "GET"]


def test_too_few_bytes(host, inspector):
    data = image(200, 200, pad_to=None)
    assert len(data) < 5 * 1024
    message = refused(inspector, "person_image_url", host.serve("/small.png", data))
    assert message == f"person_image_url: the image is {len(data)} bytes; images must be 5 KB to 5 MB."


def test_too_many_bytes_reads_at_most_the_cap(host, inspector):
    # No Content-Length anywhere (HEAD refused, GET close-delimited): only counting can stop it.
    url = host.serve("/huge.png", head_status=405, stream_bytes=HUGE_BODY)
    message = refused(inspector, "person_image_url", url)
    assert message == (
        "person_image_url: the image is larger than 5.0 MB (5242880 bytes); images must be 5 KB to 5 MB."
    )
    (get,) = [f for f in inspector.fetches if f.method == "GET"]
    # Stopped at the cap: at most one more read's worth of bytes (64 KiB) was taken off the socket.
    assert MAX_BYTES < get.bytes_read <= MAX_BYTES + 64 * 1024
    assert host.done.wait(30)
    (sent,) = [h.sent for h in host.hits if h.method == "GET"]
    # The host was cut off long before the end: what it managed to send beyond the cap sits
    # in loopback socket buffers, never read by the inspector.
    assert sent < HUGE_BODY


def test_a_too_large_content_length_on_head_is_refused_without_a_get(host, inspector):
    url = host.serve("/big.png", head_headers={"Content-Length": str(6 * 1024 * 1024)})
    message = refused(inspector, "top_garment_url", url)
    assert message == "top_garment_url: the image is 6.0 MB (6291456 bytes); images must be 5 KB to 5 MB."
    assert host.methods("/big.png") == ["HEAD"]


def test_a_too_large_content_length_on_get_is_refused_without_reading(host, inspector):
    url = host.serve("/big.png", b"x" * 16, head_status=405, headers={"Content-Length": str(MAX_BYTES + 1)})
    message = refused(inspector, "top_garment_url", url)
    assert message == "top_garment_url: the image is 5.0 MB (5242881 bytes); images must be 5 KB to 5 MB."
    assert [f.bytes_read for f in inspector.fetches if f.method == "GET"] == [0]


def test_format_is_judged_by_content_not_name(host, inspector):
    message = refused(inspector, "top_garment_url", host.serve("/shirt.png", image(300, 300, "GIF")))
    assert message == f"top_garment_url: the image is in GIF format; {FORMATS}"


def test_a_text_file_is_not_an_image(host, inspector):
    message = refused(inspector, "top_garment_url", host.serve("/shirt.jpg", b"hello world " * 1000))
    assert message == f"top_garment_url: the data is not a recognisable image (it starts with b'hello wo'); {FORMATS}"


def test_a_jpeg_under_a_png_name_is_fine(host, inspector):
    assert inspector.inspect("top_garment_url", host.serve("/shirt.png", image(300, 300, "JPEG"))).format == "JPEG"


def test_shortest_side_150_is_refused_and_151_passes(host, inspector):
    message = refused(inspector, "person_image_url", host.serve("/150.png", image(150, 400)))
    assert message == "person_image_url: the image is 150x400 px; the shortest side must be more than 150 px."
    assert inspector.inspect("person_image_url", host.serve("/151.png", image(151, 400))).width == 151


def test_longest_side_4097_is_refused_and_4096_passes(host, inspector):
    message = refused(inspector, "person_image_url", host.serve("/4097.png", image(4097, 200)))
    assert message == "person_image_url: the image is 4097x200 px; the longest side must be at most 4096 px."
    assert inspector.inspect("person_image_url", host.serve("/4096.png", image(4096, 200))).width == 4096


def test_coarse_and_person_sizes_must_match_on_the_emulator_samples():
    with (
        Emulator(EmulatorConfig(log_requests=False)) as emu,
        InputInspector(policy=AddressPolicy.for_base_url(emu.base_url)) as inspector,
    ):
        call = api.refiner_call(
            person_image_url=emu.sample_url("person.png"),
            top_garment_url=emu.sample_url("top.png"),
            coarse_image_url=emu.sample_url("coarse_mismatch.png"),
            gender="woman",
        )
        with pytest.raises(DashScopeConfigError) as info:
            inspector.check_call(call)
    assert str(info.value) == (
        "coarse_image_url: the image is 600x1000 px but person_image_url is 576x1024 px; the coarse image must "
        "have the person image's size — make it with resolution=-1 and restore_face=true."
    )


def test_check_call_returns_the_facts_of_every_url(host, inspector):
    call = api.refiner_call(
        person_image_url=host.serve("/person.png", image(576, 1024)),
        top_garment_url=host.serve("/top.jpg", image(512, 512, "JPEG")),
        bottom_garment_url=host.serve("/bottom.bmp", image(512, 512, "BMP")),
        coarse_image_url=host.serve("/coarse.png", image(576, 1024)),
        gender="man",
    )
    facts = inspector.check_call(call)
    assert {name: f.format for name, f in facts.items()} == {
        "person_image_url": "PNG", "top_garment_url": "JPEG", "bottom_garment_url": "BMP", "coarse_image_url": "PNG",
    }  # fmt: skip


def test_a_coarse_image_matches_an_exif_rotated_person_photo(host, inspector):
    # A camera JPEG stored 1024x576 with orientation 6 shows as 576x1024, the size the coarse stage keeps.
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (1024, 576), (90, 120, 150)).save(buf, format="JPEG", exif=exif)
    call = api.refiner_call(
        person_image_url=host.serve("/person.jpg", buf.getvalue() + b"\0" * 8192),
        top_garment_url=host.serve("/top.png", image(512, 512)),
        coarse_image_url=host.serve("/coarse.png", image(576, 1024)),
        gender="woman",
    )
    assert set(inspector.check_call(call)) == {"person_image_url", "top_garment_url", "coarse_image_url"}


# ---------------------------------------------------------------------------- fetching


def test_not_found(host, inspector):
    url = host.url("/missing.png")
    message = refused(inspector, "person_image_url", url)
    assert message == f"person_image_url: {url} answered HTTP 404 Not Found; {PUBLIC}"
    assert host.methods("/missing.png") == ["HEAD", "GET"]  # a 4xx is not retried


def test_forbidden_is_not_retried_and_a_head_refusal_does_not_decide(host, inspector):
    # A URL signed for GET only answers HEAD with 403; the GET decides.
    url = host.serve("/signed.png", image(300, 300), head_status=403)
    assert inspector.inspect("top_garment_url", url).width == 300
    url = host.serve("/private.png", status=403)
    assert refused(inspector, "top_garment_url", url) == f"top_garment_url: {url} answered HTTP 403 Forbidden; {PUBLIC}"
    assert host.methods("/private.png") == ["HEAD", "GET"]


def test_connection_refused(inspector):
    url = f"http://127.0.0.1:{free_port()}/person.png"
    message = refused(inspector, "person_image_url", url)
    assert message == f"person_image_url: {url} could not be fetched (connection refused) after 3 attempts; {PUBLIC}"


def test_a_transient_server_error_is_retried(host, inspector):
    url = host.serve("/flaky.png", status=503, then=Route(body=image(300, 300)))
    assert inspector.inspect("top_garment_url", url).width == 300
    assert host.methods("/flaky.png") == ["HEAD", "GET", "GET"]


def test_a_lasting_server_error_fails_after_a_few_attempts(host, inspector):
    url = host.serve("/down.png", status=502)
    message = refused(inspector, "top_garment_url", url)
    assert message == f"top_garment_url: {url} answered HTTP 502 Bad Gateway after 3 attempts; {PUBLIC}"
    assert host.methods("/down.png").count("GET") == 3


def test_a_redirect_is_followed(host, inspector):
    target = host.serve("/real.png", image(300, 300))
    assert inspector.inspect("top_garment_url", host.serve("/short", redirect_to=target)).width == 300


def test_a_redirect_loop_is_capped(host, inspector):
    url = host.serve("/a", redirect_to="/b")
    host.serve("/b", redirect_to="/a")
    message = refused(inspector, "person_image_url", url)
    assert message == f"person_image_url: {url} redirected more than 5 times; {PUBLIC}"
    gets = [h for h in host.hits if h.method == "GET"]
    assert len(gets) == 6  # the first request and 5 redirects, once: a loop is not retried


def test_a_redirect_to_a_file_url_is_refused(host, inspector):
    url = host.serve("/sneaky.png", redirect_to="file:///etc/passwd")
    message = refused(inspector, "person_image_url", url)
    assert message == f"person_image_url: {url} redirected to a URL that is not http(s); {PUBLIC}"


def no_network(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("no request may be made")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("file:///etc/passwd", "file:///etc/passwd"),
        ("ftp://user:pw@img.example/top.png", "ftp://img.example/top.png"),
        ("img.example/top.png", "img.example/top.png"),
        ("//img.example/top.png?sig=SECRET", "//img.example/top.png"),
        ("http:///top.png", "http:///top.png"),
    ],
)
def test_non_http_urls_are_refused_without_a_request(url, shown):
    with InputInspector(fetch=no_network) as inspector:
        message = refused(inspector, "top_garment_url", url)
    not_http = f"the URL {shown!r} is not an http:// or https:// URL, so it was not fetched"
    assert message == f"top_garment_url: {not_http}; {PUBLIC}"
    assert inspector.fetches == []


def test_a_non_string_value_is_refused(inspector):
    assert refused(inspector, "top_garment_url", 42) == (
        "top_garment_url: the value is a int, not a URL; pass the public http(s) URL of the image."
    )


def test_query_strings_and_user_info_never_reach_messages_or_logs(host, inspector, caplog):
    caplog.set_level(logging.DEBUG)
    url = host.url("/gone.png").replace("http://", "http://alice:PASSWORD@") + "?Expires=1&Signature=SECRET"
    message = refused(inspector, "person_image_url", url)
    good = host.serve("/ok.png", image(300, 300)) + "?Signature=SECRET"
    inspector.inspect("top_garment_url", good)
    assert host.url("/gone.png") in message
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("airflow_provider_aitryon"))
    assert "ok.png" in ours  # the success was logged, without its query string
    for text in (message, ours):
        assert "SECRET" not in text and "PASSWORD" not in text
    assert shown_url("https://h.example:8443/a/b.png?x=1#frag") == "https://h.example:8443/a/b.png"


def test_a_url_is_fetched_once_per_inspector(host, inspector):
    url = host.serve("/same.png", image(512, 512))
    call = api.tryon_call(person_image_url=host.serve("/person.png", image(576, 1024)),
                          top_garment_url=url, bottom_garment_url=url)  # fmt: skip
    facts = inspector.check_call(call)
    assert facts["top_garment_url"] == facts["bottom_garment_url"]
    assert host.methods("/same.png") == ["HEAD", "GET"]


def test_a_refusal_is_cached_and_names_the_field_that_asked(host, inspector):
    url = host.serve("/tiny.png", image(100, 100))
    assert refused(inspector, "top_garment_url", url).startswith("top_garment_url: the image is 100x100 px")
    assert refused(inspector, "bottom_garment_url", url).startswith("bottom_garment_url: the image is 100x100 px")
    assert host.methods("/tiny.png") == ["HEAD", "GET"]


def test_a_new_inspector_fetches_again(host):
    url = host.serve("/p.png", image(300, 300))
    for _ in range(2):
        with InputInspector(policy=LOCAL) as inspector:
            inspector.inspect("top_garment_url", url)
    assert host.methods("/p.png") == ["HEAD", "GET", "HEAD", "GET"]


# ---------------------------------------------------------------------------- through the operators


@pytest.fixture
def emu(monkeypatch) -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(log_requests=False, latency=0.0)) as emulator:
        set_connection(monkeypatch, emulator.base_url)
        yield emulator


def refiner_op(emu: Emulator, **overrides: Any) -> RefinerSubmitOperator:
    kwargs = {
        "task_id": "submit",
        "person_image_url": emu.sample_url("person.png"),
        "top_garment_url": emu.sample_url("top.png"),
        "bottom_garment_url": emu.sample_url("bottom.png"),
        # Same pixel size as the person image, which is all pre-flight can know of a coarse image.
        "coarse_image_url": emu.sample_url("person.png"),
        "gender": "woman",
    }
    kwargs.update(overrides)
    return RefinerSubmitOperator(**kwargs)


def test_refiner_with_a_bad_coarse_image_fails_and_submits_nothing(emu):
    op = refiner_op(emu, coarse_image_url=emu.sample_url("coarse_mismatch.png"))
    with pytest.raises(AirflowFailException, match=r"^coarse_image_url: the image is 600x1000 px but person_image_url"):
        op.execute({"ti": FakeTI()})
    assert emu.stats()["submits_accepted"] == 0


def test_refiner_with_a_missing_image_fails_and_submits_nothing(emu):
    op = refiner_op(emu, top_garment_url=emu.sample_url("no_such.png"))
    with pytest.raises(AirflowFailException, match=r"^top_garment_url: .*/samples/no_such.png answered HTTP 404"):
        op.execute({"ti": FakeTI()})
    assert emu.stats()["submits_accepted"] == 0


def test_refiner_with_good_images_submits_once(emu):
    context = {"ti": FakeTI()}
    task_id = refiner_op(emu).execute(context)
    assert context["ti"].pushed["dashscope_task_id"] == task_id
    assert emu.stats()["submits_accepted"] == 1


def test_tryon_with_a_gif_garment_fails_unless_validation_is_off(emu, host, monkeypatch):
    set_connection(monkeypatch, emu.base_url, allow_private_inputs=True)  # the GIF's host is not the emulator
    gif = host.serve("/top.png", image(512, 512, "GIF"))
    op = TryOnSubmitOperator(task_id="submit", person_image_url=emu.sample_url("person.png"), top_garment_url=gif)
    with pytest.raises(AirflowFailException, match=r"^top_garment_url: the image is in GIF format"):
        op.execute({"ti": FakeTI()})
    assert emu.stats()["submits_accepted"] == 0
    hits = len(host.hits)
    TryOnSubmitOperator(
        task_id="submit", person_image_url=emu.sample_url("person.png"), top_garment_url=gif, validate_inputs=False
    ).execute({"ti": FakeTI()})
    assert emu.stats()["submits_accepted"] == 1
    # The emulator renders the accepted task and may fetch the garment meanwhile; the worker must not.
    worker_hits = [h for h in host.hits[hits:] if h.agent != EMULATOR_FETCH_AGENT]
    assert worker_hits == []


def test_a_retry_reusing_its_earlier_task_does_not_fetch_the_images(scripted, memory_registry):
    dead = f"http://127.0.0.1:{free_port()}"
    op = RefinerSubmitOperator(task_id="submit", person_image_url=f"{dead}/p.png", top_garment_url=f"{dead}/t.png",
                               coarse_image_url=f"{dead}/c.png", gender="man")  # fmt: skip
    remember(memory_registry, op)
    scripted.add(replies.task("RUNNING", task_id="earlier-task"))
    assert op.execute({"ti": FakeTI(try_number=2)}) == "earlier-task"
    assert [r.method for r in scripted.requests] == ["GET"]


def test_validate_inputs_is_on_by_default():
    op = RefinerSubmitOperator(task_id="t", person_image_url="http://x/p", top_garment_url="http://x/t",
                               coarse_image_url="http://x/c")  # fmt: skip
    assert op.validate_inputs is True


def test_a_missing_api_key_is_reported_before_any_image_is_fetched(monkeypatch, host):
    monkeypatch.setenv("AIRFLOW_CONN_DASHSCOPE_DEFAULT", '{"conn_type": "dashscope", "host": "http://127.0.0.1:9"}')
    op = TryOnSubmitOperator(task_id="submit", person_image_url=host.serve("/p.png", image(576, 1024)),
                             top_garment_url=host.serve("/t.png", image(512, 512)))  # fmt: skip
    with pytest.raises(AirflowFailException, match="has no API key; set its password"):
        op.execute({"ti": FakeTI()})
    assert host.hits == []


def test_a_host_dripping_the_image_is_refused_at_the_deadline(host):
    url = host.serve("/slow.png", image(576, 1024), drip=0.05)
    with InputInspector(max_seconds=0.5, attempts=1, policy=LOCAL) as inspector:
        message = refused(inspector, "person_image_url", url)
    assert "took more than 0.5 s to send the image" in message
    assert next(h for h in host.hits if h.method == "GET").sent < 100  # abandoned, not read to the end
