"""Presigned OSS URLs: a private object as an https URL DashScope (or pre-flight) can fetch.

A presigned URL carries a V4 signature in its query string (``x-oss-signature-version``,
``x-oss-credential``, ``x-oss-date``, ``x-oss-expires``, ``x-oss-signature``). Anyone holding it
can read the object until it expires, so it is a credential: show users the ``oss://`` URI, or
`airflow_provider_aitryon.api.shown_url` of the signed one, never the signed URL itself.

The signature covers the HTTP method: OSS refuses a HEAD request on a URL signed for GET
(``SignatureDoesNotMatch``). Sign for the method you will send (`presign_url`), or fetch with a
bounded GET.

Signing happens locally, without a request to OSS, so it cannot tell whether the object exists.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow_provider_aitryon.oss.client import get_client, require_sdk, translate
from airflow_provider_aitryon.oss.errors import OssConfigError
from airflow_provider_aitryon.oss.settings import DEFAULT_CONN_ID, OssSettings, load_settings
from airflow_provider_aitryon.oss.uri import parse_oss_uri

#: Long enough for a try-on task to wait in DashScope's queue (minutes to hours on a busy
#: account) and for its retries; short enough that a leaked URL stops working the same day.
DEFAULT_EXPIRES = timedelta(hours=6)
#: OSS's limit for V4 presigned URLs (7 days); the SDK refuses longer.
MAX_EXPIRES = timedelta(days=7)
METHODS = ("GET", "HEAD")


def presign_get(
    uri: str,
    *,
    conn_id: str = DEFAULT_CONN_ID,
    expires: timedelta = DEFAULT_EXPIRES,
    settings: OssSettings | None = None,
) -> str:
    """A V4-signed https URL that GETs the object ``oss://bucket/key`` until ``expires`` from now.

    :param uri: the object's ``oss://bucket/key``.
    :param conn_id: the OSS connection whose AccessKey signs (ignored when ``settings`` is given).
    :param expires: how long the URL stays valid; at most 7 days.
    :param settings: already loaded connection settings, to skip reading the connection again.
    :raises OssConfigError: the URI, the expiry or the connection is wrong.
    :raises OssExtraMissing: the ``oss`` extra is not installed.
    """
    return presign_url(uri, method="GET", conn_id=conn_id, expires=expires, settings=settings)


def presign_url(
    uri: str,
    *,
    method: str = "GET",
    conn_id: str = DEFAULT_CONN_ID,
    expires: timedelta = DEFAULT_EXPIRES,
    settings: OssSettings | None = None,
) -> str:
    """A V4-signed URL for one HTTP method on the object ``oss://bucket/key``.

    :param uri: the object's ``oss://bucket/key``.
    :param method: ``GET`` or ``HEAD``; the URL works for that method only.
    :param conn_id: the OSS connection whose AccessKey signs (ignored when ``settings`` is given).
    :param expires: how long the URL stays valid; at most 7 days.
    :param settings: already loaded connection settings.
    :raises OssConfigError: the URI, the method, the expiry or the connection is wrong.
    :raises OssExtraMissing: the ``oss`` extra is not installed.
    """
    location = parse_oss_uri(uri)
    verb = method.upper() if isinstance(method, str) else method
    if verb not in METHODS:
        raise OssConfigError(f"method {method!r} cannot be presigned here; use one of {', '.join(METHODS)}.")
    if not isinstance(expires, timedelta) or not timedelta(seconds=1) <= expires <= MAX_EXPIRES:
        raise OssConfigError(
            f"expires for {location.uri} must be a timedelta between 1 second and 7 days, got {expires!r}; "
            f"the default is {DEFAULT_EXPIRES}."
        )
    oss = require_sdk()
    settings = settings or load_settings(conn_id)
    client = get_client(settings)
    model = oss.GetObjectRequest if verb == "GET" else oss.HeadObjectRequest
    # The SDK measures the lifetime from a "now" taken again while signing and truncates it to whole
    # seconds (6 h became 21599 s); half a second of slack makes x-oss-expires what was asked.
    slack = timedelta(milliseconds=500) if expires <= MAX_EXPIRES - timedelta(seconds=1) else timedelta(0)
    expiration = datetime.now(timezone.utc) + expires + slack
    try:
        result = client.presign(model(bucket=location.bucket, key=location.key), expiration=expiration)
    except Exception as exc:  # signing is local: only argument or credential problems land here
        raise translate(exc, settings=settings, action=f"presign {verb}", uri=location.uri) from None
    return str(result.url)
