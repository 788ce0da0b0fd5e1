"""Catalog backfill data: catalog lines, chunks, the registry's replay and the manifest.

The scheduler that carries a chunk through DashScope lives in `catalog.scheduler`.

A catalog is JSONL, one item a line: ``sku``, ``person_image_url``, ``top_garment_url``, optional
``bottom_garment_url``, optional ``coarse_image_url`` (absent: the coarse stage runs first),
``gender``. Everything here reads and writes through Airflow's ObjectStoragePath, so a catalog and
its output may be local paths or object-storage URIs alike.

- The partition's *registry* (``<output>/registry/items/``, see `airflow_provider_aitryon.registry`)
  has one entry per item and stage: the intent before each submit, the task id the moment it is
  known, every task end and the saved image. Whatever chunk, run or retry carries an item next
  replays its entry with `replay`, so no item is lost and none is paid for twice.
- The *manifest* (``<output>/manifest.jsonl``) has one line per item: ``sku``, ``status``
  (``succeeded`` / ``failed``), the DashScope task ids, the saved image (its file name is unique per
  sku), whether a task was ``adopted`` after a lost reply, what the item was ``charged`` for (the
  model of each successful task and the run that paid it) and, for failures, ``code``, ``message``
  and whether a rerun should try again (``retryable``).
- The manifest's *summary* (``<output>/summary.json``) holds the last run's spend: the estimate
  ``plan`` made before submitting anything, the limits it was checked against, the approval, the
  cost actually charged, the counts and the review gallery (``<output>/report.html``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from airflow.sdk import ObjectStoragePath

from airflow_provider_aitryon import api, lineage
from airflow_provider_aitryon.errors import PERMANENT_CODES, DashScopeConfigError
from airflow_provider_aitryon.models import Outcome, TaskStatus
from airflow_provider_aitryon.oss.uri import is_oss_uri
from airflow_provider_aitryon.registry import (
    Decision,
    Submission,
    SubmissionRegistry,
    decide,
    item_key,
    partition_registry,
    sku_file_stem,
)
from airflow_provider_aitryon.registry.lease import PartitionLease
from airflow_provider_aitryon.spend import SpendLimitExceeded, SpendLimits, SpendPlan
from airflow_provider_aitryon.storage import atomic_write, resolve_destination, writable_folder

log = logging.getLogger(__name__)

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
    def stages(self) -> tuple[str, ...]:
        return (STAGE_REFINE,) if self.coarse_image_url else (STAGE_COARSE, STAGE_REFINE)

    @property
    def first_stage(self) -> str:
        return self.stages[0]

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
    adopted: bool = False
    # model -> the run (lease holder) whose successful task of that model this item was charged for
    charged: dict[str, str] = field(default_factory=dict)
    t: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {}) and not (k == "adopted" and not v)}


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
            person_image_url=str(_image("person_image_url", raw)),
            top_garment_url=_image("top_garment_url", raw, required=False),
            bottom_garment_url=_image("bottom_garment_url", raw, required=False),
            coarse_image_url=_image("coarse_image_url", raw, required=False),
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
    lineage.report_hook_lineage(inputs=[path])
    for line_no, text in enumerate(_read_text(path).splitlines(), start=1):
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


# ------------------------------------------------------------------------------------ registry


def image_uri(output: str, sku: str) -> str:
    """Where an item's refined image is saved: one file per sku, never shared (see `sku_file_stem`)."""
    return f"{output.rstrip('/')}/images/{sku_file_stem(sku)}.png"


def lease_folder(output: str) -> str:
    return f"{output.rstrip('/')}/registry/lease"


def partition_lease(output: str, holder: str, *, conn_id: str | None = None) -> PartitionLease:
    """The lease a run holds on an output partition while it refines it (see `registry.lease`)."""
    return PartitionLease(lease_folder(output), holder, conn_id=conn_id)


