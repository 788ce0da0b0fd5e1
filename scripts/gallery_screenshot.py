"""Draw docs/_static/gallery.png: a screenshot of a small review gallery, for the documentation.

Run it after changing the gallery's look (``.venv/bin/python scripts/gallery_screenshot.py``); the
test suite never rewrites the file. The images are the emulator's samples (no network, no real
model): each item's coarse and refined results are rendered from them the way the emulator would,
garments recoloured per SKU so the cards differ. It needs the system Chromium and the ``playwright``
package, as the browser tests do (tests/browser.py).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from browser import browser_missing, inspect_page  # noqa: E402

from airflow_provider_aitryon import spend  # noqa: E402
from airflow_provider_aitryon.emulator import samples  # noqa: E402
from airflow_provider_aitryon.emulator.imaging import render_coarse, render_refined  # noqa: E402
from airflow_provider_aitryon.emulator.protocol import MODEL_TRYON  # noqa: E402
from airflow_provider_aitryon.gallery import GalleryItem, write_gallery  # noqa: E402

OUTPUT = REPO / "docs" / "_static" / "gallery.png"
# Screenshots are mostly flat colour: 128 colours keep the file small with no visible banding.
COLOURS = 128
# One coarse try-on and one refinement at list price: what each succeeded look was charged.
PER_LOOK = f"{Decimal(spend.charged({'aitryon': 1, 'aitryon-refiner': 1})['total']):.2f}"


def _recolour(garment: Image.Image, hue_turn: int) -> Image.Image:
    """The garment with its hue turned by ``hue_turn`` of 256 (the light background stays light)."""
    h, s, v = garment.convert("HSV").split()
    return Image.merge("HSV", (h.point(lambda x: (x + hue_turn) % 256), s, v)).convert("RGB")


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def build_items(folder: Path) -> tuple[list[GalleryItem], dict[str, object]]:
    """Write the sample inputs and rendered results into ``folder``; return the items and totals."""
    person = samples.draw_person()
    looks: list[tuple[str, Callable[[], Image.Image], str, int]] = [
        ("TEE-STRIPE-RED-M", samples.draw_top, "top", 0),
        ("TEE-STRIPE-TEAL-M", samples.draw_top, "top", 120),
        ("JEANS-SLIM-INDIGO-32", samples.draw_bottom, "bottom", 0),
        ("DRESS-DOT-GREEN-S", samples.draw_dress, "top", 0),
        ("TEE-STRIPE-PLUM-L", samples.draw_top, "top", 200),
        ("JEANS-SLIM-OLIVE-30", samples.draw_bottom, "bottom", 90),
    ]

    def save(name: str, data: bytes) -> str:
        path = folder / name
        path.write_bytes(data)
        return str(path)

    person_ref = save("person.png", _png(person))
    blank_ref = save("blank_person.png", _png(samples.draw_blank_person()))
    items: list[GalleryItem] = []
    for number, (sku, draw, slot, turn) in enumerate(looks, start=1):
        garment = _recolour(draw(), turn) if turn else draw()
        garment_ref = save(f"{sku}-garment.png", _png(garment))
        top, bottom = (garment, None) if slot == "top" else (None, garment)
        coarse = render_coarse(person, top, bottom, resolution=-1, restore_face=True, model=MODEL_TRYON)
        coarse_image = Image.open(io.BytesIO(coarse.png))
        refined = render_refined(person, coarse_image, top or garment, bottom, gender="woman")
        items.append(
            GalleryItem(
                sku=sku,
                status="succeeded",
                images={
                    "person": person_ref,
                    "garment": garment_ref,
                    "coarse": save(f"{sku}-coarse.png", coarse.png),
                    "refined": save(f"{sku}-refined.png", refined.png),
                },
                cost=PER_LOOK,
                task_ids={"coarse": f"0f1c2d3e-{number:04d}-4a5b-8c6d-7e8f9a0b1c2d"},
            )
        )
    items.insert(
        2,
        GalleryItem(
            sku="TEE-BASIC-WHITE-S",
            status="failed",
            images={"person": blank_ref, "garment": save("white-tee.png", _png(ImageOps.grayscale(samples.draw_top())
                                                                                .convert("RGB"))),
                    "coarse": None, "refined": None},
            code="InvalidPerson",
            message="The person image must show one person, full body, facing the camera.",
            cost="0.00",
        ),
    )  # fmt: skip
    items.insert(
        5,
        GalleryItem(
            sku="SKIRT-PLEAT-NAVY-M",
            status="failed",
            images={"person": person_ref, "garment": None, "coarse": None, "refined": None},
            code="InvalidURL",
            message="bottom_garment_url could not be downloaded (HTTP 404).",
            cost="0.00",
        ),
    )
    succeeded = sum(item.status == "succeeded" for item in items)
    # Priced by the one price table, as finalize does: the figures on the picture add up.
    charged = spend.charged({"aitryon": succeeded, "aitryon-refiner": succeeded})
    estimate = spend.charged({"aitryon": len(items), "aitryon-refiner": len(items)})
    totals: dict[str, object] = {
        "items": len(items),
        "succeeded": succeeded,
        "failed": len(items) - succeeded,
        "undone": 0,
        "run": "aitryon_catalog_backfill/scheduled__2026-03-01T00:00:00+00:00",
        "status": "finished",
        "charged this run": f"CNY {Decimal(charged['total']):,.2f}",
        "images charged this run": f"{succeeded} aitryon, {succeeded} aitryon-refiner",
        "estimate": f"CNY {Decimal(estimate['total']):,.2f}",
        "manifest": "s3://merch-looks/backfill/2026-03-01/manifest.jsonl",
    }
    return items, totals


def main() -> int:
    """Build the gallery in a temporary folder, screenshot it and write the compact PNG."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"where the PNG goes (default {OUTPUT})")
    args = parser.parse_args()
    reason = browser_missing()
    if reason is not None:
        print(f"Cannot take the screenshot: {reason}.", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="gallery-shot-") as temp:
        folder = Path(temp)
        (folder / "images").mkdir()
        items, totals = build_items(folder / "images")
        result = write_gallery(items, str(folder / "gallery"), count=len(items), title="Catalog backfill 2026-03-01 "
                               "· partition 1 of 12", totals=totals)  # fmt: skip
        shot = folder / "shot.png"
        seen = inspect_page(result.index, screenshot=shot)
        problems = seen["console_errors"] + seen["page_errors"] + seen["broken_images"] + seen["external_requests"]
        if problems:
            print(f"The page has problems: {problems}", file=sys.stderr)
            return 1
        with Image.open(shot) as image:
            compact = image.convert("RGB").quantize(COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        compact.save(args.output, format="PNG", optimize=True)
    print(f"Wrote {args.output} ({args.output.stat().st_size // 1024} KB, {compact.width}x{compact.height}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
