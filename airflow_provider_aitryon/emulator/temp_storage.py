"""DashScope's temporary storage, emulated: the upload policy, the OSS form upload and ``oss://`` resolution.

Why: a local file used in development is uploaded to this storage (see
`airflow_provider_aitryon.uploads` and the official SDK's ``dashscope/utils/oss_utils.py``) and then
named by an ``oss://`` URL in the submit. Testing that offline needs the three pieces the real
service has, with the same wire shapes, so the official SDK's own upload works against the
emulator too:

* ``GET /api/v1/uploads?action=getPolicy&model=<model>`` (API key required, like every API route):
  ``{"request_id", "data": {policy, signature, upload_dir, upload_host, expire_in_seconds,
  max_file_size_mb, capacity_limit_mb, oss_access_key_id, x_oss_object_acl, x_oss_forbid_overwrite}}``.
  ``upload_host`` is this emulator's `UPLOAD_ROUTE`; ``upload_dir`` is new on every call,
  ``dashscope-instant/<32 hex of account and model>/<date>/<uuid>``; ``policy`` is an OSS PostObject
  policy document (base64 JSON: ``expiration`` and the conditions ``content-length-range``,
  ``starts-with $key <upload_dir>``, ``x-oss-object-acl``, ``x-oss-forbid-overwrite``) and
  ``signature`` the base64 HMAC-SHA1 of that base64 text with a secret only this emulator knows,
  as OSS V1 PostObject signatures are. Limited to ``upload_policy_rate`` calls per second per
  account and model (the vendor's 100 QPS), answered like other throttling.
* ``POST`` `UPLOAD_ROUTE` (``multipart/form-data``, no API key, like OSS): checks, in OSS's order and
  with OSS's XML errors, that the form has ``key``, ``OSSAccessKeyId``, ``policy``, ``Signature`` and
  a ``file`` (400 ``InvalidArgument``), that the access key id is the one handed out (403
  ``InvalidAccessKeyId``) and the signature matches (403 ``SignatureDoesNotMatch``), that the policy
  has not expired and every condition holds (403 ``AccessDenied``, "Invalid according to Policy"),
  that the file fits ``content-length-range`` (400 ``EntityTooLarge``) and that the key is new (409
  ``FileAlreadyExists``: overwrites are forbidden). The bytes are kept in memory, bound to the
  account and model the policy was issued for. ``success_action_status`` 200 or 201 is answered
  with that status, anything else with 204, as OSS does.
* resolution: a submit that carries ``X-DashScope-OssResourceResolve: enable`` may name uploaded
  objects as ``oss://<key>``; the task reads them from memory (no HTTP). An unknown or expired key,
  or one uploaded for another account or model (the vendor binds files to both), fails the task
  with ``InvalidURL``, like any input the service cannot fetch. Without the header the service does
  not resolve ``oss://`` at all: the vendor only says that skipping the header "causes errors" and
  publishes no code, so the emulator fails such a task with ``InvalidURL`` too (the try-on
  service's code for an input URL it cannot read).

Objects live ``upload_ttl_seconds`` (48 h) on the emulator's clock, so a ``ManualClock`` can expire them.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.message
import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

UPLOAD_ROUTE = "/_oss_upload"
OSS_RESOLVE_HEADER = "X-DashScope-OssResourceResolve"
KEY_ROOT = "dashscope-instant"
# What the real policy carries: objects are private and never overwritten.
OBJECT_ACL = "private"
FORBID_OVERWRITE = "true"
# Room for the form fields around the file in an upload's body.
FORM_OVERHEAD = 64 * 1024


class UploadRefused(Exception):
    """An upload OSS would refuse: HTTP status, OSS code and message (sent as OSS's XML error)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message

    def xml(self, request_id: str) -> bytes:
        """The error body, as OSS writes it."""
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n'
            f"  <Code>{_xml_text(self.code)}</Code>\n  <Message>{_xml_text(self.message)}</Message>\n"
            f"  <RequestId>{request_id}</RequestId>\n  <HostId>emulator</HostId>\n</Error>\n"
        ).encode()


class Unresolvable(Exception):
    """An ``oss://`` input the service cannot read (the task fails with ``InvalidURL``)."""