def load_entries(
    registry: SubmissionRegistry, items: Iterable[CatalogItem], *, known: set[str] | None = None
) -> dict[str, dict[str, Submission]]:
    """sku → stage → the registry's entry, for the given items.

    :param known: the registry's keys, listed once by a caller reading many items (``plan``): only
        those are read, instead of one read per item and stage of a partition mostly never submitted.
    """
    out: dict[str, dict[str, Submission]] = {}
    for item in items:
        for stage in item.stages:
            key = item_key(item.sku, stage)
            if known is not None and key not in known:
                continue
            entry = registry.get(key)
            if entry is not None:
                out.setdefault(item.sku, {})[stage] = entry
    return out


# Where an item stands, as `replay` reads it from the registry; the batch trigger moves items
# between these (and its own in-flight phases). FAILED is also the manifest's status word.
QUEUED, LOOKUP, WAITING, DONE = "queued", "lookup", "waiting", "done"


@dataclass
class Progress:
    """Where one item stands: its phase, the stage it is at and, once ended, its manifest row.

    ``retry`` says how a run that picks up a failed item resumes it: ``waiting`` when a paid task
    still holds its image (only the download is repeated), ``queued`` when it must be submitted
    again, None when the failure is for good.
    """

    phase: str
    stage: str
    task_id: str | None = None
    coarse_url: str | None = None
    row: ManifestRow | None = None
    retry: str | None = None


def replay(item: CatalogItem, entries: Mapping[str, Submission], *, coarse_model: str = api.MODEL_TRYON) -> Progress:
    """Read an item's registry entries with the registry's rules: the one replay every path uses."""
    task_ids = {stage: e.task_id for stage, e in entries.items() if e.task_id}
    adopted = any(e.adopted for e in entries.values() if e.task_id)
    # DashScope charges successful tasks only: what the item cost, and which run paid for it.
    charged = {e.model: e.owner or "" for e in entries.values() if e.task_id and e.status == TaskStatus.SUCCEEDED.value}
    coarse_url = item.coarse_image_url
    for stage in item.stages:
        entry = entries.get(stage)
        fingerprint = item.call(stage, coarse_image_url=coarse_url, coarse_model=coarse_model).fingerprint()
        decision, _ = decide(entry, fingerprint)
        here = Progress(QUEUED, stage, None, coarse_url)
        if entry is not None and entry.fingerprint == fingerprint and not entry.expired and entry.failure:
            # This stage's last attempt failed outside the task (a refused submit, a failed save).
            failure = entry.failure
            retry = None
            if failure.get("retryable"):
                succeeded = entry.task_id and entry.status == TaskStatus.SUCCEEDED.value
                retry = WAITING if succeeded else QUEUED
            row = ManifestRow(item.sku, FAILED, task_ids, code=failure.get("code"), message=failure.get("message"),
                              retryable=retry is not None, adopted=adopted, charged=charged)  # fmt: skip
            return Progress(FAILED, stage, entry.task_id, coarse_url, row, retry)
        if decision is Decision.SUBMIT:
            return here
        assert entry is not None
        if decision is Decision.LOOKUP:
            return Progress(LOOKUP, stage, None, coarse_url)
        status = TaskStatus.parse(entry.status or TaskStatus.PENDING.value)
        if status.outcome is Outcome.FAILURE:
            permanent = is_permanent(entry.code)
            row = ManifestRow(item.sku, FAILED, task_ids, code=entry.code or status.value,
                              message=entry.message or f"the task ended {status.value}", retryable=not permanent,
                              adopted=adopted, charged=charged)  # fmt: skip
            return Progress(FAILED, stage, entry.task_id, coarse_url, row, None if permanent else QUEUED)
        if status is TaskStatus.SUCCEEDED and stage == STAGE_COARSE:
            coarse_url = entry.image_url
            continue
        if status is TaskStatus.SUCCEEDED and entry.saved_uri:
            row = ManifestRow(item.sku, SUCCEEDED, task_ids, image=entry.saved_uri, sha256=entry.saved_sha256,
                              adopted=adopted, charged=charged)  # fmt: skip
            return Progress(DONE, stage, entry.task_id, coarse_url, row)
        # Submitted and not seen ending, or ended well and not saved yet: query it (a fresh result
        # URL, then the download), never submit it again.
        return Progress(WAITING, stage, entry.task_id, coarse_url)
    raise AssertionError("unreachable: the refine stage always decides")  # pragma: no cover


