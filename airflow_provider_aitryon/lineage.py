"""OpenLineage for the provider: input images, saved copies and catalog partitions as datasets.

The one place that names what the operators read and write the OpenLineage way. The operators
only say which URLs and URIs they used and which DashScope task they ran; this module turns that
into datasets and facets, so every operator names the same thing the same way and an image's
lineage joins across tasks: person and garment images → the try-on task → its result URL → the
refiner (its ``coarse_image_url``) → the refined result URL → the saved, durable copy.

The openlineage provider stays optional. Naming (`url_dataset`, `storage_dataset`) is plain
Python; everything that builds OpenLineage objects imports the provider inside the function (as
the official providers do) and returns None when it is not installed.

Names follow the OpenLineage naming spec (namespace = ``scheme://authority``, name = the path)
and Airflow's own asset converters, so the datasets join with what other providers emit:

* an http(s) image URL → namespace ``https://host[:port]``, name = its path. Never the query
  string (a signed OSS URL's signature reads the object until it expires), the fragment or any
  user info: a lineage backend is read by many more people than the DAG's connection;
* a local path or ``file:///path`` → namespace ``file``, name = the absolute path (as the
  common.io provider's ``file`` asset converter names it); ``file://host/path`` → ``file://host``;
* ``s3://bucket/key`` (also ``s3a``, ``s3n``) → ``s3://bucket`` and ``key``; ``gs://`` and
  ``gcs://`` → ``gs://bucket``; any other object store → ``scheme://bucket`` and the key (what
  ObjectStoragePath calls namespace and key). A connection id in the URI
  (``s3://aws_conn@bucket/key``) is not part of the name.

The catalog backfill reports per partition, never per item: the catalog file, the partition's
``chunks/`` folder, its ``images/`` folder, its ``manifest.d/`` parts and ``manifest.jsonl``.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage

    from airflow_provider_aitryon.api import ApiCall

log = logging.getLogger(__name__)

# Object stores whose OpenLineage namespace is another scheme's (the spec's, and Airflow's converters').
_SCHEME_ALIASES = {"s3a": "s3", "s3n": "s3", "gcs": "gs"}
_DEFAULT_PORTS = {"http": 80, "https": 443}

# Facet keys: the standard one for "the job in the external system", and this provider's own.
EXTERNAL_QUERY_FACET = "externalQuery"
TASK_FACET = "dashscopeTask"
CHUNK_FACET = "dashscopeCatalogChunk"


class DatasetName(NamedTuple):
    """An OpenLineage dataset identity: the datasource (namespace) and the dataset in it (name)."""

    namespace: str
    name: str


# ------------------------------------------------------------------------------------ naming


def url_dataset(url: object) -> DatasetName | None:
    """The dataset an http(s) URL names, without query string, fragment or user info; else None."""
    if not isinstance(url, str) or not url.strip():
        return None
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        return None
    authority = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    return DatasetName(f"{scheme}://{authority}", parts.path or "/")


def storage_dataset(target: object) -> DatasetName | None:
    """The dataset a local path, ``file://`` URI or object storage URI (or ObjectStoragePath) names."""
    text = _storage_text(target)
    if text is None:
        return None
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if len(scheme) <= 1:  # no scheme, or a Windows drive letter: a local path
        path = os.path.abspath(os.path.expanduser(text))
        return DatasetName("file", _clean_path(path))
    # The authority is the bucket (or host); a connection id before "@" is no part of the name.
    authority = parts.netloc.rsplit("@", 1)[-1]
    if scheme == "file":
        if authority in ("", "localhost"):
            return DatasetName("file", _clean_path(parts.path or "/"))
        return DatasetName(f"file://{authority}", _clean_path(parts.path or "/"))
    if not authority:
        return None
    key = parts.path.strip("/")
    return DatasetName(f"{_SCHEME_ALIASES.get(scheme, scheme)}://{authority}", key or "/")


def storage_child(base: object, *names: str) -> str | None:
    """``base`` joined with ``names`` as a string path or URI (a catalog partition's folders)."""
    text = _storage_text(base)
    if text is None:
        return None
    return "/".join([text.rstrip("/"), *(n.strip("/") for n in names)])


