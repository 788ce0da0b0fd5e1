"""Benchmark (not a test) of the review gallery on a large catalog partition: `make bench`.

    python benchmarks/gallery.py                          # N=10,000 items; the loop peer at 1,000 (~10 min)
    python benchmarks/gallery.py --items 200 --peers loop # a smoke test (well under a minute)
    make bench BENCH_GALLERY_ARGS="--items 2000"

Every item has four images: ``person`` and ``garment`` (a handful of distinct JPEGs that repeat
across the catalog, as the same model and garment photos do) and ``coarse`` and ``refined`` (PNGs
of try-on size, 576 x 1024, distinct per item: the sku is in each URL's query string). Every 50th
item failed at the refiner and has no ``refined`` image. The images are made once with Pillow
(gradients, noise and shapes, so a PNG is about 0.9 MB, as a real result is, not a few KB of flat
colour), cached in the system's temp folder, and served from memory by a small HTTP server on
loopback in this process, which counts the requests and bytes it serves. Each URL is distinct per
item, so a cache by reference helps only with what really repeats.

Scenarios, each in its own child process (``--run-one``) so its peak RSS (``ru_maxrss``) is its own:

* ``provider`` — `airflow_provider_aitryon.gallery.write_gallery` with
  ``default_fetcher(policy=AddressPolicy.for_base_url(server, allow_private=True))``, pages of 500
  items, into a temp folder;
* ``loop`` — what a team writes by hand: one loop over the items, ``requests.get`` every image,
  ``Image.open(...).thumbnail((160, 160))``, base64 into one HTML string held in memory and written
  once at the end (one file, no pages, no cache).

Each scenario runs at two sizes, n and n/10, so the table shows whether memory grows with n. The
peer is slower, so by default it runs at ``--peer-items`` = min(N, 1000); its figures at N are then
a LINEAR EXTRAPOLATION from its two measured sizes, and labelled so. Figures per run: ``wall_s``
(the call or loop only: imports and a one-item warm-up are before the clock starts), ``items_per_s``,
``pages``, ``output_bytes``, ``images`` (thumbnails in the output) and ``placeholders``, ``fetches``
(requests the image server answered), ``rss_base_mib`` (resident memory after the imports and the
warm-up) and ``rss_peak_mib`` (the child's ``ru_maxrss``).

The human summary goes to stdout, then, as the LAST line, one JSON object: the provider's figures,
with the peers' under ``peers``. Loopback only.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

WIDTH, HEIGHT = 576, 1024  # the try-on models' usual output size
PERSONS = 8
GARMENTS = 8
FAIL_EVERY = 50  # one item in 50 failed at the refiner: no refined image, a code and a message
THUMB = 160
COST = "0.50"  # per succeeded item: the figure only has to be plausible on the page
# Bump when the pictures change, so a stale cache in the temp folder is not reused.
IMAGES_VERSION = 1
IMAGE_CACHE = Path(tempfile.gettempdir()) / f"aitryon-bench-gallery-images-v{IMAGES_VERSION}"
MIB = 1024 * 1024


class BenchError(RuntimeError):
    """A scenario could not be measured (a child failed or overran its time bound)."""


# ------------------------------------------------------------------------------------------ images


def draw(seed: int, fmt: str) -> bytes:
    """One 576 x 1024 picture: a gradient per channel blended with noise, plus a few shapes.

    Noise keeps PNG from compressing it to nothing (about 0.9 MB, like a real try-on result; a JPEG
    at quality 90 is about 140 KB, like a catalog photo), so fetching and decoding cost what they
    would on real images.
    """
    from PIL import Image, ImageDraw

    rnd = random.Random(seed)
    gradient = Image.linear_gradient("L").resize((WIDTH, HEIGHT))
    flips = (Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.ROTATE_180)
    bands = []
    for _ in range(3):
        noise = Image.effect_noise((WIDTH, HEIGHT), rnd.uniform(20, 50))
        bands.append(Image.blend(gradient.transpose(rnd.choice(flips)), noise, rnd.uniform(0.2, 0.4)))
    image = Image.merge("RGB", bands)
    pen = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = rnd.randrange(WIDTH), rnd.randrange(HEIGHT)
        colour = (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256))
        pen.ellipse((x, y, x + rnd.randrange(40, 300), y + rnd.randrange(40, 400)), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def image_names(results: int) -> list[str]:
    return ([f"person-{i:02d}.jpg" for i in range(PERSONS)] + [f"garment-{i:02d}.jpg" for i in range(GARMENTS)]
            + [f"result-{i:03d}.png" for i in range(results)])  # fmt: skip


def _make_file(job: tuple[Path, int]) -> None:
    path, seed = job
    data = draw(seed, "PNG" if path.suffix == ".png" else "JPEG")
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    part.write_bytes(data)
    part.replace(path)  # a run killed halfway leaves no truncated picture behind for the next run


def ensure_images(folder: Path, results: int) -> dict[str, bytes]:
    """The pictures by name, made on all cores the first time and reused from ``folder`` after."""
    folder.mkdir(parents=True, exist_ok=True)
    names = image_names(results)
    missing = [(folder / name, seed) for seed, name in enumerate(names) if not (folder / name).is_file()]
    if missing:
        print(f"making {len(missing)} pictures of {WIDTH}x{HEIGHT} in {folder} (once) ...", flush=True)
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(_make_file, missing))
    return {name: (folder / name).read_bytes() for name in names}


# ------------------------------------------------------------------------------------------ server


class ImageServer:
    """Serves the pictures from memory on loopback; ``/img/<name>?anything`` returns ``<name>``.

    It runs in the parent process, so its memory and threads are in neither scenario's figures, and
    it counts what it serves: the number of fetches is measured here, not by the clients.
    """

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests = 0
        self.bytes_sent = 0
        self._lock = threading.Lock()
        server_ref = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: both clients can reuse connections

            def do_GET(self) -> None:
                name = urlsplit(self.path).path.removeprefix("/img/")
                body = server_ref.files.get(name)
                if body is None:
                    self.send_error(HTTPStatus.NOT_FOUND)
                    return
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "image/png" if name.endswith(".png") else "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                with server_ref._lock:
                    server_ref.requests += 1
                    server_ref.bytes_sent += len(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per image would bury the summary

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128  # the gallery opens up to 8 connections at once

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="image-server", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> ImageServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def counters(self) -> tuple[int, int]:
        with self._lock:
            return self.requests, self.bytes_sent


# ------------------------------------------------------------------------------------------ catalog


def rows(base_url: str, count: int, results: int, first: int = 0) -> Iterator[dict[str, Any]]:
    """The catalog partition, lazily: plain dicts, so the loop peer imports nothing of the provider."""
    for n in range(first, first + count):
        sku = f"item-{n:06d}"
        failed = n % FAIL_EVERY == FAIL_EVERY - 1

        def result(kind: str, offset: int, sku: str = sku, n: int = n) -> str:
            return f"{base_url}/img/result-{(n + offset) % results:03d}.png?" + urlencode({"sku": sku, "kind": kind})

        yield {
            "sku": sku,
            "status": "failed" if failed else "succeeded",
            "images": {
                "person": f"{base_url}/img/person-{n % PERSONS:02d}.jpg",
                "garment": f"{base_url}/img/garment-{(n // PERSONS) % GARMENTS:02d}.jpg",
                "coarse": result("coarse", 0),
                "refined": None if failed else result("refined", results // 2),
            },
            "code": "InternalError.Algo" if failed else None,
            "message": "The refiner could not process the coarse image." if failed else None,
            "cost": "0.00" if failed else COST,
            "task_ids": {"coarse": f"coarse-{n:06d}", "refined": f"refined-{n:06d}"},
        }


def totals(count: int) -> dict[str, Any]:
    failed = count // FAIL_EVERY
    return {"items": count, "succeeded": count - failed, "failed": failed, "undone": 0,
            "cost": f"{(count - failed) * float(COST):.2f}", "run": "bench"}  # fmt: skip


# ------------------------------------------------------------------------------------------ children


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def vm_rss_kib() -> int:
    """Resident memory now (Linux ``/proc``); elsewhere the peak so far, the closest figure there is."""
    now = _proc_status_kib("VmRSS")
    return now if now is not None else peak_rss_kib()


def peak_rss_kib() -> int:
    """This process's peak resident memory, KiB.

    ``ru_maxrss`` survives ``execve``: a child started by a parent holding the ~90 MB of pictures
    would report the parent's peak as its own floor. Linux's ``VmHWM`` is the peak of this program's
    own address space, so it is used where it exists.
    """
    own = _proc_status_kib("VmHWM")
    if own is not None:
        return own
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


def run_provider(base_url: str, out: Path, count: int, results: int, page_size: int, workers: int) -> dict[str, Any]:
    import logging

    from airflow_provider_aitryon.downloads import AddressPolicy
    from airflow_provider_aitryon.gallery import GalleryItem, default_fetcher, write_gallery

    logging.getLogger("airflow_provider_aitryon").setLevel(logging.WARNING)
    # Loopback is private: allowed here as it is for the emulator, and only for this origin.
    fetch = default_fetcher(policy=AddressPolicy.for_base_url(base_url, allow_private=True))

    def items(first: int, n: int) -> Iterator[GalleryItem]:
        return (GalleryItem(**row) for row in rows(base_url, n, results, first))

    # Warm-up: the lazy imports, the I/O loop and its client are paid before the clock starts.
    write_gallery(items(10**7, 1), str(out / "warmup"), count=1, title="warm-up", totals=totals(1), fetch=fetch)
    shutil.rmtree(out / "warmup")
    base = vm_rss_kib()
    start = time.perf_counter()
    gallery = write_gallery(items(0, count), str(out / "gallery"), count=count, title=f"Catalog partition ({count})",
                            totals=totals(count), fetch=fetch, page_size=page_size, workers=workers)  # fmt: skip
    wall = time.perf_counter() - start
    return {"wall_s": wall, "rss_base_kib": base, "pages": len(gallery.pages), "shown": gallery.items}


def run_loop(base_url: str, out: Path, count: int, results: int) -> dict[str, Any]:
    """The hand-written peer, as a team would write it in a PythonOperator: kept deliberately plain."""
    import requests
    from PIL import Image

    def card(row: dict[str, Any]) -> str:
        html = f'<div class="item"><h2>{row["sku"]} {row["status"]}</h2>'
        for label, url in row["images"].items():
            if url is None:
                html += f'<div class="thumb missing">{label}: none</div>'
                continue
            try:
                reply = requests.get(url, timeout=30)
                reply.raise_for_status()
                image = Image.open(io.BytesIO(reply.content))
                image.thumbnail((THUMB, THUMB))
                buffer = io.BytesIO()
                image.convert("RGB").save(buffer, "JPEG", quality=75)
                data = base64.b64encode(buffer.getvalue()).decode()
                html += f'<img class="thumb" title="{label}" src="data:image/jpeg;base64,{data}">'
            except Exception as exc:
                html += f'<div class="thumb missing">{label}: {exc}</div>'
        if row["code"]:
            html += f"<p>{row['code']}: {row['message']}</p>"
        return html + f"<p>cost {row['cost']}</p></div>\n"

    for row in rows(base_url, 1, results, 10**7):  # warm-up, as for the provider
        card(row)
    base = vm_rss_kib()
    start = time.perf_counter()
    figures = totals(count)
    html = f"<html><head><title>Catalog partition ({count})</title></head><body><h1>{figures}</h1>\n"
    for row in rows(base_url, count, results):
        html += card(row)
    html += "</body></html>\n"
    (out / "gallery").mkdir()
    (out / "gallery" / "report.html").write_text(html)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "rss_base_kib": base, "pages": 1, "shown": count}


def child(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.run_one == "provider":
        figures = run_provider(args.base_url, out, args.items, args.results, args.page_size, args.workers)
    else:
        figures = run_loop(args.base_url, out, args.items, args.results)
    figures["rss_peak_kib"] = peak_rss_kib()
    print(json.dumps(figures))
    return 0


# ------------------------------------------------------------------------------------------ parent


@dataclass
class Run:
    scenario: str
    items: int
    wall_s: float
    items_per_s: float
    pages: int
    output_bytes: int
    images: int
    placeholders: int
    fetches: int
    fetched_mib: float
    rss_base_mib: float
    rss_peak_mib: float
    # The machine's 1-minute load average when the run ended: above the core count, other work
    # shared the cores and the times are pessimistic.
    load_1m: float

    def figures(self) -> dict[str, Any]:
        return asdict(self)


def output_figures(folder: Path) -> tuple[int, int, int]:
    """Bytes, thumbnails and placeholders in the written pages, counted from the files themselves."""
    size = images = placeholders = 0
    for page in folder.glob("*.html"):
        data = page.read_bytes()
        size += len(data)
        images += data.count(b"data:image/")
        placeholders += data.count(b'class="thumb missing"')
    return size, images, placeholders


def run_child(scenario: str, server: ImageServer, work: Path, count: int, args: argparse.Namespace) -> Run:
    out = work / f"{scenario}-{count}"
    out.mkdir()
    argv = [sys.executable, __file__, "--run-one", scenario, "--base-url", server.base_url, "--out", str(out),
            "--items", str(count), "--results", str(args.results), "--page-size", str(args.page_size),
            "--workers", str(args.workers)]  # fmt: skip
    env = dict(os.environ, AIRFLOW_HOME=str(work / "airflow-home"), AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING")
    bound = 300 + count * 0.5  # the loop peer needs ~0.08 s an item on 2 cores: far inside this
    print(f"[{scenario}] {count} items ...", flush=True)
    requests_before, bytes_before = server.counters()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=bound, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{scenario} at {count} items took more than {bound:.0f}s") from None
    if done.returncode != 0:
        raise BenchError(f"{scenario} at {count} items failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    requests_after, bytes_after = server.counters()
    reply = json.loads(done.stdout.strip().splitlines()[-1])
    size, images, placeholders = output_figures(out / "gallery")
    run = Run(
        scenario=scenario,
        items=count,
        wall_s=round(reply["wall_s"], 2),
        items_per_s=round(count / reply["wall_s"], 1) if reply["wall_s"] > 0 else 0.0,
        pages=reply["pages"],
        output_bytes=size,
        images=images,
        placeholders=placeholders,
        # The warm-up's fetches (at most 4) are in the server's count too.
        fetches=requests_after - requests_before,
        fetched_mib=round((bytes_after - bytes_before) / MIB, 1),
        rss_base_mib=round(reply["rss_base_kib"] / 1024, 1),
        rss_peak_mib=round(reply["rss_peak_kib"] / 1024, 1),
        load_1m=round(os.getloadavg()[0], 2),
    )
    expected_images = 4 * count - count // FAIL_EVERY
    if images != expected_images:
        # A fast run that showed placeholders instead of pictures measured nothing worth reporting.
        raise BenchError(f"{scenario} at {count} items shows {images} thumbnails, not {expected_images} "
                         f"({placeholders} placeholders): look at {out}")  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)  # 10,000 items of pages are about 100 MB
    print(f"[{scenario}] {count} items: {run.wall_s:.1f}s, {run.items_per_s:.1f} items/s, {run.pages} pages, "
          f"{size / MIB:.1f} MiB written, {run.fetches} fetches, RSS {run.rss_base_mib:.0f} -> "
          f"{run.rss_peak_mib:.0f} MiB peak", flush=True)  # fmt: skip
    return run


def summary(large: Run, small: Run, target: int) -> dict[str, Any]:
    """The large run's figures, the small run's, and how peak memory grew between them.

    When the large run is smaller than ``target`` (the peer), the figures at ``target`` are a
    linear extrapolation of the two measured runs, under keys that say so.
    """
    out = large.figures()
    out["at_tenth"] = small.figures()
    span = large.items - small.items
    slope = (large.rss_peak_mib - small.rss_peak_mib) / span if span > 0 else 0.0
    out["rss_growth_mib_per_1000_items"] = round(slope * 1000, 2)
    if large.items < target:
        out["extrapolated_to_items"] = target
        out["extrapolated_rss_peak_mib"] = round(large.rss_peak_mib + slope * (target - large.items), 1)
        out["extrapolated_wall_s"] = round(target / large.items_per_s, 1) if large.items_per_s else None
    return out


HEADER = (f"{'scenario':<10} {'items':>6} {'wall s':>8} {'items/s':>8} {'pages':>6} {'out MiB':>8} "
          f"{'fetches':>8} {'fetch MiB':>9} {'thumbs':>7} {'RSS base':>9} {'RSS peak':>9} {'load':>5}")  # fmt: skip


def table_row(run: Run) -> str:
    return (f"{run.scenario:<10} {run.items:>6} {run.wall_s:>8.1f} {run.items_per_s:>8.1f} {run.pages:>6} "
            f"{run.output_bytes / MIB:>8.1f} {run.fetches:>8} {run.fetched_mib:>9.0f} {run.images:>7} "
            f"{run.rss_base_mib:>9.0f} {run.rss_peak_mib:>9.0f} {run.load_1m:>5.1f}")  # fmt: skip


def report(runs: list[Run], summaries: dict[str, dict[str, Any]], items: int) -> None:
    print()
    print(f"Review gallery: {items} items x 4 images ({PERSONS} persons and {GARMENTS} garments that repeat, "
          f"coarse and refined distinct per item, {WIDTH}x{HEIGHT}); {os.cpu_count()} cores. RSS in MiB.")  # fmt: skip
    print(HEADER)
    print("-" * len(HEADER))
    for run in runs:
        print(table_row(run))
    for name, figures in summaries.items():
        line = f"{name}: peak RSS grows {figures['rss_growth_mib_per_1000_items']:+.1f} MiB per 1,000 items"
        if "extrapolated_to_items" in figures:
            line += (f"; EXTRAPOLATED (linear, not measured) to {figures['extrapolated_to_items']} items: "
                     f"~{figures['extrapolated_wall_s']:.0f} s, "
                     f"~{figures['extrapolated_rss_peak_mib']:.0f} MiB peak")  # fmt: skip
        print(line)
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=10_000, help="catalog items N (default 10,000)")
    parser.add_argument("--peers", choices=("all", "none", "loop"), default="all")
    parser.add_argument("--peer-items", type=int, default=None,
                        help="items for the loop peer (default min(N, 1000); N is then extrapolated)")  # fmt: skip
    parser.add_argument("--page-size", type=int, default=500, help="gallery items per page (default 500)")
    parser.add_argument("--workers", type=int, default=8, help="the gallery's fetch workers (default 8)")
    parser.add_argument("--results", type=int, default=96, help="distinct result PNGs served (default 96)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (printed)")
    parser.add_argument("--run-one", choices=("provider", "loop"), help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.items < 10 or args.results < 2 or args.workers < 1:
        parser.error("--items must be >= 10 (it also runs at N/10), --results >= 2 and --workers >= 1")
    if args.run_one:
        return child(args)
    peer_items = args.peer_items if args.peer_items is not None else min(args.items, 1000)
    if peer_items < 10:
        parser.error("--peer-items must be >= 10")

    files = ensure_images(IMAGE_CACHE, args.results)
    server = ImageServer(files).start()
    work = Path(tempfile.mkdtemp(prefix="aitryon-bench-gallery-"))
    plan = [("provider", args.items)] + ([("loop", peer_items)] if args.peers != "none" else [])
    runs: list[Run] = []
    summaries: dict[str, dict[str, Any]] = {}
    try:
        for scenario, count in plan:
            large = run_child(scenario, server, work, count, args)
            small = run_child(scenario, server, work, count // 10, args)
            runs += [large, small]
            summaries[scenario] = summary(large, small, args.items)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        server.stop()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    report(runs, summaries, args.items)
    result = summaries["provider"]
    result["peers"] = {name: figures for name, figures in summaries.items() if name != "provider"}
    print(json.dumps(result, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
