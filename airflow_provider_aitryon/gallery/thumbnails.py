"""Bounded thumbnails for the review gallery: fetch, check, decode small, encode, cache.

A gallery page can show 2,000 images and a backfill partition 40,000, so nothing here may grow with
the number of items: images are fetched and shrunk one page at a time by a bounded thread pool, only
the encoded thumbnails (a few KB each) of the current page are kept, and a small LRU cache keeps the
thumbnails of references that repeat (the same person or garment on hundreds of items).

An image is trusted as little as a download is (see `airflow_provider_aitryon.storage`): its pixel
count is read from the header and checked before anything is decoded (a few hundred KB of PNG can
declare 100,000 x 100,000 px), JPEGs are decoded at a reduced scale (``draft``), and any failure of one
image becomes a `Missing` placeholder with a short reason, never an exception for the whole gallery.
"""

from __future__ import annotations

import base64
import io
import re
import threading
import warnings
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from airflow_provider_aitryon import api
from airflow_provider_aitryon.errors import DashScopeError

# 40 MP: a 4096 x 4096 try-on result is 16.8 MP; a photo from a phone is 12 to 50. Decoded, 40 MP is
# 160 MB of RGBA, which is why decodes are also limited to a few at a time (`Thumbnailer`).
MAX_PIXELS = 40_000_000
MAX_BYTES = 20 * 1024 * 1024
CACHE_ENTRIES = 256
# References met before, remembered by name only (bytes each, not thumbnails): only a reference
# met a second time enters the cache, so a page's ~1,000 one-off coarse and refined images never
# push out the persons and garments that repeat across pages.
SEEN_ENTRIES = 16_384
JPEG_QUALITY = 75
# The formats a try-on input or result can have; anything else Pillow could parse is not needed here
# and only widens what an untrusted file can reach. (A multi-picture JPEG opens through JPEG.)
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
BACKGROUND = (255, 255, 255)
_MAX_REASON = 140
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>)]+")

Fetch = Callable[[str], bytes]


@dataclass(frozen=True)
class Thumb:
    """An encoded thumbnail, ready to be a ``data:`` URI.

    :param data_uri: ``data:image/jpeg;base64,...``.
    :param width: thumbnail width in pixels.
    :param height: thumbnail height in pixels.
    """

    data_uri: str
    width: int
    height: int


@dataclass(frozen=True)
class Missing:
    """Why an image is not shown: a short sentence fragment, never a URL's query string.

    :param reason: e.g. ``"not available"`` or ``"not an image"``.
    """

    reason: str


Shown = Thumb | Missing


class ThumbnailError(Exception):
    """One image cannot be shown; the message is the short reason for its placeholder."""


def scrub(text: str) -> str:
    """A message made safe to show: every URL in it as `api.shown_url` shows it, shortened.

    An exception from a file system or HTTP library may carry the signed URL it was given; the
    signature works as a password until it expires.

    :param text: any message.
    """
    text = _URL.sub(lambda match: api.shown_url(match.group(0)), " ".join(str(text).split()))
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


def make_thumbnail(data: bytes, *, size: int, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES) -> Thumb:
    """Shrink encoded image bytes to fit a ``size`` x ``size`` box, as a JPEG ``data:`` URI.

    The header is read first and the image refused when it declares more than ``max_pixels``: only
    then is it decoded (a JPEG at the smallest scale that still covers the box). EXIF orientation is
    applied; transparency is flattened onto white.

    :param data: the image file's bytes.
    :param size: the longest side of the thumbnail, in pixels.
    :param max_pixels: largest width x height decoded.
    :param max_bytes: largest file accepted.
    :raises ThumbnailError: not an image, too large, or it cannot be decoded; the message is short.
    """
    if len(data) > max_bytes:
        raise ThumbnailError(f"larger than {max_bytes // (1024 * 1024)} MiB")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning fires at 89 MP; the explicit check below is stricter.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise ThumbnailError("too many pixels, not decoded") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ThumbnailError("not an image") from None
    with image:
        width, height = image.size
        if width < 1 or height < 1 or width * height > max_pixels:
            raise ThumbnailError(f"{width}x{height} px, over {max_pixels // 1_000_000} MP, not decoded")
        try:
            # JPEG only (a no-op elsewhere): decode at 1/2, 1/4 or 1/8 scale, still at least `size`.
            image.draft("RGB", (size, size))
            image.thumbnail((size, size), Image.Resampling.LANCZOS)
            small = flat_rgb(ImageOps.exif_transpose(image))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ThumbnailError(f"cannot be decoded ({scrub(str(exc)) or type(exc).__name__})") from None
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return Thumb(f"data:image/jpeg;base64,{encoded}", small.width, small.height)


