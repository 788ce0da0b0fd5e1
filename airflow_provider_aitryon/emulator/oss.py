"""A local stand-in for Alibaba Cloud OSS that verifies V4 signatures, for tests and demos.

Why: saving to OSS and presigning private inputs can only be tested honestly against something
that refuses a bad signature the way OSS does. This server knows one AccessKey pair and one
region, checks every request's ``OSS4-HMAC-SHA256`` signature (Authorization header or presigned
query) with the secret it was given, and keeps objects in memory. The provider's runtime never
imports it.

::

    with OssStandIn(access_key_id="LTAI-test", access_key_secret="secret") as oss:
        oss.endpoint            # http://127.0.0.1:<free port>
        oss.connection_json()   # an `oss` Airflow connection pointing at it (AIRFLOW_CONN_OSS_DEFAULT)
        oss.objects             # {"bucket/key": b"..."}
        oss.refused             # how many requests failed the signature/credential checks
        oss.requests            # what was asked (never a signature or the secret)

The verifier is written from Alibaba Cloud's description of V4 signatures, not taken from the
SDK, so the SDK is tested against it rather than against itself:

* ``CanonicalRequest`` = method, canonical URI (``/bucket/key`` URI-encoded with ``/`` kept, whatever
  the addressing style), canonical query (every parameter but ``x-oss-signature``, names and
  values URI-encoded, sorted, ``name`` alone when the value is empty), canonical headers (every
  ``x-oss-*`` header, ``content-type`` and ``content-md5`` if sent, and the listed additional
  headers; lowercase names, trimmed values, sorted, one ``name:value`` line each), the additional
  header names (``;``-joined) and the payload hash (``x-oss-content-sha256``; presigned:
  ``UNSIGNED-PAYLOAD``), joined by newlines;
* ``StringToSign`` = ``OSS4-HMAC-SHA256``, the ``x-oss-date`` timestamp, the scope
  ``date/region/oss/aliyun_v4_request`` and the hex SHA-256 of the canonical request;
* the signing key is HMAC-SHA256 chained over date, region, ``oss`` and ``aliyun_v4_request``,
  starting from ``"aliyun_v4" + secret``; the signature is the hex HMAC of the string to sign.

What it refuses, with OSS-style XML errors (for HEAD, base64 XML in the ``x-oss-err`` header,
as OSS does): an unknown AccessKey ID (403 ``InvalidAccessKeyId``), a wrong signature,
secret, method, path, query or region (403 ``SignatureDoesNotMatch``, with the ``StringToSign``
and ``CanonicalRequest`` OSS also returns), a request more than 15 minutes off the server's
clock (403 ``RequestTimeTooSkewed``), an expired presigned URL (403 ``AccessDenied``, "Request has
expired."), an unsigned request (403 ``AccessDenied``: buckets here are private) and V1/V2
signatures (this stand-in verifies V4 only).

Operations: PutObject, GetObject (``Range``, with or without ``x-oss-range-behavior: standard``;
``If-Match``/``If-None-Match``), HeadObject, DeleteObject, CopyObject (``x-oss-copy-source``),
ListObjectsV2 (prefix, delimiter, max-keys, continuation token, start-after, URL encoding), and
multipart uploads (initiate, upload part, complete, abort; parts but the last at least 100 KB).
``Content-MD5`` is checked when sent; responses carry ``x-oss-hash-crc64ecma`` (CRC-64/ECMA-182,
which the SDK compares after an upload), ``ETag`` and ``x-oss-request-id``. Buckets are addressed
path-style (``/bucket/key``), which the SDK uses by itself for an IP-address endpoint.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote, urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

__all__ = ["OssStandIn", "RecordedRequest", "Refusal", "SignatureV4Verifier", "StoredObject", "crc64"]

ALGORITHM = "OSS4-HMAC-SHA256"
PRODUCT = "oss"
TERMINATOR = "aliyun_v4_request"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
DEFAULT_REGION = "cn-beijing"
MAX_SKEW_SECONDS = 15 * 60
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
MIN_PART_SIZE = 100 * 1024
MAX_KEYS = 1000
DEFAULT_MAX_KEYS = 100
_ISO = "%Y%m%dT%H%M%SZ"
_MASK64 = 0xFFFFFFFFFFFFFFFF

# The query parameters each kind of request may carry besides the presigned-URL ones.
_OBJECT_PARAMS = frozenset({
    "uploads", "uploadId", "partNumber", "encoding-type", "response-content-type", "response-content-disposition",
    "response-cache-control", "response-content-encoding", "response-content-language", "response-expires",
})  # fmt: skip
_LIST_PARAMS = frozenset({
    "list-type", "prefix", "delimiter", "max-keys", "continuation-token", "start-after", "encoding-type",
    "fetch-owner",
})  # fmt: skip


# --------------------------------------------------------------------------------------------
# CRC-64/ECMA-182 (reflected, all-ones initial value and final XOR), as OSS reports it
# --------------------------------------------------------------------------------------------


def _crc_table() -> list[int]:
    poly = 0xC96C5795D7870F42  # ECMA-182, bit-reversed
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc64(data: bytes) -> int:
    """The CRC-64 OSS puts in ``x-oss-hash-crc64ecma``.

    :param data: the object's bytes.
    """
    crc = _MASK64
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ _MASK64


# --------------------------------------------------------------------------------------------
# Values the stand-in keeps
# --------------------------------------------------------------------------------------------


@dataclass
class StoredObject:
    """One object: its bytes and what OSS reports about them.

    :param data: the content.
    :param content_type: the Content-Type it was stored with.
    :param etag: the ETag (quoted, uppercase hex as OSS writes it).
    :param last_modified: seconds since the epoch.
    :param object_type: ``Normal`` or ``Multipart``.
    """

    data: bytes
    content_type: str
    etag: str
    last_modified: float
    object_type: str = "Normal"
    crc: int = field(default=-1, repr=False)

    def crc64(self) -> int:
        """The object's CRC-64, computed once."""
        if self.crc < 0:
            self.crc = crc64(self.data)
        return self.crc


