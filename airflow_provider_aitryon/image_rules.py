"""DashScope try-on input image rules, as pure functions over bytes.

Why this exists: the try-on service only reports a bad input image *after* a task was queued and
run (a FAILED task with ``InvalidInputLength`` or ``InvalidURL``), which costs a queue slot, tens
of seconds and, for a pipeline, a confusing failure far from its cause. Checking the same rules
before submitting turns that into an immediate, precise error. The emulator applies exactly these
functions to the images it fetches, so "passes pre-flight" and "accepted by the emulator" agree.

The rules (vendor documentation, see ``/work/shared/spec``):

* file size 5 KB to 5 MB inclusive, counted in binary units (``5 * 1024`` and ``5 * 1024 * 1024``
  bytes) because that is the stricter reading at the lower end and the vendor does not say;
* format JPEG, PNG or BMP, decided from the *content* (Pillow's sniffing), never the file name or
  URL suffix; WEBP and HEIC are accepted too, but only when the installed Pillow can identify
  them (WEBP is built in; HEIC needs the ``pillow-heif`` plugin, which registers format "HEIF"),
  because the newer vendor doc and its error text name them while the older doc does not;
* shortest side strictly greater than 150 px;
* longest side at most 4096 px (the vendor writes both "< 4096" and "<= 4096"; 4096 is accepted).

Only the image header is parsed, never the pixel data: the check is cheap and safe on large or
hostile input. A file whose header is fine but whose pixel data is corrupt passes here and is
caught when the image is actually decoded.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

MIN_BYTES = 5 * 1024
MAX_BYTES = 5 * 1024 * 1024
MIN_SIDE_EXCLUSIVE = 150
MAX_SIDE = 4096
# Pillow format names. MPO is what Pillow calls many camera JPEGs; DIB is a headerless BMP.
ALLOWED_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "BMP", "DIB", "WEBP", "HEIF"})

CODE_BAD_LENGTH = "InvalidInputLength"
CODE_BAD_FORMAT = "InvalidURL"

_ALLOWED_FORMATS_TEXT = "allowed formats are JPEG, PNG and BMP (also WEBP and HEIC where Pillow reads them)"
_SIZE_RULE_TEXT = "images must be 5 KB to 5 MB"


@dataclass(frozen=True)
class ImageFacts:
    """What the header of an image says about it."""

    format: str
    width: int
    height: int
    size_bytes: int

    @property
    def shortest_side(self) -> int:
        return min(self.width, self.height)

    @property
    def longest_side(self) -> int:
        return max(self.width, self.height)


class ImageRuleError(ValueError):
    """An image breaks one of the service's input rules.

    ``str(error)`` is one sentence naming the field, what was found and what is allowed, so it
    can be shown to a DAG author as is. ``code`` is the error code the real service would put in
    the FAILED task for the same image.
    """

    def __init__(self, field: str, problem: str, allowed: str, *, code: str = CODE_BAD_LENGTH) -> None:
        self.field = field
        self.problem = problem
        self.allowed = allowed
        self.code = code
        super().__init__(f"{field}: {problem}; {allowed}.")


def _human_size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MB ({n} bytes)"
    if n >= 1024:
        return f"{n / 1024:.1f} KB ({n} bytes)"
    return f"{n} bytes"


def inspect_image(data: bytes, *, field: str = "image") -> ImageFacts:
    """Identify an image from its content and read its pixel size from the header.

    Raises ``ImageRuleError`` (code ``InvalidURL``) when the bytes are not an image Pillow can
    identify, and (code ``InvalidInputLength``) when the header declares a size so large that
    Pillow refuses it as a decompression bomb.
    """
    if not data:
        raise ImageRuleError(field, "the data is empty, not an image", _ALLOWED_FORMATS_TEXT, code=CODE_BAD_FORMAT)
    try:
        with warnings.catch_warnings():
            # The size rules below give a better message than Pillow's bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format or "unknown"
                width, height = img.size
    except Image.DecompressionBombError as exc:
        raise ImageRuleError(
            field,
            f"the image is far too large to decode ({exc})",
            f"the longest side must be at most {MAX_SIDE} px",
        ) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        head = bytes(data[:8])
        raise ImageRuleError(
            field,
            f"the data is not a recognisable image (it starts with {head!r})",
            _ALLOWED_FORMATS_TEXT,
            code=CODE_BAD_FORMAT,
        ) from exc
    return ImageFacts(format=fmt, width=int(width), height=int(height), size_bytes=len(data))


def check_byte_size(size: int, *, field: str, lower_bound: bool = False) -> None:
    """Apply the byte-size rule alone, for callers that know a size before holding the bytes.

    ``size`` is the image's size in bytes; with ``lower_bound`` it is only known to be at least
    that (a download stopped after ``MAX_BYTES + 1`` bytes), so the message says "larger than".
    """
    if lower_bound and size > MAX_BYTES:
        raise ImageRuleError(field, f"the image is larger than {_human_size(MAX_BYTES)}", _SIZE_RULE_TEXT)
    if size < MIN_BYTES or size > MAX_BYTES:
        raise ImageRuleError(field, f"the image is {_human_size(size)}", _SIZE_RULE_TEXT)


def check_image(data: bytes, *, field: str) -> ImageFacts:
    """Apply every input rule to ``data``; return its facts or raise ``ImageRuleError``.

    The byte-size rule is applied first because it needs no parsing, then the format, then the
    pixel sides.
    """
    check_byte_size(len(data), field=field)
    facts = inspect_image(data, field=field)
    if facts.format not in ALLOWED_FORMATS:
        raise ImageRuleError(
            field, f"the image is in {facts.format} format", _ALLOWED_FORMATS_TEXT, code=CODE_BAD_FORMAT
        )
    dims = f"{facts.width}x{facts.height} px"
    if facts.shortest_side <= MIN_SIDE_EXCLUSIVE:
        raise ImageRuleError(
            field, f"the image is {dims}", f"the shortest side must be more than {MIN_SIDE_EXCLUSIVE} px"
        )
    if facts.longest_side > MAX_SIDE:
        raise ImageRuleError(field, f"the image is {dims}", f"the longest side must be at most {MAX_SIDE} px")
    return facts


__all__ = [
    "ALLOWED_FORMATS",
    "CODE_BAD_FORMAT",
    "CODE_BAD_LENGTH",
    "MAX_BYTES",
    "MAX_SIDE",
    "MIN_BYTES",
    "MIN_SIDE_EXCLUSIVE",
    "ImageFacts",
    "ImageRuleError",
    "check_byte_size",
    "check_image",
    "inspect_image",
]
