"""The emulator's stand-in for the try-on model: fetch, check and render, deterministically.

Why real pixels instead of a canned PNG: the provider downloads results, copies them to storage,
feeds a coarse result into the refiner and checks sizes. Those paths are only exercised honestly
if the output is a genuine image whose size follows the same rules as the real service (coarse:
the person's size or the requested resolution; refined: the coarse image's size) and whose bytes
depend on the inputs. Rendering is a pure function of the input bytes and parameters, so two
identical tasks give byte-identical PNGs, which lets tests assert idempotency by comparing bytes.

The failure modes mirror the service's FAILED tasks: an unreachable URL or an undecodable file is
``InvalidURL``; size rules (``image_rules``) are ``InvalidInputLength``; a person image that is one
flat colour is ``InvalidPerson``; a flat garment is ``InvalidGarment``; a refiner coarse image whose
size differs from the person image is ``InvalidParameter``.

Coarse results carry two PNG text chunks (``aitryon:resolution``, ``aitryon:restore_face``) so
the refiner can enforce the vendor rule that a coarse image to refine must have been made with
``resolution=-1`` and ``restore_face=true``; the vendor reports a violation with the size-mismatch
message, and so does the emulator. Images without those chunks (made elsewhere) are not judged.

``marker=True`` renders the output of a task made by "another submitter" on the same account (the
``neighbor_submit_seconds`` fault): the same picture with its top-left corner block colour-inverted
and an ``aitryon:marker`` text chunk. Inverting 8-bit channels changes every pixel of the block
(255 - v never equals v), so such a result always differs in bytes *and* pixels from the unmarked
one, which is what lets an audit tell "our" result from the neighbour's.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageEnhance, ImageFilter, ImageOps, ImageStat
from PIL.PngImagePlugin import PngInfo

from airflow_provider_aitryon.api import MODEL_REFINER
from airflow_provider_aitryon.emulator.protocol import (
    MSG_INVALID_GARMENT,
    MSG_INVALID_LENGTH,
    MSG_INVALID_PERSON,
    MSG_INVALID_URL,
    MSG_SIZE_MISMATCH,
)
from airflow_provider_aitryon.image_rules import ImageRuleError, check_image

RESOLUTION_SIZES = {1024: (576, 1024), 1280: (720, 1280)}
# Below this grey-level standard deviation (on a 64x64 thumbnail) an image is "one colour".
UNIFORM_STDDEV = 4.0
META_RESOLUTION = "aitryon:resolution"
META_RESTORE_FACE = "aitryon:restore_face"
META_MODEL = "aitryon:model"
META_MARKER = "aitryon:marker"


class FetchError(Exception):
    """An input URL could not be downloaded."""


class FetchTooLarge(FetchError):
    """An input image is far over the size rule: the fetch stopped at the cap."""


class TaskFailure(Exception):
    """The task fails with this DashScope code and message; ``detail`` is for the emulator log."""

    def __init__(self, code: str, message: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.message = message
        self.detail = detail


@dataclass(frozen=True)
class Rendered:
    png: bytes
    width: int
    height: int


Fetch = Callable[[str], bytes]


def _decode(data: bytes, field: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
    except Exception as exc:
        raise TaskFailure("InvalidURL", MSG_INVALID_URL, f"{field}: cannot decode the image: {exc}") from exc
    return img


def _fetch_input(fetch: Fetch, url: str, field: str) -> bytes:
    try:
        return fetch(url)
    except FetchTooLarge as exc:
        raise TaskFailure("InvalidInputLength", MSG_INVALID_LENGTH, f"{field}: {exc}") from exc
    except FetchError as exc:
        raise TaskFailure("InvalidURL", MSG_INVALID_URL, f"{field}: {exc}") from exc


def _check_and_decode(data: bytes, field: str) -> Image.Image:
    try:
        check_image(data, field=field)
    except ImageRuleError as exc:
        message = MSG_INVALID_LENGTH if exc.code == "InvalidInputLength" else MSG_INVALID_URL
        raise TaskFailure(exc.code, message, str(exc)) from exc
    return _decode(data, field)


def _rgb(img: Image.Image) -> Image.Image:
    # Honour camera orientation as the service does, then drop alpha onto white.
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, (0, 0), rgba)
        return canvas
    return img.convert("RGB")


def is_uniform(img: Image.Image) -> bool:
    """True when the picture is one flat colour to the eye (faint noise is ignored)."""
    small = img.convert("L").resize((64, 64), Image.Resampling.BOX)
    return ImageStat.Stat(small).stddev[0] < UNIFORM_STDDEV


def _background(img: Image.Image) -> Image.Image:
    """Estimate the backdrop per row from the left and right edges (handles gradients and floors)."""
    w, h = img.size
    strip = max(1, min(6, w // 20))
    left = img.crop((0, 0, strip, h)).resize((1, h), Image.Resampling.BOX)
    right = img.crop((w - strip, 0, w, h)).resize((1, h), Image.Resampling.BOX)
    return Image.blend(left, right, 0.5).resize((w, h), Image.Resampling.NEAREST)


def _max_channel_diff(a: Image.Image, b: Image.Image) -> Image.Image:
    # The largest per-channel difference: skin on a pale blue backdrop differs mostly in blue,
    # which a luminance difference would average away.
    r, g, bl = ImageChops.difference(a, b).split()
    return ImageChops.lighter(ImageChops.lighter(r, g), bl)


def _foreground_mask(img: Image.Image, threshold: int) -> Image.Image:
    return _max_channel_diff(img, _background(img)).point(lambda v: 255 if v > threshold else 0)


def _figure_box(person: Image.Image) -> tuple[int, int, int, int]:
    """Bounding box of the figure; the whole frame when no clear figure stands out."""
    w, h = person.size
    box = _foreground_mask(person, 40).filter(ImageFilter.MinFilter(3)).getbbox()
    if box is None or (box[3] - box[1]) < h * 0.3 or (box[2] - box[0]) < w * 0.1:
        return (0, 0, w, h)
    return box


def _garment_cutout(garment: Image.Image) -> tuple[Image.Image, Image.Image]:
    mask = _foreground_mask(garment, 30).filter(ImageFilter.MaxFilter(3)).filter(ImageFilter.GaussianBlur(1))
    box = mask.getbbox() or (0, 0, garment.width, garment.height)
    return garment.crop(box), mask.crop(box)


def _region(
    box: tuple[int, int, int, int], fx0: float, fy0: float, fx1: float, fy1: float
) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    return (round(x0 + fx0 * bw), round(y0 + fy0 * bh), round(x0 + fx1 * bw), round(y0 + fy1 * bh))


def _dress_like(cutout: Image.Image) -> bool:
    return cutout.height > 1.3 * cutout.width


def _put_on(canvas: Image.Image, garment: Image.Image, region: tuple[int, int, int, int]) -> None:
    cut, mask = _garment_cutout(garment)
    x0, y0, x1, y1 = region
    size = (max(1, x1 - x0), max(1, y1 - y0))
    cut = cut.resize(size, Image.Resampling.LANCZOS)
    # Keep a little of the body's shading so the result reads as worn, not pasted.
    under = canvas.crop((x0, y0, x0 + size[0], y0 + size[1]))
    shaded = Image.blend(under, cut, 0.88)
    mask = mask.resize(size, Image.Resampling.LANCZOS)
    canvas.paste(shaded, (x0, y0), mask)


def _png(img: Image.Image, meta: dict[str, str]) -> bytes:
    info = PngInfo()
    for key, value in sorted(meta.items()):
        info.add_text(key, value)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _mark(canvas: Image.Image, meta: dict[str, str]) -> None:
    """Brand a neighbour's output: invert the top-left corner block and say so in the metadata."""
    side = max(4, min(canvas.width, canvas.height) // 16)
    box = (0, 0, min(side, canvas.width), min(side, canvas.height))
    canvas.paste(ImageOps.invert(canvas.crop(box)), box[:2])
    meta[META_MARKER] = "neighbor"


def render_coarse(
    person: Image.Image,
    top: Image.Image | None,
    bottom: Image.Image | None,
    *,
    resolution: int,
    restore_face: bool,
    model: str,
    marker: bool = False,
) -> Rendered:
    """Dress the figure: bottom garment over the legs, top (or dress) over the torso."""
    person = _rgb(person)
    if resolution in RESOLUTION_SIZES:
        person = ImageOps.fit(person, RESOLUTION_SIZES[resolution], Image.Resampling.LANCZOS)
    canvas = person.copy()
    fig = _figure_box(canvas)
    if bottom is not None:
        _put_on(canvas, _rgb(bottom), _region(fig, 0.20, 0.52, 0.80, 0.97))
    if top is not None:
        top_rgb = _rgb(top)
        if _dress_like(_garment_cutout(top_rgb)[0]):
            _put_on(canvas, top_rgb, _region(fig, -0.08, 0.165, 1.08, 0.84))
        else:
            _put_on(canvas, top_rgb, _region(fig, 0.02, 0.165, 0.98, 0.57))
    if not restore_face:
        # Without face restoration the model's face comes out soft; show that.
        head = _region(fig, 0.0, 0.0, 1.0, 0.16)
        canvas.paste(canvas.crop(head).filter(ImageFilter.GaussianBlur(4)), head[:2])
    meta = {
        META_MODEL: model,
        META_RESOLUTION: str(resolution),
        META_RESTORE_FACE: "true" if restore_face else "false",
    }
    if marker:
        _mark(canvas, meta)
    return Rendered(_png(canvas, meta), canvas.width, canvas.height)


def _mean_colour(garment: Image.Image) -> tuple[int, int, int]:
    cut, mask = _garment_cutout(garment)
    stat = ImageStat.Stat(cut, mask.point(lambda v: 255 if v > 128 else 0))
    if not stat.count or not stat.count[0]:
        stat = ImageStat.Stat(cut)
    r, g, b = (round(c) for c in stat.mean[:3])
    return (r, g, b)


def render_refined(
    person: Image.Image,
    coarse: Image.Image,
    top: Image.Image,
    bottom: Image.Image | None,
    *,
    gender: str,
    marker: bool = False,
) -> Rendered:
    """Sharpen and enrich the coarse picture, pulling the worn garment towards its true colour."""
    person = _rgb(person)
    coarse = _rgb(coarse)
    out = coarse.filter(ImageFilter.UnsharpMask(radius=2, percent=140, threshold=2))
    out = ImageEnhance.Color(out).enhance(1.18)
    out = ImageEnhance.Contrast(out).enhance(1.07)
    # Where the coarse image differs from the person is where garments were put on.
    worn = _max_channel_diff(coarse, person).point(lambda v: 255 if v > 25 else 0)
    worn = worn.filter(ImageFilter.GaussianBlur(2))
    colours = [_mean_colour(_rgb(top))]
    if bottom is not None:
        colours.append(_mean_colour(_rgb(bottom)))
    tint_colour = tuple(sum(c[i] for c in colours) // len(colours) for i in range(3))
    tint = Image.blend(out, Image.new("RGB", out.size, tint_colour), 0.12)
    out.paste(tint, (0, 0), worn)
    meta = {META_MODEL: MODEL_REFINER, "aitryon:gender": gender}
    if marker:
        _mark(out, meta)
    return Rendered(_png(out, meta), out.width, out.height)


class RenderCache:
    """A small LRU of rendered outputs keyed by the exact input bytes and parameters.

    Rendering is a pure function of those, so a hit is indistinguishable from a re-render; it
    keeps benchmarks that submit the same inputs many times from measuring Pillow instead of
    the client under test. Only successes are cached; failures are cheap to recompute.
    """

    def __init__(self, capacity: int = 32) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Rendered] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def get(self, key: str) -> Rendered | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                self.hits += 1
            return item

    def put(self, key: str, value: Rendered) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)


