"""Catalog backfill data: catalog lines, chunks, the per-chunk journal and the manifest.

A catalog is JSONL, one item a line: ``sku``, ``person_image_url``, ``top_garment_url``, optional
``bottom_garment_url``, optional ``coarse_image_url`` (absent: the coarse stage runs first),
``gender``. Everything here reads and writes through Airflow's ObjectStoragePath, so a catalog and
its output may be local paths or object-storage URIs alike.

- The *journal* of a chunk records every submission the moment its task id is known, every task
  end and every saved image. A trigger rebuilt after a triggerer restart (or a retried task)
  replays it, so no item is lost and none is submitted twice.
- The *manifest* (``<output>/manifest.jsonl``) has one line per item: ``sku``, ``status``
  (``succeeded`` / ``failed``), the DashScope task ids, the saved image and, for failures, ``code``,
  ``message`` and whether a rerun should try again (``retryable``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow.sdk import ObjectStoragePath

from airflow_provider_aitryon import api
from airflow_provider_aitryon.errors import PERMANENT_CODES, DashScopeConfigError
from airflow_provider_aitryon.operators.storage import atomic_write, resolve_destination

STAGE_COARSE = "coarse"
STAGE_REFINE = "refine"
SUCCEEDED = "succeeded"
FAILED = "failed"
INVALID_LINE = "InvalidCatalogLine"


@dataclass(frozen=True)
class CatalogItem:
    sku: str
    person_image_url: str
    top_garment_url: str | None
    gender: str
    bottom_garment_url: str | None = None
    coarse_image_url: str | None = None

    @property
    def first_stage(self) -> str:
        return STAGE_REFINE if self.coarse_image_url else STAGE_COARSE

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def call(
        self, stage: str, *, coarse_image_url: str | None = None, coarse_model: str = api.MODEL_TRYON
    ) -> api.ApiCall:
        if stage == STAGE_COARSE:
            return api.tryon_call(
                person_image_url=self.person_image_url,
                top_garment_url=self.top_garment_url,
                bottom_garment_url=self.bottom_garment_url,
                model=coarse_model,
            )
        return api.refiner_call(
            person_image_url=self.person_image_url,
            top_garment_url=self.top_garment_url,
            bottom_garment_url=self.bottom_garment_url,
            coarse_image_url=coarse_image_url or self.coarse_image_url,
            gender=self.gender,
        )


@dataclass
class ManifestRow:
    sku: str
    status: str
    task_ids: dict[str, str] = field(default_factory=dict)
    image: str | None = None
    sha256: str | None = None
    code: str | None = None
    message: str | None = None
    retryable: bool = False
    t: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {})}


def parse_item(line_no: int, raw: Any) -> CatalogItem:
    """One catalog line → an item, or DashScopeConfigError naming the line, the field and the fix."""
    where = f"catalog line {line_no}"
    if not isinstance(raw, Mapping):
        raise DashScopeConfigError(
            f"{where} is not a JSON object; each line must be one object with sku and image URLs."
        )
    sku = raw.get("sku")
    if not isinstance(sku, str | int) or not str(sku).strip():
        raise DashScopeConfigError(f"{where} has no sku; give every line a non-empty sku.")
    where = f"{where} (sku {sku})"
    try:
        item = CatalogItem(
            sku=str(sku).strip(),
            person_image_url=str(api.require_url("person_image_url", raw.get("person_image_url"))),
            top_garment_url=api.require_url("top_garment_url", raw.get("top_garment_url"), required=False),
            bottom_garment_url=api.require_url("bottom_garment_url", raw.get("bottom_garment_url"), required=False),
            coarse_image_url=api.require_url("coarse_image_url", raw.get("coarse_image_url"), required=False),
            gender=api.require_choice("gender", raw.get("gender"), api.GENDERS),
        )
        # Build the item's first request once: every argument rule of the operators applies here too.
        item.call(item.first_stage)
        if item.first_stage == STAGE_COARSE:
            item.call(STAGE_REFINE, coarse_image_url="https://placeholder.invalid/coarse.png")
    except DashScopeConfigError as exc:
        raise DashScopeConfigError(f"{where}: {exc}") from None
    return item


def read_catalog(uri: str, *, conn_id: str | None = None) -> tuple[list[CatalogItem], list[ManifestRow]]:
    """Items of a catalog, and a failed manifest row for every line that cannot be an item."""
    path = _path(uri, conn_id)
    if not path.exists():
        raise DashScopeConfigError(
            f"catalog {uri} does not exist; pass the catalog JSONL path or URI as the catalog param."
        )
    items: list[CatalogItem] = []
    bad: list[ManifestRow] = []
    seen: set[str] = set()
    for line_no, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        try:
            raw = json.loads(text)
        except ValueError:
            bad.append(
                _bad_line(
                    f"line-{line_no}", f"catalog line {line_no} is not valid JSON; write one JSON object per line."
                )
            )
            continue
        try:
            item = parse_item(line_no, raw)
        except DashScopeConfigError as exc:
            sku = raw.get("sku") if isinstance(raw, Mapping) and raw.get("sku") else f"line-{line_no}"
            bad.append(_bad_line(str(sku), str(exc)))
            continue
        if item.sku in seen:
            bad.append(
                _bad_line(
                    f"{item.sku}@line-{line_no}", f"catalog line {line_no} repeats sku {item.sku}; skus must be unique."
                )
            )
            continue
        seen.add(item.sku)
        items.append(item)
    return items, bad


def _bad_line(sku: str, message: str) -> ManifestRow:
    return ManifestRow(sku=sku, status=FAILED, code=INVALID_LINE, message=message, retryable=False)


def chunk_key(items: Iterable[CatalogItem]) -> str:
    """Names a chunk by its skus, so a rerun with the same chunk finds the same journal."""
    return hashlib.sha256("\n".join(sorted(i.sku for i in items)).encode()).hexdigest()[:16]


def chunked(items: list[CatalogItem], size: int) -> Iterator[list[CatalogItem]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ------------------------------------------------------------------------------------ journal


class Journal:
    """Append-only record of one chunk's progress, written whole and atomically on each flush.

    Rewriting the file (instead of appending) works the same on local disks and object stores,
    where append does not exist; a chunk's journal stays small (a few hundred bytes an item).
    """

    def __init__(self, uri: str, *, conn_id: str | None = None) -> None:
        self.uri = uri
        self.path = _path(uri, conn_id)
        self.records: list[dict[str, Any]] = []
        if self.path.exists():
            self.records = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        self._written = len(self.records)

    @property
    def dirty(self) -> bool:
        return len(self.records) != self._written

    def add(self, event: str, sku: str, stage: str, **data: Any) -> None:
        self.records.append({"event": event, "sku": sku, "stage": stage, "t": time.time(), **data})

    def flush(self) -> None:
        if not self.dirty:
            return
        count = len(self.records)
        atomic_write("".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records[:count]).encode(), self.path)
        self._written = count

    def state(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Replay: sku → stage → the latest of each kind of record (submitted, finished, saved, failed)."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for record in self.records:
            stages = out.setdefault(record["sku"], {})
            entry = stages.setdefault(record["stage"], {})
            if record["event"] == "submitted":
                # A new submission supersedes whatever ended before it.
                entry.clear()
            entry[record["event"]] = record
        return out


def journal_uri(output: str, key: str) -> str:
    return f"{output.rstrip('/')}/journal/{key}.jsonl"


# ------------------------------------------------------------------------------------ manifest


def manifest_uri(output: str) -> str:
    return f"{output.rstrip('/')}/manifest.jsonl"


def parts_dir(output: str) -> str:
    return f"{output.rstrip('/')}/manifest.d"


def read_manifest(uri: str, *, conn_id: str | None = None) -> dict[str, dict[str, Any]]:
    path = _path(uri, conn_id)
    if not path.exists():
        return {}
    return _latest_rows(path.read_text().splitlines())


def _latest_rows(lines: Iterable[str]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for line in lines:
        if line.strip():
            row = json.loads(line)
            if row["sku"] not in rows or row.get("t", 0) >= rows[row["sku"]].get("t", 0):
                rows[row["sku"]] = row
    return rows


def needs_work(row: Mapping[str, Any] | None) -> bool:
    """A rerun skips items that succeeded or failed for good; it tries transient failures again."""
    return row is None or (row.get("status") != SUCCEEDED and bool(row.get("retryable", True)))


def write_rows(uri: str, rows: Iterable[ManifestRow | Mapping[str, Any]], *, conn_id: str | None = None) -> None:
    data = "".join(
        json.dumps(r.to_dict() if isinstance(r, ManifestRow) else dict(r), sort_keys=True) + "\n" for r in rows
    )
    atomic_write(data.encode(), _path(uri, conn_id))


def merge_manifest(output: str, *, conn_id: str | None = None) -> dict[str, dict[str, Any]]:
    """Fold this run's manifest parts into manifest.jsonl (latest row per sku wins), then drop them."""
    rows = read_manifest(manifest_uri(output), conn_id=conn_id)
    parts = _path(parts_dir(output), conn_id)
    part_files = sorted(p for p in parts.iterdir() if p.name.endswith(".jsonl")) if parts.exists() else []
    for part in part_files:
        for sku, row in _latest_rows(part.read_text().splitlines()).items():
            if sku not in rows or row.get("t", 0) >= rows[sku].get("t", 0):
                rows[sku] = row
    ordered: list[dict[str, Any]] = sorted(rows.values(), key=lambda r: str(r["sku"]))
    write_rows(manifest_uri(output), ordered, conn_id=conn_id)
    for part in part_files:  # only after manifest.jsonl holds their rows
        part.unlink()
    return rows