@dataclass(frozen=True)
class Grant:
    """Who a policy was issued to: objects uploaded under its ``upload_dir`` serve only them."""

    account: str
    model: str


@dataclass(frozen=True)
class StoredObject:
    data: bytes = field(repr=False)
    account: str
    model: str
    uploaded: float  # the emulator clock
    content_type: str


@dataclass
class TemporaryStorage:
    """The storage's state; the caller (`EmulatorState`) holds its lock around every method."""

    clock: Callable[[], float]
    wall: Callable[[float], float]  # emulator clock -> Unix time (what the policy's expiration shows)
    access_key_id: str = field(default_factory=lambda: "LTAI5tEmu" + secrets.token_hex(8))
    _secret: bytes = field(default_factory=lambda: secrets.token_bytes(20), repr=False)
    grants: dict[str, Grant] = field(default_factory=dict)  # upload_dir -> grant
    objects: dict[str, StoredObject] = field(default_factory=dict)  # key -> object

    def clear(self) -> None:
        self.grants.clear()
        self.objects.clear()

    # ------------------------------------------------------------------ policy

    def issue_policy(
        self, account: str, model: str, *, upload_host: str, policy_seconds: float, max_file_size_mb: int
    ) -> dict[str, Any]:
        """The ``data`` of a ``getPolicy`` reply, for ``account`` and ``model``."""
        now = self.clock()
        owner = hmac.new(self._secret, f"{account}\0{model}".encode(), hashlib.sha256).hexdigest()[:32]
        day = dt.datetime.fromtimestamp(self.wall(now), tz=dt.timezone.utc).strftime("%Y-%m-%d")
        upload_dir = f"{KEY_ROOT}/{owner}/{day}/{uuid.uuid4()}"
        expires = dt.datetime.fromtimestamp(self.wall(now + policy_seconds), tz=dt.timezone.utc)
        document = {
            "expiration": expires.strftime("%Y-%m-%dT%H:%M:%S.") + f"{expires.microsecond // 1000:03d}Z",
            "conditions": [
                ["content-length-range", 0, max_file_size_mb * 1024 * 1024],
                ["starts-with", "$key", upload_dir],
                {"x-oss-object-acl": OBJECT_ACL},
                {"x-oss-forbid-overwrite": FORBID_OVERWRITE},
            ],
        }
        policy = base64.b64encode(json.dumps(document, separators=(",", ":")).encode()).decode()
        self.grants[upload_dir] = Grant(account, model)
        return {
            "policy": policy,
            "signature": self._sign(policy),
            "upload_dir": upload_dir,
            "upload_host": upload_host,
            "expire_in_seconds": int(policy_seconds),
            "max_file_size_mb": max_file_size_mb,
            "capacity_limit_mb": 999999999,
            "oss_access_key_id": self.access_key_id,
            "x_oss_object_acl": OBJECT_ACL,
            "x_oss_forbid_overwrite": FORBID_OVERWRITE,
        }

    def _sign(self, policy: str) -> str:
        return base64.b64encode(hmac.new(self._secret, policy.encode(), hashlib.sha1).digest()).decode()

    # ------------------------------------------------------------------ upload

    def accept(self, content_type: str | None, body: bytes, *, ttl: float) -> tuple[int, str]:
        """Check and store one PostObject form; returns (HTTP status, key) or raises `UploadRefused`."""
        fields, file_part = parse_form(content_type, body)
        for name in ("key", "OSSAccessKeyId", "policy", "Signature"):
            if not fields.get(name):
                raise UploadRefused(400, "InvalidArgument", f"The form field {name} is missing.")
        if file_part is None:
            raise UploadRefused(400, "InvalidArgument", "The form has no file field (it must be the last field).")
        if not hmac.compare_digest(fields["OSSAccessKeyId"].encode(), self.access_key_id.encode()):
            raise UploadRefused(
                403, "InvalidAccessKeyId", "The OSS Access Key Id you provided does not exist in our records."
            )
        if not hmac.compare_digest(fields["Signature"].encode(), self._sign(fields["policy"]).encode()):
            raise UploadRefused(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        document = json.loads(base64.b64decode(fields["policy"]))  # ours: the signature matched
        expires = dt.datetime.strptime(document["expiration"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)
        if self.wall(self.clock()) >= expires.timestamp():
            raise UploadRefused(403, "AccessDenied", "Invalid according to Policy: Policy expired.")
        key = fields["key"]
        low, high = 0, 0
        upload_dir = ""
        for condition in document["conditions"]:
            if isinstance(condition, dict):
                for name, value in condition.items():
                    if fields.get(name) != value:
                        raise _condition_failed(f'["eq", "${name}", "{value}"]')
            elif condition[0] == "starts-with":
                upload_dir = condition[2]
                if not key.startswith(upload_dir + "/") or ".." in key.split("/"):
                    raise _condition_failed(f'["starts-with", "$key", "{upload_dir}"]')
            elif condition[0] == "content-length-range":
                low, high = int(condition[1]), int(condition[2])
        data = file_part[1]
        if not low <= len(data) <= high:
            raise UploadRefused(400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size.")
        grant = self.grants.get(upload_dir)
        if grant is None:  # issued before a reset
            raise UploadRefused(403, "AccessDenied", "Invalid according to Policy: the upload directory is unknown.")
        self.expire(ttl)
        if key in self.objects:
            raise UploadRefused(
                409, "FileAlreadyExists", "The object you specified already exists and can not be overwritten."
            )
        self.objects[key] = StoredObject(
            data=data,
            account=grant.account,
            model=grant.model,
            uploaded=self.clock(),
            content_type=fields.get("x-oss-content-type") or file_part[0] or "application/octet-stream",
        )
        status = fields.get("success_action_status", "")
        return (int(status) if status in ("200", "201") else 204), key

    # ------------------------------------------------------------------ resolution

    def expire(self, ttl: float) -> None:
        """Drop objects older than ``ttl`` seconds (the vendor deletes them after 48 h)."""
        now = self.clock()
        for key in [k for k, o in self.objects.items() if now >= o.uploaded + ttl]:
            del self.objects[key]

    def resolve(self, url: str, account: str, model: str, *, ttl: float) -> bytes:
        """The bytes an ``oss://`` input names, for a task of ``account`` and ``model``; else `Unresolvable`."""
        key = url[len("oss://") :]
        if not key.startswith(KEY_ROOT + "/"):
            raise Unresolvable(f"{url} is not in DashScope's temporary storage (only {KEY_ROOT}/... is resolved)")
        self.expire(ttl)
        obj = self.objects.get(key)
        if obj is None:
            raise Unresolvable(f"nothing was uploaded as {url}, or it expired")
        if obj.account != account:
            raise Unresolvable(f"{url} was uploaded with another API key (files are bound to the account)")
        if obj.model != model:
            raise Unresolvable(f"{url} was uploaded for model {obj.model}, not {model} (files are bound to the model)")
        return obj.data


def parse_form(content_type: str | None, body: bytes) -> tuple[dict[str, str], tuple[str, bytes] | None]:
    """Split a ``multipart/form-data`` body into text fields and the ``file`` part (its file name, bytes).

    Written out rather than via ``email``'s parser, which may rewrite line endings inside binary
    parts (a PNG starts with ``\\r\\n\\x1a\\n``). Raises `UploadRefused` (400) for a body that is not one.
    """
    header = email.message.Message()
    header["content-type"] = content_type or ""
    boundary = header.get_param("boundary")
    if header.get_content_type() != "multipart/form-data" or not isinstance(boundary, str) or not boundary:
        raise UploadRefused(400, "InvalidArgument", "The body must be multipart/form-data with a boundary.")
    fields: dict[str, str] = {}
    file_part: tuple[str, bytes] | None = None
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        head, sep, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            raise UploadRefused(400, "InvalidArgument", "A form part has no header.")
        content = content.removesuffix(b"\r\n")
        part = email.message.Message()
        for line in head.decode("utf-8", "replace").split("\r\n"):
            header_name, colon, value = line.partition(":")
            if colon:
                part[header_name.strip()] = value.strip()
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        if name == "file":
            filename = part.get_param("filename", header="content-disposition")
            file_part = (filename if isinstance(filename, str) else "", content)
        else:
            fields[name] = content.decode("utf-8", "replace")
    return fields, file_part


def _condition_failed(condition: str) -> UploadRefused:
    return UploadRefused(403, "AccessDenied", f"Invalid according to Policy: Policy Condition failed: {condition}")


def _xml_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