def asset_uri(target: object) -> str | None:
    """An Airflow asset URI for a path or URI: local paths become ``file://`` URIs, no connection id."""
    name = storage_dataset(target)
    if name is None:
        return None
    if name.namespace == "file":
        return f"file://{name.name}"
    if name.name == "/":
        return f"{name.namespace}/"
    return f"{name.namespace}/{name.name.lstrip('/')}"


def call_image_urls(call: ApiCall | None) -> list[str]:
    """The image URLs a submit request sends (every ``*_url`` of its ``input``), in request order."""
    inputs = ((call.body or {}).get("input") if call is not None else None) or {}
    if not isinstance(inputs, Mapping):
        return []
    return [v for k, v in inputs.items() if isinstance(k, str) and k.endswith("_url") and isinstance(v, str) and v]


def _storage_text(target: object) -> str | None:
    if target is None:
        return None
    if isinstance(target, os.PathLike):
        text = os.fspath(target)
    elif isinstance(target, str):
        text = target
    else:
        text = str(target)  # ObjectStoragePath and friends print as their URI
    if not isinstance(text, str) or not text.strip():
        return None
    return text.strip()


def _clean_path(path: str) -> str:
    cleaned = posixpath.normpath(path.replace(os.sep, "/")) if path else "/"
    return cleaned if cleaned.startswith("/") else f"/{cleaned}"


# ------------------------------------------------------------------------------------ what ran


@dataclass(frozen=True)
class Output:
    """An output dataset and what the task knows about what it wrote there."""

    dataset: DatasetName
    size: int | None = None  # bytes written
    file_count: int | None = None
    row_count: int | None = None
    version: str | None = None  # e.g. the sha256 of the bytes written


@dataclass(frozen=True)
class DashScopeTask:
    """The DashScope task a submit operator ran, for the run facets. Never holds the API key."""

    task_id: str
    model: str | None = None
    request_id: str | None = None
    status: str | None = None
    adopted: bool = False
    service_url: str | None = None  # the connection's base URL: the externalQuery facet's source


@dataclass(frozen=True)
class CatalogChunk:
    """What one catalog chunk's task instance carried, for the run facets."""

    chunk: str
    items: int | None = None
    succeeded: int | None = None
    failed: int | None = None
    undone: int | None = None
    adopted: int | None = None


# ------------------------------------------------------------------------------------ OpenLineage


def openlineage_available() -> bool:
    """Whether the openlineage provider (and so the OpenLineage client) can be imported."""
    try:
        from airflow.providers.openlineage.extractors import OperatorLineage  # noqa: F401
    except ImportError:
        return False
    return True


def operator_lineage(
    *,
    inputs: Iterable[DatasetName | None] = (),
    outputs: Iterable[Output | DatasetName | None] = (),
    task: DashScopeTask | None = None,
    chunk: CatalogChunk | None = None,
    extra_outputs: Iterable[Any] = (),
) -> OperatorLineage | None:
    """The OperatorLineage for these datasets and run facts; None without the openlineage provider.

    Inputs and outputs are de-duplicated (a garment given twice is one input). ``extra_outputs``
    are OpenLineage datasets built elsewhere (an operator's Asset outlets), kept unless they
    repeat an output.
    """
    try:
        from airflow.providers.common.compat.openlineage.facet import (
            InputDataset,
            OutputDataset,
            OutputStatisticsOutputDatasetFacet,
        )
        from airflow.providers.openlineage.extractors import OperatorLineage
    except ImportError:
        return None

    seen: set[DatasetName] = set()
    ol_inputs = []
    for name in inputs:
        if name is not None and name not in seen:
            seen.add(name)
            ol_inputs.append(InputDataset(namespace=name.namespace, name=name.name))

    seen = set()
    ol_outputs = []
    for item in outputs:
        out = Output(item) if isinstance(item, DatasetName) else item
        if out is None or out.dataset in seen:
            continue
        seen.add(out.dataset)
        facets: dict[str, Any] = {}
        if out.version is not None:
            facets["version"] = _dataset_version_facet(out.version)
        output_facets: dict[str, Any] = {}
        if (out.size, out.file_count, out.row_count) != (None, None, None):
            output_facets["outputStatistics"] = OutputStatisticsOutputDatasetFacet(
                rowCount=out.row_count, size=out.size, fileCount=out.file_count
            )
        ol_outputs.append(
            OutputDataset(
                namespace=out.dataset.namespace,
                name=out.dataset.name,
                facets={k: v for k, v in facets.items() if v is not None},
                outputFacets=output_facets,
            )
        )
    for dataset in extra_outputs:
        key = DatasetName(getattr(dataset, "namespace", ""), getattr(dataset, "name", ""))
        if dataset is not None and key not in seen:
            seen.add(key)
            ol_outputs.append(dataset)

    run_facets: dict[str, Any] = {}
    if task is not None:
        run_facets.update(_task_facets(task))
    if chunk is not None:
        run_facets[CHUNK_FACET] = _facet_classes().chunk(
            chunk=chunk.chunk,
            items=chunk.items,
            succeeded=chunk.succeeded,
            failed=chunk.failed,
            undone=chunk.undone,
            adopted=chunk.adopted,
        )
    return OperatorLineage(inputs=ol_inputs, outputs=ol_outputs, run_facets=run_facets)


