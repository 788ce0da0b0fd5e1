"""oss://: the connection, V4 presigning, the fsspec file system and ObjectStoragePath, end to end.

Everything runs through the code a user runs (the SDK client built from an Airflow ``oss``
connection in ``AIRFLOW_CONN_OSS_DEFAULT``) against the local OSS stand-in, which verifies every
request's V4 signature with the secret it was given. The stand-in's verifier is written from the
specification, not from the SDK, so a request it accepts is one real OSS would verify the same way;
the tests below also show that it refuses what OSS refuses.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import requests
from packaging.version import Version

from airflow_provider_aitryon import compat, storage
from airflow_provider_aitryon.emulator.oss import OssStandIn, SignatureV4Verifier, crc64
from airflow_provider_aitryon.errors import DashScopeConfigError
from airflow_provider_aitryon.get_provider_info import get_provider_info
from airflow_provider_aitryon.oss import (
    INSTALL_HINT,
    OssAccessDenied,
    OssConfigError,
    OssError,
    OssExtraMissing,
    OssNotFound,
    OssSettings,
    load_settings,
    parse_oss_uri,
    presign_get,
    presign_url,
)
from airflow_provider_aitryon.oss import client as oss_client
from airflow_provider_aitryon.oss.fs import MIN_PART_SIZE, OssFileSystem

KEY_ID = "LTAI5tStandInKeyId"
SECRET = "oss-SECRET-9d2c71f4a8e3"
WRONG_SECRET = "oss-WRONG-SECRET-0b5e66"


# --------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh_caches(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Airflow caches one file system per (scheme, connection) per process; each test has its own stand-in."""
    from airflow.sdk.io import store

    monkeypatch.setattr(store, "_STORE_CACHE", {})  # the module attach() reads it from
    oss_client.get_client.cache_clear()
    yield
    oss_client.get_client.cache_clear()


@pytest.fixture
def oss(monkeypatch: pytest.MonkeyPatch) -> Iterator[OssStandIn]:
    with OssStandIn(access_key_id=KEY_ID, access_key_secret=SECRET) as stand_in:
        monkeypatch.setenv("AIRFLOW_CONN_OSS_DEFAULT", stand_in.connection_json())
        yield stand_in