# ------------------------------------------------------------------------------------ manifest


def manifest_uri(output: str) -> str:
    return f"{output.rstrip('/')}/manifest.jsonl"


def parts_dir(output: str) -> str:
    return f"{output.rstrip('/')}/manifest.d"


def read_manifest(uri: str, *, conn_id: str | None = None) -> dict[str, dict[str, Any]]:
    path = _path(uri, conn_id)
    if not path.exists():
        return {}
    return _latest_rows(_read_text(path).splitlines())


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
        for sku, row in _latest_rows(_read_text(part).splitlines()).items():
            if sku not in rows or row.get("t", 0) >= rows[sku].get("t", 0):
                rows[sku] = row
    ordered: list[dict[str, Any]] = sorted(rows.values(), key=lambda r: str(r["sku"]))
    write_rows(manifest_uri(output), ordered, conn_id=conn_id)
    lineage.report_hook_lineage(inputs=[parts] if part_files else [], outputs=[manifest_uri(output)])
    for part in part_files:  # only after manifest.jsonl holds their rows
        part.unlink()
    return rows


def _image(field_name: str, raw: Mapping[str, Any], *, required: bool = True) -> str | None:
    # http(s) URLs and private oss:// objects (signed at submit time); no local files in a catalog.
    return api.require_image(field_name, raw.get(field_name), required=required, local=False)


def has_oss_inputs(items: Iterable[CatalogItem]) -> bool:
    """Whether any item names an ``oss://`` image, so the run needs its OSS connection."""
    return any(
        is_oss_uri(url)
        for item in items
        for url in (item.person_image_url, item.top_garment_url, item.bottom_garment_url, item.coarse_image_url)
    )


def is_permanent(code: str | None) -> bool:
    return code in PERMANENT_CODES or code == INVALID_LINE


def _path(uri: str, conn_id: str | None) -> ObjectStoragePath:
    path, _ = resolve_destination(uri, conn_id=conn_id, field_name="output")
    return path


def _read_text(path: ObjectStoragePath) -> str:
    """The file's text, read with the file system's own ``open``: ``ObjectStoragePath.open`` reports
    every file read to hook lineage (and ``read_text`` uses it on some versions), while the catalog
    reports its datasets per partition itself (see `airflow_provider_aitryon.lineage`)."""
    with path.fs.open(path.path, "rb") as handle:
        return handle.read().decode("utf-8")


# ------------------------------------------------------------------------------------ plan and rows


@dataclass(frozen=True)
class PartitionPlan:
    """What ``plan`` decided for a partition's run: the chunk files to refine and what they will cost.

    :param chunks: URIs of the chunk files of the items that still need work.
    :param spend: the estimate, made before anything is submitted, and the run's limits.
    :param summary: URI of the manifest's summary, where the estimate is written too.
    """

    chunks: list[str]
    spend: SpendPlan
    summary: str

    def to_dict(self) -> dict[str, Any]:
        """For XCom: ``chunks`` (what ``refine_chunk`` is mapped over) and ``spend`` (what the approval shows)."""
        return {"chunks": list(self.chunks), "spend": self.spend.to_dict(self.summary)}


