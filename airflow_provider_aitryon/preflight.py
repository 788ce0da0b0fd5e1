"""Pre-flight validation: fetch a submit's input images and check the service's rules first.

Why: DashScope reports a bad input image only after the task was queued and run (a FAILED task
with ``InvalidURL``, ``InvalidInputLength`` or a size mismatch), tens of seconds later and far from
the cause. Fetching each image once from the worker and applying the same rules the emulator
applies (``image_rules``) turns that into an immediate one-sentence error naming the field, and
nothing is submitted or paid for.

How an image is fetched, and what is refused without a fetch:

* only ``http``/``https`` URLs are fetched; ``file:``, ``ftp:`` or scheme-less values are refused
  before any request (DashScope could not fetch them either);
* ``HEAD`` first: a ``Content-Length`` above 5 MB is refused without downloading. Any other HEAD
  outcome (405/501, no length, 403 from a URL signed for GET only, an error) just moves on to GET;
* ``GET`` streamed, reading at most ``MAX_BYTES + 1`` bytes, so a huge or endless body costs at
  most 5 MB; redirects are followed up to ``MAX_REDIRECTS``; connect and read timeouts apply;
* 5xx, 408, 429 and broken or refused connections are retried a couple of times quickly (the one
  retry policy of `retry`); a 4xx, a timeout or a redirect loop fails at once.

Every fetch goes through the provider's one downloader (`downloads`), under its deadline and cap,
and its address policy (`downloads.AddressPolicy`): a URL (or a redirect) that leads to a
link-local address (cloud metadata at 169.254.169.254) is always refused before anything is sent
there, and one that leads to a loopback, private or other non-public address is refused unless the
connection's extra ``allow_private_inputs`` is true or the URL is on the connection's own base URL
(the emulator's ``/samples`` and ``/results``). `input_policy` builds the policy of a connection.

Each URL is fetched at most once per ``InputInspector`` (one inspector per task execution), also
when two fields name the same URL. Messages show a URL as ``scheme://host/path`` only: the query
string of a signed URL is a credential and never appears in an error or a log line.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from airflow_provider_aitryon import api, downloads
from airflow_provider_aitryon.api import shown_url
from airflow_provider_aitryon.downloads import (
    AddressPolicy,
    AddressRefused,
    DownloadBounds,
    DownloadError,
    is_transient_status,
)
from airflow_provider_aitryon.errors import DashScopeConfigError
from airflow_provider_aitryon.http_client import Reply
from airflow_provider_aitryon.image_rules import MAX_BYTES, ImageFacts, ImageRuleError, check_byte_size, check_image
from airflow_provider_aitryon.retry import backoff_delay

PERSON_FIELD = "person_image_url"
COARSE_FIELD = "coarse_image_url"

MAX_REDIRECTS = 5
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 20.0
# One GET of one image, all told: a host dripping a byte every few seconds never trips the read
# timeout, and must not hold the worker.
MAX_SECONDS = 60.0
ATTEMPTS = 3  # for transient failures only: 5xx, 408, 429, refused or broken connections
BACKOFF_BASE = 0.3  # a broken image host is usually back within a second, or not soon
BACKOFF_CAP = 5.0
_IDENTITY = {"Accept-Encoding": "identity"}

_CHUNK = 64 * 1024
_PUBLIC = "DashScope must be able to fetch the image from a public http(s) URL without credentials"
ALLOW_PRIVATE_EXTRA = "allow_private_inputs"
_PRIVATE_FIX = (
    f"set the connection extra {ALLOW_PRIVATE_EXTRA}=true for hosts on your network, or pass a public http(s) URL"
)
_NEVER_FIX = "link-local and cloud metadata addresses are never fetched; " + _PUBLIC
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height

log = logging.getLogger(__name__)

__all__ = [
    "ATTEMPTS",
    "MAX_REDIRECTS",
    "AddressPolicy",
    "FetchRecord",
    "ImageFacts",
    "InputInspector",
    "input_policy",
    "shown_url",
]


def input_policy(settings: Any) -> AddressPolicy:
    """The address policy of a connection (`connection.ConnectionSettings`): its own base URL's
    origin allowed (the emulator serves input images there), other non-public addresses only with
    the extra ``allow_private_inputs``; link-local never."""
    return AddressPolicy.for_base_url(settings.base_url, allow_private=bool(settings.allow_private_inputs))


@dataclass(frozen=True)
class FetchRecord:
    """One HTTP request the inspector made, for logs and tests (the URL as ``shown_url`` shows it)."""

    method: str
    url: str
    status: int | None
    bytes_read: int


class _Refused(Exception):
    """An image was refused; the sentence is built per field so a cached refusal names the asker."""

    def __init__(self, problem: str, allowed: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.allowed = allowed

    def sentence(self, field: str) -> str:
        return f"{field}: {self.problem}; {self.allowed}."


class _Transient(Exception):
    """A fetch failure another attempt may fix; ``what`` completes "<url> ...": "answered HTTP 503 ..."."""

    def __init__(self, what: str, retry_after: float | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.retry_after = retry_after


@dataclass(frozen=True)
class _Inspected:
    facts: ImageFacts
    upright: tuple[int, int]  # width x height after the EXIF orientation, as the service sees it


class InputInspector:
    """Fetches and checks input images; one per task execution (it caches results per URL).

    :param connect_timeout: seconds to wait for a connection to an image host.
    :param read_timeout: seconds to wait for each read from an image host.
    :param max_seconds: seconds one image's body may take to arrive, all told.
    :param max_redirects: redirects followed per request before the URL is refused.
    :param attempts: tries per image for transient failures (5xx, 408, 429, broken connections).
    :param backoff_base: seconds; waits between tries follow the one retry policy (`retry`): full
        jitter up to ``backoff_base * 2**(try - 1)``, a Retry-After as a floor.
    :param fetch: the downloader (`downloads.fetch`); tests pass one that must not be called.
    :param policy: which addresses may be fetched (`input_policy` of the connection); the default
        allows public addresses only.
    :param logger: where to log what was checked; default this module's logger.
    :param sleep: how to wait between tries (tests pass a no-op).

    ``fetches`` lists every HTTP request made, with the bytes of the body that were read.
    """

    def __init__(
        self,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        max_seconds: float = MAX_SECONDS,
        max_redirects: int = MAX_REDIRECTS,
        attempts: int = ATTEMPTS,
        backoff_base: float = BACKOFF_BASE,
        fetch: Callable[..., Reply] = downloads.fetch,
        logger: Any = None,
        sleep: Callable[[float], None] = time.sleep,
        policy: AddressPolicy = AddressPolicy(),  # noqa: B008 - immutable
    ) -> None:
        self.policy = policy
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_seconds = max_seconds
        self.max_redirects = max_redirects
        self.attempts = max(1, int(attempts))
        self.backoff_base = float(backoff_base)
        self.log = logger if logger is not None else log
        self.fetches: list[FetchRecord] = []
        self._sleep = sleep
        self._fetch = fetch
        self._cache: dict[str, _Inspected | _Refused] = {}
        self._shown: dict[str, str] = {}
        self._get_only: set[str] = set()

    # ------------------------------------------------------------------ public API

    def inspect(self, field: str, url: object) -> ImageFacts:
        """Fetch ``url`` (once per inspector) and apply the input rules; raise DashScopeConfigError."""
        return self._inspected(field, url).facts

    def check_call(
        self,
        call: api.ApiCall,
        *,
        shown: Mapping[str, str] | None = None,
        get_only: Set[str] = frozenset(),
        skip: Set[str] = frozenset(),
    ) -> dict[str, ImageFacts]:
        """Check every ``*_url`` of a submit's input, and the refiner's coarse-vs-person size rule.

        :param call: the submit as it will be sent (`sources.sendable`).
        :param shown: sent URL -> how messages show it (a signed URL as its ``oss://`` URI).
        :param get_only: URLs signed for GET, which OSS refuses to HEAD: fetched with GET alone.
        :param skip: URLs not to fetch: images checked before their upload to DashScope's storage.
        """
        self._shown.update(shown or {})
        self._get_only |= set(get_only)
        inputs = (call.body or {}).get("input") or {}
        if not isinstance(inputs, Mapping):
            return {}
        inspected = {
            name: self._inspected(name, value)
            for name, value in inputs.items()
            if isinstance(name, str) and name.endswith("_url") and value is not None and value not in skip
        }
        person, coarse = inspected.get(PERSON_FIELD), inspected.get(COARSE_FIELD)
        if person is not None and coarse is not None:
            _check_same_size(person, coarse)
        return {name: item.facts for name, item in inspected.items()}

    def close(self) -> None:
        """Nothing to release: connections belong to the process's shared downloader."""

    def __enter__(self) -> InputInspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ checking

    def _inspected(self, field: str, url: object) -> _Inspected:
        if not isinstance(url, str):
            raise DashScopeConfigError(
                f"{field}: the value is a {type(url).__name__}, not a URL; pass the public http(s) URL of the image."
            )
        key = url.strip()
        outcome = self._cache.get(key)
        if outcome is None:
            try:
                outcome = self._inspect_uncached(field, key)
            except _Refused as refusal:
                outcome = refusal
            self._cache[key] = outcome
        if isinstance(outcome, _Refused):
            raise DashScopeConfigError(outcome.sentence(field))
        return outcome

    def _inspect_uncached(self, field: str, url: str) -> _Inspected:
        shown = self._shown.get(url) or shown_url(url)
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise _Refused(f"the URL {shown!r} is not an http:// or https:// URL, so it was not fetched", _PUBLIC)
        try:
            data = self._download(url, shown, field)
            facts = check_image(data, field=field)
        except ImageRuleError as exc:
            raise _Refused(exc.problem, exc.allowed) from None
        upright = _upright_size(data, facts)
        self.log.info(
            "Pre-flight %s: %s is %s, %dx%d px, %d bytes: within the DashScope input rules.",
            field, shown, facts.format, facts.width, facts.height, facts.size_bytes,
        )  # fmt: skip
        return _Inspected(facts, upright)

    # ------------------------------------------------------------------ fetching

    def _bounds(self, max_bytes: int) -> DownloadBounds:
        return DownloadBounds(
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            deadline=self.max_seconds,
            max_bytes=max_bytes,
            max_redirects=self.max_redirects,
        )

    def _download(self, url: str, shown: str, field: str) -> bytes:
        declared = None if url in self._get_only else self._head_length(url, shown)
        if declared is not None and declared > MAX_BYTES:
            check_byte_size(declared, field=field)  # raises ImageRuleError: refused without a GET
        failure: _Transient | None = None
        for attempt in range(1, self.attempts + 1):
            if attempt > 1:
                # The one retry policy: full jitter, a Retry-After as a floor.
                delay = backoff_delay(attempt - 1, base=self.backoff_base, cap=BACKOFF_CAP,
                                      retry_after=failure.retry_after if failure else None)  # fmt: skip
                self.log.warning(
                    "Pre-flight %s: %s %s; trying again in %.1fs (attempt %d of %d).",
                    field, shown, failure.what if failure else "failed", delay, attempt, self.attempts,
                )  # fmt: skip
                self._sleep(delay)
            try:
                return self._get(url, shown, field)
            except _Transient as exc:
                failure = exc
        assert failure is not None
        tries = f" after {self.attempts} attempts" if self.attempts > 1 else ""
        raise _Refused(f"{shown} {failure.what}{tries}", _PUBLIC)

    def _head_length(self, url: str, shown: str) -> int | None:
        """Content-Length announced by a successful HEAD, else None (then GET decides alone)."""
        try:
            reply = self._fetch(url, bounds=self._bounds(0), method="HEAD", headers=_IDENTITY, policy=self.policy)
        except AddressRefused as exc:  # nothing was sent: not a fetch
            raise _address_refused(shown, exc) from None
        except DownloadError as exc:
            self.fetches.append(FetchRecord("HEAD", shown, None, 0))
            self.log.debug("Pre-flight HEAD of %s failed (%s); trying GET.", shown, exc.kind)
            return None
        self.fetches.append(FetchRecord("HEAD", shown, reply.status, 0))
        if not 200 <= reply.status < 300:
            return None
        return _content_length(reply.headers)

    def _get(self, url: str, shown: str, field: str) -> bytes:
        try:
            # identity: the byte cap then counts the file's own bytes.
            reply = self._fetch(url, bounds=self._bounds(MAX_BYTES), headers=_IDENTITY, policy=self.policy)
        except AddressRefused as exc:
            raise _address_refused(shown, exc) from None
        except DownloadError as exc:
            self.fetches.append(FetchRecord("GET", shown, None, exc.received))
            if exc.kind == "too_large":
                check_byte_size(exc.declared or exc.received, field=field, lower_bound=exc.declared is None)
            if exc.kind == "broken":
                raise _Transient(exc.reason) from None
            raise _Refused(f"{shown} {exc.reason}", _PUBLIC) from None
        self.fetches.append(FetchRecord("GET", shown, reply.status, len(reply.body)))
        status = reply.status
        if is_transient_status(status):
            raise _Transient(f"answered HTTP {_status_text(reply)}", api.retry_after_seconds(reply.headers))
        if status >= 400:
            raise _Refused(f"{shown} answered HTTP {_status_text(reply)}", _PUBLIC)
        if not 200 <= status < 300:
            raise _Refused(f"{shown} answered HTTP {_status_text(reply)} instead of the image", _PUBLIC)
        return reply.body


# ---------------------------------------------------------------------- helpers


def _address_refused(shown: str, exc: AddressRefused) -> _Refused:
    """``<url> resolves to a loopback address (127.0.0.1)``, and the fix: the extra, or none."""
    return _Refused(f"{shown} {exc.reason}", _NEVER_FIX if exc.always else _PRIVATE_FIX)


def _check_same_size(person: _Inspected, coarse: _Inspected) -> None:
    """The refiner needs the coarse image at the person image's pixel size (as the service sees it)."""
    person_sizes = {(person.facts.width, person.facts.height), person.upright}
    if (coarse.facts.width, coarse.facts.height) in person_sizes or coarse.upright in person_sizes:
        return
    cw, ch = coarse.upright
    pw, ph = person.upright
    raise DashScopeConfigError(
        f"{COARSE_FIELD}: the image is {cw}x{ch} px but {PERSON_FIELD} is {pw}x{ph} px; the coarse image must "
        "have the person image's size — make it with resolution=-1 and restore_face=true."
    )


def _upright_size(data: bytes, facts: ImageFacts) -> tuple[int, int]:
    """Width x height after the EXIF orientation (camera JPEGs); only the header is read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                orientation = img.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # the rules already passed; a broken EXIF block just means "as stored"
        orientation = None
    if orientation in _TRANSPOSED_ORIENTATIONS:
        return (facts.height, facts.width)
    return (facts.width, facts.height)


def _content_length(headers: Mapping[str, str]) -> int | None:
    value = headers.get("Content-Length")
    if value is None:
        return None
    try:
        length = int(value.strip())
    except ValueError:
        return None
    return length if length >= 0 else None


def _status_text(reply: Reply) -> str:
    reason = "".join(ch for ch in str(reply.reason or "") if ch.isprintable()).strip()[:60]
    return f"{reply.status} {reason}" if reason else str(reply.status)
