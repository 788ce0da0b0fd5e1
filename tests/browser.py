"""Open an HTML page in a real headless Chromium and report what a reviewer would see.

The system Chromium is used (Debian's ``chromium`` package), never a browser Playwright downloads:
``playwright install`` needs network this project's CI does not have. Without Chromium or the
``playwright`` package the browser tests skip, unless ``AITRYON_REQUIRE_BROWSER=1`` (CI) makes
that a failure (`require_browser`).

Nothing but ``file:`` and ``data:`` may be loaded: every other request is aborted and listed in
``external_requests``, so a page that is not self-contained shows up even offline.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

REQUIRE_ENV = "AITRYON_REQUIRE_BROWSER"
# Debian's flags for a browser that talks to nobody: no updates, no sync, no QUIC probes.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 900}
LOAD_TIMEOUT_MS = 60_000

# Run in the page after every image has settled: what the tests compare with the manifest.
_SUMMARY_JS = """() => {
  const thumbs = Array.from(document.querySelectorAll("img.thumb"));
  const items = Array.from(document.querySelectorAll("article.item"));
  const byStatus = {};
  for (const item of items) {
    const status = item.dataset.status;
    byStatus[status] = (byStatus[status] || 0) + 1;
  }
  const broken = thumbs.filter((img) => !(img.naturalWidth > 0)).map((img) => {
    const item = img.closest("article.item");
    return (item ? item.dataset.sku : "?") + "/" + (img.dataset.role || "?");
  });
  const totals = document.getElementById("totals");
  return {
    images: thumbs.length,
    broken_images: broken,
    missing: document.querySelectorAll("div.thumb.missing").length,
    items: items.length,
    skus: items.map((item) => item.dataset.sku),
    by_status: byStatus,
    totals: totals ? Object.assign({}, totals.dataset) : null,
    pages: Array.from(document.querySelectorAll("nav.pages:first-of-type a:not([rel])"))
      .map((a) => a.getAttribute("href")),
  };
}"""


def chromium_path() -> str | None:
    """The system Chromium on PATH (or ``AITRYON_CHROMIUM``), None when there is none."""
    return os.environ.get("AITRYON_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def browser_missing() -> str | None:
    """Why no browser test can run here, or None when Chromium and Playwright are both installed."""
    if chromium_path() is None:
        return "Chromium is not installed (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -c constraints.txt playwright)"
    return None


def require_browser() -> str:
    """The Chromium to use; skip the test without one, or fail it when ``AITRYON_REQUIRE_BROWSER=1``."""
    reason = browser_missing()
    if reason is not None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason}, and {REQUIRE_ENV}=1 requires the browser tests to run.")
        pytest.skip(f"{reason}; set {REQUIRE_ENV}=1 to make this a failure.")
    path = chromium_path()
    assert path is not None
    return path


def inspect_page(path_or_url: str | os.PathLike[str], *, screenshot: Path | None = None) -> dict[str, Any]:
    """Load a page in headless Chromium, wait for every image, and count what it shows.

    :param path_or_url: a local file path or a ``file://`` / other URL.
    :param screenshot: where to write a PNG of the 1280x900 viewport, if anywhere.
    :return: ``console_errors``, ``page_errors``, ``external_requests`` (anything not ``file:`` or
        ``data:``), ``images`` (``img.thumb`` count), ``broken_images`` (``sku/role`` of thumbnails
        with naturalWidth 0), ``missing`` (placeholders), ``items``, ``skus``, ``by_status``,
        ``totals`` (the ``data-*`` attributes of ``#totals``) and ``pages`` (the page links).
    """
    text = os.fspath(path_or_url)
    url = text if "://" in text else Path(text).resolve().as_uri()
    # The sync API refuses to run on a thread with a running event loop (async tests): use a fresh one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_inspect, url, screenshot).result()


def _inspect(url: str, screenshot: Path | None) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise RuntimeError("Chromium is not installed (apt-get install chromium).")
    console_errors: list[str] = []
    page_errors: list[str] = []
    external: list[str] = []
    with tempfile.TemporaryDirectory(prefix="aitryon-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,  # type: ignore[arg-type]
            offline=True,
        )
        try:

            def block(route: Any) -> None:
                external.append(route.request.url)
                route.abort()

            context.route("http*://**/*", block)
            page = context.pages[0] if context.pages else context.new_page()
            page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.goto(url, wait_until="load", timeout=LOAD_TIMEOUT_MS)
            page.wait_for_function(
                "() => Array.from(document.images).every((img) => img.complete)", timeout=LOAD_TIMEOUT_MS
            )
            summary: dict[str, Any] = page.evaluate(_SUMMARY_JS)
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=False)
        finally:
            context.close()
    return {"console_errors": console_errors, "page_errors": page_errors, "external_requests": external, **summary}
