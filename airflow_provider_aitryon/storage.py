"""Storage: destinations, atomic writes and saving a try-on result before DashScope deletes it.

DashScope keeps a result ``image_url`` for 24 hours after the task ends; after that the URL answers
403/404 and the paid image is gone. ``save_image`` (used by ``SaveTryOnResultOperator``, the
catalog's chunks and anything else that keeps a result) downloads the result and writes it to a
local path, a ``file://`` URI or any Airflow ``ObjectStoragePath`` URI (``s3://``, ``gs://``, ...
when the matching provider is installed), so local and remote storage share one code path. The
registry, the catalog and the contact sheet write through ``atomic_write`` too.

Guarantees:

* It downloads through the provider's one downloader (`downloads`): http(s) only, also after a
  redirect; the body streamed under a byte cap (a runaway or hostile server cannot fill the disk)
  and one deadline for the whole download, headers included.
* The content is accepted only if Pillow can decode it as an image; the Content-Type header and
  the file name are not trusted (proxies answer HTML with ``200 OK``). Its size is read from the
  header first: an image over ``MAX_RESULT_SIDE`` px a side is refused without being decoded.
* The file appears at its final name complete or not at all: see ``atomic_write``.
* Transient failures (5xx, 408, 429, dropped or stalled connections, a body cut short) are retried
  with backoff; an expired URL (403/404/410) fails at once, since no retry can bring it back.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any
from urllib.parse import urlsplit

from airflow.sdk import ObjectStoragePath
from PIL import Image, UnidentifiedImageError
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from airflow_provider_aitryon import api, downloads, lineage
from airflow_provider_aitryon.downloads import DownloadBounds, DownloadError, is_transient_status
from airflow_provider_aitryon.errors import DashScopeAPIError, DashScopeConfigError
from airflow_provider_aitryon.failures import airflow_errors
from airflow_provider_aitryon.http_client import Reply
from airflow_provider_aitryon.retry import backoff_delay, is_retryable

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
# Try-on results keep the person image's size, at most 4096 px a side; twice that still passes.
MAX_RESULT_SIDE = 8192
# (connect, read): the read timeout applies to each socket read, so a stalled server is caught
# even when it sent the headers promptly.
DEFAULT_TIMEOUT: tuple[float, float] = (10.0, 60.0)
# A server that drips a byte every few seconds never trips the read timeout; this bounds one attempt.
DEFAULT_MAX_SECONDS = 600.0
DEFAULT_ATTEMPTS = 4
DEFAULT_BACKOFF = 1.0
BACKOFF_CAP = 30.0
RETRY_AFTER_CAP = 120.0
CHUNK_SIZE = 64 * 1024
# Small results stay in memory; bigger ones spill to the local temp dir, never to the destination.
SPOOL_IN_MEMORY = 8 * 1024 * 1024

DOWNLOAD = "result download"
# OSS answers 403 AccessDenied ("Request has expired") for a signed URL past its lifetime,
# 404 once the object is deleted; 410 is the generic "gone".
EXPIRED_STATUSES = frozenset({403, 404, 410})
# Flat object stores have no directories: creating a "parent" would at best be a no-op and at worst
# create a bucket, so parents are created only on the other file systems.
FLAT_OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"})


EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tiff"}

StorageTarget = str | os.PathLike[str] | ObjectStoragePath


# --------------------------------------------------------------------------------------------
# Destinations and the atomic write, shared with contact_sheet.py
# --------------------------------------------------------------------------------------------


def resolve_destination(
    destination: object, *, conn_id: str | None = None, field_name: str = "destination"
) -> tuple[ObjectStoragePath, bool]:
    """Return the destination as an ObjectStoragePath and whether it names a directory.

    A destination names a directory when it ends with ``/`` (the only way to say so for an object
    store, where an empty "directory" does not exist) or is an existing directory. Scheme-less
    paths are made absolute so the returned URI does not depend on the worker's working directory.
    """
    if isinstance(destination, ObjectStoragePath):
        text = str(destination)
        path = destination if conn_id is None else ObjectStoragePath(text, conn_id=conn_id)
    elif isinstance(destination, (str, os.PathLike)):
        text = os.fspath(destination).strip()
        if not text:
            raise DashScopeConfigError(_missing_destination(field_name))
        scheme = urlsplit(text).scheme
        if len(scheme) <= 1:  # no scheme, or a Windows drive letter
            trailing = text.endswith(("/", os.sep))
            text = os.path.abspath(os.path.expanduser(text)) + ("/" if trailing else "")
        path = _storage_path(text, conn_id, field_name)
    elif destination is None:
        raise DashScopeConfigError(_missing_destination(field_name))
    else:
        raise DashScopeConfigError(
            f"{field_name} must be a path or URI string, got {type(destination).__name__}; "
            "pass a local path, a file:// URI or an object storage URI such as s3://bucket/key.png."
        )
    is_dir = text.endswith("/") or _is_dir(path)
    return path, is_dir


# Stores that fsspec can read but this provider cannot write results to.
_READ_ONLY_SCHEMES = {"http", "https"}
# What to install for a store whose filesystem is missing: the Airflow provider that declares it.
_INSTALL_FOR = {
    "s3": "apache-airflow-providers-amazon[s3fs]",
    "s3a": "apache-airflow-providers-amazon[s3fs]",
    "gs": "apache-airflow-providers-google",
    "gcs": "apache-airflow-providers-google",
    "abfs": "apache-airflow-providers-microsoft-azure",
    "wasb": "apache-airflow-providers-microsoft-azure",
    "oss": "'airflow-provider-aitryon[oss]'",
}


def _storage_path(text: str, conn_id: str | None, field_name: str) -> ObjectStoragePath:
    """``ObjectStoragePath(text)``, with a missing or unknown filesystem said in one sentence."""
    scheme = urlsplit(text).scheme.lower()
    shown = api.shown_url(text)
    if scheme in _READ_ONLY_SCHEMES:
        raise DashScopeConfigError(
            f"{field_name} {shown} is an {scheme} URL, which cannot be written to; use a local path or an object "
            "storage URI such as s3://bucket/looks/."
        )
    try:
        path = ObjectStoragePath(text, conn_id=conn_id)
        _ = path.fs  # the filesystem loads lazily: a missing package would only surface on first use
        return path
    except DashScopeConfigError as exc:
        if not isinstance(exc, ImportError):  # the store's own sentence, e.g. a wrong OSS connection
            raise
        failure: Exception = exc
    except (ImportError, ValueError, TypeError, NotImplementedError) as exc:
        failure = exc
    # Airflow says "No filesystem registered", fsspec "Install s3fs" or "Unsupported filesystem".
    if scheme in _INSTALL_FOR or isinstance(failure, ImportError):
        package = _INSTALL_FOR.get(scheme, f"the Airflow provider that supports {scheme}://")
        raise DashScopeConfigError(
            f"{field_name} {shown} needs the filesystem for {scheme}://, which is not installed; install "
            f"{package} on every worker."
        ) from None
    raise DashScopeConfigError(
        f"{field_name} {shown} uses {scheme}://, which no installed Airflow provider supports; use a local "
        "path or an object storage URI whose provider is installed, such as s3://bucket/looks/."
    ) from None


def writable_folder(folder: object, *, conn_id: str | None = None, field_name: str = "output") -> str:
    """A folder results are written under, as an absolute URI; or one sentence saying what is wrong.

    A local folder is created (with its parents) here, so a file in the way, a path the worker
    may not write or an unknown filesystem fail before anything is paid for, not halfway.

    :param folder: a local path, ``file://`` URI or object storage URI.
    :param conn_id: Airflow connection of the object store, if any.
    :param field_name: the argument's name, for the message.
    """
    text = folder.strip() if isinstance(folder, str) else folder
    path, _ = resolve_destination(text, conn_id=conn_id, field_name=field_name)
    uri = str(path).rstrip("/")
    if path.protocol not in ("", "file", "local"):
        return uri
    local = path.path
    # The nearest existing path on the way down must be a folder.
    blocker = next((p for p in [local, *map(str, PurePosixPath(local).parents)] if os.path.lexists(p)), None)
    if blocker is not None and not os.path.isdir(blocker):
        raise DashScopeConfigError(
            f"{field_name} {local} cannot be a folder because {blocker} is a file; point {field_name} at a folder "
            "(it is created if missing)."
        )
    try:
        os.makedirs(local, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=local, prefix=".write-check-")  # noqa: SIM115
        probe.close()
    except OSError as exc:
        raise DashScopeConfigError(
            f"{field_name} {local} cannot be written by this worker ({exc.strerror or exc}); choose a folder it "
            "may create and write."
        ) from None
    return uri


def atomic_write(source: bytes | IO[bytes], target: ObjectStoragePath, *, overwrite: bool = True) -> None:
    """Write ``source`` so that ``target`` is either absent or complete, never partial.

    The data goes to a hidden temporary name beside the target (``.<name>.<random>.part``) and is
    then moved into place with the file system's ``mv``:

    * local and POSIX-like file systems: a ``rename`` within one directory, which is atomic;
    * object stores (S3, GCS, Azure): a server-side copy then a delete, because they have no
      rename. The final key appears only when the copy completes, so readers still never see a
      partial object; a worker killed between copy and delete can leave the ``.part`` object
      behind, which a bucket lifecycle rule on ``*.part`` can clean up.

    On any failure the temporary file is removed and the exception propagates. With
    ``overwrite=False`` an existing target raises DashScopeConfigError; the check is repeated just
    before the move, but a writer racing between that check and the move can still be replaced.
    """
    if not overwrite and target.exists():
        raise DashScopeConfigError(_exists(target))
    if target.protocol not in FLAT_OBJECT_STORES:
        target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.parent / f".{target.name}.{uuid.uuid4().hex}.part"
    try:
        # fs.open, not temp.open: hook lineage should name the final file, not the temporary one.
        with temp.fs.open(temp.path, "wb") as out:
            if isinstance(source, (bytes, bytearray, memoryview)):
                out.write(source)
            else:
                source.seek(0)
                shutil.copyfileobj(source, out, CHUNK_SIZE)
        if not overwrite and target.exists():
            raise DashScopeConfigError(_exists(target))
        temp.fs.mv(temp.path, target.path)
    except BaseException:
        _remove_quietly(temp)
        raise


# --------------------------------------------------------------------------------------------
# The download
# --------------------------------------------------------------------------------------------


@dataclass
class _Fetched:
    """One successful attempt: the validated body (spooled locally) and what Pillow saw in it."""

    body: IO[bytes]
    size: int
    sha256: str
    format: str
    width: int
    height: int


def save_image(
    url: str | Mapping[str, Any],
    destination: StorageTarget,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    overwrite: bool = True,
    conn_id: str | None = None,
    name: str | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    session: Any = None,
    report_lineage: bool = True,
) -> dict[str, Any]:
    """Download a result image and store it durably; return what was stored.

    :param url: the http(s) result URL, or the dict a sensor returned (its ``image_url`` is used,
        and its ``task_id`` names the file when ``destination`` is a directory).
    :param destination: a file path or URI, or a directory (ending with ``/`` or existing); in a
        directory the file is named ``<name or task id or URL basename><format extension>``, so a
        rerun overwrites the same file instead of adding a copy.
    :param max_bytes: largest body accepted; a longer one is abandoned mid-stream.
    :param timeout: seconds, or (connect, read) seconds, per HTTP read.
    :param overwrite: replace an existing file; with False an existing file fails the call before
        anything is downloaded.
    :param conn_id: Airflow connection for the object store (e.g. an ``aws`` connection).
    :param name: file name stem to use in a directory destination, overriding the derived one.
    :param attempts: total tries for transient failures.
    :param backoff: base of the exponential backoff between tries, seconds (full jitter).
    :param max_seconds: wall-clock budget of one try, headers included, so a dripping server cannot
        hold the worker (None: ``DEFAULT_MAX_SECONDS``).
    :param session: ignored; downloads share the provider's one downloader and its connections
        (`downloads`). Kept so existing calls still work.
    :param report_lineage: report the saved file to Airflow's hook lineage collector (what a ``@task``
        calling this reports to OpenLineage; see `airflow_provider_aitryon.lineage`). The catalog
        backfill, which saves thousands of images in the triggerer, reports its folders instead.
    :return: ``uri``, ``bytes``, ``sha256``, ``format``, ``width``, ``height``, ``source_url``.
    :raises AirflowFailException: a bad argument, an expired URL, a body that is not an image or is
        over ``max_bytes``: retrying cannot help.
    :raises AirflowException: transient failures that outlived ``attempts``: the task's own retries
        may still succeed within the 24 hours.
    """
    with airflow_errors():
        source_url, task_id = _source(url)
        _check_positive("max_bytes", max_bytes)
        _check_positive("attempts", attempts)
        target, is_dir = resolve_destination(destination, conn_id=conn_id)
        if not is_dir and not overwrite and target.exists():
            raise DashScopeConfigError(_exists(target))

        fetched = _fetch_with_retries(
            source_url,
            max_bytes=max_bytes,
            timeout=timeout,
            attempts=attempts,
            backoff=backoff,
            max_seconds=max_seconds,
        )
        try:
            if is_dir:
                stem = (_safe_stem(name) if name else "") or _derived_stem(task_id, source_url)
                target = target / f"{stem}{_extension(fetched.format)}"
            elif _extension(fetched.format) != _normalised_suffix(target.name):
                log.warning("Saving a %s image under the name %s.", fetched.format, target.name)
            atomic_write(fetched.body, target, overwrite=overwrite)
        finally:
            fetched.body.close()
    if report_lineage:
        lineage.report_hook_lineage(outputs=[target])

    result = {
        "uri": str(target),
        "bytes": fetched.size,
        "sha256": fetched.sha256,
        "format": fetched.format,
        "width": fetched.width,
        "height": fetched.height,
        "source_url": source_url,
    }
    log.info(
        "Saved %s (%s %dx%d, %d bytes, sha256 %s).",
        result["uri"],
        fetched.format,
        fetched.width,
        fetched.height,
        fetched.size,
        fetched.sha256,
    )
    return result


def _fetch_with_retries(
    url: str,
    *,
    max_bytes: int,
    timeout: float | tuple[float, float],
    attempts: int,
    backoff: float,
    max_seconds: float | None,
) -> _Fetched:
    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        return backoff_delay(
            state.attempt_number,
            base=backoff,
            cap=BACKOFF_CAP,
            # Honoured, but not to the point of sleeping through the 24-hour window.
            retry_after=None if retry_after is None else min(retry_after, RETRY_AFTER_CAP),
        )

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "Download attempt %d of %d failed, retrying in %.2fs: %s",
            state.attempt_number,
            attempts,
            state.upcoming_sleep,
            exc,
        )

    retrying = Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait,
        retry=retry_if_exception(is_retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    connect, read = (float(timeout), float(timeout)) if isinstance(timeout, (int, float)) else timeout
    bounds = DownloadBounds(
        connect_timeout=connect,
        read_timeout=read,
        deadline=max_seconds if max_seconds is not None else DEFAULT_MAX_SECONDS,
        max_bytes=max_bytes,
    )
    return retrying(_fetch_once, url, bounds)


def _fetch_once(url: str, bounds: DownloadBounds) -> _Fetched:
    shown = api.shown_url(url)
    # Not a with-block: on success the open spool is handed to the caller, who closes it.
    body: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115
    try:
        try:
            reply = downloads.fetch(url, bounds=bounds, headers={"Accept": "image/*"}, sink=body)
        except DownloadError as exc:
            raise _download_failure(exc, shown, bounds) from None
        _check_status(reply, shown)
        size = body.tell()
        body.seek(0)
        digest = hashlib.sha256()
        while chunk := body.read(CHUNK_SIZE):
            digest.update(chunk)
        image_format, width, height = _inspect_image(body, shown)
        return _Fetched(body, size, digest.hexdigest(), image_format, width, height)
    except BaseException:
        body.close()
        raise


def _download_failure(exc: DownloadError, shown: str, bounds: DownloadBounds) -> DashScopeAPIError:
    """The downloader's failure as this module's one sentence: permanent or worth another try."""
    if exc.kind == "too_large":
        detail = f"it declares {exc.declared} bytes" if exc.declared else f"more than {bounds.max_bytes} bytes arrived"
        return _too_large(shown, bounds.max_bytes, detail)
    if exc.kind == "overdue":
        return _transient(f"the download of {shown} took longer than max_seconds ({bounds.deadline:g} s) after "
                          f"{exc.received} bytes")  # fmt: skip
    if exc.kind == "refused":
        return DashScopeAPIError(operation=DOWNLOAD, message=f"the result URL {shown} {exc.reason}", retryable=False)
    if exc.received:
        return _transient(f"the connection to {shown} failed after {exc.received} bytes ({exc.reason})")
    return _transient(f"could not reach {shown} ({exc.reason})")


def _check_status(response: Reply, shown: str) -> None:
    status = response.status
    if 200 <= status < 300:
        return
    if status in EXPIRED_STATUSES:
        raise DashScopeAPIError(
            operation=DOWNLOAD,
            http_status=status,
            message=(
                f"the result URL {shown} has expired or is not reachable; DashScope deletes results "
                "24 hours after the task ends, so results must be saved within 24 hours "
                "(re-run the try-on if that time has passed)"
            ),
            retryable=False,
        )
    retryable = is_transient_status(status)
    raise DashScopeAPIError(
        operation=DOWNLOAD,
        http_status=status,
        message=f"the server answered HTTP {status} for {shown}",
        retryable=retryable,
        retry_after=api.retry_after_seconds(response.headers) if retryable else None,
    )


def _inspect_image(body: IO[bytes], shown: str) -> tuple[str, int, int]:
    """Decode the whole image (a header alone would pass a truncated or corrupt file), but only
    after the header says its size is one a try-on result can have: a few hundred KB of PNG can
    declare 13000x13000 px and decode to most of a gigabyte."""
    body.seek(0)
    try:
        with warnings.catch_warnings():
            # Pillow warns about what the check below refuses outright (8192² px stays under its limit).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(body)
        with image:
            image_format = image.format or "unknown"
            width, height = image.size
            if max(width, height) > MAX_RESULT_SIDE:
                raise DashScopeAPIError(
                    operation=DOWNLOAD,
                    message=f"the image from {shown} is {width}x{height} px, larger than any try-on result (at most "
                    f"{MAX_RESULT_SIDE} px a side), so it was not decoded",
                    retryable=False,
                )
            image.load()
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise _not_an_image(shown, exc) from None
    except (OSError, SyntaxError, ValueError) as exc:
        if "truncated" in str(exc).lower():
            raise _transient(f"the image from {shown} is truncated ({exc})") from None
        raise _not_an_image(shown, exc) from None
    return image_format, width, height


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _source(url: object) -> tuple[str, str | None]:
    """The URL to fetch and, when the sensor's dict was passed, the DashScope task id."""
    task_id = None
    if isinstance(url, Mapping):
        if "image_url" not in url:
            raise DashScopeConfigError(
                f"image_url is a dict without an 'image_url' key (keys: {', '.join(map(str, url)) or 'none'}); "
                "pass the result URL or the dict the DashScope sensor returned."
            )
        raw_task_id = url.get("task_id")
        task_id = str(raw_task_id) if raw_task_id else None
        url = url["image_url"]
    checked = api.require_url("image_url", url)
    assert checked is not None  # required=True never returns None
    return checked, task_id