def asset_datasets(assets: Iterable[Any]) -> list[Any]:
    """OpenLineage datasets for Airflow Assets (e.g. an operator's outlets), as the listener converts them.

    The listener adds an operator's outlets only when its own facets name no dataset; an operator
    that names its outputs passes its Asset outlets through here so they are not lost.
    """
    try:
        from airflow.providers.common.compat.openlineage.utils.utils import translate_airflow_asset
        from airflow.sdk import Asset
    except ImportError:
        return []
    datasets = []
    for asset in assets or ():
        if isinstance(asset, Asset):
            try:
                dataset = translate_airflow_asset(asset, None)
            except Exception:  # lineage must never fail a task
                log.debug("Could not convert asset %s for OpenLineage.", asset, exc_info=True)
                continue
            if dataset is not None:
                datasets.append(dataset)
    return datasets


def _task_facets(task: DashScopeTask) -> dict[str, Any]:
    from airflow.providers.common.compat.openlineage.facet import ExternalQueryRunFacet

    service = url_dataset(task.service_url) if task.service_url else None
    return {
        EXTERNAL_QUERY_FACET: ExternalQueryRunFacet(
            externalQueryId=task.task_id, source=service.namespace if service else "dashscope"
        ),
        TASK_FACET: _facet_classes().task(
            taskId=task.task_id,
            model=task.model,
            requestId=task.request_id,
            taskStatus=task.status,
            adopted=task.adopted,
        ),
    }


def _dataset_version_facet(version: str) -> Any:
    try:
        from openlineage.client.generated.dataset_version_dataset import DatasetVersionDatasetFacet
    except ImportError:
        return None
    return DatasetVersionDatasetFacet(datasetVersion=version)


@dataclass(frozen=True)
class _FacetClasses:
    task: Any
    chunk: Any


@cache
def _facet_classes() -> _FacetClasses:
    """This provider's run facets, defined on first use: they subclass the optional client's RunFacet."""
    import attr
    from airflow.providers.common.compat.openlineage.facet import RunFacet

    @attr.define
    class DashScopeTaskRunFacet(RunFacet):  # type: ignore[misc,valid-type]
        """The DashScope task this Airflow task ran: its id, model, request id and last status."""

        taskId: str
        model: str | None = attr.field(default=None)
        requestId: str | None = attr.field(default=None)
        taskStatus: str | None = attr.field(default=None)
        adopted: bool = attr.field(default=False)

    @attr.define
    class DashScopeCatalogChunkRunFacet(RunFacet):  # type: ignore[misc,valid-type]
        """One chunk of a catalog backfill: its name and how its items ended."""

        chunk: str
        items: int | None = attr.field(default=None)
        succeeded: int | None = attr.field(default=None)
        failed: int | None = attr.field(default=None)
        undone: int | None = attr.field(default=None)
        adopted: int | None = attr.field(default=None)

    return _FacetClasses(task=DashScopeTaskRunFacet, chunk=DashScopeCatalogChunkRunFacet)