@pytest.fixture
def signatures(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every signature the stand-in was shown (a test-side spy: the stand-in itself keeps none)."""
    seen: list[str] = []
    original = SignatureV4Verifier._compare

    def spy(self: SignatureV4Verifier, canonical: str, timestamp: str, date: str, secret: str, provided: str,
            access_key_id: str) -> None:  # fmt: skip
        seen.append(provided)
        original(self, canonical, timestamp, date, secret, provided, access_key_id)

    monkeypatch.setattr(SignatureV4Verifier, "_compare", spy)
    return seen


def path(uri: str, conn_id: str | None = "oss_default") -> Any:
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(uri, conn_id=conn_id)


def one_sentence(message: str) -> str:
    assert "\n" not in message, message
    assert message.endswith("."), message
    return message


def settings_for(extra: dict[str, Any], conn_id: str = "oss_default") -> OssSettings:
    class Conn:
        pass

    conn = Conn()
    conn.conn_id = conn_id  # type: ignore[attr-defined]
    conn.extra = json.dumps(extra)  # type: ignore[attr-defined]
    return OssSettings.from_connection(conn)


GOOD_EXTRA = {"auth_type": "AK", "access_key_id": KEY_ID, "access_key_secret": SECRET, "region": "cn-beijing"}


# --------------------------------------------------------------------------------------------
# ObjectStoragePath through Airflow's own loader
# --------------------------------------------------------------------------------------------


def test_object_storage_path_writes_reads_lists_moves_and_removes(oss: OssStandIn) -> None:
    target = path("oss://bucket/looks/a.txt")
    target.write_bytes(b"first look")
    assert oss.objects == {"bucket/looks/a.txt": b"first look"}
    assert target.read_bytes() == b"first look"
    assert target.exists() and target.is_file() and not target.is_dir()
    assert target.stat()["size"] == len(b"first look")
    assert path("oss://bucket/looks").is_dir()

    path("oss://bucket/looks/sub/b.txt").write_text("second")
    listed = sorted(str(child) for child in path("oss://bucket/looks/").iterdir())
    assert listed == ["oss://oss_default@bucket/looks/a.txt", "oss://oss_default@bucket/looks/sub"]

    moved = target.rename(path("oss://bucket/looks/renamed.txt"))
    assert moved.read_bytes() == b"first look"
    assert not target.exists()
    assert set(oss.objects) == {"bucket/looks/renamed.txt", "bucket/looks/sub/b.txt"}

    moved.unlink()
    target.fs.rm("bucket/looks", recursive=True)
    assert oss.objects == {}
    # Every request was signed with the connection's key and verified; none was refused.
    assert oss.refused == 0
    assert {r.auth for r in oss.requests} == {"header"}
    assert {r.access_key_id for r in oss.requests} == {KEY_ID}
    assert {"PutObject", "GetObject", "HeadObject", "ListObjectsV2", "CopyObject", "DeleteObject"} <= {
        r.operation for r in oss.requests
    }


def test_a_path_without_conn_id_uses_oss_default(oss: OssStandIn) -> None:
    path("oss://bucket/x.txt", conn_id=None).write_text("hi")
    assert oss.objects == {"bucket/x.txt": b"hi"}


def test_the_path_class_comes_from_this_provider_without_warnings(oss: OssStandIn) -> None:
    from airflow_provider_aitryon.oss.path import OssPath

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # upath warns when it falls back to a generic path class
        target = path("oss://bucket/k/v.png")
    # Airflow 3.2+ wraps universal_pathlib's class for the scheme; 3.1's ObjectStoragePath is its own class.
    assert isinstance(getattr(target, "__wrapped__", None), OssPath) or Version("3.2") > compat.AIRFLOW_VERSION
    assert (target.protocol, target.path, target.name) == ("oss", "bucket/k/v.png", "v.png")
    assert (target.parent / "w.png").path == "bucket/k/w.png"


def test_the_provider_declares_the_filesystem_the_way_official_providers_do() -> None:
    try:  # where Airflow's ObjectStoragePath finds file systems (3.2+); 3.1 asks the core manager
        from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime as Manager
    except ImportError:  # pragma: no cover - Airflow 3.1
        from airflow.providers_manager import ProvidersManager as Manager

    from airflow_provider_aitryon.oss import fs

    assert get_provider_info()["filesystems"] == ["airflow_provider_aitryon.oss.fs"]
    assert "airflow_provider_aitryon.oss.fs" in Manager().filesystem_module_names
    assert fs.schemes == ["oss"]
    assert callable(fs.get_fs)


# --------------------------------------------------------------------------------------------
# storage.atomic_write and storage.save_image to OSS
# --------------------------------------------------------------------------------------------


def test_atomic_write_puts_a_part_object_then_copies_it_into_place(oss: OssStandIn) -> None:
    target = path("oss://bucket/looks/manifest.json")
    storage.atomic_write(b'{"rows": 1}', target)
    assert oss.objects == {"bucket/looks/manifest.json": b'{"rows": 1}'}
    writes = [(r.operation, r.key) for r in oss.requests if r.method in ("PUT", "DELETE")]
    (put, part), (copy, final), (delete, removed) = writes
    assert (put, copy, delete) == ("PutObject", "CopyObject", "DeleteObject")
    assert part.startswith("looks/.manifest.json.") and part.endswith(".part") and removed == part
    assert final == "looks/manifest.json"
    # The final object is typed by its own name, not as the temporary .part file.
    stored = oss.get("bucket", "looks/manifest.json")
    assert stored is not None and stored.content_type == "application/json"

    with pytest.raises(DashScopeConfigError, match="already exists"):
        storage.atomic_write(b"other", target, overwrite=False)
    assert oss.objects == {"bucket/looks/manifest.json": b'{"rows": 1}'}


def test_save_image_stores_the_emulators_png_in_oss(oss: OssStandIn, emu: Any) -> None:
    url = emu.sample_url("person.png")
    original = requests.get(url, timeout=10).content
    result = storage.save_image(url, "oss://bucket/looks/", conn_id="oss_default", name="person", attempts=1)
    assert result["uri"] == "oss://oss_default@bucket/looks/person.png"
    assert result["format"] == "PNG"
    stored = oss.objects["bucket/looks/person.png"]
    assert stored == original
    assert result["sha256"] == hashlib.sha256(stored).hexdigest() == hashlib.sha256(original).hexdigest()
    assert result["bytes"] == len(original)
    assert oss.get("bucket", "looks/person.png").content_type == "image/png"  # type: ignore[union-attr]
    assert not [name for name in oss.objects if name.endswith(".part")]
    assert oss.refused == 0


# --------------------------------------------------------------------------------------------
# Presigned URLs
# --------------------------------------------------------------------------------------------


def test_a_presigned_get_url_fetches_the_private_object_with_any_http_client(oss: OssStandIn) -> None:
    oss.put("bucket", "inputs/person.png", b"\x89PNG fake image bytes", "image/png")
    url = presign_get("oss://bucket/inputs/person.png")
    query = parse_qs(urlsplit(url).query)
    assert query["x-oss-signature-version"] == ["OSS4-HMAC-SHA256"]
    assert query["x-oss-expires"] == [str(6 * 3600)]  # the default: longer than a DashScope queue wait
    assert query["x-oss-credential"][0].startswith(f"{KEY_ID}/") and SECRET not in url

    reply = requests.get(url, timeout=10)
    assert reply.status_code == 200 and reply.content == b"\x89PNG fake image bytes"
    assert httpx.get(url, timeout=10).content == b"\x89PNG fake image bytes"
    assert [r.auth for r in oss.requests] == ["presigned", "presigned"]
    # Without the signature, the bucket is private.
    assert requests.get(url.split("?", 1)[0], timeout=10).status_code == 403


def test_a_head_on_a_url_signed_for_get_is_refused_as_real_oss_does(oss: OssStandIn) -> None:
    oss.put("bucket", "inputs/person.png", b"image")
    url = presign_get("oss://bucket/inputs/person.png")
    reply = requests.head(url, timeout=10)
    assert reply.status_code == 403
    # A HEAD reply has no body: the OSS error document comes base64-encoded in x-oss-err.
    error = base64.b64decode(reply.headers["x-oss-err"]).decode()
    assert "<Code>SignatureDoesNotMatch</Code>" in error
    assert oss.refused == 1
    # Signed for HEAD, the same object answers a HEAD.
    head = requests.head(presign_url("oss://bucket/inputs/person.png", method="HEAD"), timeout=10)
    assert head.status_code == 200 and head.headers["Content-Length"] == "5"


def test_an_expired_presigned_url_is_refused(oss: OssStandIn) -> None:
    oss.put("bucket", "inputs/a.png", b"image")
    url = presign_get("oss://bucket/inputs/a.png", expires=timedelta(seconds=60))
    assert requests.get(url, timeout=10).status_code == 200
    oss.advance(61)
    reply = requests.get(url, timeout=10)
    assert reply.status_code == 403
    assert "<Code>AccessDenied</Code>" in reply.text and "Request has expired." in reply.text
    assert oss.refused == 1


def _earlier_signing_time(url: str) -> str:
    stamp = parse_qs(urlsplit(url).query)["x-oss-date"][0]
    earlier = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ") - timedelta(seconds=1)
    assert earlier.strftime("%Y%m%d") == stamp[:8], "the test ran across midnight UTC: run it again"
    return url.replace(f"x-oss-date={stamp}", f"x-oss-date={earlier.strftime('%Y%m%dT%H%M%SZ')}")


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda url: url.replace("/inputs/a.png?", "/inputs/b.png?"), id="another-object"),
        pytest.param(lambda url: url.replace("/bucket/", "/other-bucket/"), id="another-bucket"),
        pytest.param(lambda url: url.replace("x-oss-expires=21600", "x-oss-expires=604800"), id="longer-expiry"),
        pytest.param(lambda url: _earlier_signing_time(url), id="earlier-signing-time"),
        pytest.param(lambda url: url + "&response-content-type=text%2Fhtml", id="added-parameter"),
    ],
)
def test_a_tampered_presigned_url_is_refused(oss: OssStandIn, tamper: Any) -> None:
    for key in ("inputs/a.png", "inputs/b.png"):
        oss.put("bucket", key, b"image")
        oss.put("other-bucket", key, b"image")
    url = presign_get("oss://bucket/inputs/a.png")
    reply = requests.get(tamper(url), timeout=10)
    assert reply.status_code == 403
    assert "<Code>SignatureDoesNotMatch</Code>" in reply.text
    assert oss.refused == 1


def test_the_signature_covers_bucket_and_key_but_not_the_host() -> None:
    """V4 signs /bucket/key whatever the addressing style: a URL signed for the public endpoint
    (virtual-hosted) verifies when the same request reaches an endpoint path-style."""
    settings = settings_for(GOOD_EXTRA)
    assert settings.endpoint == "https://oss-cn-beijing.aliyuncs.com"
    url = presign_get("oss://bucket/inputs/a.png", settings=settings)
    assert urlsplit(url).netloc == "bucket.oss-cn-beijing.aliyuncs.com"  # virtual-hosted, as real OSS needs
    internal = settings_for({**GOOD_EXTRA, "endpoint": "https://oss-cn-beijing-internal.aliyuncs.com"})
    internal_url = presign_get("oss://bucket/a", settings=internal)
    assert urlsplit(internal_url).netloc == "bucket.oss-cn-beijing-internal.aliyuncs.com"
    with OssStandIn(access_key_id=KEY_ID, access_key_secret=SECRET) as stand_in:
        stand_in.put("bucket", "inputs/a.png", b"image")
        rewritten = f"{stand_in.endpoint}/bucket/inputs/a.png?{urlsplit(url).query}"
        assert requests.get(rewritten, timeout=10).content == b"image"


def test_presigning_checks_the_uri_and_the_expiry_in_one_sentence(oss: OssStandIn) -> None:
    for uri, fragment in [
        ("https://bucket.oss-cn-beijing.aliyuncs.com/a.png", "is not an oss:// URI"),
        ("oss://Bad_Bucket/a.png", "not a valid OSS bucket name"),
        ("oss://bucket/", "names a bucket but no object"),
        ("oss://bucket/a.png?x-oss-signature=abc", "query"),
        ("oss://bucket//a.png", "starts with '/'"),
    ]:
        with pytest.raises(OssConfigError) as raised:
            presign_get(uri)
        assert fragment in one_sentence(str(raised.value))
        assert "x-oss-signature=abc" not in str(raised.value)
    with pytest.raises(OssConfigError, match="between 1 second and 7 days"):
        presign_get("oss://bucket/a.png", expires=timedelta(days=8))
    with pytest.raises(OssConfigError, match="GET, HEAD"):
        presign_url("oss://bucket/a.png", method="PUT")
    assert parse_oss_uri("oss://bucket/looks/a b.png").key == "looks/a b.png"


# --------------------------------------------------------------------------------------------
# Wrong credentials, and what never reaches a message or a log
# --------------------------------------------------------------------------------------------


def test_a_wrong_secret_fails_in_one_sentence_that_holds_no_secret_or_signature(
    oss: OssStandIn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, signatures: list[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    oss.put("bucket", "looks/a.png", b"image")
    monkeypatch.setenv("AIRFLOW_CONN_OSS_DEFAULT", oss.connection_json(access_key_secret=WRONG_SECRET))
    target = path("oss://bucket/looks/a.png")
    with pytest.raises(OssAccessDenied) as raised:
        target.read_bytes()
    message = one_sentence(str(raised.value))
    assert isinstance(raised.value, PermissionError)
    assert "SignatureDoesNotMatch" in message and "'oss_default'" in message and "access_key_secret" in message
    assert raised.value.status == 403 and raised.value.code == "SignatureDoesNotMatch"
    # exists() must not turn a refused signature into "missing".
    with pytest.raises(OssAccessDenied):
        target.exists()
    with pytest.raises(OssAccessDenied):
        storage.atomic_write(b"x", path("oss://bucket/looks/b.png"))
    assert oss.refused >= 3
    assert signatures
    texts = [message, repr(raised.value), caplog.text, repr(oss.requests), repr(oss)]
    for text in texts:
        assert SECRET not in text and WRONG_SECRET not in text
        for signature in signatures:
            assert signature not in text


def test_an_unknown_access_key_id_is_named_as_such(oss: OssStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_OSS_DEFAULT", oss.connection_json(access_key_id="LTAI-nobody"))
    with pytest.raises(OssAccessDenied, match="InvalidAccessKeyId") as raised:
        path("oss://bucket/a.png").write_bytes(b"x")
    one_sentence(str(raised.value))
    assert oss.objects == {}


def test_a_wrong_region_is_refused(oss: OssStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_OSS_DEFAULT", oss.connection_json(region="cn-hangzhou"))
    with pytest.raises(OssAccessDenied, match="SignatureDoesNotMatch"):
        path("oss://bucket/a.png").write_bytes(b"x")


def test_no_secret_or_signature_is_logged_on_the_way_to_success(
    oss: OssStandIn, emu: Any, caplog: pytest.LogCaptureFixture, signatures: list[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    storage.save_image(emu.sample_url("top.png"), "oss://bucket/looks/", conn_id="oss_default", attempts=1)
    url = presign_get("oss://bucket/looks/top.png")
    logged = caplog.text
    signatures.append(parse_qs(urlsplit(url).query)["x-oss-signature"][0])
    assert len(signatures) > 3
    assert SECRET not in logged
    for signature in signatures:
        assert signature not in logged and signature not in repr(oss.requests)
    assert "Saved oss://" in logged


# --------------------------------------------------------------------------------------------
# The file system's details
# --------------------------------------------------------------------------------------------


def test_ranges_and_buffered_reads(oss: OssStandIn) -> None:
    fs = path("oss://bucket/x").fs
    fs.pipe_file("bucket/data.bin", bytes(range(100)))
    assert fs.cat_file("bucket/data.bin", 10, 14) == bytes([10, 11, 12, 13])
    assert fs.cat_file("bucket/data.bin", -3) == bytes([97, 98, 99])
    assert fs.cat_file("bucket/data.bin", 95, 500) == bytes(range(95, 100))
    assert fs.cat_file("bucket/data.bin", 100) == b""
    assert fs.cat_file("bucket/data.bin", 5, -90) == bytes(range(5, 10))
    with fs.open("bucket/data.bin", "rb", block_size=16, cache_type="none") as handle:
        handle.seek(50)
        assert handle.read(4) == bytes([50, 51, 52, 53])
        assert handle.size == 100
    ranges = [r for r in oss.requests if r.operation == "GetObject"]
    assert all(r.status in (200, 206, 416) for r in ranges)
    with pytest.raises(OssNotFound) as missing:
        fs.cat_file("bucket/nothing.bin")
    assert isinstance(missing.value, FileNotFoundError)
    assert not fs.exists("bucket/nothing.bin")  # HEAD 404: the code arrives in x-oss-err


def test_a_file_replaced_while_being_read_fails_instead_of_mixing_versions(oss: OssStandIn) -> None:
    fs = path("oss://bucket/x").fs
    fs.pipe_file("bucket/data.bin", b"a" * 64)
    with fs.open("bucket/data.bin", "rb", block_size=16, cache_type="none") as handle:
        assert handle.read(16) == b"a" * 16
        oss.put("bucket", "data.bin", b"b" * 64)
        with pytest.raises(OssError, match="PreconditionFailed"):
            handle.read(16)


def test_listing_rolls_prefixes_into_directories_and_follows_continuation(oss: OssStandIn) -> None:
    for index in range(7):
        oss.put("bucket", f"p/file-{index}.png", b"x")
    oss.put("bucket", "p/sub/a.png", b"x")
    oss.put("bucket", "p/sub/b.png", b"x")
    oss.put("bucket", "p/zz/c.png", b"x")
    oss.put("bucket", "q/other.png", b"x")
    fs = path("oss://bucket/x").fs
    pages = list(fs._pages("bucket", "p/", delimiter="/", max_keys=2))
    names = [c.key for page in pages for c in page.contents or []]
    prefixes = [c.prefix for page in pages for c in page.common_prefixes or []]
    assert names == [f"p/file-{i}.png" for i in range(7)]
    assert prefixes == ["p/sub/", "p/zz/"]
    assert len(pages) == 5
    listed = fs.ls("bucket/p", detail=True)
    assert {e["name"]: e["type"] for e in listed if e["type"] == "directory"} == {
        "bucket/p/sub": "directory",
        "bucket/p/zz": "directory",
    }
    assert fs.find("bucket/p") == sorted([f"bucket/p/file-{i}.png" for i in range(7)] + [
        "bucket/p/sub/a.png", "bucket/p/sub/b.png", "bucket/p/zz/c.png"])  # fmt: skip
    assert "bucket/p/sub" in fs.find("bucket/p", withdirs=True)
    assert fs.ls("bucket/p/sub/a.png", detail=False) == ["bucket/p/sub/a.png"]
    with pytest.raises(FileNotFoundError):
        fs.ls("bucket/nowhere")


def test_many_keys_are_listed_across_pages(oss: OssStandIn) -> None:
    for index in range(2100):
        oss.put("bucket", f"many/{index:05d}", b"")
    fs = path("oss://bucket/x").fs
    assert len(fs.find("bucket/many")) == 2100
    assert [r.operation for r in oss.requests] == ["ListObjectsV2"] * 3


def test_large_writes_use_a_multipart_upload(oss: OssStandIn) -> None:
    settings = load_settings()
    fs = OssFileSystem(settings=settings, multipart_threshold=MIN_PART_SIZE, part_size=MIN_PART_SIZE)
    data = bytes(range(256)) * 1400  # 350 KB: three full parts and a short last one
    with fs.open("bucket/big/blob.bin", "wb") as out:
        for offset in range(0, len(data), 50_000):
            out.write(data[offset : offset + 50_000])
    stored = oss.get("bucket", "big/blob.bin")
    assert stored is not None and stored.data == data and stored.etag.endswith('-4"')
    operations = [r.operation for r in oss.requests]
    assert operations == ["InitiateMultipartUpload", *["UploadPart"] * 4, "CompleteMultipartUpload"]
    assert oss.pending_uploads == 0
    assert fs.cat_file("bucket/big/blob.bin") == data


def test_a_write_that_fails_half_way_publishes_nothing(oss: OssStandIn) -> None:
    fs = path("oss://bucket/x").fs
    with pytest.raises(RuntimeError), fs.open("bucket/half.bin", "wb") as out:
        out.write(b"half of it")
        raise RuntimeError("the task failed")
    assert oss.objects == {} and oss.requests == []


def test_the_stand_in_reports_the_crc64_oss_does() -> None:
    # CRC-64/XZ (ECMA-182) check value; the SDK compares it after every upload.
    assert crc64(b"123456789") == 0x995DC9BBDF1939FA


# --------------------------------------------------------------------------------------------
# Bounds: every call has a deadline
# --------------------------------------------------------------------------------------------


def test_a_server_that_never_answers_fails_within_the_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])  # accept, then say nothing
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        extra = {**GOOD_EXTRA, "endpoint": f"http://127.0.0.1:{listener.getsockname()[1]}", "read_timeout": 0.3,
                 "max_attempts": 2, "operation_timeout": 5}  # fmt: skip
        monkeypatch.setenv("AIRFLOW_CONN_OSS_DEFAULT", json.dumps({"conn_type": "oss", "extra": extra}))
        started = time.monotonic()
        with pytest.raises(OssError) as raised:
            path("oss://bucket/a.png").read_bytes()
        assert time.monotonic() - started < 5
    finally:
        stop.set()
        thread.join(timeout=2)
        for conn in accepted:
            conn.close()
        listener.close()
    message = one_sentence(str(raised.value))
    assert raised.value.retryable and "could not reach OSS at 127.0.0.1" in message and "2 attempt(s)" in message


def test_the_client_is_built_with_the_connections_bounds() -> None:
    settings = settings_for({**GOOD_EXTRA, "connect_timeout": 3, "read_timeout": 7, "max_attempts": 4})
    client = oss_client.get_client(settings)
    options = client._client._options
    assert options.retryer.max_attempts() == 4
    assert options.http_client._connect_timeout == 3 and options.http_client._read_timeout == 7
    assert options.signer.__class__.__name__ == "SignerV4"


# --------------------------------------------------------------------------------------------
# The connection
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({**GOOD_EXTRA, "auth_type": None}, 'has no auth_type in its Extra; set "auth_type": "AK"'),
        ({**GOOD_EXTRA, "auth_type": "STS"}, "has auth_type 'STS', which is not supported"),
        ({**GOOD_EXTRA, "access_key_id": ""}, "has no access_key_id"),
        ({**GOOD_EXTRA, "access_key_secret": None}, "has no access_key_secret"),
        ({**GOOD_EXTRA, "access_key_secret": f" {SECRET}"}, "starts or ends with whitespace"),
        ({**GOOD_EXTRA, "region": None}, "has neither region nor endpoint"),
        ({**GOOD_EXTRA, "region": None, "endpoint": "http://127.0.0.1:9"}, "has an endpoint but no region"),
        ({**GOOD_EXTRA, "region": "oss-cn-beijing"}, "is not an Alibaba Cloud region id"),
        ({**GOOD_EXTRA, "endpoint": "https://oss-cn-hangzhou.aliyuncs.com"}, "but an endpoint in 'cn-hangzhou'"),
        ({**GOOD_EXTRA, "endpoint": "ftp://x/y"}, "is not an http(s) URL"),
        ({**GOOD_EXTRA, "read_timeout": "soon"}, "has read_timeout 'soon', which is not a number"),
        ({**GOOD_EXTRA, "max_attempts": 0}, "has max_attempts 0, which is not a whole number"),
    ],
)
def test_connection_problems_are_one_sentence_naming_connection_and_field(extra: dict[str, Any], fragment: str) -> None:
    with pytest.raises(OssConfigError) as raised:
        settings_for(extra)
    message = one_sentence(str(raised.value))
    assert fragment in message and "'oss_default'" in message
    assert SECRET not in message


def test_settings_follow_the_official_provider_and_hide_the_secret() -> None:
    settings = settings_for(GOOD_EXTRA)
    assert (settings.region, settings.endpoint) == ("cn-beijing", "https://oss-cn-beijing.aliyuncs.com")
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    vpc = settings_for({**GOOD_EXTRA, "region": None, "endpoint": "oss-cn-beijing-internal.aliyuncs.com"})
    assert (vpc.region, vpc.endpoint) == ("cn-beijing", "https://oss-cn-beijing-internal.aliyuncs.com")
    with pytest.raises(OssConfigError, match="not valid JSON"):
        OssSettings.from_connection(type("Conn", (), {"extra": "{oops"})(), "x")


def test_a_missing_connection_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_OSS_MISSING", raising=False)
    with pytest.raises(OssConfigError) as raised:
        presign_get("oss://bucket/a.png", conn_id="oss_missing")
    assert "OSS connection 'oss_missing' is not defined" in one_sentence(str(raised.value))


# --------------------------------------------------------------------------------------------
# Without the [oss] extra
# --------------------------------------------------------------------------------------------


def test_without_the_extra_the_provider_imports_and_oss_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "alibabacloud_oss_v2", None)  # what a missing package looks like to import
    monkeypatch.setenv("AIRFLOW_CONN_OSS_DEFAULT", json.dumps({"conn_type": "oss", "extra": GOOD_EXTRA}))
    target = path("oss://bucket/looks/a.png")  # building the path needs no SDK
    for attempt in (lambda: target.fs, lambda: presign_get("oss://bucket/a.png")):
        with pytest.raises(OssExtraMissing) as raised:
            attempt()
        message = one_sentence(str(raised.value))
        assert INSTALL_HINT in message and INSTALL_HINT == "pip install 'airflow-provider-aitryon[oss]'"
        assert isinstance(raised.value, ImportError)


def test_a_fresh_process_without_the_sdk_imports_the_provider_and_names_the_extra() -> None:
    script = """
import json, os, sys
sys.modules["alibabacloud_oss_v2"] = None
os.environ["AIRFLOW_CONN_OSS_DEFAULT"] = json.dumps({"conn_type": "oss", "extra": {"auth_type": "AK"}})
import airflow_provider_aitryon.oss, airflow_provider_aitryon.oss.fs, airflow_provider_aitryon.oss.path
from airflow_provider_aitryon.get_provider_info import get_provider_info
from airflow.sdk import ObjectStoragePath
assert get_provider_info()["filesystems"] == ["airflow_provider_aitryon.oss.fs"]
target = ObjectStoragePath("oss://bucket/a.png", conn_id="oss_default")
try:
    target.read_bytes()
except ImportError as exc:
    print(type(exc).__name__, exc)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == (
        "OssExtraMissing oss:// needs the Alibaba Cloud OSS SDK, which is not installed; run "
        "pip install 'airflow-provider-aitryon[oss]' on every worker, scheduler and triggerer."
    ), done.stderr[-2000:]


def test_stand_in_times_are_utc(oss: OssStandIn) -> None:
    oss.put("bucket", "t.txt", b"x")
    modified = path("oss://bucket/t.txt").fs.modified("bucket/t.txt")
    assert abs(modified - datetime.now(timezone.utc)) < timedelta(minutes=1)


def test_keys_that_need_uri_encoding_are_signed_and_verified(oss: OssStandIn) -> None:
    key = "looks/a b+c~d=e&f/ünï-çødé (1).png"
    target = path(f"oss://bucket/{key}")
    target.write_bytes(b"encoded")
    assert oss.objects == {f"bucket/{key}": b"encoded"}
    assert target.read_bytes() == b"encoded"
    assert [p.name for p in path("oss://bucket/looks/a b+c~d=e&f/").iterdir()] == ["ünï-çødé (1).png"]
    assert requests.get(presign_get(f"oss://bucket/{key}"), timeout=10).content == b"encoded"
    assert oss.refused == 0


async def test_a_trigger_reads_the_connection_without_blocking_its_event_loop(oss: OssStandIn) -> None:
    from airflow_provider_aitryon.oss.settings import aload_settings

    settings = await aload_settings()
    assert (settings.endpoint, settings.access_key_id, settings.region) == (oss.endpoint, KEY_ID, "cn-beijing")