def is_permanent(code: str | None) -> bool:
    return code in PERMANENT_CODES or code == INVALID_LINE


def _path(uri: str, conn_id: str | None) -> ObjectStoragePath:
    path, _ = resolve_destination(uri, conn_id=conn_id, field_name="output")
    return path


# ------------------------------------------------------------------------------------ plan and rows


def plan_chunks(catalog: str, output: str, *, chunk_size: int = 200, conn_id: str | None = None) -> list[str]:
    """Write the chunk files of the items that still need work; return their URIs.

    Items already in the manifest as succeeded, or failed for good, are left out: a rerun over
    the same partition submits nothing for them. Lines that cannot be items are recorded as failed.
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise DashScopeConfigError(f"chunk_size must be a whole number of at least 1, got {chunk_size!r}; set it.")
    items, bad = read_catalog(catalog, conn_id=conn_id)
    done = read_manifest(manifest_uri(output), conn_id=conn_id)
    if bad := [row for row in bad if needs_work(done.get(row.sku))]:
        write_rows(f"{parts_dir(output)}/catalog-lines.jsonl", bad, conn_id=conn_id)
    todo = [item for item in items if needs_work(done.get(item.sku))]
    uris = []
    for chunk in chunked(todo, chunk_size):
        uri = f"{output.rstrip('/')}/chunks/{chunk_key(chunk)}.jsonl"
        data = "".join(json.dumps(item.to_dict(), sort_keys=True) + "\n" for item in chunk)
        atomic_write(data.encode(), _path(uri, conn_id))
        uris.append(uri)
    return uris


def read_chunk(uri: str, *, conn_id: str | None = None) -> list[CatalogItem]:
    return [CatalogItem(**json.loads(line)) for line in _path(uri, conn_id).read_text().splitlines() if line.strip()]


def rows_from_journal(items: Iterable[CatalogItem], journal: Journal) -> tuple[list[ManifestRow], list[str]]:
    """Manifest rows for the items the journal shows ended, and the skus it shows unfinished."""
    replay = journal.state()
    rows: list[ManifestRow] = []
    undone: list[str] = []
    for item in items:
        stages = replay.get(item.sku, {})
        task_ids = {s: e["submitted"]["task_id"] for s, e in stages.items() if "submitted" in e}
        row = _row(item.sku, stages, task_ids)
        if row is None:
            undone.append(item.sku)
        else:
            rows.append(row)
    return rows, undone


def _row(sku: str, stages: Mapping[str, Mapping[str, Any]], task_ids: dict[str, str]) -> ManifestRow | None:
    refine = stages.get(STAGE_REFINE, {})
    if "saved" in refine:
        saved = refine["saved"]
        return ManifestRow(sku, SUCCEEDED, task_ids, image=saved["uri"], sha256=saved.get("sha256"))
    for stage in (STAGE_REFINE, STAGE_COARSE):
        entry = stages.get(stage, {})
        if "failed" in entry:
            failed = entry["failed"]
            return ManifestRow(sku, FAILED, task_ids, code=failed.get("code"), message=failed.get("message"),
                               retryable=bool(failed.get("retryable")))  # fmt: skip
        finished = entry.get("finished")
        if finished and finished.get("status") != "SUCCEEDED":
            code = finished.get("code") or finished.get("status")
            return ManifestRow(sku, FAILED, task_ids, code=code, message=finished.get("message"),
                               retryable=not is_permanent(finished.get("code")))  # fmt: skip
    return None
