"""``oss://bucket/key`` URIs: parsed and checked against OSS's naming rules before any request.

Checking here means a typo fails with one sentence that names the URI, instead of a signed request
OSS answers with a 400 or, worse, a request to another bucket than the one meant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from airflow_provider_aitryon.oss.errors import OssConfigError

SCHEME = "oss"
# OSS bucket names: 3-63 characters, lowercase letters, digits and hyphens, starting and ending
# with a letter or digit (Alibaba Cloud's naming rules; the SDK checks the same before sending).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
# Object names: 1-1023 bytes of UTF-8 that do not start with "/" or "\".
MAX_KEY_BYTES = 1023


@dataclass(frozen=True)
class OssLocation:
    """A bucket and an object key (the key may be empty for the bucket itself).

    :param bucket: the bucket name.
    :param key: the object key, without a leading ``/``.
    """

    bucket: str
    key: str

    @property
    def uri(self) -> str:
        """The location as ``oss://bucket/key``: the form users see in messages and logs."""
        return f"{SCHEME}://{self.bucket}/{self.key}"


def is_oss_uri(value: object) -> bool:
    """Whether ``value`` is a string that starts with ``oss://`` (any case), valid or not."""
    return isinstance(value, str) and value.strip().lower().startswith(f"{SCHEME}://")


def parse_oss_uri(uri: object, *, field_name: str = "uri", require_key: bool = True) -> OssLocation:
    """Split ``oss://bucket/key`` into its bucket and key, or say in one sentence what is wrong.

    :param uri: the URI to parse.
    :param field_name: the argument's name, for the message.
    :param require_key: refuse a URI that names only a bucket (``oss://bucket/``).
    :raises OssConfigError: the URI is not a string, not ``oss://``, has a query, fragment or
        user info, or its bucket or key break OSS's naming rules.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise OssConfigError(
            f"{field_name} must be an oss://bucket/key string, got {type(uri).__name__}; pass the object's OSS URI."
        )
    text = uri.strip()
    parts = urlsplit(text)
    shown = _shown(text)
    if parts.scheme.lower() != SCHEME:
        raise OssConfigError(f"{field_name} {shown} is not an oss:// URI; write it as oss://bucket/key.")
    if parts.query or parts.fragment or "@" in parts.netloc or ":" in parts.netloc:
        raise OssConfigError(
            f"{field_name} {shown} has a query, fragment, user or port, which an oss:// URI cannot carry; "
            "write it as oss://bucket/key (the credentials come from the OSS connection)."
        )
    bucket = parts.netloc
    if not _BUCKET.match(bucket):
        raise OssConfigError(
            f"{field_name} {shown} names bucket {bucket!r}, which is not a valid OSS bucket name; use 3-63 "
            "lowercase letters, digits or hyphens that start and end with a letter or digit."
        )
    key = parts.path[1:] if parts.path.startswith("/") else parts.path
    if require_key and not key:
        raise OssConfigError(f"{field_name} {shown} names a bucket but no object; write it as oss://{bucket}/key.")
    if key:
        check_key(key, field_name=field_name, shown=shown)
    return OssLocation(bucket, key)


def check_key(key: str, *, field_name: str = "key", shown: str | None = None) -> None:
    """Refuse a key OSS would refuse: empty, over 1023 bytes, or starting with ``/`` or ``\\``.

    :param key: the object key.
    :param field_name: the argument's name, for the message.
    :param shown: how to show the URI in the message (defaults to the key).
    """
    what = shown or key
    if key.startswith(("/", "\\")):
        raise OssConfigError(
            f"{field_name} {what} has an object name that starts with '/' or '\\', which OSS refuses; "
            "remove the extra slash after the bucket."
        )
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise OssConfigError(
            f"{field_name} {what[:80]}… has an object name over {MAX_KEY_BYTES} bytes, which OSS refuses; "
            "use a shorter name."
        )


def _shown(text: str) -> str:
    # A pasted signed https URL must not end up in a message with its signature: drop any query.
    return text.split("?", 1)[0].split("#", 1)[0]