def flat_rgb(image: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """``image`` as RGB, its transparent areas on ``background`` (converted as is, they turn black).

    :param image: any Pillow image.
    :param background: the colour transparency shows, white by default.
    """
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, background)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


class Thumbnailer:
    """Thumbnails for one page at a time, with an LRU cache by reference shared by all pages.

    Only references that repeat (twice on a page, or again on a later page) are cached: the
    persons and garments a catalog shares, not each item's own results.

    Fetches run ``workers`` at a time on the executor; decodes at most ``decoders`` at a time,
    because one decode of a large PNG holds up to ``4 * MAX_PIXELS`` bytes until it is shrunk.

    :param fetch: reference -> image bytes; any exception becomes a placeholder.
    :param executor: the bounded pool that runs fetch and decode.
    :param size: the longest thumbnail side, in pixels.
    :param decoders: how many full decodes may run at once.
    :param cache_entries: how many thumbnails (or placeholders) the LRU cache keeps.
    """

    def __init__(
        self,
        fetch: Fetch,
        executor: Executor,
        *,
        size: int,
        decoders: int,
        cache_entries: int = CACHE_ENTRIES,
    ) -> None:
        self._fetch = fetch
        self._executor = executor
        self._size = size
        self._decode_slots = threading.BoundedSemaphore(max(1, decoders))
        self._cache: OrderedDict[str, Shown] = OrderedDict()
        self._cache_entries = cache_entries
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.fetched = 0

    def page(self, refs: Iterable[str]) -> dict[str, Shown]:
        """The thumbnail (or placeholder) of every reference, each fetched at most once.

        Only the returned dict and the cache hold thumbnails: the caller drops the dict once the
        page is written.

        :param refs: the image references of one page; repeats are fine.
        """
        shown: dict[str, Shown] = {}
        pending = {}
        refs = list(refs)
        repeated = {ref for ref, n in Counter(refs).items() if n > 1}
        for ref in dict.fromkeys(refs):
            cached = self._cache.get(ref)
            if cached is not None:
                self._cache.move_to_end(ref)
                shown[ref] = cached
            else:
                pending[ref] = self._executor.submit(self._one, ref)
        for ref, future in pending.items():
            result = future.result()  # _one never raises
            shown[ref] = result
            if ref in repeated or ref in self._seen:
                self._remember(ref, result)
            self._seen[ref] = None
            self._seen.move_to_end(ref)
            while len(self._seen) > SEEN_ENTRIES:
                self._seen.popitem(last=False)
        self.fetched += len(pending)
        return shown

    def _remember(self, ref: str, result: Shown) -> None:
        self._cache[ref] = result
        self._cache.move_to_end(ref)
        while len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)

    def _one(self, ref: str) -> Shown:
        try:
            data = self._fetch(ref)
        except DashScopeError as exc:
            # The provider's own sentences already show URLs without their query strings.
            return Missing(f"could not be read: {scrub(str(exc))}")
        except Exception as exc:
            return Missing(f"could not be read ({type(exc).__name__}: {scrub(str(exc))})")
        try:
            with self._decode_slots:
                return make_thumbnail(data, size=self._size)
        except ThumbnailError as exc:
            return Missing(str(exc))
        except Exception as exc:  # a Pillow bug on one hostile file must not end the gallery
            return Missing(f"cannot be shown ({type(exc).__name__})")
        finally:
            del data