@dataclass(frozen=True)
class RecordedRequest:
    """What one request asked and how it ended; never a signature, an Authorization value or a secret.

    :param method: the HTTP method.
    :param operation: the OSS operation it was routed to (``GetObject``, ...), or ``""`` if refused first.
    :param bucket: the bucket, if any.
    :param key: the object key, if any.
    :param auth: ``header``, ``presigned`` or ``anonymous``.
    :param access_key_id: the AccessKey ID the request claimed, if any.
    :param status: the HTTP status answered.
    :param code: the OSS error code answered, if any.
    :param query: the query parameters, except ``x-oss-signature``.
    :param signed_headers: the header names the signature covered.
    """

    method: str
    operation: str
    bucket: str | None
    key: str | None
    auth: str
    access_key_id: str | None
    status: int
    code: str | None
    query: tuple[tuple[str, str], ...]
    signed_headers: tuple[str, ...]


class Refusal(Exception):
    """An OSS error reply.

    :param status: HTTP status.
    :param code: OSS error code.
    :param message: OSS error message.
    :param fields: further ``<Error>`` elements (name → text).
    :param auth: whether the signature/credential checks refused it (counted in ``refused``).
    """

    def __init__(self, status: int, code: str, message: str, *, auth: bool = False, **fields: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.fields, self.auth = status, code, message, fields, auth


@dataclass(frozen=True)
class Authenticated:
    """Who signed a request and how."""

    kind: str
    access_key_id: str | None
    signed_headers: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------
# The V4 verifier
# --------------------------------------------------------------------------------------------


class SignatureV4Verifier:
    """Checks V4 signatures the way OSS does, with the secrets it was given.

    :param credentials: AccessKey ID → secret.
    :param region: the region this endpoint serves.
    :param clock: seconds since the epoch "now".
    """

    def __init__(self, credentials: Mapping[str, str], region: str, clock: Callable[[], float]) -> None:
        self._credentials = dict(credentials)
        self.region = region
        self._clock = clock

    def verify(
        self, method: str, path: str, raw_query: str, headers: Mapping[str, str], body: bytes
    ) -> Authenticated:
        """Return who signed the request, or raise `Refusal`.

        :param method: the HTTP method.
        :param path: the decoded path (``/bucket/key``).
        :param raw_query: the query string as received.
        :param headers: lowercase header name → value (repeated headers joined by ``,``).
        :param body: the request body (for ``x-oss-content-sha256`` and ``Content-MD5``).
        """
        pairs = _query_pairs(raw_query)
        names = {name for name, _ in pairs}
        authorization = headers.get("authorization")
        if authorization is not None:
            return self._verify_header(method, path, pairs, headers, authorization, body)
        if "x-oss-signature" in names or "x-oss-signature-version" in names:
            return self._verify_query(method, path, pairs, headers)
        if names & {"OSSAccessKeyId", "Signature"}:
            raise _refuse(403, "AccessDenied", "This OSS stand-in verifies V4 signatures only (OSS4-HMAC-SHA256).")
        raise _refuse(403, "AccessDenied", "You have no right to access this object because of bucket acl.")

    # ---- Authorization header

    def _verify_header(
        self,
        method: str,
        path: str,
        pairs: list[tuple[str, str]],
        headers: Mapping[str, str],
        authorization: str,
        body: bytes,
    ) -> Authenticated:
        algorithm, _, rest = authorization.strip().partition(" ")
        if algorithm != ALGORITHM:
            raise _refuse(403, "AccessDenied", "This OSS stand-in verifies V4 signatures only (OSS4-HMAC-SHA256).")
        fields: dict[str, str] = {}
        for part in rest.split(","):
            name, sep, value = part.strip().partition("=")
            if not sep:
                raise _refuse(400, "InvalidArgument", "Authorization header is malformed.")
            fields[name] = value.strip()
        credential = fields.get("Credential")
        provided = fields.get("Signature")
        if not credential or not provided:
            raise _refuse(400, "InvalidArgument", "Authorization header needs Credential and Signature.")
        additional = _additional_headers(fields.get("AdditionalHeaders", ""), headers, "AdditionalHeaders")
        timestamp = headers.get("x-oss-date")
        if not timestamp:
            raise _refuse(400, "InvalidArgument", "A request signed with V4 needs the x-oss-date header.")
        payload_hash = headers.get("x-oss-content-sha256")
        if not payload_hash:
            raise _refuse(400, "InvalidArgument", "A request signed with V4 needs the x-oss-content-sha256 header.")
        if payload_hash != UNSIGNED_PAYLOAD and not hmac.compare_digest(
            payload_hash.lower(), hashlib.sha256(body).hexdigest()
        ):
            raise _refuse(400, "InvalidArgument", "x-oss-content-sha256 does not match the request body.")
        access_key_id, secret, date = self._scope(credential, timestamp)
        signed_at = _parse_iso(timestamp)
        if abs(self._clock() - signed_at) > MAX_SKEW_SECONDS:
            raise _refuse(
                403,
                "RequestTimeTooSkewed",
                "The difference between the request time and the current time is too large.",
                RequestTime=timestamp,
                ServerTime=time.strftime(_ISO, time.gmtime(self._clock())),
            )
        canonical = _canonical_request(method, path, pairs, headers, additional, payload_hash)
        self._compare(canonical, timestamp, date, secret, provided, access_key_id)
        return Authenticated("header", access_key_id, tuple(_signed_header_names(headers, additional)))

    # ---- presigned query

    def _verify_query(
        self, method: str, path: str, pairs: list[tuple[str, str]], headers: Mapping[str, str]
    ) -> Authenticated:
        params = dict(pairs)
        version = params.get("x-oss-signature-version")
        if version != ALGORITHM:
            raise _refuse(403, "AccessDenied", "This OSS stand-in verifies V4 signatures only (OSS4-HMAC-SHA256).")
        for name in ("x-oss-credential", "x-oss-date", "x-oss-expires", "x-oss-signature"):
            if not params.get(name):
                raise _refuse(400, "InvalidArgument", f"A V4 presigned URL needs the {name} parameter.")
        timestamp = params["x-oss-date"]
        access_key_id, secret, date = self._scope(params["x-oss-credential"], timestamp)
        try:
            lifetime = int(params["x-oss-expires"])
        except ValueError:
            lifetime = -1
        if not 0 < lifetime <= MAX_PRESIGN_SECONDS:
            raise _refuse(400, "InvalidArgument", "x-oss-expires must be between 1 and 604800 seconds.")
        signed_at = _parse_iso(timestamp)
        now = self._clock()
        if now > signed_at + lifetime:
            raise _refuse(
                403,
                "AccessDenied",
                "Request has expired.",
                Expires=time.strftime(_ISO, time.gmtime(signed_at + lifetime)),
                ServerTime=time.strftime(_ISO, time.gmtime(now)),
            )
        if signed_at - now > MAX_SKEW_SECONDS:
            raise _refuse(403, "RequestTimeTooSkewed", "The request was signed in the future.")
        listed = params.get("x-oss-additional-headers", "")
        additional = _additional_headers(listed, headers, "x-oss-additional-headers")
        unsigned = [(name, value) for name, value in pairs if name != "x-oss-signature"]
        canonical = _canonical_request(method, path, unsigned, headers, additional, UNSIGNED_PAYLOAD)
        self._compare(canonical, timestamp, date, secret, params["x-oss-signature"], access_key_id)
        return Authenticated("presigned", access_key_id, tuple(_signed_header_names(headers, additional)))

    # ---- shared

    def _scope(self, credential: str, timestamp: str) -> tuple[str, str, str]:
        parts = credential.split("/")
        if len(parts) != 5 or not all(parts):
            raise _refuse(400, "InvalidArgument", "Credential must be AccessKeyId/date/region/oss/aliyun_v4_request.")
        access_key_id, date, region, product, terminator = parts
        if product != PRODUCT or terminator != TERMINATOR:
            raise _refuse(400, "InvalidArgument", "The credential scope must end with oss/aliyun_v4_request.")
        secret = self._credentials.get(access_key_id)
        if secret is None:
            raise _refuse(
                403,
                "InvalidAccessKeyId",
                "The OSS Access Key Id you provided does not exist in our records.",
                OSSAccessKeyId=access_key_id,
            )
        if timestamp[:8] != date:
            raise _refuse(400, "InvalidArgument", "The date of the credential scope differs from x-oss-date.")
        if region != self.region:
            # OSS derives the signing key with the region it serves: another region cannot match.
            raise _refuse(
                403,
                "SignatureDoesNotMatch",
                f"The request signature we calculated does not match the signature you provided. The credential "
                f"scope names region {region}, this endpoint serves {self.region}.",
                OSSAccessKeyId=access_key_id,
            )
        return access_key_id, secret, date

    def _compare(
        self, canonical: str, timestamp: str, date: str, secret: str, provided: str, access_key_id: str
    ) -> None:
        scope = f"{date}/{self.region}/{PRODUCT}/{TERMINATOR}"
        string_to_sign = "\n".join(
            [ALGORITHM, timestamp, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()]
        )
        key = ("aliyun_v4" + secret).encode("utf-8")
        for part in (date, self.region, PRODUCT, TERMINATOR):
            key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
        expected = hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, provided.lower()):
            raise _refuse(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. "
                "Check your key and signing method.",
                OSSAccessKeyId=access_key_id,
                SignatureProvided=provided,
                StringToSign=string_to_sign,
                CanonicalRequest=canonical,
            )


