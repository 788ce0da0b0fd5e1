"""A one-row contact sheet of a try-on: inputs and results side by side, each labelled.

Reviewing a try-on means comparing the person, the garments, the coarse result and the refined one;
one image with all of them is what a reviewer (or a report, or a Slack message) wants.

Layout, in pixels, so the size is known before anything is drawn::

    tile_width(w, h) = round_half_up(w * tile_height / h)      # an image, aspect ratio kept
    tile_width(None) = placeholder_width                       # default: tile_height * 3 // 4

    width  = padding + sum(tile_width_i + padding for each tile)
    height = padding + tile_height + label_height + padding

Tiles sit at ``y = padding``, left to right with ``padding`` between them; each label is drawn
centred in the band ``[padding + tile_height, padding + tile_height + label_height)`` under its
tile, shortened with "..." when wider than the tile. A missing image (None) becomes a grey
placeholder tile with "(none)" written in it, still labelled with its caption, so the columns of
many sheets line up. Sizes are taken after EXIF orientation is applied (phone photos stand up).

The same inputs always give the same PNG bytes with one Pillow and zlib build (fixed resampling,
font and PNG settings, no metadata), so sheets can be compared or deduplicated by hash; another
Pillow version may draw the font or compress differently.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from airflow_provider_aitryon import lineage
from airflow_provider_aitryon.errors import DashScopeConfigError
from airflow_provider_aitryon.failures import airflow_errors
from airflow_provider_aitryon.gallery.thumbnails import flat_rgb
from airflow_provider_aitryon.storage import StorageTarget, atomic_write, resolve_destination

DEFAULT_TILE_HEIGHT = 512
DEFAULT_PADDING = 16
DEFAULT_LABEL_HEIGHT = 40
DEFAULT_FONT_SIZE = 20
DEFAULT_NAME = "contact-sheet"

BACKGROUND = (255, 255, 255)
PLACEHOLDER_FILL = (230, 230, 230)
PLACEHOLDER_BORDER = (190, 190, 190)
TEXT_COLOUR = (30, 30, 30)
PLACEHOLDER_TEXT = "(none)"
ELLIPSIS = "..."  # ASCII: every build of the default font has these glyphs

ImageInput = bytes | Image.Image | None


def tile_width(size: tuple[int, int] | None, *, tile_height: int, placeholder_width: int | None = None) -> int:
    """Width of one tile: the image scaled to ``tile_height`` (half rounded up), or the placeholder's."""
    if size is None:
        return placeholder_width if placeholder_width is not None else tile_height * 3 // 4
    width, height = size
    return max(1, (2 * width * tile_height + height) // (2 * height))


def sheet_size(
    sizes: Sequence[tuple[int, int] | None],
    *,
    tile_height: int = DEFAULT_TILE_HEIGHT,
    padding: int = DEFAULT_PADDING,
    label_height: int = DEFAULT_LABEL_HEIGHT,
    placeholder_width: int | None = None,
) -> tuple[int, int]:
    """The (width, height) of the sheet for images of these sizes (None for a missing image)."""
    widths = [tile_width(s, tile_height=tile_height, placeholder_width=placeholder_width) for s in sizes]
    return padding + sum(w + padding for w in widths), padding + tile_height + label_height + padding


def make_contact_sheet(
    images: Sequence[tuple[str, ImageInput]],
    *,
    tile_height: int = DEFAULT_TILE_HEIGHT,
    padding: int = DEFAULT_PADDING,
    label_height: int = DEFAULT_LABEL_HEIGHT,
    font_size: int = DEFAULT_FONT_SIZE,
    placeholder_width: int | None = None,
) -> Image.Image:
    """Draw ``(label, image)`` pairs as one row of labelled tiles; see the module doc for the layout.

    :param images: e.g. ``[("person", b"..."), ("top garment", img), ("bottom garment", None)]``;
        an image is encoded bytes (any format Pillow reads) or a PIL image, None for "not used".
    :raises DashScopeConfigError: (a ValueError) no images, a bad size, or bytes that are not an
        image; the message names the label or argument.
    """
    if not images:
        raise DashScopeConfigError("images is empty; pass at least one (label, image) pair.")
    for name, value in (("tile_height", tile_height), ("font_size", font_size)):
        if value < 1:
            raise DashScopeConfigError(f"{name} must be at least 1, got {value}; pass a positive number of pixels.")
    for name, value in (("padding", padding), ("label_height", label_height)):
        if value < 0:
            raise DashScopeConfigError(f"{name} must not be negative, got {value}; pass 0 or more pixels.")
    if placeholder_width is not None and placeholder_width < 1:
        raise DashScopeConfigError(
            f"placeholder_width must be at least 1, got {placeholder_width}; pass a width or None."
        )

    tiles = [(str(label), _to_rgb(str(label), image)) for label, image in images]
    sizes = [None if tile is None else tile.size for _, tile in tiles]
    width, height = sheet_size(
        sizes,
        tile_height=tile_height,
        padding=padding,
        label_height=label_height,
        placeholder_width=placeholder_width,
    )
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=font_size)

    x = padding
    for (label, tile), size in zip(tiles, sizes, strict=True):
        w = tile_width(size, tile_height=tile_height, placeholder_width=placeholder_width)
        if tile is None:
            draw.rectangle((x, padding, x + w - 1, padding + tile_height - 1), fill=PLACEHOLDER_FILL)
            draw.rectangle((x, padding, x + w - 1, padding + tile_height - 1), outline=PLACEHOLDER_BORDER, width=1)
            _draw_centred(draw, PLACEHOLDER_TEXT, font, (x, padding, w, tile_height))
        else:
            if tile.size != (w, tile_height):
                tile = tile.resize((w, tile_height), Image.Resampling.LANCZOS)
            sheet.paste(tile, (x, padding))
        if label_height:
            _draw_centred(draw, label, font, (x, padding + tile_height, w, label_height))
        x += w + padding
    return sheet


