"""The one image downloader: every image this provider fetches, fetched the same bounded way.

Pre-flight (input images, before paying), saving results (`storage.save_image`, for the operator
and the catalog's chunks alike) and the emulator's input fetches all call `fetch` (or `afetch`):

* http(s) only, also after a redirect; redirects are followed here, at most ``max_redirects``;
* the HTTP core's bounds (`http_client`): connect and read timeouts, one deadline for the whole
  download (headers included), and a byte cap read as the body arrives;
* every failure is one `DownloadError` with a short reason that never quotes the URL (a signed
  URL's query string is a credential): callers prefix the URL as `api.shown_url` shows it;
* with an `AddressPolicy` (pre-flight passes one), every hop, redirects included, is checked
  before it is connected to: the host's resolved addresses, not just its name, and the connection
  then goes to an address that was checked (see `AddressPolicy`).

Statuses are the caller's to judge (an expired result is not a bad input image);
`is_transient_status` names those worth another try, from the one error table (`errors`).
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import socket
import ssl
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from airflow_provider_aitryon.api import shown_url
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
    ``overdue`` (past the deadline), ``too_large`` (over the byte cap), ``broken`` (the
    connection failed or dropped) and ``forbidden`` (an `AddressPolicy` refused the address:
    `AddressRefused`).
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
    policy: AddressPolicy | None = None,
) -> Reply:
    """Download ``url`` (following redirects to http(s) URLs); the final reply, whatever its status.

    :param sink: write a 2xx body here instead of into the reply (large images spill to disk).
    :param client: the async client to use; default the I/O loop's shared one (sync callers).
        Not with ``policy``: a policy brings its own client, whose connections were all checked.
    :param policy: which addresses may be fetched; every hop is checked before it is connected
        to, and an `AddressRefused` (a `DownloadError`) names the refused address. ``None``:
        any address (results from DashScope, the emulator's own fetches).
    """
    if policy is not None and client is not None:
        raise ValueError("afetch: pass either a client or an address policy, not both")
    http = client if client is not None else io_loop().shared_client() if policy is None else _guarded_client(policy)
    current = url
    for hop in range(bounds.max_redirects + 1):
        if urlsplit(current).scheme.lower() not in ("http", "https"):
            raise DownloadError("redirected to a URL that is not http(s)", "refused")
        token = None
        if policy is not None:
            try:
                target, checked = await policy.screen(current, timeout=min(bounds.connect_timeout, bounds.deadline))
            except AddressRefused as refusal:
                raise refusal.after_redirect(current) if hop else refusal from None
            # The connection goes to the addresses just checked, not to a second lookup's answer.
            token = _PINNED.set((target, checked) if target is not None and checked else None)
        try:
            reply = await _one(http, method, current, bounds, headers, sink)
        except AddressRefused as refusal:  # the transport's own check (a second look-up disagreed)
            raise refusal.after_redirect(current) if hop else refusal from None
        finally:
            if token is not None:
                _PINNED.reset(token)
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
    except DownloadError:
        raise  # an AddressRefused from the guarded transport, already in words
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


# ---------------------------------------------------------------------------------- address policy

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Never fetched, whatever the connection allows: link-local addresses (cloud metadata at
# 169.254.169.254 among them) and the metadata services that live elsewhere (Alibaba Cloud ECS,
# AWS over IPv6).
ALWAYS_REFUSED = frozenset({"link-local", "cloud metadata"})
_METADATA = frozenset({ipaddress.ip_address("100.100.100.200"), ipaddress.ip_address("fd00:ec2::254")})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated, but some stacks still route it
_DEFAULT_PORTS = {"http": 80, "https": 443}


def address_class(ip: IPAddress) -> str | None:
    """``None`` for a public address; else what it is: ``link-local``, ``cloud metadata``,
    ``loopback``, ``unspecified``, ``multicast``, ``private`` or ``reserved`` (not global).

    An IPv6 address that carries an IPv4 one (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible
    ``::a.b.c.d``, NAT64 ``64:ff9b::a.b.c.d``, 6to4 ``2002::/16``) is judged by the IPv4 address
    inside; deprecated site-local ``fec0::/10`` counts as private.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])  # a scope id does not change the class
        inner = ip.ipv4_mapped or ip.sixtofour
        if inner is None and (ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1)):
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inner is not None:
            return address_class(inner)
        if ip.is_site_local:
            return "private"
    if ip in _METADATA:
        return "cloud metadata"
    for kind in ("link-local", "loopback", "unspecified", "multicast", "private"):
        if getattr(ip, "is_" + kind.replace("-", "_")):
            return kind
    return None if ip.is_global else "reserved"


