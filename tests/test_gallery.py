"""The review gallery (airflow_provider_aitryon.gallery): pages, escaping, bad images, memory.

The gallery is real throughout; only the image source is a function here (the fetch boundary),
so tests can count fetches and hand out hostile or freshly generated images.
"""

from __future__ import annotations

import base64
import gc
import io
import os
import re
import struct
import tracemalloc
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from airflow_provider_aitryon.emulator.samples import make_samples
from airflow_provider_aitryon.errors import DashScopeConfigError
from airflow_provider_aitryon.gallery import GalleryItem, default_fetcher, write_gallery
from airflow_provider_aitryon.gallery.thumbnails import ThumbnailError, make_thumbnail

ARTICLE = re.compile(r'<article class="item" data-sku="([^"]*)" data-status="([^"]*)">')


def png(size: tuple[int, int] = (64, 96), colour: tuple[int, int, int] = (200, 60, 60), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else (*colour, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def claimed_size_png(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width`` x ``height``: tiny on disk, a bomb if decoded."""
    data = bytearray(png((1, 1)))
    # The signature is 8 bytes; IHDR's length (4) and type (4) follow, then width and height.
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def read_pages(folder: Path) -> list[str]:
    pages = [folder / "report.html", *sorted(folder.glob("report-*.html"), key=lambda p: int(p.stem.split("-")[1]))]
    return [page.read_text(encoding="utf-8") for page in pages]


def simple_items(n: int, ref: str = "mem://person.png") -> Iterator[GalleryItem]:
    for i in range(n):
        status = "failed" if i % 10 == 0 else "undone" if i % 25 == 1 else "succeeded"
        yield GalleryItem(sku=f"SKU-{i:05d}", status=status, images={"person": ref, "refined": None})


def test_items_are_split_into_pages_of_page_size_each_once(tmp_path: Path) -> None:
    fetched: list[str] = []

    def fetch(ref: str) -> bytes:
        fetched.append(ref)
        return png()

    result = write_gallery(
        simple_items(1201), str(tmp_path / "out"), count=1201, title="Backfill", totals={"items": 1201},
        fetch=fetch, page_size=500,
    )  # fmt: skip

    out = tmp_path / "out"
    assert [Path(p).name for p in result.pages] == ["report.html", "report-2.html", "report-3.html"]
    assert result.index == result.pages[0] and result.index.endswith("/out/report.html")
    assert result.items == 1201
    pages = read_pages(out)
    per_page = [ARTICLE.findall(html) for html in pages]
    assert [len(articles) for articles in per_page] == [500, 500, 201]
    skus = [sku for articles in per_page for sku, _ in articles]
    assert sorted(skus) == [f"SKU-{i:05d}" for i in range(1201)]  # every item exactly once
    statuses = Counter(status for articles in per_page for _, status in articles)
    assert dict(statuses) == result.counts == {"failed": 121, "undone": 48, "succeeded": 1032}
    for number, html in enumerate(pages, start=1):
        nav = html[html.index('<nav class="pages"') : html.index("</nav>")]
        links = re.findall(r'<a href="([^"]+)"( aria-current="page")?>(\d+)</a>', nav)
        assert [(href, label) for href, _, label in links] == [
            ("report.html", "1"), ("report-2.html", "2"), ("report-3.html", "3"),
        ]  # fmt: skip
        assert [label for _, current, label in links if current] == [str(number)]
        assert ('rel="prev"' in nav) == (number > 1) and ('rel="next"' in nav) == (number < 3)
    assert fetched == ["mem://person.png"]  # one reference, fetched once for all pages


def test_every_page_shows_the_totals_and_the_whole_gallery_counts(tmp_path: Path) -> None:
    totals = {"items": 1201, "succeeded": 1032, "failed": 121, "undone": 48, "total cost": "CNY 516.00",
              "images charged": {"aitryon": 1032, "aitryon-refiner": 1032}, "run": "backfill__2026-01-01"}  # fmt: skip
    write_gallery(simple_items(1201), str(tmp_path), count=1201, title="T", totals=totals, fetch=lambda _: png())
    for html in read_pages(tmp_path):
        assert '<section id="totals" data-items="1201" data-succeeded="1032" data-failed="121" data-undone="48">' in (
            html
        )
        for shown in ("CNY 516.00", "aitryon: 1032, aitryon-refiner: 1032", "backfill__2026-01-01"):
            assert shown in html


def test_one_page_counts_its_statuses_when_totals_do_not_give_them(tmp_path: Path) -> None:
    write_gallery(simple_items(30), str(tmp_path), count=30, title="T", totals={}, fetch=lambda _: png())
    (html,) = read_pages(tmp_path)
    assert '<section id="totals" data-items="30" data-succeeded="25" data-failed="3" data-undone="2">' in html


def test_everything_shown_is_escaped(tmp_path: Path) -> None:
    evil = '<script>alert("x")</script>'
    item = GalleryItem(
        sku=f'SKU"{evil}', status=f"failed{evil}", images={f"per<son>{evil}": "mem://a.png", "b": None},
        code=f"Invalid{evil}", message=f"bad {evil} & worse", cost=f"0.50{evil}", task_ids={"coarse": evil},
    )  # fmt: skip
    write_gallery([item], str(tmp_path), count=1, title=f"Review {evil}", totals={evil: evil}, fetch=lambda _: png())
    (html,) = read_pages(tmp_path)
    assert "<script" not in html
    assert html.count("&lt;script&gt;") >= 8
    assert 'data-sku="SKU&quot;&lt;script&gt;' in html


def test_broken_missing_and_huge_images_become_placeholders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def counting_load(self: ImageFile.ImageFile) -> object:
        decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    sources = {
        "mem://fine.png": png(),
        "mem://html.png": b"<html>not an image</html>",
        "mem://bomb.png": claimed_size_png(100_000, 100_000),  # over Pillow's own bomb limit
        "mem://big.png": claimed_size_png(7_000, 7_000),  # 49 MP: under Pillow's limit, over the gallery's
        "mem://cut.png": png((300, 300))[:200],
    }

    def fetch(ref: str) -> bytes:
        if ref not in sources:
            raise FileNotFoundError(f"no such object {ref}")
        return sources[ref]

    item = GalleryItem(sku="A", status="failed", images={
        "fine": "mem://fine.png", "html": "mem://html.png", "bomb": "mem://bomb.png", "big": "mem://big.png",
        "cut": "mem://cut.png", "gone": "mem://gone.png", "none": None,
    })  # fmt: skip
    write_gallery([item], str(tmp_path), count=1, title="T", totals={}, fetch=fetch)
    (html,) = read_pages(tmp_path)
    assert re.findall(r'<img class="thumb" data-role="([^"]+)"', html) == ["fine"]
    missing = dict(re.findall(r'<div class="thumb missing" data-role="([^"]+)"[^>]*>([^<]*)</div>', html))
    assert missing.keys() == {"html", "bomb", "big", "cut", "gone", "none"}
    assert missing["html"] == "not an image"
    assert "not decoded" in missing["bomb"] or "too many pixels" in missing["bomb"]
    assert missing["big"] == "7000x7000 px, over 40 MP, not decoded"
    assert missing["cut"].startswith(("cannot be decoded", "not an image"))
    assert missing["gone"].startswith("could not be read") and "FileNotFoundError" in missing["gone"]
    assert missing["none"] == "not available"
    assert (100_000, 100_000) not in decoded and (7_000, 7_000) not in decoded


def test_thumbnails_are_small_jpegs_with_transparency_on_white() -> None:
    thumb = make_thumbnail(png((400, 800), colour=(0, 0, 0), mode="RGBA"), size=160)
    assert (thumb.width, thumb.height) == (80, 160)
    assert thumb.data_uri.startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(thumb.data_uri.split(",", 1)[1])))
    pixel = image.getpixel((40, 80))
    assert image.format == "JPEG" and isinstance(pixel, tuple) and min(pixel) > 240  # transparent -> white
    photo = io.BytesIO()
    Image.new("RGB", (4000, 3000), (10, 120, 200)).save(photo, format="JPEG")
    big = make_thumbnail(photo.getvalue(), size=160)  # a JPEG is decoded at 1/8 scale (draft), then shrunk
    assert (big.width, big.height) == (160, 120)
    with pytest.raises(ThumbnailError, match="larger than"):
        make_thumbnail(b"x" * 30, size=160, max_bytes=20)


def test_signed_url_query_strings_never_appear(tmp_path: Path) -> None:
    signed = "https://bucket.oss-cn-beijing.aliyuncs.com/results/a.png?x-oss-signature=SECRETSIG&x-oss-credential=AKID"
    broken = "https://bucket.oss-cn-beijing.aliyuncs.com/results/b.png?Signature=SECRETSIG2&OSSAccessKeyId=AKID2"

    def fetch(ref: str) -> bytes:
        if ref == broken:
            raise OSError(f"HTTP 403 for url {ref}")
        return png()

    item = GalleryItem(sku="A", status="failed", images={"ok": signed, "bad": broken},
                       message=f"could not fetch {broken}")  # fmt: skip
    totals = {"manifest": "s3://bucket/m.json?X-Amz-Signature=SECRETSIG3"}
    write_gallery([item], str(tmp_path), count=1, title="T", totals=totals, fetch=fetch)
    (html,) = read_pages(tmp_path)
    for secret in ("SECRETSIG", "AKID", "x-oss-", "Signature", "?"):
        assert secret not in html.replace("<!DOCTYPE", ""), secret
    assert "bucket.oss-cn-beijing.aliyuncs.com/results/b.png" in html  # the reference is still named


def test_repeated_references_are_fetched_once(tmp_path: Path) -> None:
    calls: Counter[str] = Counter()

    def fetch(ref: str) -> bytes:
        calls[ref] += 1
        return png(colour=(len(ref), 90, 90))

    items = (
        GalleryItem(sku=f"S{i}", status="succeeded",
                    images={"person": f"mem://person-{i % 3}.png", "garment": "mem://top.png",
                            "refined": f"mem://refined-{i}.png"})
        for i in range(250)
    )  # fmt: skip
    write_gallery(items, str(tmp_path), count=250, title="T", totals={}, fetch=fetch, page_size=100)
    assert calls["mem://top.png"] == 1 and all(calls[f"mem://person-{i}.png"] == 1 for i in range(3))
    assert sum(calls.values()) == 250 + 4


def test_one_off_results_do_not_push_shared_images_out_of_the_cache(tmp_path: Path) -> None:
    # Pages of 500 items bring 1,000 one-off coarse and refined images each, far more than the
    # cache holds: the persons and garments every page shares must still be fetched once.
    calls: Counter[str] = Counter()

    def fetch(ref: str) -> bytes:
        calls[ref] += 1
        return png(colour=(len(ref) % 256, 90, 90))

    items = (
        GalleryItem(sku=f"S{i}", status="succeeded",
                    images={"person": f"mem://person-{i % 20}.png", "garment": f"mem://top-{i % 7}.png",
                            "coarse": f"mem://coarse-{i}.png", "refined": f"mem://refined-{i}.png"})
        for i in range(1500)
    )  # fmt: skip
    write_gallery(items, str(tmp_path), count=1500, title="T", totals={}, fetch=fetch, thumb_size=24)
    shared = {ref: n for ref, n in calls.items() if ref.startswith(("mem://person-", "mem://top-"))}
    assert len(shared) == 27 and set(shared.values()) == {1}
    assert sum(calls.values()) == 27 + 2 * 1500


@pytest.mark.parametrize("page_size", [501, 0, 10_000])
def test_page_size_over_500_is_refused(tmp_path: Path, page_size: int) -> None:
    with pytest.raises(ValueError, match="page_size must be between 1 and 500"):
        write_gallery([], str(tmp_path), count=0, title="T", totals={}, fetch=lambda _: b"", page_size=page_size)
    assert not list(tmp_path.iterdir())


def test_more_items_than_count_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DashScopeConfigError, match="more than count"):
        write_gallery(simple_items(11), str(tmp_path), count=10, title="T", totals={}, fetch=lambda _: png())


def test_an_empty_gallery_is_one_page(tmp_path: Path) -> None:
    result = write_gallery([], str(tmp_path), count=0, title="T", totals={"items": 0}, fetch=lambda _: png())
    (html,) = read_pages(tmp_path)
    assert result.items == 0 and "No items on this page." in html


def test_writes_to_memory_storage_and_reads_images_from_it() -> None:
    from airflow.sdk import ObjectStoragePath
    from airflow.sdk.io import attach
    from fsspec.implementations.memory import MemoryFileSystem

    attach("memory", fs=MemoryFileSystem())
    source = ObjectStoragePath("memory://gallery-in/person.png")
    source.write_bytes(png())
    items = [GalleryItem(sku="A", status="succeeded", images={"person": "memory://gallery-in/person.png"})]
    result = write_gallery(items, "memory://gallery-out/run-1/", count=1, title="T", totals={})

    assert result.index.endswith("gallery-out/run-1/report.html")
    html = ObjectStoragePath(result.index).read_text()
    assert '<img class="thumb" data-role="person" src="data:image/jpeg;base64,' in html


def test_default_fetcher_reads_local_files_and_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    samples = make_samples(tmp_path / "samples")
    fetch = default_fetcher()
    assert fetch(str(samples["person.png"])) == samples["person.png"].read_bytes()
    assert fetch(samples["top.png"].as_uri()) == samples["top.png"].read_bytes()
    with pytest.raises(DashScopeConfigError, match="relative path"):
        fetch("samples/person.png")
    with pytest.raises(DashScopeConfigError, match="cannot be read"):
        fetch(str(tmp_path / "nope.png"))
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * 101)
    with pytest.raises(DashScopeConfigError, match="larger than 100 bytes"):
        default_fetcher(max_bytes=100)(str(big))


def test_the_output_is_self_contained(tmp_path: Path) -> None:
    samples = make_samples(tmp_path / "samples")
    items = [GalleryItem(sku=f"S{i}", status="succeeded", images={name: str(path) for name, path in samples.items()})
             for i in range(3)]  # fmt: skip
    write_gallery(items, str(tmp_path / "out"), count=3, title="T", totals={})
    (html,) = read_pages(tmp_path / "out")
    assert html.count('src="data:image/jpeg;base64,') == 3 * len(samples)
    for external in ('src="http', "src='http", "<link", "<script", "url(", "@import", "@font-face", 'href="http'):
        assert external not in html, external
    assert set(re.findall(r'src="([a-z]+):', html)) == {"data"}


def _noise_png(size: int = 160) -> bytes:
    """A distinct image on every call: random noise, which PNG cannot compress (~77 KB a fetch)."""
    image = Image.frombytes("RGB", (size, size), os.urandom(size * size * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


def _peak_while_writing(n: int, folder: Path) -> int:
    def fetch(ref: str) -> bytes:
        return _noise_png()

    def items() -> Iterator[GalleryItem]:
        for i in range(n):
            yield GalleryItem(sku=f"SKU-{i:05d}", status="succeeded", images={"refined": f"gen://{i}"},
                              message="x" * 200, task_ids={"refined": f"{i:036d}"})  # fmt: skip

    gc.collect()
    tracemalloc.start()
    try:
        write_gallery(items(), str(folder), count=n, title="T", totals={"items": n}, fetch=fetch, page_size=200,
                      thumb_size=96, workers=4)  # fmt: skip
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def test_memory_does_not_grow_with_the_number_of_items(tmp_path: Path) -> None:
    small = _peak_while_writing(400, tmp_path / "small")
    large = _peak_while_writing(2000, tmp_path / "large")
    print(f"peak traced memory: 400 items {small / 1e6:.1f} MB, 2000 items {large / 1e6:.1f} MB")
    assert len(list((tmp_path / "large").glob("report*.html"))) == 10
    assert large <= 1.5 * small, (small, large)


def test_a_host_that_never_answers_costs_a_few_deadlines_not_one_per_image(tmp_path: Path) -> None:
    import socket
    import threading

    from airflow_provider_aitryon.downloads import AddressPolicy

    # A host that accepts connections and never answers: every download would wait its deadline.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(128)
    port = server.getsockname()[1]
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    fetch = default_fetcher(policy=AddressPolicy.for_base_url(base), deadline=0.5, give_up_after=3)
    items = [
        GalleryItem(sku=f"S{i}", status="succeeded", images={"refined": f"{base}/results/{i}.png?Signature=SECRET"})
        for i in range(60)
    ]
    try:
        write_gallery(items, str(tmp_path), count=60, title="T", totals={}, fetch=fetch, workers=4)
    finally:
        server.close()
        for conn in accepted:
            conn.close()
    html = "".join(read_pages(tmp_path))
    # At most the failures before the host was given up, plus those already in flight then.
    assert len(accepted) <= 3 + 4
    assert html.count('class="thumb missing"') == 60
    assert html.count(f"not tried: 127.0.0.1:{port} failed 3 times in a row") >= 60 - 7
    assert "SECRET" not in html
