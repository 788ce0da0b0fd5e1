"""Deterministic sample images for the emulator, the tests and the demos.

Why generated rather than checked in: binary fixtures bloat the repository and hide what they
contain; a few lines of Pillow drawing are reviewable and byte-for-byte reproducible.

Every valid sample must satisfy the service's input rules (``image_rules``), in particular the
5 KB minimum: flat drawn shapes compress to a couple of KB in PNG, so each image gets a seeded,
low-amplitude block-noise texture that is invisible at a glance but keeps the files well above
5 KB (and far below 5 MB). ``blank_person.png`` is one uniform colour to the eye (only that faint
texture) so that the emulator fails it with ``InvalidPerson`` after it has passed the size rules.
"""

from __future__ import annotations

import functools
import io
import random
import zlib
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw

PERSON_SIZE = (576, 1024)
GARMENT_SIZE = (512, 512)
DRESS_SIZE = (512, 768)
MISMATCH_SIZE = (600, 1000)

SAMPLE_NAMES = (
    "person.png",
    "top.png",
    "bottom.png",
    "dress.png",
    "blank_person.png",
    "coarse_mismatch.png",
    "coarse.png",
)


def _texture(img: Image.Image, name: str, amplitude: int = 3, block: int = 3) -> Image.Image:
    """Add seeded block noise of +-amplitude so PNG cannot squeeze the image under 5 KB."""
    rng = random.Random(zlib.crc32(name.encode()))
    w, h = img.size
    sw, sh = (w + block - 1) // block, (h + block - 1) // block
    levels = 2 * amplitude + 1
    table = bytes(v % levels for v in range(256))
    raw = rng.randbytes(sw * sh * 3).translate(table)
    noise = Image.frombytes("RGB", (sw, sh), raw).resize((sw * block, sh * block), Image.Resampling.NEAREST)
    noise = noise.crop((0, 0, w, h))
    return ImageChops.add(img.convert("RGB"), noise, offset=-amplitude)


def _vertical_gradient(size: tuple[int, int], top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    w, h = size
    column = Image.new("RGB", (1, h))
    for y in range(h):
        t = y / max(1, h - 1)
        column.putpixel((0, y), tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)))
    return column.resize((w, h), Image.Resampling.NEAREST)


def draw_person(size: tuple[int, int] = PERSON_SIZE) -> Image.Image:
    """A front-facing full-body figure on a studio-like backdrop, scaled to ``size``."""
    # Drawn on a 576x1024 canvas and resized, so any requested size keeps the proportions the
    # emulator's renderer assumes (head, torso, legs bands of the figure's bounding box).
    base_w, base_h = PERSON_SIZE
    img = _vertical_gradient(PERSON_SIZE, (214, 222, 232), (182, 190, 204))
    d = ImageDraw.Draw(img)
    d.rectangle((0, 900, base_w, base_h), fill=(160, 150, 140))  # floor
    skin = (231, 190, 160)
    hair = (70, 45, 30)
    shirt = (238, 238, 238)
    trousers = (90, 90, 100)
    cx = base_w // 2
    # legs and shoes first so the torso overlaps them
    d.polygon([(cx - 78, 520), (cx - 6, 520), (cx - 16, 940), (cx - 66, 940)], fill=trousers)
    d.polygon([(cx + 6, 520), (cx + 78, 520), (cx + 66, 940), (cx + 16, 940)], fill=trousers)
    d.ellipse((cx - 86, 930, cx - 10, 962), fill=(40, 40, 40))
    d.ellipse((cx + 10, 930, cx + 86, 962), fill=(40, 40, 40))
    # arms
    d.polygon([(cx - 100, 200), (cx - 78, 196), (cx - 96, 520), (cx - 128, 516)], fill=skin)
    d.polygon([(cx + 78, 196), (cx + 100, 200), (cx + 128, 516), (cx + 96, 520)], fill=skin)
    d.ellipse((cx - 138, 506, cx - 96, 548), fill=skin)
    d.ellipse((cx + 96, 506, cx + 138, 548), fill=skin)
    # torso (plain undershirt), neck, head
    d.rounded_rectangle((cx - 96, 190, cx + 96, 540), radius=26, fill=shirt)
    d.rectangle((cx - 18, 150, cx + 18, 200), fill=skin)
    d.ellipse((cx - 58, 40, cx + 58, 168), fill=skin)
    d.chord((cx - 62, 30, cx + 62, 130), 180, 360, fill=hair)
    d.ellipse((cx - 30, 92, cx - 16, 104), fill=(50, 50, 60))
    d.ellipse((cx + 16, 92, cx + 30, 104), fill=(50, 50, 60))
    d.arc((cx - 20, 118, cx + 20, 142), 20, 160, fill=(150, 70, 70), width=3)
    img = _texture(img, "person")
    if size != PERSON_SIZE:
        img = img.resize(size, Image.Resampling.LANCZOS)
    return img