def contact_sheet_png(
    images: Sequence[tuple[str, ImageInput]],
    *,
    tile_height: int = DEFAULT_TILE_HEIGHT,
    padding: int = DEFAULT_PADDING,
    label_height: int = DEFAULT_LABEL_HEIGHT,
    font_size: int = DEFAULT_FONT_SIZE,
    placeholder_width: int | None = None,
) -> bytes:
    """The sheet as PNG bytes, with settings fixed so equal inputs give equal bytes."""
    return _png(
        make_contact_sheet(
            images,
            tile_height=tile_height,
            padding=padding,
            label_height=label_height,
            font_size=font_size,
            placeholder_width=placeholder_width,
        )
    )


def save_contact_sheet(
    images: Sequence[tuple[str, ImageInput]],
    destination: StorageTarget,
    *,
    conn_id: str | None = None,
    overwrite: bool = True,
    name: str = DEFAULT_NAME,
    tile_height: int = DEFAULT_TILE_HEIGHT,
    padding: int = DEFAULT_PADDING,
    label_height: int = DEFAULT_LABEL_HEIGHT,
    font_size: int = DEFAULT_FONT_SIZE,
    placeholder_width: int | None = None,
) -> dict[str, Any]:
    """Draw the sheet and write it as PNG with storage.py's atomic write.

    :param destination: local path, ``file://`` URI or ObjectStoragePath URI; a directory (ending
        with ``/`` or existing) receives ``<name>.png``.
    :param name: file name stem used when ``destination`` is a directory.
    :param tile_height: and the other layout arguments: as for ``make_contact_sheet``.
    :return: ``uri``, ``width``, ``height``, ``bytes`` (the file size) and ``sha256``.
    :raises AirflowFailException: a bad image or layout argument, a bad destination, or
        ``overwrite=False`` with an existing file.
    """
    with airflow_errors():
        sheet = make_contact_sheet(
            images,
            tile_height=tile_height,
            padding=padding,
            label_height=label_height,
            font_size=font_size,
            placeholder_width=placeholder_width,
        )
        data = _png(sheet)
        target, is_dir = resolve_destination(destination, conn_id=conn_id)
        if is_dir:
            target = target / f"{name}.png"
        atomic_write(data, target, overwrite=overwrite)
    lineage.report_hook_lineage(outputs=[target])
    return {
        "uri": str(target),
        "width": sheet.width,
        "height": sheet.height,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _png(sheet: Image.Image) -> bytes:
    # Fixed settings and no metadata chunks: the bytes depend on the pixels only.
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _to_rgb(label: str, image: ImageInput) -> Image.Image | None:
    if image is None:
        return None
    if isinstance(image, (bytes, bytearray, memoryview)):
        try:
            opened = Image.open(io.BytesIO(bytes(image)))
            opened.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DashScopeConfigError(
                f"the image labelled {label!r} could not be read ({exc}); pass image bytes Pillow can "
                "read, a PIL image or None."
            ) from None
        image = opened
    elif not isinstance(image, Image.Image):
        raise DashScopeConfigError(
            f"the image labelled {label!r} is a {type(image).__name__}; pass image bytes, a PIL image or None."
        )
    return flat_rgb(ImageOps.exif_transpose(image), BACKGROUND)


def _draw_centred(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    box: tuple[int, int, int, int],
) -> None:
    """Centre text in box (x, y, width, height), shortened with "..." so it never leaves the box."""
    x, y, width, height = box
    text = _fit(draw, text, font, max(0, width - 4))
    if not text:
        return
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    # Vertical placement from a fixed sample, so labels with and without descenders share a baseline.
    _, top, _, bottom = draw.textbbox((0, 0), "Ag(", font=font)
    draw.text(
        (x + (width - (right - left)) // 2 - left, y + (height - (bottom - top)) // 2 - top),
        text,
        font=font,
        fill=TEXT_COLOUR,
    )


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, limit: int) -> str:
    if draw.textlength(text, font=font) <= limit:
        return text
    for end in range(len(text) - 1, 0, -1):
        shortened = text[:end].rstrip() + ELLIPSIS
        if draw.textlength(shortened, font=font) <= limit:
            return shortened
    return ""