def plan_partition(
    catalog: str,
    output: str,
    *,
    chunk_size: int = 200,
    conn_id: str | None = None,
    holder: str | None = None,
    holder_alive: Callable[[str], bool] | None = None,
    limits: SpendLimits | None = None,
    coarse_model: str = api.MODEL_TRYON,
) -> PartitionPlan:
    """Price the items that still need work, check the spending limit, then write their chunk files.

    Items already in the manifest as succeeded, or failed for good, are left out: a rerun over
    the same partition submits nothing for them. Lines that cannot be items are recorded as failed.
    The estimate counts only the images this run may pay for: a stage whose task is already paid
    for (in flight, or succeeded and not yet saved) is reused, not priced.

    :param catalog: the partition's catalog JSONL (path or URI).
    :param output: the partition's output folder (path or URI).
    :param chunk_size: items per chunk file.
    :param conn_id: connection of the object store holding catalog and output.
    :param holder: the run asking (``<dag_id>/<run_id>``): it takes the partition's lease first, so
        a second run over the same output at the same time fails here, naming the first.
    :param holder_alive: whether the run holding the lease still runs (see `PartitionLease.acquire`).
    :param limits: ``max_cost`` and ``approve_above`` of this run.
    :param coarse_model: the model ``refine_chunk`` uses for items without a coarse image.
    :raises SpendLimitExceeded: the estimate is above ``max_cost``; no chunk is written, the lease
        is given back.
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise DashScopeConfigError(f"chunk_size must be a whole number of at least 1, got {chunk_size!r}; set it.")
    output = writable_folder(output, conn_id=conn_id, field_name="output")
    lease = partition_lease(output, holder, conn_id=conn_id) if holder is not None else None
    if lease is not None:
        lease.acquire(holder_alive)
    try:
        return _plan(catalog, output, chunk_size, conn_id, holder, limits or SpendLimits(), coarse_model)
    except SpendLimitExceeded as exc:
        write_summary(output, {"status": "over_limit", "reason": str(exc)}, conn_id=conn_id)
        if lease is not None:
            lease.release()
        raise


def _plan(
    catalog: str,
    output: str,
    chunk_size: int,
    conn_id: str | None,
    holder: str | None,
    limits: SpendLimits,
    coarse_model: str,
) -> PartitionPlan:
    items, bad = read_catalog(catalog, conn_id=conn_id)
    done = read_manifest(manifest_uri(output), conn_id=conn_id)
    todo = [item for item in items if needs_work(done.get(item.sku))]
    images, paying, reusing = price_work(todo, partition_registry(output, conn_id=conn_id), coarse_model=coarse_model)
    finished = sum(done.get(item.sku, {}).get("status") == SUCCEEDED for item in items)
    spend = SpendPlan(
        items=len(items) + len(bad), to_submit=paying, reused=reusing + finished, images=images, limits=limits
    )
    log.info("Spend plan of %s: %s (max_cost %s, approve_above %s)", output, spend.text, _cny(limits.max_cost),
             _cny(limits.approve_above))  # fmt: skip
    summary = summary_uri(output)
    write_summary(output, {"run": holder, "status": "planned", "plan": spend.to_dict(summary)}, conn_id=conn_id,
                  fresh=True)  # fmt: skip
    spend.check_limit()
    if bad := [row for row in bad if needs_work(done.get(row.sku))]:
        write_rows(f"{parts_dir(output)}/catalog-lines.jsonl", bad, conn_id=conn_id)
    uris = []
    for chunk in chunked(todo, chunk_size):
        uri = f"{output.rstrip('/')}/chunks/{chunk_key(chunk)}.jsonl"
        data = "".join(json.dumps(item.to_dict(), sort_keys=True) + "\n" for item in chunk)
        atomic_write(data.encode(), _path(uri, conn_id))
        uris.append(uri)
    # Per partition, not per chunk or item (see `airflow_provider_aitryon.lineage`).
    written = ([f"{output.rstrip('/')}/chunks"] if uris else []) + ([parts_dir(output)] if bad else [])
    lineage.report_hook_lineage(outputs=[*written, summary])
    return PartitionPlan(uris, spend, summary)


def plan_chunks(
    catalog: str,
    output: str,
    *,
    chunk_size: int = 200,
    conn_id: str | None = None,
    holder: str | None = None,
    holder_alive: Callable[[str], bool] | None = None,
) -> list[str]:
    """The chunk files of `plan_partition`, without spending limits (kept for earlier callers).

    :param catalog: the partition's catalog JSONL (path or URI).
    :param output: the partition's output folder (path or URI).
    :param chunk_size: items per chunk file.
    :param conn_id: connection of the object store holding catalog and output.
    :param holder: the run asking, which takes the partition's lease (see `plan_partition`).
    :param holder_alive: whether the run holding the lease still runs.
    """
    return plan_partition(
        catalog, output, chunk_size=chunk_size, conn_id=conn_id, holder=holder, holder_alive=holder_alive
    ).chunks


def price_work(
    todo: Iterable[CatalogItem], registry: SubmissionRegistry, *, coarse_model: str = api.MODEL_TRYON
) -> tuple[dict[str, int], int, int]:
    """Images by model a run may pay for, how many items it will submit anything for, and how many
    items it finishes without paying (a paid task in flight, or succeeded and not yet saved).

    Only the stages of ``todo`` that the registry has no reusable task for count. The registry is
    listed once and only its entries are read: a partition never run before costs one listing, not
    a read per item.
    """
    todo = list(todo)
    entries = load_entries(registry, todo, known=set(registry.store.list_keys()))
    images = {coarse_model: 0, api.MODEL_REFINER: 0}
    paying = reusing = 0
    for item in todo:
        progress = replay(item, entries.get(item.sku, {}), coarse_model=coarse_model)
        stages = stages_to_pay(item, progress)
        paying += bool(stages)
        reusing += not stages and (progress.phase in (WAITING, DONE) or progress.retry == WAITING)
        for stage in stages:
            images[coarse_model if stage == STAGE_COARSE else api.MODEL_REFINER] += 1
    return images, paying, reusing


def stages_to_pay(item: CatalogItem, progress: Progress) -> tuple[str, ...]:
    """The stages of an item a run may submit (and so pay for), from where `replay` left it.

    A stage with a task in flight, or succeeded and not yet saved, is collected, not paid again; a
    lost submit reply (LOOKUP) is counted, since its task may not be found: the estimate is a ceiling.
    """
    if progress.phase == DONE or (progress.phase == FAILED and progress.retry is None):
        return ()
    at = item.stages.index(progress.stage)
    if progress.phase == WAITING or (progress.phase == FAILED and progress.retry == WAITING):
        at += 1  # this stage's task is paid for: only the later stages are
    return item.stages[at:]


def summary_uri(output: str) -> str:
    """The manifest's summary: the last run's spend, counts and review gallery (JSON)."""
    return f"{output.rstrip('/')}/summary.json"


def read_summary(output: str, *, conn_id: str | None = None) -> dict[str, Any]:
    path = _path(summary_uri(output), conn_id)
    if not path.exists():
        return {}
    try:
        value = json.loads(_read_text(path))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def write_summary(output: str, values: Mapping[str, Any], *, conn_id: str | None = None, fresh: bool = False) -> dict:
    """Update the manifest's summary with ``values`` (a new run starts it ``fresh``)."""
    summary = {} if fresh else read_summary(output, conn_id=conn_id)
    summary.update(values)
    atomic_write((json.dumps(summary, indent=2, sort_keys=True) + "\n").encode(), _path(summary_uri(output), conn_id))
    return summary