def draw_top(size: tuple[int, int] = GARMENT_SIZE) -> Image.Image:
    """A striped red T-shirt, flat-lay on a light background."""
    w, h = size
    img = Image.new("RGB", size, (246, 246, 244))
    shape = [
        (0.30 * w, 0.10 * h),
        (0.42 * w, 0.08 * h),
        (0.50 * w, 0.14 * h),
        (0.58 * w, 0.08 * h),
        (0.70 * w, 0.10 * h),
        (0.94 * w, 0.30 * h),
        (0.84 * w, 0.42 * h),
        (0.74 * w, 0.34 * h),
        (0.74 * w, 0.92 * h),
        (0.26 * w, 0.92 * h),
        (0.26 * w, 0.34 * h),
        (0.16 * w, 0.42 * h),
        (0.06 * w, 0.30 * h),
    ]
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).polygon(shape, fill=255)
    fabric = Image.new("RGB", size, (196, 40, 48))
    fd = ImageDraw.Draw(fabric)
    for y in range(0, h, 28):
        fd.rectangle((0, y, w, y + 9), fill=(250, 236, 236))
    img.paste(fabric, (0, 0), mask)
    return _texture(img, "top")


def draw_bottom(size: tuple[int, int] = GARMENT_SIZE) -> Image.Image:
    """Blue jeans, flat-lay on a light background."""
    w, h = size
    img = Image.new("RGB", size, (245, 245, 247))
    d = ImageDraw.Draw(img)
    denim = (44, 78, 140)
    d.rectangle((0.30 * w, 0.05 * h, 0.70 * w, 0.14 * h), fill=(34, 62, 118))  # waistband
    d.polygon([(0.30 * w, 0.12 * h), (0.50 * w, 0.12 * h), (0.48 * w, 0.95 * h), (0.31 * w, 0.95 * h)], fill=denim)
    d.polygon([(0.50 * w, 0.12 * h), (0.70 * w, 0.12 * h), (0.69 * w, 0.95 * h), (0.52 * w, 0.95 * h)], fill=denim)
    d.line((0.50 * w, 0.14 * h, 0.50 * w, 0.35 * h), fill=(200, 160, 60), width=3)  # seam
    return _texture(img, "bottom")


def draw_dress(size: tuple[int, int] = DRESS_SIZE) -> Image.Image:
    """A green dress with a polka-dot print; taller than wide, so it goes in ``top_garment_url``."""
    w, h = size
    img = Image.new("RGB", size, (247, 246, 244))
    shape = [
        (0.36 * w, 0.05 * h),
        (0.44 * w, 0.05 * h),
        (0.50 * w, 0.10 * h),
        (0.56 * w, 0.05 * h),
        (0.64 * w, 0.05 * h),
        (0.68 * w, 0.30 * h),
        (0.86 * w, 0.94 * h),
        (0.14 * w, 0.94 * h),
        (0.32 * w, 0.30 * h),
    ]
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).polygon(shape, fill=255)
    fabric = Image.new("RGB", size, (36, 130, 90))
    fd = ImageDraw.Draw(fabric)
    for y in range(0, h, 40):
        for x in range((y // 40) % 2 * 20, w, 40):
            fd.ellipse((x, y, x + 10, y + 10), fill=(240, 230, 140))
    img.paste(fabric, (0, 0), mask)
    return _texture(img, "dress")


def draw_blank_person(size: tuple[int, int] = PERSON_SIZE) -> Image.Image:
    """One flat colour (plus the faint texture): an image with nobody in it."""
    return _texture(Image.new("RGB", size, (200, 205, 212)), "blank_person", amplitude=2)


def draw_coarse_mismatch(size: tuple[int, int] = MISMATCH_SIZE) -> Image.Image:
    """A plausible try-on picture whose size differs from ``person.png`` (refiner must refuse it)."""
    return draw_person(size)


def draw_coarse() -> bytes:
    """What the coarse try-on makes of ``person.png``, ``top.png`` and ``bottom.png``, ready to refine.

    So the refiner-only DAG has a coarse image out of the box (resolution -1, restore_face on,
    the settings the refiner accepts, recorded in the PNG as the emulator's results are).
    """
    from airflow_provider_aitryon.emulator.imaging import render_coarse  # imaging draws on this module

    rendered = render_coarse(
        draw_person(), draw_top(), draw_bottom(), resolution=-1, restore_face=True, model="aitryon"
    )
    return rendered.png  # as rendered: the PNG keeps the settings it was made with


_DRAWERS: dict[str, Callable[[], Image.Image | bytes]] = {
    "person.png": draw_person,
    "top.png": draw_top,
    "bottom.png": draw_bottom,
    "dress.png": draw_dress,
    "blank_person.png": draw_blank_person,
    "coarse_mismatch.png": draw_coarse_mismatch,
    "coarse.png": draw_coarse,
}


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def sample_images() -> dict[str, bytes]:
    """Every sample as PNG bytes, generated once per process (the emulator serves these)."""
    drawn = {name: _DRAWERS[name]() for name in SAMPLE_NAMES}
    return {name: image if isinstance(image, bytes) else _png(image) for name, image in drawn.items()}


def make_samples(directory: str | Path) -> dict[str, Path]:
    """Write every sample PNG into ``directory`` (created if needed); return name -> path."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, data in sample_images().items():
        path = out / name
        path.write_bytes(data)
        written[name] = path
    return written


__all__ = ["SAMPLE_NAMES", "make_samples", "sample_images"]
