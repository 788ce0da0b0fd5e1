"""The emulator's control routes and sample folder, attacked the ways issue 10 describes.

Each attack: the control routes answered anyone who could reach the port; ``GET
/_emulator/requests`` returned clients' Authorization headers; ``POST /_emulator/config
{"samples_dir": "/etc"}`` then ``GET /samples/passwd`` served any local file; control POSTs took
``text/plain`` bodies (which a web page can send cross-site without a CORS preflight).
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import quiet_emulator_config as config

from airflow_provider_aitryon.api import SUBMIT_PATH, task_path
from airflow_provider_aitryon.emulator import Emulator
from airflow_provider_aitryon.emulator.server import CONTROL_TOKEN_HEADER

KEY = "sk-emulator-SECRET-5c1d"
CONTROL_ROUTES = [
    ("GET", "stats"),
    ("GET", "tasks"),
    ("GET", "requests"),
    ("GET", "config"),
    ("POST", "config"),
    ("POST", "reset"),
]


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(config(api_key=KEY)) as emulator:
        yield emulator


def control(emu: Emulator, method: str, name: str, **kwargs: object) -> requests.Response:
    if method == "POST":
        kwargs.setdefault("json", {})
    return requests.request(method, f"{emu.base_url}/_emulator/{name}", timeout=10, **kwargs)  # type: ignore[arg-type]


def raw_get(emu: Emulator, path: str) -> tuple[int, bytes]:
    """A GET with the path sent exactly as given (HTTP libraries would normalise ``..``)."""
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=10)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def submit(emu: Emulator) -> None:
    body = {
        "model": "aitryon",
        "input": {"person_image_url": emu.sample_url("person.png"), "top_garment_url": emu.sample_url("top.png")},
    }
    headers = {"Authorization": f"Bearer {KEY}", "X-DashScope-Async": "enable", "Proxy-Authorization": "Basic UFJPWFk="}
    reply = requests.post(emu.base_url + SUBMIT_PATH, json=body, headers=headers, timeout=10)
    assert reply.status_code == 200, reply.text
    task_id = reply.json()["output"]["task_id"]
    requests.get(emu.base_url + task_path(task_id), headers={"Authorization": f"Bearer {KEY}"}, timeout=10)


# ---------------------------------------------------------------------------- the control token


@pytest.mark.parametrize(("method", "name"), CONTROL_ROUTES)
def test_control_routes_need_the_token(emu: Emulator, method: str, name: str) -> None:
    emu.update(fault_429=0.25)
    missing = control(emu, method, name)
    assert missing.status_code == 401
    assert CONTROL_TOKEN_HEADER in missing.json()["error"]
    wrong = control(emu, method, name, headers={CONTROL_TOKEN_HEADER: emu.control_token[:-1] + "x"})
    assert wrong.status_code == 403
    assert emu.config.fault_429 == 0.25  # neither reset nor changed
    assert control(emu, method, name, headers=emu.control_headers).status_code == 200


def test_the_token_is_random_per_emulator_and_settable() -> None:
    with Emulator(config()) as one, Emulator(config()) as two:
        assert len(one.control_token) >= 32 and one.control_token != two.control_token
        assert control(two, "GET", "stats", headers=one.control_headers).status_code == 403
    with Emulator(config(), control_token="chosen-token") as emu:
        assert control(emu, "GET", "stats", headers={CONTROL_TOKEN_HEADER: "chosen-token"}).status_code == 200


def test_in_process_helpers_need_no_token(emu: Emulator) -> None:
    submit(emu)
    emu.update(fault_5xx=0.1)
    assert emu.stats()["submits_accepted"] == 1 and emu.tasks() and emu.requests()
    emu.reset()
    assert emu.stats()["submits_accepted"] == 0


# ---------------------------------------------------------------------------- browsers


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          None])  # fmt: skip
def test_control_posts_must_be_json(emu: Emulator, content_type: str | None) -> None:
    headers = dict(emu.control_headers)
    if content_type is not None:
        headers["Content-Type"] = content_type
    reply = requests.post(emu.base_url + "/_emulator/config", data=b'{"fault_5xx": 1.0}', headers=headers, timeout=10)
    assert reply.status_code == 415
    assert reply.json() == {"error": "control POSTs must be sent as Content-Type: application/json"}
    assert emu.config.fault_5xx == 0.0
    headers["Content-Type"] = "application/json; charset=utf-8"
    ok = requests.post(emu.base_url + "/_emulator/config", data=b'{"fault_5xx": 1.0}', headers=headers, timeout=10)
    assert ok.status_code == 200 and emu.config.fault_5xx == 1.0


def test_requests_from_another_origin_are_refused(emu: Emulator) -> None:
    for origin in ("https://evil.example", "null", f"http://127.0.0.1:{emu.port + 1}"):
        reply = control(emu, "GET", "requests", headers={**emu.control_headers, "Origin": origin})
        assert reply.status_code == 403, origin
        posted = control(emu, "POST", "reset", headers={**emu.control_headers, "Origin": origin})
        assert posted.status_code == 403, origin
    own = control(emu, "GET", "stats", headers={**emu.control_headers, "Origin": emu.base_url})
    assert own.status_code == 200


# ---------------------------------------------------------------------------- the request log


def test_the_request_log_never_holds_the_api_key(emu: Emulator) -> None:
    submit(emu)
    reply = control(emu, "GET", "requests", headers=emu.control_headers)
    assert reply.status_code == 200
    assert KEY not in reply.text and "UFJPWFk=" not in reply.text
    assert KEY not in repr(emu.requests())
    entries = reply.json()
    assert len(entries) >= 2
    for entry in entries:
        if "Authorization" in entry["headers"]:
            assert entry["headers"]["Authorization"] == "[redacted]"
            assert ["Authorization", "[redacted]"] in entry["raw_headers"]
            assert entry["api_key_fingerprint"] == emu.key_fingerprint(KEY)
        else:  # the emulator's own sample fetches carry no key
            assert entry["api_key_fingerprint"] is None
    assert entries[0]["headers"]["Proxy-Authorization"] == "[redacted]"
    assert emu.key_fingerprint(KEY) != emu.key_fingerprint("sk-other")
    # Keyed per emulator: a fingerprint read from one log matches no other emulator's.
    with Emulator(config()) as other:
        assert other.key_fingerprint(KEY) != emu.key_fingerprint(KEY)
    # The other control views do not show the key either.
    for name in ("stats", "tasks", "config"):
        assert KEY not in control(emu, "GET", name, headers=emu.control_headers).text


# ---------------------------------------------------------------------------- the samples folder


def test_samples_dir_cannot_be_set_over_http(emu: Emulator, tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text("root:x:0:0:SECRET-FILE")
    reply = control(emu, "POST", "config", json={"samples_dir": str(tmp_path)}, headers=emu.control_headers)
    assert reply.status_code == 400
    assert reply.json() == {"error": "samples_dir is a start-up option (--samples) and cannot be changed over HTTP"}
    assert emu.config.samples_dir is None
    status, body = raw_get(emu, "/samples/passwd")
    assert status == 404 and b"SECRET-FILE" not in body
    fetch = control(emu, "POST", "config", json={"allow_external_fetch": True}, headers=emu.control_headers)
    assert fetch.status_code == 400 and "start-up option" in fetch.json()["error"]
    assert emu.config.allow_external_fetch is False


@pytest.fixture
def folder_emu(tmp_path: Path) -> Iterator[Emulator]:
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "own.png").write_bytes(b"OWN-IMAGE")
    (samples / "my photo.png").write_bytes(b"SPACED-NAME")
    (samples / ".hidden.png").write_bytes(b"HIDDEN-FILE")
    (tmp_path / "secret.txt").write_text("SECRET-FILE")
    (samples / "leak.png").symlink_to(tmp_path / "secret.txt")
    (samples / "alias.png").symlink_to(samples / "own.png")
    (samples / "loop.png").symlink_to(samples / "loop.png")
    (samples / "sub").mkdir()
    (samples / "sub" / "nested.png").write_bytes(b"NESTED")
    with Emulator(config(samples_dir=samples)) as emulator:
        yield emulator


@pytest.mark.parametrize(
    "path",
    [
        "/samples/../secret.txt",
        "/samples/../../../../etc/passwd",
        "/samples/..%2fsecret.txt",
        "/samples/%2e%2e%2fsecret.txt",
        "/samples/%2e%2e/secret.txt",
        "/samples/..%5csecret.txt",
        "/samples/leak.png",  # a symlink leading out of the folder
        "/samples/.hidden.png",
        "/samples/sub/nested.png",
        "/samples/sub%2fnested.png",
        "/samples/%2fetc%2fpasswd",
        "/samples/own.png%00.txt",
        "/samples/loop.png",  # a symlink loop
        "/samples/" + "x" * 5000 + ".png",  # a name too long for the file system
    ],
)
def test_samples_never_serve_outside_the_folder(folder_emu: Emulator, path: str) -> None:
    status, body = raw_get(folder_emu, path)
    assert status == 404, path
    assert b"SECRET-FILE" not in body and b"root:" not in body and b"HIDDEN" not in body and b"NESTED" not in body


def test_samples_serve_the_folder(folder_emu: Emulator) -> None:
    assert raw_get(folder_emu, "/samples/own.png") == (200, b"OWN-IMAGE")
    assert raw_get(folder_emu, "/samples/alias.png") == (200, b"OWN-IMAGE")  # a symlink inside the folder
    assert raw_get(folder_emu, "/samples/my%20photo.png") == (200, b"SPACED-NAME")
    assert raw_get(folder_emu, "/samples/top.png")[0] == 200  # the built-in samples still fall back


# ---------------------------------------------------------------------------- the CLI


def test_the_cli_prints_the_token_and_writes_it_next_to_the_url_file(tmp_path: Path) -> None:
    url_file = tmp_path / "emulator.url"
    env = {k: v for k, v in os.environ.items() if k != "AITRYON_EMULATOR_CONTROL_TOKEN"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_aitryon.emulator", "--port", "0", "--url-file", str(url_file),
         "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**env, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        listening = proc.stdout.readline().strip()
        token_line = proc.stdout.readline().strip()
        base = url_file.read_text().strip()
        assert listening.endswith(base)
        token_file = tmp_path / "emulator.url.token"
        token = token_file.read_text().strip()
        assert token_line.endswith(f": {token}") and str(token_file) in token_line
        assert token_file.stat().st_mode & 0o077 == 0  # readable by its owner only
        assert requests.get(base + "/_emulator/stats", timeout=10).status_code == 401
        assert requests.get(base + "/_emulator/stats", headers={CONTROL_TOKEN_HEADER: token}, timeout=10).ok
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_the_cli_takes_a_token_file_and_a_token_from_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "control" / "token"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "AITRYON_EMULATOR_CONTROL_TOKEN": "from-the-environment"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_aitryon.emulator", "--port", "0", "--token-file", str(token_file),
         "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        base = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        deadline = time.monotonic() + 10
        while not token_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert token_file.read_text().strip() == "from-the-environment"
        reply = requests.get(base + "/_emulator/config", headers={CONTROL_TOKEN_HEADER: "from-the-environment"},
                             timeout=10)  # fmt: skip
        assert reply.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
