"""The one image downloader: every image this provider fetches, fetched the same bounded way.

Pre-flight (input images, before paying), saving results (`storage.save_image`, for the operator
and the catalog's chunks alike) and the emulator's input fetches all call `fetch` (or `afetch`):

* http(s) only, also after a redirect; redirects are followed here, at most ``max_redirects``;
* the HTTP core's bounds (`http_client`): connect and read timeouts, one deadline for the whole
  download (headers included), and a byte cap read as the body arrives;
* every failure is one `DownloadError` with a short reason that never quotes the URL (a signed
  URL's query string is a credential): callers prefix the URL as `api.shown_url` shows it.

Statuses are the caller's to judge (an expired result is not a bad input image);
`is_transient_status` names those worth another try, from the one error table (`errors`).
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

import httpx

from airflow_provider_aitryon.errors import TRANSIENT_HTTP_STATUSES
from airflow_provider_aitryon.http_client import Bounds, Overdue, Reply, Stalled, TooLarge, aexchange, io_loop, run_sync

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


def is_transient_status(status: int) -> bool:
    """Worth another try: the host is busy or briefly broken (5xx, 408, 429), as in the one error table."""
    return status in TRANSIENT_HTTP_STATUSES or status >= 500


@dataclass(frozen=True)
class DownloadBounds(Bounds):
    """`http_client.Bounds` plus how many redirects to follow.

    :param max_redirects: redirects followed before the URL is refused.
    """

    max_redirects: int = 5


class DownloadError(Exception):
    """A download that did not complete; ``reason`` reads after the URL ("… could not be reached").

    ``kind`` says what happened, so each caller decides what is worth retrying:
    ``refused`` (not http(s), a redirect loop, a broken URL or TLS), ``unreachable`` (connect
    timeout), ``silent`` (no answer within the read timeout), ``stalled`` (the body stopped),
    ``overdue`` (past the deadline), ``too_large`` (over the byte cap) and ``broken`` (the
    connection failed or dropped).
    """

    def __init__(self, reason: str, kind: str, *, received: int = 0, declared: int | None = None) -> None:
        super().__init__(reason)
        self.reason, self.kind, self.received, self.declared = reason, kind, received, declared


async def afetch(
    url: str,
    *,
    bounds: DownloadBounds,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    sink: IO[bytes] | None = None,
    client: httpx.AsyncClient | None = None,
) -> Reply:
    """Download ``url`` (following redirects to http(s) URLs); the final reply, whatever its status.

    :param sink: write a 2xx body here instead of into the reply (large images spill to disk).
    :param client: the async client to use; default the I/O loop's shared one (sync callers).
    """
    http = client if client is not None else io_loop().shared_client()
    current = url
    for _ in range(bounds.max_redirects + 1):
        if urlsplit(current).scheme.lower() not in ("http", "https"):
            raise DownloadError("redirected to a URL that is not http(s)", "refused")
        reply = await _one(http, method, current, bounds, headers, sink)
        location = reply.headers.get("location")
        if reply.status not in REDIRECT_STATUSES or not location:
            return reply
        current = urljoin(current, location)
    raise DownloadError(f"redirected more than {bounds.max_redirects} times", "refused")


def fetch(url: str, **kwargs: Any) -> Reply:
    """`afetch` from sync code (a worker, a thread), on the process's I/O loop."""
    return run_sync(afetch(url, **kwargs))


async def _one(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    bounds: DownloadBounds,
    headers: dict[str, str] | None,
    sink: IO[bytes] | None,
) -> Reply:
    try:
        return await aexchange(http, method, url, bounds=bounds, headers=headers, sink=sink)
    except TooLarge as exc:
        raise DownloadError(f"sent more than {bounds.max_bytes} bytes", "too_large", received=exc.received,
                            declared=exc.declared) from None  # fmt: skip
    except Overdue as exc:
        raise DownloadError(f"took more than {bounds.deadline:g} s to send the image", "overdue",
                            received=exc.received) from None  # fmt: skip
    except Stalled as exc:
        if exc.answered:
            raise DownloadError(f"stopped sending for more than {bounds.read_timeout:g} s", "stalled",
                                received=exc.received) from None  # fmt: skip
        raise DownloadError(f"did not answer within {bounds.read_timeout:g} s", "silent") from None
    except httpx.ConnectTimeout:
        raise DownloadError(f"could not be reached within {bounds.connect_timeout:g} s", "unreachable") from None
    except (httpx.UnsupportedProtocol, httpx.InvalidURL, httpx.LocalProtocolError):
        raise DownloadError("is, or redirected to, a URL that cannot be fetched", "refused") from None
    except httpx.ConnectError as exc:
        if _caused_by(exc, ssl.SSLError):
            raise DownloadError("failed the TLS handshake or certificate check", "refused") from None
        raise DownloadError(f"could not be fetched ({connection_reason(exc)})", "broken") from None
    except (httpx.TransportError, OSError):
        raise DownloadError("broke the connection while sending the image", "broken") from None


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    return any(isinstance(link, kind) for link in _chain(exc))


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    stack = [exc]
    while stack:
        current = stack.pop()
        if any(current is s for s in seen):
            continue
        seen.append(current)
        links = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        stack.extend(link for link in links if isinstance(link, BaseException))
    return seen


def connection_reason(exc: BaseException) -> str:
    """A short cause found in the exception chain; never the exception text (it holds the URL)."""
    for link in _chain(exc):
        if isinstance(link, ConnectionRefusedError):
            return "connection refused"
        if isinstance(link, socket.gaierror):
            return "host name not found"
        if isinstance(link, ConnectionResetError):
            return "connection reset or closed early"
    text = " ".join(str(link) for link in _chain(exc)).lower()
    if "connection refused" in text or "errno 111" in text:
        return "connection refused"
    if "name or service not known" in text or "nodename nor servname" in text or "name resolution" in text:
        return "host name not found"
    return "the connection failed"
