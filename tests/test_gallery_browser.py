"""The review gallery in a real headless Chromium: it renders, every thumbnail loads, counts add up.

Images are the emulator's sample PNGs on disk, read by the gallery's default fetcher (a real local
source). Skipped without Chromium or Playwright unless AITRYON_REQUIRE_BROWSER=1 (tests/browser.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import inspect_page, require_browser

from airflow_provider_aitryon.emulator.samples import make_samples
from airflow_provider_aitryon.gallery import GalleryItem, write_gallery


def status_of(i: int) -> str:
    return "failed" if i % 9 == 4 else "undone" if i % 13 == 7 else "succeeded"


def items(n: int, samples: dict[str, Path]) -> Iterator[GalleryItem]:
    """``n`` items over the sample images; a failed item has no results, a succeeded one all four."""
    for i in range(n):
        status = status_of(i)
        done = status == "succeeded"
        person = samples["blank_person.png" if status == "failed" else "person.png"]
        garment = samples[("top.png", "bottom.png", "dress.png")[i % 3]]
        yield GalleryItem(
            sku=f"SKU-{i:05d}",
            status=status,
            images={
                "person": str(person),
                "garment": garment.as_uri(),
                "coarse": str(samples["coarse.png"]) if done else None,
                "refined": str(samples["coarse_mismatch.png"]) if done else None,
            },
            code="InvalidPerson" if status == "failed" else None,
            message="The person image shows nobody." if status == "failed" else None,
            cost="0.70" if done else "0.00",
            task_ids={"coarse": f"task-{i}"} if done else {},
        )


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_samples(tmp_path_factory.mktemp("samples"))


@pytest.mark.parametrize(("count", "page_size", "pages"), [(30, 500, 1), (1100, 500, 3)])
def test_every_page_renders_with_all_thumbnails_and_the_right_counts(
    tmp_path: Path, samples: dict[str, Path], count: int, page_size: int, pages: int
) -> None:
    require_browser()
    expected = Counter(status_of(i) for i in range(count))
    totals = {"items": count, **{status: expected[status] for status in ("succeeded", "failed", "undone")},
              "total cost": f"CNY {0.70 * expected['succeeded']:.2f}"}  # fmt: skip
    result = write_gallery(items(count, samples), str(tmp_path / "gallery"), count=count, title="Browser check",
                           totals=totals, page_size=page_size)  # fmt: skip
    assert len(result.pages) == pages and result.counts == dict(expected)

    shown_items = 0
    by_status: Counter[str] = Counter()
    skus: list[str] = []
    for number, uri in enumerate(result.pages, start=1):
        seen = inspect_page(uri)
        assert seen["console_errors"] == [] and seen["page_errors"] == [], number
        assert seen["external_requests"] == []
        assert seen["broken_images"] == []
        on_page = min(page_size, count - (number - 1) * page_size)
        assert seen["items"] == on_page
        # person and garment on every item, coarse and refined on the succeeded ones; the rest placeholders.
        succeeded_here = seen["by_status"].get("succeeded", 0)
        assert seen["images"] == 2 * on_page + 2 * succeeded_here
        assert seen["missing"] == 2 * (on_page - succeeded_here)
        assert seen["totals"] == {"items": str(count), **{k: str(v) for k, v in totals.items() if k in expected}} | {
            status: "0" for status in ("succeeded", "failed", "undone") if status not in expected
        }
        assert seen["pages"] == [Path(page).name for page in result.pages]
        shown_items += seen["items"]
        by_status.update(seen["by_status"])
        skus.extend(seen["skus"])
    assert shown_items == count
    assert by_status == expected
    assert sorted(skus) == [f"SKU-{i:05d}" for i in range(count)]
