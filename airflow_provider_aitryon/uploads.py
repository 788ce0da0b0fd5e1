"""Local image files for development: upload them to DashScope's temporary storage, get ``oss://`` URLs.

DashScope only fetches inputs from URLs. For development without a public host or an OSS bucket,
the vendor offers free temporary storage: ask for an upload policy, post the file to the OSS host
the policy names, and pass the resulting ``oss://`` URL in the submit together with the header
``X-DashScope-OssResourceResolve: enable``. This module does that the way the official SDK does
(``dashscope`` 2.0.2, ``dashscope/utils/oss_utils.py``, ``OssUtils.upload``):

1. ``GET {base_url}/api/v1/uploads?action=getPolicy&model=<model>`` with the API key; the reply's
   ``data`` holds ``policy``, ``signature``, ``upload_dir``, ``upload_host``, ``oss_access_key_id``,
   ``x_oss_object_acl``, ``x_oss_forbid_overwrite`` (what the SDK reads) and, per the vendor page,
   ``expire_in_seconds``, ``max_file_size_mb`` and ``capacity_limit_mb``;
2. a ``multipart/form-data`` POST to ``upload_host`` (no API key) with the fields ``OSSAccessKeyId``,
   ``Signature``, ``policy``, ``key`` = ``<upload_dir>/<file name>``, ``x-oss-object-acl``,
   ``x-oss-forbid-overwrite``, ``success_action_status`` = ``200``, ``x-oss-content-type`` and, last,
   ``file``; OSS answers 200;
3. the file is then ``oss://<key>``, e.g. ``oss://dashscope-instant/<hash>/<date>/<uuid>/person.png``.

The vendor's terms: development and testing only; files are deleted after 48 hours; the policy
call is limited to 100 QPS per account and model; a file is bound to the model named at upload and
to the uploading account (use the same model and key for the submit). Production images belong in
OSS (``oss://bucket/key`` inputs, see ``docs/oss.rst``).

Where this differs from the SDK, on purpose:

* the file is checked **before** anything is sent: it exists, is a regular file, is at most 5 MB
  (the try-on input limit) and the policy's ``max_file_size_mb``, and passes the service's image
  rules (`image_rules`), so a bad file costs no request and no rate-limit slot;
* the bytes that were checked are the bytes uploaded (read once, no second open);
* the object name is the file name reduced to ``[A-Za-z0-9._-]`` (the ``oss://`` URL then needs no
  escaping anywhere it travels);
* a policy is reused per (endpoint, workspace, model, API key) until shortly before it expires, so
  uploading several files costs one policy call (the 100 QPS limit); a second file of the same
  name under one policy gets a fresh policy (a new ``upload_dir``: the policy forbids overwrites),
  and the same file again returns the URL it already has;
* every exchange is bounded (deadline, reply-size cap) by the provider's one HTTP core
  (`http_client`), and nothing secret reaches a log or an exception: not the API key, not the
  policy's signature, not its ``OSSAccessKeyId`` (a reply echoing one is scrubbed).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import re
import stat
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import httpx

from airflow_provider_aitryon import api
from airflow_provider_aitryon.errors import DashScopeAPIError, DashScopeConfigError
from airflow_provider_aitryon.http_client import (
    Bounds,
    Overdue,
    Reply,
    Stalled,
    TooLarge,
    aexchange,
    io_loop,
    is_io_loop,
    new_client,
    run_sync,
)
from airflow_provider_aitryon.image_rules import MAX_BYTES, ImageRuleError, check_byte_size, check_image

log = logging.getLogger(__name__)

T = TypeVar("T")

UPLOADS_PATH = "/api/v1/uploads"
# Sent with a submit whose inputs include oss:// URLs of the temporary storage: without it the
# service does not resolve them and the task fails.
OSS_RESOURCE_RESOLVE_HEADER: dict[str, str] = {"X-DashScope-OssResourceResolve": "enable"}
# Every upload_dir the service hands out starts with this; a URL under it is the temporary
# storage's, never a private bucket of the user's (so it must not be signed with an OSS connection).
TEMPORARY_URL_PREFIX = "oss://dashscope-instant/"
TEMPORARY_URL_VALIDITY_SECONDS = 48 * 3600
DEFAULT_BOUNDS = Bounds(connect_timeout=10.0, read_timeout=30.0, deadline=120.0, max_bytes=64 * 1024)

# Used only when a policy reply omits expire_in_seconds: reuse it briefly rather than never.
_ASSUMED_POLICY_SECONDS = 60.0
# A cached policy is retired this long (at most half its life) before it expires: the upload that
# uses it must reach OSS while it is still valid.
_POLICY_MARGIN_SECONDS = 60.0
_REQUIRED_POLICY_FIELDS = (
    "policy",
    "signature",
    "upload_dir",
    "upload_host",
    "oss_access_key_id",
    "x_oss_object_acl",
    "x_oss_forbid_overwrite",
)
_CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "BMP": "image/bmp",
    "DIB": "image/bmp",
    "WEBP": "image/webp",
    "HEIF": "image/heic",
}
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_XML_FIELD = {
    name: re.compile(rf"<{name}>([^<]{{1,300}})</{name}>".encode()) for name in ("Code", "Message", "RequestId")
}
REDACTED = "[redacted]"


# ----------------------------------------------------------------------------- recognising inputs


def is_temporary_url(value: object) -> bool:
    """Whether ``value`` is an ``oss://`` URL of DashScope's temporary storage (made by an upload).

    :param value: an image argument as given.
    """
    return isinstance(value, str) and value.strip().startswith(TEMPORARY_URL_PREFIX)


def local_image_path(value: str, *, field: str = "image") -> Path | None:
    """The local file an image argument names, or None when it is not a local path or ``file://`` URI.

    :param value: an absolute path (``~`` is expanded) or a ``file://`` URI (``file:///abs/path`` or
        ``file://localhost/abs/path``, percent-encoded as URIs are).
    :param field: the argument's name, for the error sentence.
    :raises DashScopeConfigError: a ``file://`` URI of another host, or a relative path.
    """
    text = value.strip()
    scheme = urlsplit(text).scheme.lower()
    if scheme == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise DashScopeConfigError(
                f"{field} {text!r} names a file on host {parts.netloc!r}; use file:///absolute/path or an "
                "absolute path on the machine that runs the task."
            )
        raw = unquote(parts.path)
    elif scheme == "":
        raw = text  # a plain path is taken literally: '?' and '#' are file name characters here
    else:
        return None
    path = Path(os.path.expanduser(raw))
    if not path.is_absolute():
        # A worker's working directory is not the DAG's folder, so a relative path would name a
        # different file (or none) depending on where the task happens to run.
        raise DashScopeConfigError(
            f"{field} {raw!r} is a relative path; use an absolute path (or file:///absolute/path) because the "
            "task's working directory is not the DAG folder."
        )
    return path


@dataclass(frozen=True)
class LocalImage:
    """A local image file that passed every check, read once: what is uploaded is what was checked.

    :param path: the file.
    :param data: its bytes.
    :param sha256: hex digest of ``data``.
    :param content_type: the MIME type of the format Pillow found in the content.
    """

    path: Path
    data: bytes = field(repr=False)
    sha256: str
    content_type: str

    @property
    def object_name(self) -> str:
        """The file name as an object name: ``[A-Za-z0-9._-]`` only, at most 100 characters."""
        name = _UNSAFE_NAME_CHARS.sub("_", self.path.name).strip("._") or "image"
        if len(name) > 100:
            stem, dot, ext = name.rpartition(".")
            name = (stem[: 99 - len(ext)] + dot + ext) if dot and len(ext) <= 10 else name[:100]
        return name


def read_local_image(value: str, *, field: str = "image") -> LocalImage:
    """Check and read a local image file; every refusal is one sentence naming the field and the fix.

    Checks, in order: a local path or ``file://`` URI; the file exists; it is a regular file; it is
    5 KB to 5 MB; its content is an image the service accepts (`image_rules.check_image`: format from
    the content, sides over 150 px and at most 4096 px). Nothing is sent anywhere.

    :param value: an absolute path or a ``file://`` URI.
    :param field: the argument's name, for the error sentence.
    :raises DashScopeConfigError: the file cannot be used.
    """
    path = local_image_path(value, field=field)
    if path is None:
        raise DashScopeConfigError(
            f"{field} {api.shown_url(value)!r} is not a local file; pass an absolute path or a file:// URI."
        )
    try:
        info = path.stat()
    except FileNotFoundError:
        raise DashScopeConfigError(
            f"{field}: the local file {path} does not exist; check the path (it is read on the machine that runs "
            "the task)."
        ) from None
    except OSError as exc:
        raise DashScopeConfigError(
            f"{field}: the local file {path} cannot be read ({exc.strerror or type(exc).__name__}); check the path "
            "and its permissions."
        ) from None
    if stat.S_ISDIR(info.st_mode):
        raise DashScopeConfigError(f"{field}: {path} is a directory, not an image file; name the image file itself.")
    if not stat.S_ISREG(info.st_mode):
        # A FIFO or device would block or stream forever: only regular files are read.
        raise DashScopeConfigError(f"{field}: {path} is not a regular file; name an image file (JPEG, PNG or BMP).")
    _check_size(info.st_size, path, field)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)  # the file may have grown since stat()
    except OSError as exc:
        raise DashScopeConfigError(
            f"{field}: the local file {path} cannot be read ({exc.strerror or type(exc).__name__}); check its "
            "permissions."
        ) from None
    _check_size(len(data), path, field)
    try:
        facts = check_image(data, field=field)
    except ImageRuleError as exc:
        raise DashScopeConfigError(
            f"{field}: the local file {path} was not uploaded because {exc.problem}; {exc.allowed}."
        ) from None
    return LocalImage(
        path=path,
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        content_type=_CONTENT_TYPES.get(facts.format, "application/octet-stream"),
    )


def _check_size(size: int, path: Path, field: str) -> None:
    try:
        check_byte_size(size, field=field, lower_bound=size > MAX_BYTES)
    except ImageRuleError as exc:
        raise DashScopeConfigError(
            f"{field}: the local file {path} was not uploaded because {exc.problem}; {exc.allowed} (resize or "
            "recompress it)."
        ) from None


# ----------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class UploadPolicy:
    """One upload policy from ``getPolicy``; its secrets stay out of ``repr``.

    :param upload_host: where the form is posted.
    :param upload_dir: the key prefix the policy allows.
    :param policy: the base64 policy document (form field ``policy``).
    :param signature: its signature (form field ``Signature``).
    :param oss_access_key_id: the form field ``OSSAccessKeyId``.
    :param x_oss_object_acl: the form field ``x-oss-object-acl``.
    :param x_oss_forbid_overwrite: the form field ``x-oss-forbid-overwrite``.
    :param expire_in_seconds: how long the policy is valid, if the reply said.
    :param max_file_size_mb: the largest file it allows, if the reply said.
    """

    upload_host: str
    upload_dir: str
    policy: str = field(repr=False)
    signature: str = field(repr=False)
    oss_access_key_id: str = field(repr=False)
    x_oss_object_acl: str
    x_oss_forbid_overwrite: str
    expire_in_seconds: float | None = None
    max_file_size_mb: float | None = None

    @classmethod
    def from_reply(cls, data: object, *, base_url: str) -> UploadPolicy:
        """Read the reply's ``data``; a missing field or an odd upload host is one sentence, never a KeyError.

        :param data: the reply's ``data`` object.
        :param base_url: the endpoint asked; an https endpoint's policy must post over https too.
        """
        if not isinstance(data, Mapping):
            raise _policy_error("the reply had no data object")
        missing = [name for name in _REQUIRED_POLICY_FIELDS if not isinstance(data.get(name), str) or not data[name]]
        if missing:
            raise _policy_error(f"the reply lacked data.{', data.'.join(missing)}")
        host = urlsplit(data["upload_host"])
        if host.scheme not in ("http", "https") or not host.hostname:
            raise _policy_error(f"the reply's upload_host {api.shown_url(data['upload_host'])!r} is not an http(s) URL")
        if urlsplit(base_url).scheme == "https" and host.scheme != "https":
            # The file must not leave over plain http when the API itself is reached over https.
            raise _policy_error(f"the reply's upload_host {api.shown_url(data['upload_host'])!r} is not https")
        return cls(
            upload_host=data["upload_host"],
            upload_dir=data["upload_dir"].strip("/"),
            policy=data["policy"],
            signature=data["signature"],
            oss_access_key_id=data["oss_access_key_id"],
            x_oss_object_acl=data["x_oss_object_acl"],
            x_oss_forbid_overwrite=data["x_oss_forbid_overwrite"],
            expire_in_seconds=_positive(data.get("expire_in_seconds")),
            max_file_size_mb=_positive(data.get("max_file_size_mb")),
        )

    def form(self, key: str, content_type: str) -> dict[str, str]:
        """The PostObject form fields, as the SDK sends them (the file goes last, separately).

        :param key: the object key, ``<upload_dir>/<name>``.
        :param content_type: the file's MIME type.
        """
        return {
            "OSSAccessKeyId": self.oss_access_key_id,
            "Signature": self.signature,
            "policy": self.policy,
            "key": key,
            "x-oss-object-acl": self.x_oss_object_acl,
            "x-oss-forbid-overwrite": self.x_oss_forbid_overwrite,
            "success_action_status": "200",
            "x-oss-content-type": content_type,
        }

    def secrets(self) -> tuple[str, ...]:
        """Values that must never be shown: scrubbed from any text built from a reply."""
        return (self.signature, self.oss_access_key_id, self.policy)


def _positive(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None


def _policy_error(problem: str) -> DashScopeAPIError:
    return DashScopeAPIError(
        operation="upload policy",
        message=f"{problem}, so local files cannot be uploaded; check that the connection's host is DashScope "
        "(temporary storage exists only in the China (Beijing) region)",
        retryable=False,
    )


@dataclass
class _CachedPolicy:
    policy: UploadPolicy
    fresh_until: float  # time.monotonic()
    names: dict[str, str] = field(default_factory=dict)  # object name -> sha256 uploaded under this policy


_POLICIES: dict[tuple[str, str, str, str], _CachedPolicy] = {}
_POLICIES_LOCK = threading.Lock()


def _now() -> float:
    return time.monotonic()


def clear_policy_cache() -> None:
    """Forget every cached upload policy (tests; a key rotation takes effect by itself: keys are part of the key)."""
    with _POLICIES_LOCK:
        _POLICIES.clear()


def _cache_key(base_url: str, workspace: str | None, model: str, api_key: str) -> tuple[str, str, str, str]:
    # A policy belongs to an account (the key) and a model: files uploaded under it serve only
    # those. The key is kept as a digest so the cache never holds it in the clear.
    return (base_url, workspace or "", model, hashlib.sha256(api_key.encode()).hexdigest())


def _fresh_until(policy: UploadPolicy, received: float) -> float:
    life = policy.expire_in_seconds or _ASSUMED_POLICY_SECONDS
    return received + max(0.0, life - min(_POLICY_MARGIN_SECONDS, life / 2))


# ----------------------------------------------------------------------------- uploading


async def aupload_local_image(
    path: str | os.PathLike[str],
    *,
    model: str,
    base_url: str,
    api_key: str,
    workspace: str | None = None,
    bounds: Bounds = DEFAULT_BOUNDS,
    field: str = "image",
    client: httpx.AsyncClient | None = None,
) -> str:
    """Upload a local image to DashScope's temporary storage; return its ``oss://`` URL (valid 48 h).

    For development only. Submit the URL with the same ``model`` and API key, and with the header
    `OSS_RESOURCE_RESOLVE_HEADER`.

    :param path: an absolute path or a ``file://`` URI.
    :param model: the model the file will be used with (files are bound to it).
    :param base_url: the DashScope endpoint, e.g. ``https://dashscope.aliyuncs.com`` (no ``/api/v1``).
    :param api_key: the DashScope API key (the account the file is bound to); sent only to ``base_url``.
    :param workspace: the DashScope workspace, sent as ``X-DashScope-WorkSpace`` when given.
    :param bounds: timeouts, overall deadline and reply-size cap of each of the two exchanges.
    :param field: the argument's name, for error sentences.
    :param client: the httpx client to use (default: the I/O loop's, or a short-lived one).
    :raises DashScopeConfigError: the file cannot be used (nothing was sent).
    :raises DashScopeAPIError: the policy call or the upload failed.
    """
    if not isinstance(model, str) or not model.strip():
        raise DashScopeConfigError(f"model must be a model name such as {api.MODEL_TRYON}, got {model!r}; set model.")
    if not api_key:
        raise DashScopeConfigError("api_key is empty; set the API key as the password of the DashScope connection.")
    image = await asyncio.to_thread(read_local_image, os.fspath(path), field=field)
    return await _with_client(
        client,
        lambda c: _upload(
            c,
            image,
            model=model.strip(),
            base_url=base_url.rstrip("/"),
            api_key=api_key,
            workspace=workspace,
            bounds=bounds,
            field=field,
        ),
    )


def upload_local_image(
    path: str | os.PathLike[str],
    *,
    model: str,
    base_url: str,
    api_key: str,
    workspace: str | None = None,
    bounds: Bounds = DEFAULT_BOUNDS,
    field: str = "image",
) -> str:
    """`aupload_local_image` from sync code (a worker), on the provider's I/O loop with the same bounds.

    :param path: an absolute path or a ``file://`` URI.
    :param model: the model the file will be used with (files are bound to it).
    :param base_url: the DashScope endpoint, e.g. ``https://dashscope.aliyuncs.com`` (no ``/api/v1``).
    :param api_key: the DashScope API key (the account the file is bound to).
    :param workspace: the DashScope workspace, when the connection has one.
    :param bounds: timeouts, overall deadline and reply-size cap of each of the two exchanges.
    :param field: the argument's name, for error sentences.
    """
    return run_sync(
        aupload_local_image(
            path, model=model, base_url=base_url, api_key=api_key, workspace=workspace, bounds=bounds, field=field
        )
    )


async def _with_client(client: httpx.AsyncClient | None, work: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    if client is not None:
        return await work(client)
    if is_io_loop(asyncio.get_running_loop()):
        return await work(io_loop().shared_client())
    # Another loop (a triggerer): a client of its own, built off the loop (it loads the CA bundle).
    own = await asyncio.to_thread(new_client)
    try:
        return await work(own)
    finally:
        await own.aclose()


async def _upload(
    client: httpx.AsyncClient,
    image: LocalImage,
    *,
    model: str,
    base_url: str,
    api_key: str,
    workspace: str | None,
    bounds: Bounds,
    field: str,
) -> str:
    cache_key = _cache_key(base_url, workspace, model, api_key)
    name = image.object_name
    for attempt in (1, 2):
        cached = await _policy(
            client,
            cache_key,
            model=model,
            base_url=base_url,
            api_key=api_key,
            workspace=workspace,
            bounds=bounds,
            fresh=attempt == 2,
        )
        policy = cached.policy
        key = f"{policy.upload_dir}/{name}"
        url = "oss://" + key
        with _POLICIES_LOCK:
            earlier = cached.names.get(name)
        if earlier == image.sha256:
            log.info("%s: %s is already in DashScope's temporary storage as %s", field, image.path, url)
            return url
        if earlier is not None and attempt == 1:
            continue  # another file took this name under this policy: a fresh policy, a new upload_dir
        if policy.max_file_size_mb is not None and len(image.data) > policy.max_file_size_mb * 1024 * 1024:
            raise DashScopeConfigError(
                f"{field}: the local file {image.path} is {len(image.data)} bytes and DashScope's temporary storage "
                f"takes at most {policy.max_file_size_mb:g} MB for model {model}; use a smaller file."
            )
        reply = await _post_form(client, policy, key, image, bounds=bounds, secrets=(api_key, *policy.secrets()))
        if 200 <= reply.status < 300:
            with _POLICIES_LOCK:
                cached.names[name] = image.sha256
            log.info(
                "%s: uploaded %s (%d bytes, sha256 %s) to DashScope's temporary storage as %s; development only: "
                "it is deleted after 48 hours",
                field,
                image.path,
                len(image.data),
                image.sha256[:12],
                url,
            )
            return url
        if reply.status in (403, 409) and attempt == 1:
            # 403: the policy expired or was refused on the way; 409: the name exists under this
            # upload_dir (forbid-overwrite). Both are cured by a fresh policy, once.
            log.info(
                "%s: the temporary storage answered HTTP %d; asking for a fresh upload policy", field, reply.status
            )
            continue
        raise _upload_error(reply, secrets=(api_key, *policy.secrets()))
    raise AssertionError("unreachable: the second attempt returns or raises")  # pragma: no cover


async def _policy(
    client: httpx.AsyncClient,
    cache_key: tuple[str, str, str, str],
    *,
    model: str,
    base_url: str,
    api_key: str,
    workspace: str | None,
    bounds: Bounds,
    fresh: bool,
) -> _CachedPolicy:
    """A usable policy: the cached one while it is fresh (and not refused), else a new one."""
    with _POLICIES_LOCK:
        cached = _POLICIES.get(cache_key)
        if cached is not None and not fresh and _now() < cached.fresh_until:
            return cached
    call = api.ApiCall("upload policy", "GET", UPLOADS_PATH, params={"action": "getPolicy", "model": model})
    reply = await _exchange(
        call.operation,
        aexchange(
            client,
            "GET",
            base_url + UPLOADS_PATH,
            bounds=bounds,
            params=call.params,
            headers=call.headers(api_key, workspace),
        ),
        bounds=bounds,
        where=base_url,
    )
    payload = api.decode(call, reply.status, reply.headers, reply.body)
    # The SDK reads `output` when present, else `data` (common/utils.py, _handle_http_response).
    policy = UploadPolicy.from_reply(payload.get("output", payload.get("data")), base_url=base_url)
    entry = _CachedPolicy(policy=policy, fresh_until=_fresh_until(policy, _now()))
    with _POLICIES_LOCK:
        _POLICIES[cache_key] = entry
    return entry


async def _post_form(
    client: httpx.AsyncClient,
    policy: UploadPolicy,
    key: str,
    image: LocalImage,
    *,
    bounds: Bounds,
    secrets: tuple[str, ...],
) -> Reply:
    # No API key here: the upload host is OSS, authorised by the signed policy alone.
    return await _exchange(
        "temporary storage upload",
        aexchange(
            client,
            "POST",
            policy.upload_host,
            bounds=bounds,
            headers={"Accept": "application/json"},
            data=policy.form(key, image.content_type),
            files={"file": (image.object_name, image.data, image.content_type)},
        ),
        bounds=bounds,
        where=api.shown_url(policy.upload_host),
        secrets=secrets,
    )


async def _exchange(
    operation: str, request: Awaitable[Reply], *, bounds: Bounds, where: str, secrets: tuple[str, ...] = ()
) -> Reply:
    """Await one bounded exchange; a transport failure becomes one sentence (retryable)."""
    try:
        return await request
    except Overdue:
        problem = f"did not finish within {bounds.deadline:g} s"
    except TooLarge:
        problem = f"sent a reply over {bounds.max_bytes // 1024} KiB, which was abandoned unread"
    except Stalled:
        problem = f"stopped sending for {bounds.read_timeout:g} s"
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        problem = f"could not be reached ({type(exc).__name__}: {_scrub(str(exc), secrets)})"
    raise DashScopeAPIError(
        operation=operation,
        message=f"{where} {problem}; check the network and try again",
        retryable=True,
    )


def _upload_error(reply: Reply, *, secrets: tuple[str, ...]) -> DashScopeAPIError:
    """An OSS refusal (XML ``<Error>``) as one sentence; only its Code, Message and RequestId are read."""
    found = {name: pattern.search(reply.body) for name, pattern in _XML_FIELD.items()}
    text = {name: _scrub(m.group(1).decode("utf-8", "replace"), secrets) if m else None for name, m in found.items()}
    return DashScopeAPIError(
        operation="temporary storage upload",
        http_status=reply.status,
        # Prefixed: OSS codes are not DashScope's (OSS "AccessDenied" is not the account's model access).
        code=f"OSS.{text['Code']}" if text["Code"] else None,
        message=text["Message"] or f"the upload host answered HTTP {reply.status} {reply.reason}".strip(),
        request_id=text["RequestId"],
    )


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


__all__ = [
    "DEFAULT_BOUNDS",
    "OSS_RESOURCE_RESOLVE_HEADER",
    "TEMPORARY_URL_PREFIX",
    "TEMPORARY_URL_VALIDITY_SECONDS",
    "UPLOADS_PATH",
    "LocalImage",
    "UploadPolicy",
    "aupload_local_image",
    "clear_policy_cache",
    "is_temporary_url",
    "local_image_path",
    "read_local_image",
    "upload_local_image",
]
