"""The contact sheet: predictable size, labels drawn, placeholders for missing images, stable bytes."""

from __future__ import annotations

import hashlib
import io
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from airflow_provider_aitryon.contact_sheet import (
    BACKGROUND,
    PLACEHOLDER_FILL,
    contact_sheet_png,
    make_contact_sheet,
    save_contact_sheet,
    sheet_size,
)
from airflow_provider_aitryon.failures import AirflowFailException

TILE, PAD, LABEL = 128, 10, 30


def encoded(colour: tuple[int, int, int], size: tuple[int, int], fmt: str = "PNG", **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt, **save)
    return buffer.getvalue()


RED, GREEN, BLUE = (220, 20, 20), (20, 160, 20), (20, 20, 220)
TRYON = [
    ("person", encoded(RED, (576, 1024))),
    ("top garment", encoded(GREEN, (300, 300), "JPEG", quality=95)),
    ("bottom garment", None),
    ("coarse", Image.new("RGB", (100, 333), BLUE)),
]
LAYOUT: dict[str, Any] = {"tile_height": TILE, "padding": PAD, "label_height": LABEL}


def expected_widths(sizes: list[tuple[int, int] | None]) -> list[int]:
    """The documented formula, computed independently: half rounds up; placeholder is 3/4 square."""
    return [TILE * 3 // 4 if s is None else int(Fraction(s[0] * TILE, s[1]) + Fraction(1, 2)) for s in sizes]


def ink(image: Image.Image, box: tuple[int, int, int, int], background: tuple[int, int, int]) -> int:
    """How many pixels in box differ from the background."""
    return sum(count for count, colour in colours(image.crop(box)) if colour != background)


def colours(image: Image.Image) -> list[tuple[int, Any]]:
    found = image.getcolors(maxcolors=image.width * image.height)
    assert found is not None
    return found


def rgb(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    pixel = image.getpixel(xy)
    assert isinstance(pixel, tuple)
    return pixel


def test_size_follows_the_documented_formula() -> None:
    sheet = make_contact_sheet(TRYON, **LAYOUT)
    widths = expected_widths([(576, 1024), (300, 300), None, (100, 333)])
    assert widths == [72, 128, 96, 38]
    assert sheet.size == (PAD + sum(w + PAD for w in widths), PAD + TILE + LABEL + PAD)
    assert sheet.size == sheet_size([(576, 1024), (300, 300), None, (100, 333)], **LAYOUT)
    assert sheet.mode == "RGB"
    assert sheet_size([(5, 256)], **LAYOUT) == (PAD + 3 + PAD, PAD + TILE + LABEL + PAD)  # 2.5 rounds up


def test_default_layout_size() -> None:
    sheet = make_contact_sheet([("person", encoded(RED, (720, 1280)))])
    # 720 * 512 / 1280 = 288; padding 16, label band 40.
    assert sheet.size == (16 + 288 + 16, 16 + 512 + 40 + 16)


def test_tiles_are_placed_left_to_right_with_padding() -> None:
    sheet = make_contact_sheet(TRYON, **LAYOUT)
    widths = expected_widths([(576, 1024), (300, 300), None, (100, 333)])
    x = PAD
    centres = []
    for w in widths:
        centres.append(rgb(sheet, (x + w // 2, PAD + TILE // 2)))
        assert rgb(sheet, (x - 1, PAD + TILE // 2)) == BACKGROUND  # the gap before each tile
        x += w + PAD
    red, green, _, blue = centres
    assert red == RED
    assert all(abs(a - b) <= 3 for a, b in zip(green, GREEN, strict=True))  # JPEG
    assert blue == BLUE


def test_every_label_is_drawn_under_its_tile() -> None:
    sheet = make_contact_sheet(TRYON, **LAYOUT)
    widths = expected_widths([(576, 1024), (300, 300), None, (100, 333)])
    band_top, band_bottom = PAD + TILE, PAD + TILE + LABEL
    x = PAD
    for w in widths:
        assert ink(sheet, (x, band_top, x + w, band_bottom), BACKGROUND) > 0
        x += w + PAD
    # Nothing is drawn in the gaps between label bands or below them: long labels are shortened.
    x = PAD
    for w in widths:
        x += w
        assert ink(sheet, (x, band_top, x + PAD, band_bottom), BACKGROUND) == 0
        x += PAD
    assert ink(sheet, (0, band_bottom, sheet.width, sheet.height), BACKGROUND) == 0


def test_an_empty_label_leaves_the_band_blank() -> None:
    sheet = make_contact_sheet([("", encoded(RED, (200, 200)))], **LAYOUT)
    assert ink(sheet, (0, PAD + TILE, sheet.width, sheet.height), BACKGROUND) == 0


def test_label_height_zero_drops_the_band() -> None:
    sheet = make_contact_sheet(TRYON, tile_height=TILE, padding=PAD, label_height=0)
    assert sheet.height == PAD + TILE + PAD


def test_none_becomes_a_placeholder_with_text() -> None:
    sheet = make_contact_sheet(TRYON, **LAYOUT)
    x = PAD + 72 + PAD + 128 + PAD  # third tile
    w = TILE * 3 // 4
    tile = sheet.crop((x, PAD, x + w, PAD + TILE))
    grey = sum(count for count, colour in colours(tile) if colour == PLACEHOLDER_FILL)
    assert grey > w * TILE * 0.8  # mostly the placeholder grey
    # "(none)" is written in the middle: dark pixels there, none near the top.
    assert ink(tile, (4, TILE // 2 - 12, w - 4, TILE // 2 + 12), PLACEHOLDER_FILL) > 0
    assert ink(tile, (4, 4, w - 4, TILE // 4), PLACEHOLDER_FILL) == 0


def test_placeholder_width_can_be_set() -> None:
    sheet = make_contact_sheet([("x", None)], placeholder_width=50, **LAYOUT)
    assert sheet.width == PAD + 50 + PAD


def test_same_inputs_give_the_same_bytes() -> None:
    first = contact_sheet_png(TRYON, **LAYOUT)
    second = contact_sheet_png(list(TRYON), **LAYOUT)
    assert first == second
    assert first.startswith(b"\x89PNG\r\n\x1a\n")
    # A PIL image and its PNG bytes are the same input.
    as_images = [(label, Image.open(io.BytesIO(v)) if isinstance(v, bytes) else v) for label, v in TRYON]
    assert contact_sheet_png(as_images, **LAYOUT) == first


def test_transparency_is_flattened_onto_the_background() -> None:
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    sheet = make_contact_sheet([("clear", clear)], **LAYOUT)
    assert rgb(sheet, (PAD + TILE // 2, PAD + TILE // 2)) == BACKGROUND


def test_exif_orientation_is_applied_before_sizing() -> None:
    image = Image.new("RGB", (200, 100), RED)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the photo is really 100 wide, 200 high
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    sheet = make_contact_sheet([("phone photo", buffer.getvalue())], **LAYOUT)
    assert sheet.width == PAD + TILE // 2 + PAD


@pytest.mark.parametrize(
    "images, message",
    [
        ([], "images is empty"),
        ([("coarse", b"<html>nope</html>")], "'coarse'"),
        ([("coarse", "https://example.com/x.png")], "'coarse'"),
    ],
)
def test_bad_inputs_name_the_problem(images: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_contact_sheet(images, **LAYOUT)


@pytest.mark.parametrize("arg, value", [("tile_height", 0), ("padding", -1), ("label_height", -1), ("font_size", 0)])
def test_bad_layout_is_refused(arg: str, value: int) -> None:
    with pytest.raises(ValueError, match=arg):
        make_contact_sheet(TRYON, **{**LAYOUT, arg: value})


def test_save_into_a_directory(tmp_path: Path) -> None:
    result = save_contact_sheet(TRYON, f"{tmp_path}/sheets/", **LAYOUT)
    path = tmp_path / "sheets" / "contact-sheet.png"
    data = path.read_bytes()
    assert data == contact_sheet_png(TRYON, **LAYOUT)
    assert result == {
        "uri": str(path),
        "width": sheet_size([(576, 1024), (300, 300), None, (100, 333)], **LAYOUT)[0],
        "height": PAD + TILE + LABEL + PAD,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["contact-sheet.png"]


def test_save_to_a_file_uri_with_a_name(tmp_path: Path) -> None:
    uri = (tmp_path / "look-42.png").as_uri()
    result = save_contact_sheet(TRYON, uri, **LAYOUT)
    assert result["uri"] == uri
    with Image.open(tmp_path / "look-42.png") as image:
        assert image.size == (result["width"], result["height"])


def test_save_respects_overwrite_false(tmp_path: Path) -> None:
    (tmp_path / "s.png").write_bytes(b"keep")
    with pytest.raises(AirflowFailException, match="overwrite"):
        save_contact_sheet(TRYON, str(tmp_path / "s.png"), overwrite=False, **LAYOUT)
    assert (tmp_path / "s.png").read_bytes() == b"keep"


def test_save_maps_bad_images_to_a_fail_exception(tmp_path: Path) -> None:
    with pytest.raises(AirflowFailException, match="'person'"):
        save_contact_sheet([("person", b"not an image")], f"{tmp_path}/", **LAYOUT)
    assert list(tmp_path.iterdir()) == []