def _check_positive(field_name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DashScopeConfigError(f"{field_name} must be a positive integer, got {value!r}; pass a number ≥ 1.")


def _derived_stem(task_id: str | None, url: str) -> str:
    if task_id:
        return _safe_stem(task_id)
    basename = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    stem = _safe_stem(os.path.splitext(basename)[0]) if basename else ""
    if stem:
        return stem
    # The query string carries a signature that changes on every query; the path does not.
    parts = urlsplit(url)
    return "tryon-result-" + hashlib.sha256(f"{parts.netloc}{parts.path}".encode()).hexdigest()[:16]


def _safe_stem(text: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return stem[:120]


def _extension(image_format: str | None) -> str:
    if not image_format:
        return ""
    return EXTENSIONS.get(image_format.upper(), "." + image_format.lower())


def _normalised_suffix(file_name: str) -> str:
    suffix = os.path.splitext(file_name)[1].lower()
    return {".jpeg": ".jpg", ".tif": ".tiff"}.get(suffix, suffix)


def _transient(message: str) -> DashScopeAPIError:
    return DashScopeAPIError(operation=DOWNLOAD, message=message, retryable=True)


def _too_large(shown: str, max_bytes: int, detail: str) -> DashScopeAPIError:
    return DashScopeAPIError(
        operation=DOWNLOAD,
        message=f"the result at {shown} is larger than max_bytes ({max_bytes} bytes): {detail}; "
        "raise max_bytes if images this large are expected",
        retryable=False,
    )


def _not_an_image(shown: str, exc: BaseException) -> DashScopeAPIError:
    return DashScopeAPIError(
        operation=DOWNLOAD,
        message=f"the body of {shown} is not an image Pillow can read ({type(exc).__name__}); "
        "check that image_url is the try-on result URL and not a web page",
        retryable=False,
    )


def _missing_destination(field_name: str) -> str:
    return (
        f"{field_name} is missing; pass a local path, a file:// URI or an object storage URI "
        "such as s3://bucket/results/."
    )


def _exists(target: ObjectStoragePath) -> str:
    return f"destination {target} already exists and overwrite is False; set overwrite=True or choose another path."


def _is_dir(path: ObjectStoragePath) -> bool:
    try:
        return bool(path.is_dir())
    except (OSError, NotImplementedError, ValueError):
        return False


def _remove_quietly(path: ObjectStoragePath) -> None:
    try:
        path.fs.rm_file(path.path)
    except FileNotFoundError:
        pass
    except Exception:  # cleanup must not mask the error being raised
        log.warning("Could not remove the temporary file %s.", path, exc_info=True)
