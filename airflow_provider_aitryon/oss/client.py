"""The OSS SDK client, built from `OssSettings` with every request bounded, and its errors as one sentence.

Why the official SDK (``alibabacloud-oss-v2``) and not ``ossfs``: it is what the official Airflow
Alibaba provider's ``OSSHook`` uses, it signs with V4 (``OSS4-HMAC-SHA256``), and it is
synchronous and small (requests, crcmod, pycryptodome). ``ossfs`` pins the older ``oss2`` SDK (V1
signatures) and its async file system does not work with current aiohttp.

Bounds of every call (the SDK's own defaults are looser):

* ``connect_timeout`` / ``read_timeout`` on each connection attempt and each socket read;
* ``max_attempts`` tries of one request, with full-jitter backoff capped at `MAX_BACKOFF` seconds;
* ``operation_timeout``: the SDK stops retrying a call once this many seconds have passed;
* a response body is read in chunks against the same deadline (`read_body`), so a server that
  answers slowly but steadily cannot hold a worker past it either.

SDK options chosen, and why:

* ``signature_version="v4"``: V1 is deprecated by Alibaba Cloud and V4 scopes a signature to a
  region and a day.
* Addressing: left to the SDK. It uses virtual-hosted style (``bucket.oss-cn-beijing.aliyuncs.com``),
  which public and VPC (``-internal``) endpoints need, and switches to path style by itself when
  the endpoint is an IP address (a local stand-in at ``http://127.0.0.1:<port>``). Forcing
  ``use_path_style`` would break real endpoints; ``use_cname`` would send every bucket to one host.
* CRC-64 checks on upload stay on (the SDK compares the server's ``x-oss-hash-crc64ecma``).

Errors: the SDK's exceptions carry the request URL and, for a refused signature, OSS's reply
(which can quote the signature). `translate` keeps only the status, the OSS error code and the
request id, adds what to do, and is raised ``from None`` so the SDK's text is not chained in.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import IO, Any, TypeVar

from airflow_provider_aitryon import __version__
from airflow_provider_aitryon.oss.errors import (
    INSTALL_HINT,
    OssAccessDenied,
    OssError,
    OssExtraMissing,
    OssNotFound,
)
from airflow_provider_aitryon.oss.settings import OssSettings

T = TypeVar("T")

# Full-jitter backoff between tries of one request: base and cap, seconds.
BASE_BACKOFF = 0.2
MAX_BACKOFF = 5.0
CHUNK_SIZE = 256 * 1024
USER_AGENT = f"airflow-provider-aitryon/{__version__}"

# What to do about an OSS error code (the code itself is shown too).
_FIXES = {
    "SignatureDoesNotMatch": "the access_key_secret of connection {conn} does not belong to its access_key_id, or "
    "the region does not match the endpoint; correct them in the connection",
    "InvalidAccessKeyId": "OSS does not know the access_key_id of connection {conn}; correct it or create a new "
    "AccessKey in the RAM console",
    "AccessDenied": "the AccessKey of connection {conn} may not do this; grant its RAM user the OSS permission "
    "(oss:{action}) on this bucket",
    "RequestTimeTooSkewed": "this worker's clock is more than 15 minutes off; synchronise it (NTP)",
    "NoSuchBucket": "check the bucket name and that the connection's region or endpoint is the bucket's",
    "NoSuchKey": "check the object name",
    "InvalidRange": "the requested byte range starts past the end of the object",
    "PreconditionFailed": "the object changed while it was being read; read it again",
    "RequestTimeout": "OSS timed out waiting for the request body; try again",
}
# RAM action names, for the AccessDenied fix.
_RAM_ACTIONS = {
    "GetObject": "GetObject",
    "HeadObject": "GetObject",
    "PutObject": "PutObject",
    "CopyObject": "PutObject and oss:GetObject",
    "DeleteObject": "DeleteObject",
    "ListObjectsV2": "ListObjects",
    "InitiateMultipartUpload": "PutObject",
    "UploadPart": "PutObject",
    "CompleteMultipartUpload": "PutObject",
    "AbortMultipartUpload": "AbortMultipartUpload",
}
_RETRYABLE_STATUSES = frozenset({408, 429})
# 64 hex characters is what a V4 signature looks like; never echo one, whatever the server said.
_SIGNATURE_LIKE = re.compile(r"[0-9a-fA-F]{64}")


def require_sdk() -> ModuleType:
    """The ``alibabacloud_oss_v2`` module, or one sentence naming the extra to install.

    :raises OssExtraMissing: the ``oss`` extra is not installed.
    """
    try:
        import alibabacloud_oss_v2
    except ImportError:
        raise OssExtraMissing(
            f"oss:// needs the Alibaba Cloud OSS SDK, which is not installed; run {INSTALL_HINT} on every "
            "worker, scheduler and triggerer."
        ) from None
    return alibabacloud_oss_v2


@functools.lru_cache(maxsize=16)
def get_client(settings: OssSettings) -> Any:
    """The SDK client for these settings; one per settings value, shared by threads (requests pools).

    :param settings: the connection's settings.
    :raises OssExtraMissing: the ``oss`` extra is not installed.
    """
    oss = require_sdk()
    config = oss.config.Config(
        region=settings.region,
        endpoint=settings.endpoint,
        signature_version="v4",
        credentials_provider=oss.credentials.StaticCredentialsProvider(
            settings.access_key_id, settings.access_key_secret
        ),
        connect_timeout=settings.connect_timeout,
        readwrite_timeout=settings.read_timeout,
        retryer=oss.retry.StandardRetryer(
            max_attempts=settings.max_attempts, max_backoff=MAX_BACKOFF, base_delay=BASE_BACKOFF
        ),
        user_agent=USER_AGENT,
    )
    return oss.Client(config)


def call(settings: OssSettings, action: str, uri: str, fn: Callable[..., T], request: Any, **kwargs: Any) -> T:
    """Run one SDK operation within the connection's bounds; its failure as an `OssError`.

    :param settings: the connection's settings.
    :param action: the OSS operation's name (``GetObject``, ...), for messages.
    :param uri: the ``oss://`` URI it concerns, for messages.
    :param fn: the bound SDK method, e.g. ``client.get_object``.
    :param request: the SDK request model.
    :param kwargs: further keyword arguments for the SDK method.
    :raises OssError: OSS refused or could not be reached (`OssNotFound`, `OssAccessDenied`).
    """
    try:
        return fn(request, operation_timeout=settings.operation_timeout, **kwargs)
    except Exception as exc:  # the SDK raises its own hierarchy, wrapped in OperationError
        raise translate(exc, settings=settings, action=action, uri=uri) from None


def read_body(
    result: Any,
    *,
    settings: OssSettings,
    action: str,
    uri: str,
    started: float,
    sink: IO[bytes] | None = None,
) -> bytes:
    """Read a streamed GetObject body in chunks, within ``operation_timeout`` of ``started``.

    :param result: the SDK's GetObject result, whose ``body`` is still unread.
    :param settings: the connection's settings (the deadline).
    :param action: the operation, for messages.
    :param uri: the object's URI, for messages.
    :param started: ``time.monotonic()`` when the call began.
    :param sink: write the bytes here instead of returning them (then ``b""`` is returned).
    :raises OssError: the deadline passed or the connection broke mid-body (retryable).
    """
    deadline = started + settings.operation_timeout
    chunks: list[bytes] = []
    received = 0
    body = result.body
    try:
        for chunk in _chunks(body):
            received += len(chunk)
            if sink is not None:
                sink.write(chunk)
            else:
                chunks.append(chunk)
            if time.monotonic() > deadline:
                raise OssError(
                    f"reading {uri} from OSS took longer than operation_timeout ({settings.operation_timeout:g} s) "
                    f"after {received} bytes; raise operation_timeout in connection {settings.conn_id!r} for "
                    "objects this large or slow.",
                    retryable=True,
                )
    except OssError:
        raise
    except Exception as exc:  # requests/urllib3 errors while streaming
        raise OssError(
            f"the connection to OSS at {settings.endpoint_host} broke while reading {uri} after {received} bytes "
            f"({type(exc).__name__}); the read can be retried.",
            retryable=True,
        ) from None
    finally:
        body.close()
    return b"".join(chunks)


def translate(exc: BaseException, *, settings: OssSettings, action: str, uri: str) -> OssError:
    """One sentence for an SDK exception: what failed, OSS's code and request id, and what to do.

    Nothing of the SDK's own text is kept: it quotes the request URL and OSS's reply, which for a
    refused signature includes the signature.

    :param exc: what the SDK raised.
    :param settings: the connection's settings (its id and endpoint are named).
    :param action: the OSS operation.
    :param uri: the ``oss://`` URI concerned.
    """
    oss = require_sdk()
    errors = oss.exceptions
    inner: BaseException = exc
    # OperationError wraps the real error; RequestError/ResponseError may wrap once more.
    for _ in range(3):
        unwrap = getattr(inner, "unwrap", None)
        nested = unwrap() if callable(unwrap) else None
        if not isinstance(nested, BaseException):
            break
        inner = nested
    if isinstance(inner, errors.ServiceError):
        return _service_error(inner, settings=settings, action=action, uri=uri)
    if isinstance(inner, errors.InconsistentError):
        return OssError(
            f"OSS {action} {uri} failed: the CRC-64 OSS computed differs from the data sent, so the data was "
            "corrupted on the way; the upload can be retried.",
            retryable=True,
        )
    if isinstance(inner, errors.CredentialsBaseError):
        return OssError(
            f"OSS {action} {uri} failed: the credentials of connection {settings.conn_id!r} could not be used "
            f"({type(inner).__name__}); check access_key_id and access_key_secret.",
        )
    if isinstance(inner, (errors.BucketNameInvalidError, errors.ObjectNameInvalidError)):
        return OssError(f"OSS {action} {uri} was not sent: the SDK refuses the bucket or object name; fix the URI.")
    if isinstance(inner, OSError) or type(inner).__module__.startswith(("requests", "urllib3")):
        return _unreachable(inner, settings=settings, action=action, uri=uri)
    if isinstance(inner, (errors.RequestError, errors.ResponseError)):
        return _unreachable(inner, settings=settings, action=action, uri=uri)
    return OssError(f"OSS {action} {uri} failed ({type(inner).__name__}); see the worker log for the SDK's trace.")


def _service_error(error: Any, *, settings: OssSettings, action: str, uri: str) -> OssError:
    status = int(getattr(error, "status_code", 0) or 0)
    code = str(getattr(error, "code", "") or "") or None
    request_id = str(getattr(error, "request_id", "") or "") or None
    what = " ".join(part for part in (f"HTTP {status}" if status else "", code or "") if part)
    text = f"OSS refused {action} {uri} ({what}"
    if request_id:
        text += f", request id {request_id}"
    text += ")"
    fix = _FIXES.get(code or "")
    if fix:
        text += "; " + fix.format(conn=repr(settings.conn_id), action=_RAM_ACTIONS.get(action, action))
    else:
        message = _SIGNATURE_LIKE.sub("…", str(getattr(error, "message", "") or "")).strip().rstrip(".")
        if message:
            text += f": {message[:200]}"
    text += "."
    retryable = status >= 500 or status in _RETRYABLE_STATUSES or code in ("RequestTimeout", "RequestTimeTooSkewed")
    kwargs: dict[str, Any] = {"status": status or None, "code": code, "request_id": request_id, "retryable": retryable}
    if status == 404 or code in ("NoSuchKey", "NoSuchBucket"):
        return OssNotFound(text, **kwargs)
    if status == 403:
        return OssAccessDenied(text, **kwargs)
    return OssError(text, **kwargs)


def _unreachable(error: BaseException, *, settings: OssSettings, action: str, uri: str) -> OssError:
    # The exception's own text names the URL and sometimes headers: keep only its kind.
    kind = type(error).__name__
    return OssError(
        f"could not reach OSS at {settings.endpoint_host} for {action} {uri} within {settings.max_attempts} "
        f"attempt(s) ({kind}); check the endpoint or region of connection {settings.conn_id!r} and the network.",
        retryable=True,
    )


def _chunks(body: Any) -> Iterator[bytes]:
    iter_bytes = getattr(body, "iter_bytes", None)
    if callable(iter_bytes):
        yield from iter_bytes(block_size=CHUNK_SIZE)
    else:  # a body the SDK already read (non-streamed)
        yield body.read()