def _cny(value: Decimal | None) -> str:
    return "none" if value is None else f"CNY {value:,.2f}"


def read_chunk(uri: str, *, conn_id: str | None = None) -> list[CatalogItem]:
    return [CatalogItem(**json.loads(line)) for line in _read_text(_path(uri, conn_id)).splitlines() if line.strip()]


def rows_from_registry(
    items: Iterable[CatalogItem], registry: SubmissionRegistry, *, coarse_model: str = api.MODEL_TRYON
) -> tuple[list[ManifestRow], list[str]]:
    """Manifest rows for the items the registry shows ended, and the skus it shows unfinished."""
    items = list(items)
    entries = load_entries(registry, items)
    rows: list[ManifestRow] = []
    undone: list[str] = []
    for item in items:
        progress = replay(item, entries.get(item.sku, {}), coarse_model=coarse_model)
        if progress.row is None:
            undone.append(item.sku)
        else:
            rows.append(progress.row)
    return rows, undone


def airflow_run_alive(ti: Any) -> Callable[[str], bool]:
    """``holder_alive`` for a task: asks Airflow whether the run ``<dag_id>/<run_id>`` is queued or running."""

    def alive(holder: str) -> bool:
        dag_id, _, run_id = holder.partition("/")
        state = ti.get_dagrun_state(dag_id=dag_id, run_id=run_id)
        return str(getattr(state, "value", state)).lower() in ("queued", "running")

    return alive