class AddressRefused(DownloadError):
    """An `AddressPolicy` refused where a URL leads, before anything was sent there.

    ``address_class`` is `address_class`'s word; ``always`` says no connection setting allows it
    (link-local, cloud metadata); ``address`` is the refused IP address.
    """

    def __init__(self, reason: str, *, address: str, address_class: str, always: bool) -> None:
        super().__init__(reason, "forbidden")
        self.address, self.address_class, self.always = address, address_class, always

    def after_redirect(self, url: str) -> AddressRefused:
        """The same refusal, worded for a redirect hop (the target shown without its query string)."""
        return AddressRefused(f"redirected to {shown_url(url)}, which {self.reason}", address=self.address,
                              address_class=self.address_class, always=self.always)  # fmt: skip


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve(host: str, port: int) -> list[str]:
    """The host's addresses, as the system resolver gives them (in its order, duplicates dropped)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def origin_of(url: str) -> tuple[str, int] | None:
    """``(host, port)`` of an http(s) URL as the HTTP client connects to it (IDNA, lower case)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return None
    scheme = parsed.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parsed.raw_host:
        return None
    return parsed.raw_host.decode("ascii").lower(), parsed.port or _DEFAULT_PORTS[scheme]


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses a download may connect to: public ones, and more if the caller says so.

    Refused always: link-local addresses (``169.254.0.0/16``, ``fe80::/10``: the cloud metadata
    service at 169.254.169.254) and the metadata addresses ``100.100.100.200`` (Alibaba Cloud) and
    ``fd00:ec2::254``, also inside IPv4-mapped or NAT64 IPv6 forms. Refused unless
    ``allow_private``: loopback, private, unspecified, multicast and other non-global addresses,
    except on the ``trusted_origins`` (``(host, port)`` pairs, e.g. the API base URL's, so the
    emulator's ``/samples`` and ``/results`` stay reachable).

    A host name is judged by every address it resolves to (one bad address refuses it), looked up
    within the caller's timeout; the connection is then made to an address that was checked (the
    guarded client's transport connects by IP, with the name kept for the Host header and TLS), so
    a second, different DNS answer cannot slip in between (DNS rebinding). When the environment
    routes a URL through an HTTP proxy, the proxy connects: the check then rests on the worker's
    own lookup of the name.

    :param allow_private: also allow loopback, private and other non-public addresses.
    :param trusted_origins: ``(host, port)`` pairs (as `origin_of` gives them) allowed like
        public ones (link-local still refused).
    :param resolver: the name look-up (tests replace it).
    """

    allow_private: bool = False
    trusted_origins: frozenset[tuple[str, int]] = frozenset()
    resolver: Resolver = resolve

    @classmethod
    def for_base_url(cls, base_url: str | None, *, allow_private: bool = False) -> AddressPolicy:
        """The policy of a connection: its base URL's origin trusted, private addresses as it says."""
        origin = origin_of(base_url) if base_url else None
        return cls(allow_private=allow_private, trusted_origins=frozenset({origin} if origin else ()))

    def judge(self, ip: IPAddress, origin: tuple[str, int]) -> str | None:
        """The class that refuses ``ip`` for a URL on ``origin``, or ``None`` when it may be fetched."""
        kind = address_class(ip)
        if kind is None or (kind not in ALWAYS_REFUSED and (self.allow_private or origin in self.trusted_origins)):
            return None
        return kind

    async def vet(self, host: str, port: int, timeout: float | None) -> list[str]:
        """The addresses of ``host`` that may be connected to; `AddressRefused` if any may not.

        Raises `socket.gaierror` or `TimeoutError` when the name cannot be looked up in time.
        """
        host = host.strip("[]").lower()
        literal = _ip(host)
        if literal is not None:
            addresses = [host]
        else:
            addresses = await asyncio.wait_for(self.resolver(host, port), timeout)
            if not addresses:
                raise socket.gaierror(socket.EAI_NONAME, "no address")
        for address in addresses:
            ip = _ip(address)
            kind = "reserved" if ip is None else self.judge(ip, (host, port))
            if kind is not None:
                what = f"a {kind} address" if kind != "unspecified" else "the unspecified address"
                reason = f"is {what}" if literal is not None else f"resolves to {what} ({address})"
                raise AddressRefused(reason, address=address, address_class=kind, always=kind in ALWAYS_REFUSED)
        return addresses

    async def screen(self, url: str, *, timeout: float) -> tuple[tuple[str, int] | None, list[str]]:
        """Check one hop before it is fetched: its origin and the addresses it may use.

        A name that cannot be looked up here is let through unpinned: a direct connection then looks
        it up again in the guarded transport, which checks it the same way; a proxy resolves it itself.
        """
        origin = origin_of(url)
        if origin is None:
            return None, []  # not fetchable at all: the HTTP client says so in its own words
        try:
            return origin, await self.vet(*origin, timeout=timeout)
        except (OSError, asyncio.TimeoutError):
            return origin, []


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


# The hop in flight, as `afetch` checked it: ((host, port), addresses). The guarded transport
# connects to these addresses instead of looking the name up again.
_PINNED: contextvars.ContextVar[tuple[tuple[str, int], list[str]] | None] = contextvars.ContextVar(
    "aitryon_pinned", default=None
)


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Opens connections only to addresses the policy allows, by IP (the name stays the TLS name)."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        pinned = _PINNED.get()
        addresses = pinned[1] if pinned is not None and pinned[0] == (host.strip("[]").lower(), port) else None
        if not addresses:
            try:
                addresses = await self.policy.vet(host, port, timeout)
            except asyncio.TimeoutError:
                raise httpcore.ConnectTimeout("the host name was not looked up in time") from None
            except OSError as exc:
                raise httpcore.ConnectError(str(exc)) from exc
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                    socket_options=socket_options)  # fmt: skip
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not fetched")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (request and error mapping) over a connection pool that connects by
    checked IP. Only the pool is replaced; its settings are httpx's defaults, like `new_client`'s."""

    def __init__(self, policy: AddressPolicy) -> None:
        super().__init__()
        limits = httpx.Limits(max_connections=100)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedBackend(policy),
        )


# One client per (event loop, policy): a pooled connection is only ever reused under the policy
# that checked it. A process sees a handful of policies (one per connection); the oldest is let go
# past a bound, so tests that start many emulators do not pile up clients.
_GUARDED_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[AddressPolicy, httpx.AsyncClient]] = (
    weakref.WeakKeyDictionary()
)
_MAX_GUARDED_CLIENTS = 16
_GUARDED_LOCK = threading.Lock()  # the I/O loop and an async caller's own loop may both ask
_CLOSING: set[asyncio.Task[None]] = set()


def _guarded_client(policy: AddressPolicy) -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    with _GUARDED_LOCK:
        clients = _GUARDED_CLIENTS.setdefault(loop, {})
        client = clients.get(policy)
        if client is None:
            while len(clients) >= _MAX_GUARDED_CLIENTS:
                task = loop.create_task(clients.pop(next(iter(clients))).aclose())
                _CLOSING.add(task)
                task.add_done_callback(_CLOSING.discard)
            client = clients[policy] = httpx.AsyncClient(transport=_GuardedTransport(policy), follow_redirects=False)
        return client
