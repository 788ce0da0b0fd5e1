"""The OSS connection, read once into a frozen value the client, the signer and the file system share.

The connection follows the official ``apache-airflow-providers-alibaba`` ``OSSHook`` (3.5.x), so one
Airflow connection serves both: connection type ``oss``, default id ``oss_default``, and in its
Extra ``auth_type`` (``"AK"``, the one type it supports), ``access_key_id``,
``access_key_secret`` and ``region``; ``endpoint`` (optional) overrides the region's public
endpoint ``https://oss-<region>.aliyuncs.com``, e.g. with a VPC endpoint
(``https://oss-cn-beijing-internal.aliyuncs.com``) or a local stand-in (``http://127.0.0.1:9000``).

Optional extras of this provider bound every request: ``connect_timeout`` and ``read_timeout``
(seconds, per connection attempt and per socket read), ``max_attempts`` (tries of one request,
retries included) and ``operation_timeout`` (seconds for one call, its retries included).

Every problem is one sentence that names the connection and the field; the secret never appears
in one, nor in the settings' ``repr``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_aitryon.oss.errors import OssConfigError

CONN_TYPE = "oss"
DEFAULT_CONN_ID = "oss_default"
AUTH_TYPE_AK = "AK"

DEFAULT_CONNECT_TIMEOUT = 10.0
# Per socket read: OSS answers in milliseconds; a read silent for this long is a dead connection.
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_MAX_ATTEMPTS = 3
# One call, its retries and backoff included. Body transfers are bounded separately (`client`).
DEFAULT_OPERATION_TIMEOUT = 120.0

# Alibaba Cloud region ids: cn-beijing, ap-southeast-1, eu-central-1, ...
_REGION = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)+$")
# oss-<region>.aliyuncs.com and oss-<region>-internal.aliyuncs.com name their region.
_ALIYUN_ENDPOINT = re.compile(r"^oss-(?P<region>[a-z0-9-]+?)(?:-internal)?\.aliyuncs\.com$")

# The numeric extras: (default, minimum, integer?).
NUMERIC_EXTRAS: dict[str, tuple[float, float, bool]] = {
    "connect_timeout": (DEFAULT_CONNECT_TIMEOUT, 0.1, False),
    "read_timeout": (DEFAULT_READ_TIMEOUT, 0.1, False),
    "max_attempts": (DEFAULT_MAX_ATTEMPTS, 1, True),
    "operation_timeout": (DEFAULT_OPERATION_TIMEOUT, 1.0, False),
}


@dataclass(frozen=True)
class OssSettings:
    """What one OSS connection says: credentials, where OSS is, and the bounds of every request.

    :param conn_id: the Airflow connection id it was read from (for messages).
    :param access_key_id: the AccessKey ID.
    :param access_key_secret: the AccessKey secret; kept out of ``repr``.
    :param region: the region id used in V4 signatures, e.g. ``cn-beijing``.
    :param endpoint: the endpoint URL requests go to (the region's public one unless set).
    :param connect_timeout: seconds to open a connection.
    :param read_timeout: seconds any one socket read may wait.
    :param max_attempts: tries of one request, the first included.
    :param operation_timeout: seconds for one call, retries and backoff included.
    """

    conn_id: str
    access_key_id: str
    access_key_secret: str = field(repr=False)
    region: str
    endpoint: str
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    operation_timeout: float = DEFAULT_OPERATION_TIMEOUT

    @property
    def endpoint_host(self) -> str:
        """``host[:port]`` of the endpoint: what messages show of where OSS is."""
        return urlsplit(self.endpoint).netloc

    @classmethod
    def from_connection(cls, conn: Any, conn_id: str | None = None) -> OssSettings:
        """Read an Airflow connection (or anything with ``conn_id`` and ``extra``).

        :param conn: the connection.
        :param conn_id: its id, for messages (defaults to ``conn.conn_id``).
        :raises OssConfigError: a field is missing or invalid.
        """
        name = conn_id or getattr(conn, "conn_id", None) or DEFAULT_CONN_ID
        extra = _extra(conn, name)
        auth_type = _text(extra, "auth_type")
        if auth_type is None:
            raise OssConfigError(
                f"OSS connection {name!r} has no auth_type in its Extra; set \"auth_type\": \"AK\" with "
                "access_key_id and access_key_secret, as the official Alibaba provider expects."
            )
        if auth_type != AUTH_TYPE_AK:
            raise OssConfigError(
                f"OSS connection {name!r} has auth_type {auth_type!r}, which is not supported; set "
                '"auth_type": "AK" with access_key_id and access_key_secret.'
            )
        key_id = _text(extra, "access_key_id")
        secret = _text(extra, "access_key_secret", strip=False)
        for field_name, value in (("access_key_id", key_id), ("access_key_secret", secret)):
            if value is None:
                raise OssConfigError(
                    f"OSS connection {name!r} has no {field_name} in its Extra; set it to the RAM user's "
                    f"AccessKey {'ID' if field_name == 'access_key_id' else 'secret'}."
                )
        assert key_id is not None and secret is not None  # checked just above
        if secret != secret.strip():
            # OSS documents that an AccessKey never starts or ends with a space: a pasted one did.
            raise OssConfigError(
                f"OSS connection {name!r} has an access_key_secret that starts or ends with whitespace; "
                "paste the secret again without the surrounding spaces."
            )
        region, endpoint = _region_and_endpoint(extra, name)
        numbers = {key: _number(extra, name, key, *spec) for key, spec in NUMERIC_EXTRAS.items()}
        return cls(
            conn_id=name,
            access_key_id=key_id,
            access_key_secret=secret,
            region=region,
            endpoint=endpoint,
            connect_timeout=float(numbers["connect_timeout"]),
            read_timeout=float(numbers["read_timeout"]),
            max_attempts=int(numbers["max_attempts"]),
            operation_timeout=float(numbers["operation_timeout"]),
        )


def load_settings(conn_id: str = DEFAULT_CONN_ID) -> OssSettings:
    """Read the Airflow connection ``conn_id`` and register its secret with the log masker.

    :param conn_id: the OSS connection's id.
    :raises OssConfigError: the connection is not defined or a field is wrong.
    """
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as exc:  # the task SDK raises AirflowNotFoundException, older ones other types
        raise _unreadable(conn_id, exc) from None
    settings = OssSettings.from_connection(conn, conn_id)
    _mask(settings.access_key_secret)
    return settings


async def aload_settings(conn_id: str = DEFAULT_CONN_ID) -> OssSettings:
    """`load_settings` for an event loop (a trigger): nothing here blocks the loop.

    :param conn_id: the OSS connection's id.
    :raises OssConfigError: the connection is not defined or a field is wrong.
    """
    import asyncio

    from airflow.sdk import BaseHook

    aget = getattr(BaseHook, "aget_connection", None)
    try:
        if aget is not None:
            conn = await aget(conn_id)
        else:  # Airflow releases without the async connection API
            conn = await asyncio.to_thread(BaseHook.get_connection, conn_id)
    except Exception as exc:
        raise _unreadable(conn_id, exc) from None
    settings = OssSettings.from_connection(conn, conn_id)
    try:
        from airflow.sdk.log import amask_secret
    except ImportError:  # pragma: no cover - task SDKs without the async masker
        _mask(settings.access_key_secret)
    else:
        await amask_secret(settings.access_key_secret)
    return settings


def public_endpoint(region: str) -> str:
    """The region's public endpoint, as the official provider and the SDK build it.

    :param region: a region id such as ``cn-beijing``.
    """
    return f"https://oss-{region}.aliyuncs.com"


# --------------------------------------------------------------------------------------------


def _mask(secret: str) -> None:
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - very old task SDKs
        return
    # Redacts the secret from every task log line, including lines a user's own code writes.
    mask_secret(secret)


def _unreadable(conn_id: str, exc: BaseException) -> OssConfigError:
    if type(exc).__name__ == "AirflowNotFoundException":
        return OssConfigError(
            f"OSS connection {conn_id!r} is not defined; create a connection of type oss whose Extra sets "
            "auth_type, access_key_id, access_key_secret and region (docs/oss.rst)."
        )
    return OssConfigError(
        f"OSS connection {conn_id!r} could not be read ({type(exc).__name__}); check that it exists and that "
        "this worker can reach the Airflow API server or secrets backend."
    )


def _extra(conn: Any, conn_id: str) -> dict[str, Any]:
    raw = getattr(conn, "extra", None)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    if isinstance(raw, dict):
        extra: Any = raw
    else:
        # Parsed here rather than through extra_dejson, which logs bad JSON and answers {}: the
        # user would then read "no auth_type" instead of what is really wrong.
        try:
            extra = json.loads(raw)
        except (TypeError, ValueError):
            raise OssConfigError(
                f"OSS connection {conn_id!r} has an Extra that is not valid JSON; set it to a JSON object such as "
                '{"auth_type": "AK", "access_key_id": "...", "access_key_secret": "...", "region": "cn-beijing"}.'
            ) from None
    if not isinstance(extra, dict):
        raise OssConfigError(
            f"OSS connection {conn_id!r} has an Extra that is a JSON {type(extra).__name__}, not an object; set it "
            'to a JSON object such as {"auth_type": "AK", "region": "cn-beijing"}.'
        )
    return extra


def _text(extra: dict[str, Any], key: str, *, strip: bool = True) -> str | None:
    """A string extra, or None when absent, null or blank (the connection form saves cleared fields as null)."""
    value = extra.get(key)
    if value is None:
        return None
    text = str(value)
    if not text.strip():
        return None
    return text.strip() if strip else text


def _region_and_endpoint(extra: dict[str, Any], conn_id: str) -> tuple[str, str]:
    region = _text(extra, "region")
    endpoint_text = _text(extra, "endpoint")
    endpoint_region = None
    if endpoint_text is not None:
        endpoint_text = endpoint_text.rstrip("/")
        if "://" not in endpoint_text:
            # The official hook and the SDK accept a bare host and default to https.
            endpoint_text = f"https://{endpoint_text}"
        parts = urlsplit(endpoint_text)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
            raise OssConfigError(
                f"OSS connection {conn_id!r} has endpoint {_shown(endpoint_text)!r}, which is not an http(s) URL "
                "without a path; set it like https://oss-cn-beijing-internal.aliyuncs.com or remove it."
            )
        match = _ALIYUN_ENDPOINT.match(parts.hostname)
        endpoint_region = match.group("region") if match else None
    if region is None:
        if endpoint_region is None:
            if endpoint_text is None:
                raise OssConfigError(
                    f"OSS connection {conn_id!r} has neither region nor endpoint in its Extra; set region to the "
                    'bucket\'s region, e.g. "region": "cn-beijing".'
                )
            raise OssConfigError(
                f"OSS connection {conn_id!r} has an endpoint but no region in its Extra; set region (e.g. "
                '"cn-beijing"), which V4 signatures include.'
            )
        region = endpoint_region
    if not _REGION.match(region) or region.startswith("oss-"):
        raise OssConfigError(
            f"OSS connection {conn_id!r} has region {region!r}, which is not an Alibaba Cloud region id; set it "
            "like cn-beijing or ap-southeast-1 (without the oss- prefix)."
        )
    if endpoint_region is not None and endpoint_region != region:
        raise OssConfigError(
            f"OSS connection {conn_id!r} has region {region!r} but an endpoint in {endpoint_region!r}; make them "
            "agree, since OSS refuses signatures made for another region."
        )
    return region, endpoint_text or public_endpoint(region)


def _number(extra: dict[str, Any], conn_id: str, key: str, default: float, minimum: float, integer: bool) -> float:
    value = extra.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
        if integer and number != int(number):
            raise ValueError
    except (TypeError, ValueError):
        number = math.nan
    if math.isnan(number) or math.isinf(number) or number < minimum:
        kind = "a whole number" if integer else "a number of seconds"
        raise OssConfigError(
            f"OSS connection {conn_id!r} has {key} {value!r}, which is not {kind} of at least {minimum:g}; "
            f"set it to such a number or remove it for the default ({default:g})."
        )
    return int(number) if integer else number


def _shown(url: str) -> str:
    # An endpoint never carries credentials, but a pasted presigned URL would: show no query.
    return url.split("?", 1)[0][:120]