def _refuse(status: int, code: str, message: str, **fields: str) -> Refusal:
    return Refusal(status, code, message, auth=True, **fields)


def _query_pairs(raw_query: str) -> list[tuple[str, str]]:
    """Decoded (name, value) pairs, in order; ``+`` is a literal plus, as in RFC 3986 queries."""
    pairs = []
    for item in raw_query.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        pairs.append((unquote(name), unquote(value)))
    return pairs


def _uri_encode(text: str) -> str:
    # RFC 3986: everything but unreserved characters (A-Z a-z 0-9 - _ . ~) is percent-encoded.
    return quote(text, safe="-_.~")


def _canonical_request(
    method: str,
    path: str,
    pairs: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    additional: list[str],
    payload_hash: str,
) -> str:
    canonical_uri = quote(path, safe="/-_.~")
    encoded = sorted((_uri_encode(name), _uri_encode(value)) for name, value in pairs)
    canonical_query = "&".join(f"{name}={value}" if value else name for name, value in encoded)
    names = _signed_header_names(headers, additional)
    canonical_headers = "".join(f"{name}:{headers[name].strip()}\n" for name in names)
    return "\n".join([method, canonical_uri, canonical_query, canonical_headers, ";".join(additional), payload_hash])


def _signed_header_names(headers: Mapping[str, str], additional: list[str]) -> list[str]:
    names = {name for name in headers if name.startswith("x-oss-") or name in ("content-type", "content-md5")}
    names.update(additional)
    return sorted(names)


