"""A self-contained HTML review gallery of try-on items, written page by page.

Merchandising reviews what a catalog backfill partition (10,000 items and more) or one pipeline run
produced: every item's SKU, status, inputs and results side by side, the failure code and message,
and the cost, under the run's headline figures. `write_gallery` writes ``<output>/report.html`` and,
past ``page_size`` items, ``report-2.html``, ``report-3.html``, ... to a local folder or any
ObjectStoragePath store. Each page is one file with nothing to load: inline CSS, thumbnails as
``data:`` URIs, no script, so it opens offline, from a bucket or as an e-mail attachment.

Memory does not grow with the number of items: ``items`` is consumed one page at a time, a page's
thumbnails are made by a bounded pool and dropped once the page is written, and only a small LRU
cache of thumbnails (by reference: the same person or garment repeats across items) outlives a
page. See `thumbnails` for how an untrusted image is checked before it is decoded.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_aitryon import api
from airflow_provider_aitryon.downloads import AddressPolicy
from airflow_provider_aitryon.errors import DashScopeConfigError
from airflow_provider_aitryon.gallery.page import COUNTED_STATUSES, render_page
from airflow_provider_aitryon.gallery.thumbnails import MAX_BYTES, Thumbnailer
from airflow_provider_aitryon.oss.settings import DEFAULT_CONN_ID as DEFAULT_OSS_CONN_ID
from airflow_provider_aitryon.oss.uri import is_oss_uri
from airflow_provider_aitryon.sources import read_image
from airflow_provider_aitryon.storage import atomic_write, resolve_destination

__all__ = ["MAX_PAGE_SIZE", "GalleryItem", "GalleryResult", "default_fetcher", "write_gallery"]

log = logging.getLogger(__name__)

# A thumbnail is not worth a long wait: one download may take this long in all...
FETCH_DEADLINE = 20.0
# ... and a host that failed this many times in a row is not asked again during the gallery.
HOST_FAILURES = 5
# 500 cards of four thumbnails is about 10 MB of HTML: a browser still scrolls it smoothly.
MAX_PAGE_SIZE = 500
INDEX = "report.html"


@dataclass(frozen=True)
class GalleryItem:
    """One reviewed item.

    :param sku: the item's SKU.
    :param status: ``succeeded``, ``failed`` or ``undone``; anything else is shown as it is.
    :param images: label -> image reference in display order, e.g. ``{"person": ..., "garment": ...,
        "coarse": ..., "refined": ...}``; None when that image does not exist (shown as a placeholder).
    :param code: the failure code, e.g. ``InvalidPerson``.
    :param message: the failure message.
    :param cost: this item's cost, a decimal string such as ``"0.50"``.
    :param task_ids: name -> DashScope task id, e.g. ``{"coarse": ..., "refined": ...}``.
    """

    sku: str
    status: str
    images: Mapping[str, str | None]
    code: str | None = None
    message: str | None = None
    cost: str | None = None
    task_ids: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GalleryResult:
    """What `write_gallery` wrote.

    :param index: URI of ``<output>/report.html``, the first page.
    :param pages: every page's URI, in order.
    :param items: how many items the pages show.
    :param counts: status -> items, counted while writing.
    """

    index: str
    pages: list[str]
    items: int
    counts: dict[str, int]


def page_names(pages: int) -> list[str]:
    """The file names of a gallery of ``pages`` pages: ``report.html``, ``report-2.html``, ...

    :param pages: how many pages (at least one is always written).
    """
    return [INDEX] + [f"report-{number}.html" for number in range(2, max(1, pages) + 1)]


def write_gallery(
    items: Iterable[GalleryItem],
    output: str,
    *,
    count: int,
    title: str,
    totals: Mapping[str, Any],
    fetch: Callable[[str], bytes] | None = None,
    page_size: int = MAX_PAGE_SIZE,
    conn_id: str | None = None,
    thumb_size: int = 160,
    workers: int = 8,
) -> GalleryResult:
    """Write the gallery of ``items`` into the folder ``output``, one page per ``page_size`` items.

    Every page shows ``totals``, links to every page and its own items. The ``#totals`` element
    carries ``data-items`` (``count``) and ``data-succeeded`` / ``data-failed`` / ``data-undone``,
    whole-gallery figures that page 1 must show before the later items are seen: they are taken
    from ``totals`` when it has those keys; otherwise they are counted, which is possible only when
    the whole gallery is one page (on more pages the attribute is left out). One image that cannot
    be fetched or decoded becomes a placeholder with a short reason; it never fails the gallery.

    :param items: the items, consumed lazily one page at a time (a generator over a manifest is fine).
    :param output: a folder: a local path or an ObjectStoragePath URI (``s3://``, ``oss://``, ...).
    :param count: how many items ``items`` yields, which fixes the number of pages up front.
    :param title: the page title.
    :param totals: headline figures shown on every page in order, e.g. items, succeeded, failed,
        cost, run id; values are shown as text (a mapping as ``key: value, ...``).
    :param fetch: reference -> image bytes; by default `default_fetcher` with ``conn_id``.
    :param page_size: items per page, at most 500.
    :param conn_id: the Airflow connection of the output store (and of object-store image references
        for the default fetch).
    :param thumb_size: the longest side of a thumbnail, in pixels.
    :param workers: how many images are fetched and shrunk at once.
    :return: the pages written and the per-status counts.
    :raises DashScopeConfigError: (a ValueError) a bad argument or output folder, or ``items``
        yielding more than ``count`` items.
    """
    if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise DashScopeConfigError(
            f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {page_size!r}; larger pages get too heavy to open."
        )
    for name, value, low in (("count", count, 0), ("workers", workers, 1), ("thumb_size", thumb_size, 16)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise DashScopeConfigError(f"{name} must be an integer of at least {low}, got {value!r}.")
    folder, _ = resolve_destination(output, conn_id=conn_id, field_name="output")
    names = page_names(math.ceil(count / page_size))
    targets = [folder / name for name in names]
    stream: Iterator[GalleryItem] = iter(items)
    data_counts = {status: _count(status, totals[status]) for status in COUNTED_STATUSES if status in totals}
    counts: Counter[str] = Counter()
    seen = 0
    # Decodes are CPU and memory bound: no more at once than there are cores.
    decoders = min(workers, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gallery") as executor:
        thumbnailer = Thumbnailer(fetch or default_fetcher(conn_id=conn_id), executor, size=thumb_size,
                                  decoders=decoders)  # fmt: skip
        for number, target in enumerate(targets, start=1):
            # Never past `count`: the pages and their links were fixed by it before the first item.
            page = list(itertools.islice(stream, min(page_size, max(0, count - seen))))
            counts.update(str(item.status) for item in page)
            if len(names) == 1:
                # One page: every item is seen before it is written, so missing figures can be counted.
                data_counts = {status: counts[status] for status in COUNTED_STATUSES} | data_counts
            refs = (ref for item in page for ref in item.images.values() if ref is not None)
            html = render_page(
                title=title,
                totals=totals,
                data_counts=data_counts,
                count=count,
                number=number,
                names=names,
                first=seen + 1,
                items=page,
                shown=thumbnailer.page(refs),
            )
            atomic_write(html.encode("utf-8"), target)
            seen += len(page)
            log.info("Wrote gallery page %d of %d (%d items): %s", number, len(names), len(page), target)
            del html, page
        if next(stream, None) is not None:
            raise DashScopeConfigError(
                f"items yielded more than count ({count}) items; pass the number of items the gallery shows."
            )
    if seen != count:
        log.warning("The gallery shows %d items, not the %d that count announced; its last pages are short.",
                    seen, count)  # fmt: skip
    for status, expected in data_counts.items():
        if counts[status] != expected:
            log.warning("totals say %d %s items, the gallery shows %d.", expected, status, counts[status])
    log.info("Gallery: %s (%d pages, %d items, %d images fetched).", targets[0], len(names), seen,
             thumbnailer.fetched)  # fmt: skip
    return GalleryResult(
        index=str(targets[0]), pages=[str(target) for target in targets], items=seen, counts=dict(counts)
    )


def _count(status: str, value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DashScopeConfigError(f"totals[{status!r}] must be a number of items, got {value!r}.") from None


def default_fetcher(
    policy: AddressPolicy | None = None,
    conn_id: str | None = None,
    oss_conn_id: str = DEFAULT_OSS_CONN_ID,
    *,
    max_bytes: int = MAX_BYTES,
    deadline: float = FETCH_DEADLINE,
    give_up_after: int = HOST_FAILURES,
) -> Callable[[str], bytes]:
    """The gallery's image reader: reference -> bytes, at most ``max_bytes``.

    http(s) URLs, ``oss://`` URIs and local paths / ``file://`` URIs go through
    `airflow_provider_aitryon.sources.read_image` (the provider's one bounded downloader and its
    address policy); any other object storage URI (``s3://``, ``gs://``, ``memory://``, ...) is read
    with ``ObjectStoragePath(ref, conn_id=conn_id)``, ``max_bytes`` plus one at most.

    :param policy: which addresses an http(s) URL may resolve to (`preflight.input_policy`); None
        allows public addresses only.
    :param conn_id: the Airflow connection of the object store the references are in.
    :param oss_conn_id: the ``oss`` connection that reads ``oss://`` references.
    :param max_bytes: largest image read.
    :param deadline: seconds one http(s) download may take in all.
    :param give_up_after: after this many failures in a row from one host (and none since its last
        success), its other images are not tried: a host that never answers costs a gallery of
        10,000 items a few deadlines, not one per item.
    """
    breaker = HostBreaker(give_up_after)


    def fetch(ref: str) -> bytes:
        text = ref.strip()
        scheme = urlsplit(text).scheme.lower()
        if scheme in ("http", "https"):
            host = urlsplit(text).netloc.rsplit("@", 1)[-1].lower()
            with breaker.call(host):
                return read_image(text, field_name="image", policy=policy, max_bytes=max_bytes, deadline=deadline)
        if is_oss_uri(text) or api.is_local_reference(text):
            return read_image(text, field_name="image", oss_conn_id=oss_conn_id, policy=policy, max_bytes=max_bytes)
        if len(scheme) <= 1:  # no scheme (or a Windows drive letter): a relative path names no fixed file
            raise DashScopeConfigError(f"image {text} is a relative path; use an absolute path or a URI.")
        from airflow.sdk import ObjectStoragePath

        path = ObjectStoragePath(text, conn_id=conn_id)
        # The file system's own open: ObjectStoragePath.open reports every read to hook lineage,
        # and a partition's lineage names its datasets per partition, never per image.
        with path.fs.open(path.path, "rb") as remote:
            data: bytes = remote.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise DashScopeConfigError(f"image {api.shown_url(text)} is larger than {max_bytes} bytes.")
        return data

    return fetch


class HostBreaker:
    """Stops asking a host that keeps failing: thread-safe, one per gallery's fetcher.

    :param limit: failures in a row (no success in between) after which the host is given up.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._failures: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def call(self, host: str) -> Iterator[None]:
        """Run one fetch from ``host``; raise at once if the host has been given up.

        :param host: the URL's host (and port).
        """
        with self._lock:
            if self._failures[host] >= self.limit:
                raise DashScopeConfigError(f"not tried: {host} failed {self.limit} times in a row")
        try:
            yield
        except Exception:
            with self._lock:
                self._failures[host] += 1
            raise
        with self._lock:
            self._failures[host] = 0