# ------------------------------------------------------------------------------------ hook lineage

# One context for everything the library reports, so the same dataset reported twice is one entry.
_LIBRARY_CONTEXT = object()


def report_hook_lineage(*, inputs: Iterable[object] = (), outputs: Iterable[object] = ()) -> None:
    """Report paths or URIs read and written to Airflow's hook lineage collector.

    What a ``@task`` that calls this library (``plan_chunks``, ``merge_manifest``, ``save_image``)
    read and wrote reaches OpenLineage this way: the openlineage provider turns the collected
    assets into the task's datasets when the operator names none itself. Without a lineage reader
    (no openlineage provider) Airflow's collector is a no-op. Never raises.
    """
    try:
        try:  # the common.compat provider papers over the collector's moves between Airflow versions
            from airflow.providers.common.compat.lineage.hook import get_hook_lineage_collector
        except ImportError:
            from airflow.sdk.lineage import get_hook_lineage_collector

        collector = get_hook_lineage_collector()
        for method, targets in ((collector.add_input_asset, inputs), (collector.add_output_asset, outputs)):
            for target in targets:
                if (uri := asset_uri(target)) is not None:
                    method(context=_LIBRARY_CONTEXT, uri=uri)  # type: ignore[arg-type]
    except Exception:  # lineage is a courtesy; the data must not fail because of it
        log.debug("Could not record hook lineage.", exc_info=True)


# ------------------------------------------------------------------------------------ per role


def submit_lineage(
    call: ApiCall | None, *, task: DashScopeTask | None = None, result_url: str | None = None
) -> OperatorLineage | None:
    """A submit operator's lineage: its input images, the result image URL (once known), the task."""
    return operator_lineage(
        inputs=[url_dataset(url) for url in call_image_urls(call)],
        outputs=[url_dataset(result_url)],
        task=task,
    )


def save_lineage(
    source: object, saved: Mapping[str, Any] | None, *, outlets: Iterable[Any] = ()
) -> OperatorLineage | None:
    """The save operator's lineage: the result URL it read, the durable copy it wrote, its Asset outlets."""
    if isinstance(source, Mapping):  # the sensor's result dict
        source = source.get("image_url")
    if saved:
        source = saved.get("source_url") or source
    output = None
    if saved and (written := storage_dataset(saved.get("uri"))) is not None:
        output = Output(written, size=_int(saved.get("bytes")), file_count=1, version=saved.get("sha256") or None)
    return operator_lineage(inputs=[url_dataset(source)], outputs=[output], extra_outputs=asset_datasets(outlets))


def catalog_folders(output: object) -> dict[str, str | None]:
    """A catalog partition's datasets, per partition: its chunks, images, manifest parts and manifest."""
    return {
        "chunks": storage_child(output, "chunks"),
        "images": storage_child(output, "images"),
        "parts": storage_child(output, "manifest.d"),
        "manifest": storage_child(output, "manifest.jsonl"),
    }


def chunk_lineage(output: object, chunk_key: str, counts: Mapping[str, Any] | None = None) -> OperatorLineage | None:
    """A catalog chunk's lineage: the partition's chunks in, its images and manifest parts out.

    :param counts: what the chunk's task returned (``items``, ``succeeded``, ``failed``, ...), once it has.
    """
    folders = catalog_folders(output)
    counts = counts or {}
    succeeded, failed = _int(counts.get("succeeded")), _int(counts.get("failed"))
    images = storage_dataset(folders["images"])
    parts = storage_dataset(folders["parts"])
    chunk = CatalogChunk(
        chunk=chunk_key,
        items=_int(counts.get("items")),
        succeeded=succeeded,
        failed=failed,
        undone=_int(counts.get("undone")),
        adopted=_int(counts.get("adopted")),
    )
    return operator_lineage(
        inputs=[storage_dataset(folders["chunks"])],
        outputs=[
            Output(images, file_count=succeeded) if images else None,
            # One manifest row per item that ended, succeeded or failed.
            Output(parts, row_count=None if succeeded is None or failed is None else succeeded + failed)
            if parts
            else None,
        ],
        chunk=chunk,
    )


def _int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)
