"""Boundaries of the DashScope input image rules (airflow_provider_aitryon.image_rules)."""

from __future__ import annotations

import io
import os
import struct
import zlib

import pytest
from PIL import Image

from airflow_provider_aitryon.image_rules import (
    ALLOWED_FORMATS,
    MAX_BYTES,
    MAX_SIDE,
    MIN_BYTES,
    MIN_SIDE_EXCLUSIVE,
    ImageRuleError,
    check_image,
    inspect_image,
)


def encode(width: int, height: int, fmt: str = "PNG", *, pad_to: int | None = 8 * 1024) -> bytes:
    """A flat image; trailing padding (ignored by decoders) sets the byte size independently."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 160, 200)).save(buf, format=fmt)
    data = buf.getvalue()
    if pad_to is not None and len(data) < pad_to:
        data += b"\0" * (pad_to - len(data))
    return data


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a size in its IHDR but carries no pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_constants_match_the_vendor_rules() -> None:
    assert MIN_BYTES == 5 * 1024
    assert MAX_BYTES == 5 * 1024 * 1024
    assert MIN_SIDE_EXCLUSIVE == 150
    assert MAX_SIDE == 4096
    assert {"JPEG", "PNG", "BMP"} <= ALLOWED_FORMATS


def test_valid_image_facts() -> None:
    data = encode(576, 1024)
    facts = check_image(data, field="person_image_url")
    assert (facts.format, facts.width, facts.height, facts.size_bytes) == ("PNG", 576, 1024, len(data))
    assert facts.shortest_side == 576 and facts.longest_side == 1024


@pytest.mark.parametrize(
    ("size", "ok"),
    [((4096, 300), True), ((300, 4096), True), ((4097, 300), False), ((300, 4097), False)],
)
def test_longest_side_boundary(size: tuple[int, int], ok: bool) -> None:
    data = encode(*size)
    if ok:
        assert check_image(data, field="top_garment_url").longest_side == 4096
    else:
        with pytest.raises(ImageRuleError) as info:
            check_image(data, field="top_garment_url")
        assert info.value.code == "InvalidInputLength"
        assert "4096" in str(info.value)


@pytest.mark.parametrize(
    ("size", "ok"),
    [((150, 800), False), ((800, 150), False), ((151, 800), True), ((800, 151), True), ((151, 151), True)],
)
def test_shortest_side_boundary(size: tuple[int, int], ok: bool) -> None:
    data = encode(*size)
    if ok:
        assert check_image(data, field="bottom_garment_url").shortest_side == 151
    else:
        with pytest.raises(ImageRuleError) as info:
            check_image(data, field="bottom_garment_url")
        assert info.value.code == "InvalidInputLength"
        assert "150" in str(info.value)
        assert str(info.value).startswith("bottom_garment_url: the image is ")


def test_byte_size_lower_edge() -> None:
    base = encode(300, 300, pad_to=None)
    assert len(base) < MIN_BYTES
    exact = base + b"\0" * (MIN_BYTES - len(base))
    assert check_image(exact, field="person_image_url").size_bytes == MIN_BYTES
    with pytest.raises(ImageRuleError) as info:
        check_image(exact[:-1], field="person_image_url")
    assert info.value.code == "InvalidInputLength"
    assert info.value.field == "person_image_url"


def test_byte_size_upper_edge() -> None:
    base = encode(300, 300, pad_to=None)
    exact = base + b"\0" * (MAX_BYTES - len(base))
    assert check_image(exact, field="coarse_image_url").size_bytes == MAX_BYTES
    with pytest.raises(ImageRuleError) as info:
        check_image(exact + b"\0", field="coarse_image_url")
    assert info.value.code == "InvalidInputLength"
    assert "5 KB to 5 MB" in str(info.value)


def test_message_is_one_sentence_naming_field_found_and_allowed() -> None:
    data = encode(300, 300, pad_to=3174)
    with pytest.raises(ImageRuleError) as info:
        check_image(data, field="person_image_url")
    text = str(info.value)
    assert text == "person_image_url: the image is 3.1 KB (3174 bytes); images must be 5 KB to 5 MB."
    assert text.endswith(".") and ". " not in text  # one sentence
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "WEBP"])
def test_allowed_formats_detected_by_content(fmt: str) -> None:
    facts = check_image(encode(400, 500, fmt), field="top_garment_url.jpg")
    assert facts.format == fmt


@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
def test_other_formats_refused_even_with_an_allowed_looking_name(fmt: str) -> None:
    with pytest.raises(ImageRuleError) as info:
        check_image(encode(400, 500, fmt), field="photo.png")
    assert info.value.code == "InvalidURL"
    assert fmt in str(info.value)


def test_png_bytes_are_png_whatever_the_field_says() -> None:
    assert inspect_image(encode(400, 400, "PNG"), field="garment.jpg").format == "PNG"
    assert inspect_image(encode(400, 400, "JPEG"), field="garment.png").format == "JPEG"


def test_garbage_bytes() -> None:
    garbage = os.urandom(16) + b"definitely not an image" * 500
    with pytest.raises(ImageRuleError) as info:
        check_image(garbage, field="person_image_url")
    assert info.value.code == "InvalidURL"
    assert "not a recognisable image" in str(info.value)
    with pytest.raises(ImageRuleError):
        inspect_image(garbage)
    with pytest.raises(ImageRuleError) as empty:
        inspect_image(b"")
    assert empty.value.code == "InvalidURL"


def test_small_garbage_fails_on_size_first() -> None:
    with pytest.raises(ImageRuleError) as info:
        check_image(b"<html>404</html>", field="person_image_url")
    assert info.value.code == "InvalidInputLength"


def test_header_declaring_a_gigantic_image() -> None:
    data = png_header_only(100_000, 100_000)
    data += b"\0" * (6 * 1024 - len(data))
    with pytest.raises(ImageRuleError) as info:
        check_image(data, field="person_image_url")
    assert info.value.code == "InvalidInputLength"
    # Only the header is read, so a merely large declared size is judged by the side rule.
    declared = png_header_only(5000, 300) + b"\0" * 6000
    with pytest.raises(ImageRuleError, match="at most 4096"):
        check_image(declared, field="person_image_url")