INPUT_FIELDS = ("person_image_url", "top_garment_url", "bottom_garment_url", "coarse_image_url")


def _cache_key(model: str, parameters: dict[str, object], raw: dict[str, bytes], marker: bool = False) -> str:
    digest = hashlib.sha256()
    # The marker is part of the key: a neighbour's marked output must never be served for ours.
    digest.update(json.dumps([model, parameters, marker], sort_keys=True, default=str).encode())
    for field in INPUT_FIELDS:
        digest.update(field.encode() + b"\0")
        if field in raw:
            digest.update(hashlib.sha256(raw[field]).digest())
    return digest.hexdigest()


def run_task(
    model: str,
    urls: dict[str, str],
    parameters: dict[str, object],
    fetch: Fetch,
    cache: RenderCache | None = None,
    *,
    marker: bool = False,
) -> Rendered:
    """Fetch every input, apply the service's checks, render; raise ``TaskFailure`` on a FAILED task.

    ``marker`` brands the output as another submitter's (see the module docstring).
    """
    raw: dict[str, bytes] = {}
    for field in INPUT_FIELDS:
        if field in urls:
            raw[field] = _fetch_input(fetch, urls[field], field)
    key = _cache_key(model, parameters, raw, marker)
    if cache is not None:
        hit = cache.get(key)
        if hit is not None:
            return hit
    decoded = {field: _check_and_decode(data, field) for field, data in raw.items()}
    rgb = {field: _rgb(img) for field, img in decoded.items()}
    person, top, bottom = rgb["person_image_url"], rgb.get("top_garment_url"), rgb.get("bottom_garment_url")
    if is_uniform(person):
        raise TaskFailure("InvalidPerson", MSG_INVALID_PERSON, "person_image_url: the image is one flat colour")
    for field, garment in (("top_garment_url", top), ("bottom_garment_url", bottom)):
        if garment is not None and is_uniform(garment):
            raise TaskFailure("InvalidGarment", MSG_INVALID_GARMENT, f"{field}: the image is one flat colour")
    if model == MODEL_REFINER:
        coarse = rgb["coarse_image_url"]
        assert top is not None
        if coarse.size != person.size:
            raise TaskFailure(
                "InvalidParameter",
                MSG_SIZE_MISMATCH,
                f"coarse_image_url is {coarse.width}x{coarse.height}, "
                f"person_image_url is {person.width}x{person.height}",
            )
        info = decoded["coarse_image_url"].info
        made_with = (info.get(META_RESOLUTION), info.get(META_RESTORE_FACE))
        if made_with[0] not in (None, "-1") or made_with[1] not in (None, "true"):
            raise TaskFailure(
                "InvalidParameter",
                MSG_SIZE_MISMATCH,
                f"coarse image was made with resolution={made_with[0]} restore_face={made_with[1]}; "
                "the refiner needs resolution=-1 and restore_face=true",
            )
        rendered = render_refined(
            person, coarse, top, bottom, gender=str(parameters.get("gender", "woman")), marker=marker
        )
    else:
        resolution = parameters.get("resolution", -1)
        rendered = render_coarse(
            person,
            top,
            bottom,
            resolution=resolution if isinstance(resolution, int) else -1,
            restore_face=bool(parameters.get("restore_face", True)),
            model=model,
            marker=marker,
        )
    if cache is not None:
        cache.put(key, rendered)
    return rendered