def _additional_headers(value: str, headers: Mapping[str, str], field_name: str) -> list[str]:
    if not value:
        return []
    names = value.split(";")
    if any(not name or name != name.lower() or name.strip() != name for name in names) or names != sorted(names):
        raise _refuse(400, "InvalidArgument", f"{field_name} must be lowercase header names, sorted, ';'-separated.")
    missing = [name for name in names if name not in headers]
    if missing:
        raise _refuse(400, "InvalidArgument", f"{field_name} lists headers the request lacks: {', '.join(missing)}.")
    return names


def _parse_iso(timestamp: str) -> float:
    try:
        return float(calendar.timegm(time.strptime(timestamp, _ISO)))
    except ValueError:
        raise _refuse(400, "InvalidArgument", f"x-oss-date {timestamp!r} is not yyyymmddThhmmssZ.") from None


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class OssStandIn:
    """An in-memory OSS endpoint on 127.0.0.1 that verifies V4 signatures; a context manager.

    :param access_key_id: the one AccessKey ID it knows.
    :param access_key_secret: that key's secret, which every signature is checked with.
    :param region: the region it serves (part of every valid signature's scope).
    :param buckets: the buckets that exist (others answer ``NoSuchBucket``); None: any valid name.
    :param host: the address to listen on.
    :param port: the port (0: a free one).
    :param clock: "now" in seconds since the epoch (default: the real clock, plus `advance`).
    """

    def __init__(
        self,
        access_key_id: str = "LTAI-stand-in",
        access_key_secret: str | None = None,
        *,
        region: str = DEFAULT_REGION,
        buckets: Iterable[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.access_key_id = access_key_id
        self.access_key_secret = access_key_secret or secrets.token_urlsafe(24)
        self.region = region
        self.buckets = None if buckets is None else set(buckets)
        self._host, self._port = host, port
        self._base_clock = clock or time.time
        self._offset = 0.0
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str], StoredObject] = {}
        self._uploads: dict[str, dict[str, Any]] = {}
        self._requests: list[RecordedRequest] = []
        self._refused = 0
        self.verifier = SignatureV4Verifier({access_key_id: self.access_key_secret}, region, self.now)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        # The secret is the one thing this object must never show.
        return f"OssStandIn(endpoint={self.endpoint if self._server else None!r}, region={self.region!r})"

    # ---- lifecycle

    def start(self) -> OssStandIn:
        """Listen and serve in a daemon thread."""
        if self._server is not None:
            return self
        handler = type("_BoundHandler", (_Handler,), {"stand_in": self})
        server = ThreadingHTTPServer((self._host, self._port), handler)
        server.daemon_threads = True
        self._server = server
        # A short poll interval: stop() returns at once instead of after the default half second.
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="oss-stand-in", daemon=True)  # fmt: skip
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> OssStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- what tests read

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``: the connection's ``endpoint`` extra."""
        if self._server is None:
            raise RuntimeError("the OSS stand-in is not running; use it as a context manager or call start()")
        return f"http://{self._host}:{self._server.server_address[1]}"

    @property
    def objects(self) -> dict[str, bytes]:
        """A snapshot: ``"bucket/key"`` → bytes."""
        with self._lock:
            return {f"{bucket}/{key}": obj.data for (bucket, key), obj in sorted(self._objects.items())}

    @property
    def refused(self) -> int:
        """How many requests failed the signature or credential checks."""
        with self._lock:
            return self._refused

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def pending_uploads(self) -> int:
        """Multipart uploads initiated and neither completed nor aborted."""
        with self._lock:
            return len(self._uploads)

    def get(self, bucket: str, key: str) -> StoredObject | None:
        """The stored object, or None."""
        with self._lock:
            return self._objects.get((bucket, key))

    def put(self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store an object directly (no request, no signature): for setting up a test."""
        with self._lock:
            self._objects[(bucket, key)] = _stored(data, content_type, self.now())

    def advance(self, seconds: float) -> None:
        """Move the stand-in's clock forward, e.g. past a presigned URL's expiry."""
        with self._lock:
            self._offset += seconds

    def now(self) -> float:
        """The stand-in's time, seconds since the epoch."""
        return self._base_clock() + self._offset

    def connection_extra(self) -> dict[str, str]:
        """The Extra of an ``oss`` Airflow connection that points at this stand-in."""
        return {
            "auth_type": "AK",
            "access_key_id": self.access_key_id,
            "access_key_secret": self.access_key_secret,
            "region": self.region,
            "endpoint": self.endpoint,
        }

    def connection_json(self, **extra: Any) -> str:
        """``AIRFLOW_CONN_<ID>`` JSON for an ``oss`` connection pointing here (``extra`` overrides fields)."""
        return json.dumps({"conn_type": "oss", "extra": {**self.connection_extra(), **extra}})

    # ---- request handling (called by _Handler, one thread per connection)

    def _record(self, entry: RecordedRequest, *, auth_refusal: bool) -> None:
        with self._lock:
            self._requests.append(entry)
            if auth_refusal:
                self._refused += 1

    def _bucket_exists(self, bucket: str) -> bool:
        return self.buckets is None or bucket in self.buckets


@dataclass
class _Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    operation: str = ""
    code: str | None = None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "AliyunOSS"
    sys_version = ""
    stand_in: OssStandIn  # set on the bound subclass

    def log_message(self, format: str, *args: Any) -> None:
        return None  # quiet: tests read `requests` instead

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    # ---- plumbing

    def _handle(self) -> None:
        stand_in = self.stand_in
        request_id = secrets.token_hex(12).upper()
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        pairs = _query_pairs(parts.query)
        headers = {name.lower(): ",".join(self.headers.get_all(name) or []) for name in set(self.headers.keys())}
        bucket, key = _split_path(path)
        auth = Authenticated("anonymous", None)
        operation = ""
        auth_refusal = False
        try:
            body = self._read_body()
            try:
                auth = stand_in.verifier.verify(self.command, _canonical_path(bucket, key), parts.query, headers, body)
            except Refusal as refusal:
                auth_refusal = refusal.auth
                raise
            _check_md5(headers, body)
            response = _route(stand_in, self.command, bucket, key, pairs, headers, body)
            operation = response.operation
        except Refusal as refusal:
            response = _error(refusal, request_id, self.command, bucket, key, self.headers.get("Host", ""))
            if auth_refusal:
                auth = _claimed(headers, pairs)
        except _BadRequestBody:
            response = _error(Refusal(400, "InvalidRequest", "The request body could not be read."), request_id,
                              self.command, bucket, key, self.headers.get("Host", ""))  # fmt: skip
            self.close_connection = True
        stand_in._record(
            RecordedRequest(
                method=self.command,
                operation=operation,
                bucket=bucket,
                key=key,
                auth=auth.kind,
                access_key_id=auth.access_key_id,
                status=response.status,
                code=response.code,
                query=tuple((name, value) for name, value in pairs if name != "x-oss-signature"),
                signed_headers=auth.signed_headers,
            ),
            auth_refusal=auth_refusal,
        )
        self._send(response, request_id)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise _BadRequestBody from None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(16)
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        try:
            size = int(length)
        except ValueError:
            raise _BadRequestBody from None
        data = self.rfile.read(size)
        if len(data) != size:
            raise _BadRequestBody
        return data

    def _send(self, response: _Response, request_id: str) -> None:
        self.send_response(response.status)
        headers = {
            "x-oss-request-id": request_id,
            "Date": formatdate(self.stand_in.now(), usegmt=True),
            "Content-Length": str(len(response.body)),
            **response.headers,
        }
        if self.command == "HEAD" and "Content-Length" in response.headers:
            headers["Content-Length"] = response.headers["Content-Length"]
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and response.body:
            self.wfile.write(response.body)


class _BadRequestBody(Exception):
    pass


def _claimed(headers: Mapping[str, str], pairs: list[tuple[str, str]]) -> Authenticated:
    """Who a refused request claimed to be (the AccessKey ID only), for the request record."""
    credential = dict(pairs).get("x-oss-credential")
    kind = "presigned" if credential else "anonymous"
    authorization = headers.get("authorization", "")
    if "Credential=" in authorization:
        kind = "header"
        credential = authorization.split("Credential=", 1)[1].split(",", 1)[0]
    key_id = credential.split("/", 1)[0] if credential else None
    return Authenticated(kind, key_id or None)


def _split_path(path: str) -> tuple[str | None, str | None]:
    trimmed = path[1:] if path.startswith("/") else path
    if not trimmed:
        return None, None
    bucket, slash, key = trimmed.partition("/")
    return bucket, (key if slash else None) or None


def _canonical_path(bucket: str | None, key: str | None) -> str:
    if bucket is None:
        return "/"
    return f"/{bucket}/{key or ''}"


def _check_md5(headers: Mapping[str, str], body: bytes) -> None:
    sent = headers.get("content-md5")
    if sent is None:
        return
    try:
        digest = base64.b64decode(sent, validate=True)
    except ValueError:
        digest = b""
    if len(digest) != 16:
        raise Refusal(400, "InvalidDigest", "The Content-MD5 you specified is not valid.")
    if not hmac.compare_digest(digest, hashlib.md5(body).digest()):
        raise Refusal(400, "BadDigest", "The Content-MD5 you specified did not match what was received.")


def _error(refusal: Refusal, request_id: str, method: str, bucket: str | None, key: str | None, host: str) -> _Response:
    fields = {"Code": refusal.code, "Message": refusal.message, "RequestId": request_id, "HostId": host}
    if bucket:
        fields.setdefault("BucketName", bucket)
    if key:
        fields.setdefault("Key", key)
    fields.update(refusal.fields)
    xml = _xml("Error", fields)
    headers = {"Content-Type": "application/xml"}
    if method == "HEAD":
        # HEAD replies have no body: OSS sends the error document base64-encoded in x-oss-err.
        headers["x-oss-err"] = base64.b64encode(xml).decode("ascii")
        return _Response(refusal.status, headers, b"", code=refusal.code)
    return _Response(refusal.status, headers, xml, code=refusal.code)


def _xml(root: str, fields: Mapping[str, Any]) -> bytes:
    inner = "".join(_element(name, value) for name, value in fields.items())
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}>{inner}</{root}>'.encode()


