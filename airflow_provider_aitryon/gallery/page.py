"""One gallery page as self-contained HTML: inline CSS, thumbnails as ``data:`` URIs, no script.

The markup is stable so tests and tools can count it (`tests/browser.py`)::

    <section id="totals" data-items="N" data-succeeded=".." data-failed=".." data-undone="..">
    <nav class="pages">  links to every page, the current one with aria-current="page"
    <article class="item" data-sku=".." data-status="..">
        <img class="thumb" data-role="<label>" src="data:image/jpeg;base64,...">
        <div class="thumb missing" data-role="<label>">reason</div>

Every text and attribute is escaped; a URL is shown without its query string (`api.shown_url`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from html import escape
from typing import TYPE_CHECKING, Any

from airflow_provider_aitryon import api
from airflow_provider_aitryon.gallery.thumbnails import Missing, Shown, Thumb

if TYPE_CHECKING:
    from airflow_provider_aitryon.gallery import GalleryItem

# The statuses of the whole gallery carried as data attributes of #totals; others are shown as text.
COUNTED_STATUSES = ("succeeded", "failed", "undone")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

STYLE = """
:root { color-scheme: light; --ok: #1f7a3f; --bad: #b42318; --wait: #a15c07; --line: #d8dce3; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1d2433; background: #f3f5f8; }
header.top { padding: 16px 24px 8px; background: #fff; border-bottom: 1px solid var(--line); }
h1 { margin: 0 0 8px; font-size: 20px; font-weight: 600; }
#totals dl { display: flex; flex-wrap: wrap; gap: 6px 10px; margin: 0; }
#totals .figure { background: #f7f8fa; border: 1px solid var(--line); border-radius: 6px; padding: 4px 10px; }
#totals dt { font-size: 11px; text-transform: uppercase; letter-spacing: .04em; color: #5b6475; }
#totals dd { margin: 0; font-weight: 600; overflow-wrap: anywhere; }
nav.pages { display: flex; flex-wrap: wrap; gap: 4px; align-items: center; padding: 10px 24px;
            background: #fff; border-bottom: 1px solid var(--line); }
nav.pages a, nav.pages span { padding: 2px 9px; border-radius: 4px; text-decoration: none; color: #1d4ed8; }
nav.pages a[aria-current="page"] { background: #1d4ed8; color: #fff; font-weight: 600; }
nav.pages .range { color: #5b6475; margin-left: auto; padding: 0; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 14px; padding: 16px 24px; }
article.item { background: #fff; border: 1px solid var(--line); border-left: 5px solid #8a93a3; border-radius: 8px;
               padding: 10px 12px; min-width: 0; }
article.item[data-status="succeeded"] { border-left-color: var(--ok); }
article.item[data-status="failed"] { border-left-color: var(--bad); background: #fffafa; }
article.item[data-status="undone"] { border-left-color: var(--wait); background: #fffdf7; }
article.item h2 { display: flex; justify-content: space-between; gap: 8px; margin: 0 0 8px; font-size: 14px; }
article.item h2 .sku { overflow-wrap: anywhere; }
.status { flex: none; font-size: 11px; font-weight: 600; text-transform: uppercase; padding: 1px 7px;
          border-radius: 10px; background: #e6e8ec; color: #394150; }
.status-succeeded { background: #dcf3e4; color: var(--ok); }
.status-failed { background: #fde4e1; color: var(--bad); }
.status-undone { background: #fdf0d5; color: var(--wait); }
.thumbs { display: grid; grid-template-columns: repeat(auto-fill, minmax(76px, 1fr)); gap: 6px; }
figure { margin: 0; min-width: 0; }
figcaption { font-size: 11px; color: #5b6475; text-align: center; overflow-wrap: anywhere; }
.thumb { display: block; width: 100%; height: auto; aspect-ratio: 3 / 4; border: 1px solid var(--line);
         border-radius: 4px; }
img.thumb { object-fit: contain; background: #f7f8fa; }
div.thumb.missing { display: flex; align-items: center; justify-content: center; padding: 4px; font-size: 10px;
                    line-height: 1.2; text-align: center; color: #6b7280; border-style: dashed; border-color: #b8bec9;
                    background: repeating-linear-gradient(45deg, #fafafa 0 6px, #f1f2f4 6px 12px);
                    overflow: hidden; overflow-wrap: anywhere; }
.failure { margin: 8px 0 0; color: var(--bad); overflow-wrap: anywhere; }
.failure code { font-weight: 600; }
.meta { margin: 6px 0 0; font-size: 12px; color: #5b6475; overflow-wrap: anywhere; }
.empty { padding: 24px; color: #5b6475; }
"""


def render_page(
    *,
    title: str,
    totals: Mapping[str, Any],
    data_counts: Mapping[str, int],
    count: int,
    number: int,
    names: Sequence[str],
    first: int,
    items: Sequence[GalleryItem],
    shown: Mapping[str, Shown],
) -> str:
    """The HTML of one page.

    :param title: the gallery's title.
    :param totals: headline figures, rendered as ``key: value`` in order.
    :param data_counts: status -> items of the whole gallery, for the ``#totals`` data attributes.
    :param count: items in the whole gallery.
    :param number: this page's number, from 1.
    :param names: every page's file name, in order.
    :param first: the 1-based position of this page's first item in the gallery.
    :param items: this page's items.
    :param shown: reference -> thumbnail or placeholder, for every image of ``items``.
    """
    attrs = f' data-items="{count}"' + "".join(
        f' data-{status}="{int(data_counts[status])}"' for status in COUNTED_STATUSES if status in data_counts
    )
    figures = "".join(
        f'<div class="figure"><dt>{_text(str(key))}</dt><dd>{_text(_value(value))}</dd></div>'
        for key, value in totals.items()
    )
    nav = _nav(names, number, first, len(items), count)
    cards = "".join(_card(item, shown) for item in items) or '<p class="empty">No items on this page.</p>'
    page_title = title if len(names) == 1 else f"{title} (page {number} of {len(names)})"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # Nothing may be loaded from anywhere: the page is one file, readable offline and from any store.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">"
        f"<title>{_text(page_title)}</title><style>{STYLE}</style></head><body>"
        f'<header class="top"><h1>{_text(title)}</h1>'
        f'<section id="totals"{attrs}><dl>{figures}</dl></section></header>'
        f"{nav}<main>{cards}</main>{nav if len(items) > 8 else ''}</body></html>\n"
    )


def _nav(names: Sequence[str], number: int, first: int, on_page: int, count: int) -> str:
    links = []
    if number > 1:
        links.append(f'<a href="{_attr(names[number - 2])}" rel="prev">&larr; previous</a>')
    for index, name in enumerate(names, start=1):
        current = ' aria-current="page"' if index == number else ""
        links.append(f'<a href="{_attr(name)}"{current}>{index}</a>')
    if number < len(names):
        links.append(f'<a href="{_attr(names[number])}" rel="next">next &rarr;</a>')
    shown = f"items {first}&ndash;{first + on_page - 1} of {count}" if on_page else f"no items of {count}"
    return f'<nav class="pages" aria-label="pages">{"".join(links)}<span class="range">{shown}</span></nav>'


def _card(item: GalleryItem, shown: Mapping[str, Shown]) -> str:
    status = str(item.status)
    figures = []
    for label, ref in item.images.items():
        role = _attr(str(label))
        result: Shown = Missing("not available") if ref is None else shown.get(ref, Missing("not available"))
        where = "" if ref is None else f"{label}: {_shown_ref(ref)}"
        if isinstance(result, Thumb):
            picture = (
                f'<img class="thumb" data-role="{role}" src="{result.data_uri}" width="{result.width}" '
                f'height="{result.height}" alt="{role}" title="{_attr(where)}">'
            )
        else:
            tip = f"{where} ({result.reason})" if where else result.reason
            picture = f'<div class="thumb missing" data-role="{role}" title="{_attr(tip)}">{_text(result.reason)}</div>'
        figures.append(f"<figure>{picture}<figcaption>{_text(str(label))}</figcaption></figure>")
    failure = ""
    if item.code or item.message:
        code = f"<code>{_text(item.code)}</code> " if item.code else ""
        failure = f'<p class="failure">{code}{_text(_scrub_urls(item.message or ""))}</p>'
    meta = []
    if item.cost is not None:
        meta.append(f'cost <span class="cost">{_text(item.cost)}</span>')
    meta.extend(f"{_text(str(name))} <code>{_text(str(task))}</code>" for name, task in item.task_ids.items())
    meta_html = f'<p class="meta">{" · ".join(meta)}</p>' if meta else ""
    css_status = re.sub(r"[^a-z0-9-]", "-", status.lower())
    return (
        f'<article class="item" data-sku="{_attr(item.sku)}" data-status="{_attr(status)}">'
        f'<h2><span class="sku">{_text(item.sku)}</span>'
        f'<span class="status status-{css_status}">{_text(status)}</span></h2>'
        f'<div class="thumbs">{"".join(figures)}</div>{failure}{meta_html}</article>'
    )


def _value(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{key}: {_value(inner)}" for key, inner in value.items()) or "none"
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join(_value(inner) for inner in value) or "none"
    if value is None:
        return "none"
    return _scrub_urls(str(value))


def _shown_ref(ref: str) -> str:
    return api.shown_url(ref) if _SCHEME.match(ref) else ref.split("?", 1)[0]


def _scrub_urls(text: str) -> str:
    # A manifest URI or a failure message can quote a signed URL; its signature is a credential.
    return re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+", lambda m: api.shown_url(m.group(0)), text)


def _text(value: str) -> str:
    return escape(value, quote=False)


def _attr(value: str) -> str:
    return escape(value, quote=True)