def _element(name: str, value: Any) -> str:
    if isinstance(value, list):
        return "".join(_element(name, item) for item in value)
    if isinstance(value, dict):
        return f"<{name}>{''.join(_element(k, v) for k, v in value.items())}</{name}>"
    return f"<{name}>{escape(str(value))}</{name}>"


def _stored(
    data: bytes, content_type: str, now: float, etag: str | None = None, object_type: str = "Normal"
) -> StoredObject:
    etag = etag or f'"{hashlib.md5(data).hexdigest().upper()}"'
    return StoredObject(data, content_type, etag, now, object_type)


def _object_headers(obj: StoredObject) -> dict[str, str]:
    return {
        "Content-Type": obj.content_type,
        "ETag": obj.etag,
        "Last-Modified": formatdate(obj.last_modified, usegmt=True),
        "Accept-Ranges": "bytes",
        "x-oss-object-type": obj.object_type,
        "x-oss-storage-class": "Standard",
        "x-oss-hash-crc64ecma": str(obj.crc64()),
    }


# --------------------------------------------------------------------------------------------
# Operations
# --------------------------------------------------------------------------------------------


def _route(
    stand_in: OssStandIn,
    method: str,
    bucket: str | None,
    key: str | None,
    pairs: list[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes,
) -> _Response:
    params = {name: value for name, value in pairs if not name.startswith("x-oss-")}
    if bucket is None:
        raise Refusal(501, "NotImplemented", "This OSS stand-in does not implement service-level operations.")
    if not stand_in._bucket_exists(bucket):
        raise Refusal(404, "NoSuchBucket", "The specified bucket does not exist.")
    if key is None:
        unknown = set(params) - _LIST_PARAMS
        if method == "GET" and params.get("list-type") == "2" and not unknown:
            return _list_objects_v2(stand_in, bucket, params)
        raise Refusal(501, "NotImplemented", f"This OSS stand-in implements only ListObjectsV2 on buckets "
                      f"(got {method} ?{'&'.join(sorted(params)) or ''}).")  # fmt: skip
    unknown = set(params) - _OBJECT_PARAMS
    if unknown:
        raise Refusal(501, "NotImplemented", f"This OSS stand-in does not implement ?{sorted(unknown)[0]}.")
    if method == "PUT" and "uploadId" in params:
        return _upload_part(stand_in, bucket, key, params, body)
    if method == "PUT" and "x-oss-copy-source" in headers:
        return _copy_object(stand_in, bucket, key, headers)
    if method == "PUT":
        return _put_object(stand_in, bucket, key, headers, body)
    if method == "POST" and "uploads" in params:
        return _initiate_upload(stand_in, bucket, key, headers)
    if method == "POST" and "uploadId" in params:
        return _complete_upload(stand_in, bucket, key, params["uploadId"], body)
    if method == "DELETE" and "uploadId" in params:
        return _abort_upload(stand_in, params["uploadId"])
    if method == "DELETE":
        with stand_in._lock:
            stand_in._objects.pop((bucket, key), None)
        return _Response(204, operation="DeleteObject")
    if method in ("GET", "HEAD"):
        return _get_object(stand_in, method, bucket, key, headers)
    raise Refusal(405, "MethodNotAllowed", f"The specified method is not allowed against this resource: {method}.")


def _exists() -> Refusal:
    return Refusal(409, "FileAlreadyExists", "The object you specified already exists and can not be overwritten.")


def _put_object(stand_in: OssStandIn, bucket: str, key: str, headers: Mapping[str, str], body: bytes) -> _Response:
    obj = _stored(body, headers.get("content-type") or "application/octet-stream", stand_in.now())
    with stand_in._lock:
        if headers.get("x-oss-forbid-overwrite", "").lower() == "true" and (bucket, key) in stand_in._objects:
            raise _exists()
        stand_in._objects[(bucket, key)] = obj
    return _Response(200, {"ETag": obj.etag, "x-oss-hash-crc64ecma": str(obj.crc64()),
                           "Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode()},
                     operation="PutObject")  # fmt: skip


def _get_object(stand_in: OssStandIn, method: str, bucket: str, key: str, headers: Mapping[str, str]) -> _Response:
    operation = "GetObject" if method == "GET" else "HeadObject"
    with stand_in._lock:
        obj = stand_in._objects.get((bucket, key))
    if obj is None:
        raise Refusal(404, "NoSuchKey", "The specified key does not exist.")
    if_match = headers.get("if-match")
    if if_match is not None and if_match.strip() not in (obj.etag, "*"):
        raise Refusal(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold.")
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None and if_none_match.strip() in (obj.etag, "*"):
        return _Response(304, {"ETag": obj.etag}, operation=operation)
    response_headers = _object_headers(obj)
    size = len(obj.data)
    data = obj.data
    status = 200
    window = _range(headers.get("range"), size, headers.get("x-oss-range-behavior", "").lower() == "standard")
    if window is not None:
        start, end = window
        data = obj.data[start : end + 1]
        status = 206
        response_headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    response_headers["Content-Length"] = str(len(data))
    return _Response(status, response_headers, data if method == "GET" else b"", operation=operation)


def _range(header: str | None, size: int, standard: bool) -> tuple[int, int] | None:
    """The inclusive byte window a Range header asks for; None for the whole object.

    OSS's default behaviour ignores a range it cannot satisfy and returns the whole object; with
    ``x-oss-range-behavior: standard`` a start past the end is 416 ``InvalidRange`` and an end past
    the end is clipped, as HTTP specifies.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            count = int(last)
            start, end = max(0, size - count), size - 1
            if count <= 0:
                raise ValueError
        else:
            start = int(first)
            end = int(last) if last else size - 1
    except ValueError:
        return None
    if start > end and last:
        return None
    if start >= size:
        if standard:
            raise Refusal(416, "InvalidRange", "The requested range cannot be satisfied.")
        return None
    if end >= size:
        if not standard:
            return None
        end = size - 1
    return start, end


def _copy_object(stand_in: OssStandIn, bucket: str, key: str, headers: Mapping[str, str]) -> _Response:
    source = unquote(headers["x-oss-copy-source"].split("?", 1)[0])
    source_bucket, source_key = _split_path(source)
    if not source_bucket or not source_key:
        raise Refusal(400, "InvalidArgument", "x-oss-copy-source must be /bucket/key.")
    if not stand_in._bucket_exists(source_bucket):
        raise Refusal(404, "NoSuchBucket", "The specified bucket does not exist.")
    with stand_in._lock:
        origin = stand_in._objects.get((source_bucket, source_key))
        if origin is None:
            raise Refusal(404, "NoSuchKey", "The specified key does not exist.")
        if headers.get("x-oss-forbid-overwrite", "").lower() == "true" and (bucket, key) in stand_in._objects:
            raise _exists()
        replace = headers.get("x-oss-metadata-directive", "").upper() == "REPLACE"
        content_type = (headers.get("content-type") if replace else None) or origin.content_type
        copied = StoredObject(origin.data, content_type, origin.etag, stand_in.now(), origin.object_type, origin.crc)
        stand_in._objects[(bucket, key)] = copied
    body = _xml("CopyObjectResult", {"ETag": copied.etag, "LastModified": _iso8601(copied.last_modified)})
    return _Response(200, {"Content-Type": "application/xml", "ETag": copied.etag,
                           "x-oss-hash-crc64ecma": str(copied.crc64())}, body, operation="CopyObject")  # fmt: skip


def _list_objects_v2(stand_in: OssStandIn, bucket: str, params: Mapping[str, str]) -> _Response:
    prefix = params.get("prefix", "")
    delimiter = params.get("delimiter", "")
    url_encoded = params.get("encoding-type") == "url"
    try:
        max_keys = int(params.get("max-keys", DEFAULT_MAX_KEYS))
    except ValueError:
        max_keys = -1
    if not 1 <= max_keys <= MAX_KEYS:
        raise Refusal(400, "InvalidArgument", f"max-keys must be between 1 and {MAX_KEYS}.")
    token = params.get("continuation-token")
    after = params.get("start-after", "")
    skip_under = None
    if token:
        try:
            after = base64.urlsafe_b64decode(token.encode()).decode("utf-8")
        except ValueError:
            raise Refusal(400, "InvalidArgument", "The continuation token is not valid.") from None
        if delimiter and after.endswith(delimiter):
            skip_under = after  # the previous page ended with this common prefix: skip its keys
    with stand_in._lock:
        keys = sorted((k, obj) for (b, k), obj in stand_in._objects.items() if b == bucket and k.startswith(prefix))
    contents: list[tuple[str, StoredObject]] = []
    prefixes: list[str] = []
    last = ""
    truncated = False
    for name, obj in keys:
        if name <= after or (skip_under is not None and name.startswith(skip_under)):
            continue
        rolled = None
        if delimiter:
            cut = name.find(delimiter, len(prefix))
            if cut >= 0:
                rolled = name[: cut + len(delimiter)]
        if rolled is not None and prefixes and prefixes[-1] == rolled:
            continue
        if len(contents) + len(prefixes) == max_keys:
            truncated = True
            break
        if rolled is not None:
            prefixes.append(rolled)
            last = rolled
        else:
            contents.append((name, obj))
            last = name

    def shown(text: str) -> str:
        return quote(text, safe="") if url_encoded else text

    fields: dict[str, Any] = {"Name": bucket, "Prefix": shown(prefix), "MaxKeys": max_keys}
    if delimiter:
        fields["Delimiter"] = shown(delimiter)
    if url_encoded:
        fields["EncodingType"] = "url"
    if token:
        fields["ContinuationToken"] = shown(token)
    if params.get("start-after"):
        fields["StartAfter"] = shown(params["start-after"])
    fields["IsTruncated"] = "true" if truncated else "false"
    if truncated:
        fields["NextContinuationToken"] = shown(base64.urlsafe_b64encode(last.encode()).decode())
    fields["KeyCount"] = len(contents) + len(prefixes)
    fields["Contents"] = [
        {"Key": shown(name), "LastModified": _iso8601(obj.last_modified), "ETag": obj.etag, "Type": obj.object_type,
         "Size": len(obj.data), "StorageClass": "Standard"}
        for name, obj in contents
    ]  # fmt: skip
    fields["CommonPrefixes"] = [{"Prefix": shown(name)} for name in prefixes]
    return _Response(200, {"Content-Type": "application/xml"}, _xml("ListBucketResult", fields),
                     operation="ListObjectsV2")  # fmt: skip


def _initiate_upload(stand_in: OssStandIn, bucket: str, key: str, headers: Mapping[str, str]) -> _Response:
    upload_id = secrets.token_hex(16).upper()
    with stand_in._lock:
        stand_in._uploads[upload_id] = {
            "bucket": bucket,
            "key": key,
            "content_type": headers.get("content-type") or "application/octet-stream",
            "parts": {},
        }
    body = _xml("InitiateMultipartUploadResult", {"Bucket": bucket, "Key": key, "UploadId": upload_id})
    return _Response(200, {"Content-Type": "application/xml"}, body, operation="InitiateMultipartUpload")


def _upload_part(stand_in: OssStandIn, bucket: str, key: str, params: Mapping[str, str], body: bytes) -> _Response:
    try:
        number = int(params.get("partNumber", ""))
    except ValueError:
        number = 0
    if not 1 <= number <= 10_000:
        raise Refusal(400, "InvalidArgument", "partNumber must be between 1 and 10000.")
    etag = f'"{hashlib.md5(body).hexdigest().upper()}"'
    with stand_in._lock:
        upload = stand_in._uploads.get(params["uploadId"])
        if upload is None or (upload["bucket"], upload["key"]) != (bucket, key):
            raise Refusal(404, "NoSuchUpload", "The specified upload does not exist.")
        upload["parts"][number] = (body, etag)
    return _Response(200, {"ETag": etag, "x-oss-hash-crc64ecma": str(crc64(body))}, operation="UploadPart")


def _complete_upload(stand_in: OssStandIn, bucket: str, key: str, upload_id: str, body: bytes) -> _Response:
    try:
        root = ElementTree.fromstring(body)
        listed = [(int(part.findtext("PartNumber", "")), (part.findtext("ETag") or "").strip())
                  for part in root.findall("Part")]  # fmt: skip
    except (ElementTree.ParseError, ValueError):
        raise Refusal(400, "MalformedXML", "The XML you provided was not well-formed.") from None
    with stand_in._lock:
        upload = stand_in._uploads.get(upload_id)
        if upload is None or (upload["bucket"], upload["key"]) != (bucket, key):
            raise Refusal(404, "NoSuchUpload", "The specified upload does not exist.")
        if not listed or [n for n, _ in listed] != sorted({n for n, _ in listed}):
            raise Refusal(400, "InvalidPartOrder", "The list of parts was not in ascending order.")
        chunks = []
        digests = b""
        for index, (number, etag) in enumerate(listed):
            stored = upload["parts"].get(number)
            if stored is None or stored[1] != etag:
                raise Refusal(400, "InvalidPart", "One or more of the specified parts could not be found.")
            if index < len(listed) - 1 and len(stored[0]) < MIN_PART_SIZE:
                raise Refusal(400, "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed size.")
            chunks.append(stored[0])
            digests += bytes.fromhex(etag.strip('"'))
        etag = f'"{hashlib.md5(digests).hexdigest().upper()}-{len(listed)}"'
        obj = _stored(b"".join(chunks), upload["content_type"], stand_in.now(), etag, "Multipart")
        stand_in._objects[(bucket, key)] = obj
        del stand_in._uploads[upload_id]
    result = _xml("CompleteMultipartUploadResult", {"Location": f"/{bucket}/{key}", "Bucket": bucket, "Key": key,
                                                    "ETag": etag})  # fmt: skip
    return _Response(200, {"Content-Type": "application/xml", "ETag": etag, "x-oss-hash-crc64ecma": str(obj.crc64())},
                     result, operation="CompleteMultipartUpload")  # fmt: skip


def _abort_upload(stand_in: OssStandIn, upload_id: str) -> _Response:
    with stand_in._lock:
        if stand_in._uploads.pop(upload_id, None) is None:
            raise Refusal(404, "NoSuchUpload", "The specified upload does not exist.")
    return _Response(204, operation="AbortMultipartUpload")


def _iso8601(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(seconds))

