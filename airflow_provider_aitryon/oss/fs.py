"""An fsspec file system for ``oss://``, so ``ObjectStoragePath("oss://bucket/key", conn_id=...)`` works.

Airflow finds it through this provider's metadata (``filesystems``: this module), the way the
official providers declare ``s3://`` or ``gs://``: the module exposes ``schemes`` and
``get_fs(conn_id, storage_options)``. The module imports without the OSS SDK (Airflow imports it
at discovery), and `get_fs` then says in one sentence which extra to install.

Built on the official SDK, synchronous, with the connection's bounds on every request
(`airflow_provider_aitryon.oss.client`). What it supports, and how:

* ``open(path, "rb")``: ranged GETs (``Range`` with ``x-oss-range-behavior: standard``), each
  pinned to the ETag seen when the file was opened (``If-Match``), so a file replaced mid-read
  fails instead of mixing two versions;
* ``open(path, "wb")``: writes go to a local spooled temporary file (memory, then disk); the
  object is uploaded on ``close()``: one PutObject, or a multipart upload above
  ``multipart_threshold``. Leaving the ``with`` block with an exception, or dropping the file
  without closing it, uploads nothing: an object appears complete or not at all;
* ``cat_file`` with ``start``/``end`` (negative values count from the end);
* ``info``/``exists`` (HeadObject, then a one-key listing to recognise a "directory");
* ``ls``/``find`` (ListObjectsV2; with ``ls``, common prefixes are the directories);
* ``rm_file``/``rm`` (DeleteObject; deleting a missing object succeeds, as in OSS);
* ``cp_file`` (server-side CopyObject, objects up to 1 GB) and ``mv`` (copy, then delete), which is
  what `airflow_provider_aitryon.storage.atomic_write` relies on: the final key appears only
  when the copy completes;
* ``mkdir``/``makedirs``/``rmdir``: no-ops: OSS has no directories and buckets are not created
  or removed from here.

``exists`` lets only "not found" answer False; a refused signature or an unreachable endpoint
raises, rather than pretending the object is missing.
"""

from __future__ import annotations

import contextlib
import io
import logging
import mimetypes
import re
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem
from fsspec.utils import stringify_path

from airflow_provider_aitryon.oss.client import call, get_client, read_body, require_sdk
from airflow_provider_aitryon.oss.errors import OssConfigError, OssError, OssNotFound
from airflow_provider_aitryon.oss.settings import DEFAULT_CONN_ID, OssSettings, load_settings
from airflow_provider_aitryon.oss.uri import _BUCKET, SCHEME, check_key

log = logging.getLogger(__name__)

#: The schemes Airflow maps to this module's `get_fs`.
schemes = [SCHEME]

# Writes up to this size are one PutObject; larger ones a multipart upload in parts of `part_size`.
DEFAULT_MULTIPART_THRESHOLD = 32 * 1024 * 1024
DEFAULT_PART_SIZE = 8 * 1024 * 1024
# OSS refuses parts under 100 KB (all but the last) and more than 10,000 parts.
MIN_PART_SIZE = 100 * 1024
MAX_PARTS = 10_000
# A write stays in memory up to this size, then spills to the local temp dir.
SPOOL_IN_MEMORY = 8 * 1024 * 1024
DEFAULT_BLOCK_SIZE = 8 * 1024 * 1024
LIST_PAGE = 1000
# "name.png.<random>.part" (storage.atomic_write's temporary name) is typed as "name.png".
_PARTIAL_SUFFIX = re.compile(r"(?:\.[0-9a-fA-F]{8,})?\.part$")


def get_fs(conn_id: str | None, storage_options: dict[str, Any] | None = None) -> OssFileSystem:
    """The ``oss://`` file system for an Airflow connection: what ``ObjectStoragePath`` calls.

    :param conn_id: the OSS connection (``oss_default`` when None).
    :param storage_options: `OssFileSystem` options, e.g. ``multipart_threshold``.
    :raises OssExtraMissing: the ``oss`` extra is not installed.
    :raises OssConfigError: the connection is missing or wrong.
    """
    require_sdk()
    return OssFileSystem(conn_id=conn_id or DEFAULT_CONN_ID, **(storage_options or {}))


class OssFileSystem(AbstractFileSystem):
    """Alibaba Cloud OSS as an fsspec file system; paths are ``bucket/key``.

    :param conn_id: the Airflow OSS connection (read at once, so a wrong one fails here).
    :param settings: settings already loaded, instead of reading ``conn_id``.
    :param multipart_threshold: writes larger than this many bytes use a multipart upload.
    :param part_size: bytes per part of a multipart upload (at least 100 KB).
    :param kwargs: passed to fsspec's ``AbstractFileSystem``.
    """

    protocol = (SCHEME,)
    root_marker = ""
    # Not cached by fsspec: its cache key is built from repr(), which hides the secret, so a changed
    # secret could get the old instance back. Airflow caches one instance per connection anyway.
    cachable = False

    def __init__(
        self,
        conn_id: str = DEFAULT_CONN_ID,
        *,
        settings: OssSettings | None = None,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        part_size: int = DEFAULT_PART_SIZE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        require_sdk()
        if not isinstance(part_size, int) or part_size < MIN_PART_SIZE:
            raise OssConfigError(
                f"part_size must be at least {MIN_PART_SIZE} bytes (OSS's smallest part), got {part_size!r}; "
                f"the default is {DEFAULT_PART_SIZE}."
            )
        if not isinstance(multipart_threshold, int) or multipart_threshold < part_size:
            raise OssConfigError(
                f"multipart_threshold must be a whole number of bytes of at least part_size ({part_size}), got "
                f"{multipart_threshold!r}; the default is {DEFAULT_MULTIPART_THRESHOLD}."
            )
        self.settings = settings or load_settings(conn_id)
        self.conn_id = self.settings.conn_id
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size

    # ------------------------------------------------------------------ paths

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        text = stringify_path(path)
        if text.lower().startswith(f"{SCHEME}://"):
            text = text[len(SCHEME) + 3 :]
        return text.strip("/")

    def unstrip_protocol(self, name: str) -> str:
        return f"{SCHEME}://{self._strip_protocol(name)}"

    @property
    def fsid(self) -> str:
        return f"{SCHEME}-{self.conn_id}-{self.settings.endpoint_host}"

    def split_path(self, path: Any) -> tuple[str, str]:
        """``(bucket, key)`` of a path; the key is empty for the bucket itself.

        :param path: ``bucket/key`` or ``oss://bucket/key``.
        :raises OssConfigError: the bucket or key breaks OSS's naming rules.
        """
        stripped = self._strip_protocol(path)
        bucket, _, key = stripped.partition("/")
        if not _BUCKET.match(bucket):
            raise OssConfigError(
                f"{self.unstrip_protocol(stripped)} names bucket {bucket!r}, which is not a valid OSS bucket name; "
                "use 3-63 lowercase letters, digits or hyphens."
            )
        if key:
            check_key(key, field_name="path", shown=self.unstrip_protocol(stripped))
        return bucket, key

    @staticmethod
    def _uri(bucket: str, key: str = "") -> str:
        return f"{SCHEME}://{bucket}/{key}"

    # ------------------------------------------------------------------ metadata

    def info(self, path: Any, **kwargs: Any) -> dict[str, Any]:
        bucket, key = self.split_path(path)
        if not key:
            next(self._pages(bucket, "", delimiter="/", max_keys=1))  # NoSuchBucket raises
            return {"name": bucket, "type": "directory", "size": 0}
        oss = require_sdk()
        client = get_client(self.settings)
        try:
            head = call(self.settings, "HeadObject", self._uri(bucket, key), client.head_object,
                        oss.HeadObjectRequest(bucket=bucket, key=key))  # fmt: skip
            return self._file_entry(bucket, key, head.content_length, head.etag, head.last_modified, head.content_type)
        except OssNotFound:
            pass
        # No object: a "directory" if any key lies under key/ (a zero-byte "key/" marker included).
        page = next(self._pages(bucket, f"{key}/", delimiter="/", max_keys=1))
        if page.contents or page.common_prefixes:
            return {"name": f"{bucket}/{key}", "type": "directory", "size": 0}
        raise OssNotFound(f"{self._uri(bucket, key)} does not exist in OSS (neither an object nor a prefix).",
                          status=404, code="NoSuchKey")  # fmt: skip

    def exists(self, path: Any, **kwargs: Any) -> bool:
        # fsspec's default answers False for any error; a refused signature must not look like "missing".
        try:
            self.info(path)
        except FileNotFoundError:
            return False
        return True

    def modified(self, path: Any) -> Any:
        return self.info(path).get("LastModified")

    def ls(self, path: Any, detail: bool = True, **kwargs: Any) -> list[Any]:
        bucket, key = self.split_path(path)
        prefix = f"{key}/" if key else ""
        entries: list[dict[str, Any]] = []
        marker = False
        for page in self._pages(bucket, prefix, delimiter="/"):
            for item in page.contents or []:
                if item.key == prefix:
                    marker = True  # the zero-byte "directory" object some tools create
                    continue
                entries.append(self._file_entry(bucket, item.key, item.size, item.etag, item.last_modified))
            for common in page.common_prefixes or []:
                name = f"{bucket}/{common.prefix.rstrip('/')}"
                entries.append({"name": name, "type": "directory", "size": 0})
        if not entries and key and not marker:
            # ls of a file lists the file, as fsspec's file systems do; else it does not exist.
            entry = self.info(path)
            entries = [entry] if entry["type"] == "file" else []
        if detail:
            return entries
        return sorted(entry["name"] for entry in entries)

    def find(
        self, path: Any, maxdepth: int | None = None, withdirs: bool = False, detail: bool = False, **kwargs: Any
    ) -> Any:
        if maxdepth is not None:
            return super().find(path, maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs)
        # One flat listing instead of one listing per "directory".
        bucket, key = self.split_path(path)
        prefix = f"{key}/" if key else ""
        found: dict[str, dict[str, Any]] = {}
        for page in self._pages(bucket, prefix, delimiter=None):
            for item in page.contents or []:
                if withdirs:
                    for parent in _parents(item.key, prefix):
                        found.setdefault(f"{bucket}/{parent}", {"name": f"{bucket}/{parent}", "type": "directory",
                                                                "size": 0})  # fmt: skip
                if item.key.endswith("/"):
                    continue
                found[f"{bucket}/{item.key}"] = self._file_entry(
                    bucket, item.key, item.size, item.etag, item.last_modified
                )
        if not found and key:
            try:
                entry = self.info(path)
            except FileNotFoundError:
                entry = None
            if entry is not None and entry["type"] == "file":
                found[entry["name"]] = entry
        elif found and withdirs and key:
            name = f"{bucket}/{key}"
            found.setdefault(name, {"name": name, "type": "directory", "size": 0})
        names = sorted(found)
        return {name: found[name] for name in names} if detail else names

    # ------------------------------------------------------------------ reading

    def cat_file(self, path: Any, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        bucket, key = self.split_path(path)
        range_header = None
        if start is not None and start < 0 and end is None:
            range_header = f"bytes=-{-start}"  # the last bytes: a suffix range, no HEAD needed
        else:
            if (start is not None and start < 0) or (end is not None and end < 0):
                size = int(self.info(path)["size"])
                start = max(0, size + start) if start is not None and start < 0 else start
                end = max(0, size + end) if end is not None and end < 0 else end
            first = start or 0
            if end is not None and end <= first:
                return b""
            if first or end is not None:
                range_header = f"bytes={first}-{'' if end is None else end - 1}"
        oss = require_sdk()
        uri = self._uri(bucket, key)
        request = oss.GetObjectRequest(
            bucket=bucket,
            key=key,
            range_header=range_header,
            # Standard HTTP range semantics: a start past the end is 416, not the whole object.
            range_behavior="standard" if range_header else None,
            if_match=kwargs.get("if_match"),
        )
        started = time.monotonic()
        try:
            result = call(self.settings, "GetObject", uri, get_client(self.settings).get_object, request)
        except OssError as exc:
            if range_header and (exc.status == 416 or exc.code == "InvalidRange"):
                return b""
            raise
        return read_body(result, settings=self.settings, action="GetObject", uri=uri, started=started)

    def _open(
        self,
        path: Any,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        if not autocommit:
            raise NotImplementedError("oss:// does not support fsspec transactions; write with autocommit.")
        if mode == "rb":
            return OssReadFile(
                self,
                path,
                block_size=block_size or DEFAULT_BLOCK_SIZE,
                cache_options=cache_options,
                cache_type=kwargs.get("cache_type", "readahead"),
            )
        if mode == "wb":
            return OssWriteFile(self, path, content_type=kwargs.get("content_type"))
        raise NotImplementedError(
            f"oss:// cannot open files in mode {mode!r}; read with 'rb' or write a whole object with 'wb'."
        )

    # ------------------------------------------------------------------ writing

    def _upload(self, path: str, body: Any, size: int, content_type: str | None) -> None:
        """Upload ``size`` bytes from the seekable ``body`` as the object ``path``."""
        bucket, key = self.split_path(path)
        oss = require_sdk()
        client = get_client(self.settings)
        uri = self._uri(bucket, key)
        content_type = content_type or _guess_type(key)
        body.seek(0)
        if size <= self.multipart_threshold:
            request = oss.PutObjectRequest(bucket=bucket, key=key, body=body if size else b"",
                                           content_length=size, content_type=content_type)  # fmt: skip
            call(self.settings, "PutObject", uri, client.put_object, request)
            return
        part_size = max(self.part_size, -(-size // MAX_PARTS))
        init = call(self.settings, "InitiateMultipartUpload", uri, client.initiate_multipart_upload,
                    oss.InitiateMultipartUploadRequest(bucket=bucket, key=key, content_type=content_type))  # fmt: skip
        upload_id = init.upload_id
        try:
            parts = []
            number = 1
            while chunk := body.read(part_size):
                done = call(self.settings, "UploadPart", uri, client.upload_part,
                            oss.UploadPartRequest(bucket=bucket, key=key, upload_id=upload_id, part_number=number,
                                                  body=chunk, content_length=len(chunk)))  # fmt: skip
                parts.append(oss.UploadPart(part_number=number, etag=done.etag))
                number += 1
            complete = oss.CompleteMultipartUploadRequest(
                bucket=bucket, key=key, upload_id=upload_id,
                complete_multipart_upload=oss.CompleteMultipartUpload(parts=parts),
            )  # fmt: skip
            call(self.settings, "CompleteMultipartUpload", uri, client.complete_multipart_upload, complete)
        except BaseException:
            try:
                call(self.settings, "AbortMultipartUpload", uri, client.abort_multipart_upload,
                     oss.AbortMultipartUploadRequest(bucket=bucket, key=key, upload_id=upload_id))  # fmt: skip
            except Exception as exc:
                # The parts are billed until removed: say so; a lifecycle rule on incomplete uploads cleans up.
                log.warning("Could not abort the multipart upload of %s: %s", uri, exc)
            raise

    def pipe_file(self, path: Any, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        if mode == "create" and self.exists(path):
            raise FileExistsError(f"{self.unstrip_protocol(path)} already exists")
        with self.open(path, "wb", **kwargs) as out:
            out.write(value)

    # ------------------------------------------------------------------ copy, move, delete

    def cp_file(self, path1: Any, path2: Any, **kwargs: Any) -> None:
        source_bucket, source_key = self.split_path(path1)
        bucket, key = self.split_path(path2)
        if not source_key or not key:
            raise OssConfigError(
                f"cannot copy {self._uri(source_bucket, source_key)} to {self._uri(bucket, key)}: both must name "
                "objects, not buckets."
            )
        oss = require_sdk()
        request = oss.CopyObjectRequest(bucket=bucket, key=key, source_bucket=source_bucket, source_key=source_key)
        call(self.settings, "CopyObject", self._uri(bucket, key), get_client(self.settings).copy_object, request)

    def mv(self, path1: Any, path2: Any, recursive: bool = False, maxdepth: int | None = None, **kwargs: Any) -> None:
        simple = (
            isinstance(path1, str)
            and isinstance(path2, str)
            and not recursive
            and maxdepth is None
            and not path2.endswith("/")
            and not any(char in path1 for char in "*?[")
        )
        if not simple:
            super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)
            return
        source, target = self._strip_protocol(path1), self._strip_protocol(path2)
        if source == target:
            return
        # One object to one key: a server-side copy, then the delete; two requests, no listing.
        self.cp_file(source, target)
        self.rm_file(source)

    def rm_file(self, path: Any) -> None:
        bucket, key = self.split_path(path)
        if not key:
            log.debug("Not deleting bucket %s: buckets are not removed through oss://.", bucket)
            return
        oss = require_sdk()
        call(self.settings, "DeleteObject", self._uri(bucket, key), get_client(self.settings).delete_object,
             oss.DeleteObjectRequest(bucket=bucket, key=key))  # fmt: skip

    def _rm(self, path: Any) -> None:
        self.rm_file(path)

    def mkdir(self, path: Any, create_parents: bool = True, **kwargs: Any) -> None:
        # OSS has no directories; a "directory" exists once a key under it does.
        return None

    def makedirs(self, path: Any, exist_ok: bool = False) -> None:
        return None

    def rmdir(self, path: Any) -> None:
        return None

    # ------------------------------------------------------------------ helpers

    def _pages(self, bucket: str, prefix: str, *, delimiter: str | None, max_keys: int = LIST_PAGE) -> Iterator[Any]:
        """ListObjectsV2 pages, following continuation tokens."""
        oss = require_sdk()
        client = get_client(self.settings)
        token = None
        while True:
            request = oss.ListObjectsV2Request(bucket=bucket, prefix=prefix or None, delimiter=delimiter,
                                               max_keys=max_keys, continuation_token=token)  # fmt: skip
            page = call(self.settings, "ListObjectsV2", self._uri(bucket, prefix), client.list_objects_v2, request)
            yield page
            token = page.next_continuation_token
            if not page.is_truncated or not token:
                return

    @staticmethod
    def _file_entry(
        bucket: str, key: str, size: Any, etag: Any, modified: Any, content_type: Any = None
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": f"{bucket}/{key}",
            "type": "file",
            "size": int(size or 0),
            "ETag": etag,
            "LastModified": modified,
        }
        if modified is not None:
            entry["mtime"] = modified.timestamp()
        if content_type:
            entry["ContentType"] = content_type
        return entry


class OssReadFile(AbstractBufferedFile):
    """A read-only OSS object: fsspec's buffered reader over ranged, ETag-pinned GETs.

    :param fs: the file system.
    :param path: ``bucket/key``.
    :param block_size: bytes fetched per request.
    :param cache_options: fsspec cache options.
    :param cache_type: fsspec cache type (``readahead`` by default).
    """

    def __init__(
        self,
        fs: OssFileSystem,
        path: str,
        *,
        block_size: int,
        cache_options: dict[str, Any] | None = None,
        cache_type: str = "readahead",
    ) -> None:
        details = fs.info(path)
        if details["type"] != "file":
            raise IsADirectoryError(f"{fs.unstrip_protocol(path)} is a prefix (a directory), not an object")
        super().__init__(fs, path, mode="rb", block_size=block_size, cache_type=cache_type,
                         cache_options=cache_options, size=details["size"])  # fmt: skip
        self.details = details
        self._etag = details.get("ETag")

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.fs.cat_file(self.path, start, end, if_match=self._etag)


class OssWriteFile(io.RawIOBase):
    """A whole-object writer: bytes spool locally; ``close()`` uploads them as one object.

    :param fs: the file system.
    :param path: ``bucket/key`` of the object to write.
    :param content_type: the object's Content-Type (guessed from the name when None).
    """

    def __init__(self, fs: OssFileSystem, path: str, *, content_type: str | None = None) -> None:
        super().__init__()
        bucket, key = fs.split_path(path)
        if not key:
            raise IsADirectoryError(f"{fs._uri(bucket)} is a bucket; write to oss://{bucket}/<key>")
        self.fs = fs
        self.path = f"{bucket}/{key}"
        self.content_type = content_type
        self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - closed in close()
        self._size = 0
        self._discard = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed oss:// file")
        written = self._spool.write(data)
        self._size += written
        return written

    def tell(self) -> int:
        return self._size

    def discard(self) -> None:
        """Close without uploading anything."""
        self._discard = True
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        try:
            if not self._discard:
                self.fs._upload(self.path, self._spool, self._size, self.content_type)
        finally:
            self._spool.close()
            super().close()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # A block that failed half-way must not publish half an object.
        if exc_type is not None:
            self.discard()
        else:
            self.close()

    def __del__(self) -> None:
        # Garbage collection of an unclosed writer discards it: only an explicit close uploads.
        with contextlib.suppress(Exception):
            if not self.closed:
                self.discard()


def _parents(key: str, prefix: str) -> list[str]:
    """The "directories" between ``prefix`` and ``key``: a/b/c.png under a/ gives a/b."""
    parts = key[len(prefix) :].split("/")[:-1]
    base = prefix.rstrip("/")
    found = []
    for part in parts:
        base = f"{base}/{part}" if base else part
        found.append(base)
    return found


def _guess_type(key: str) -> str:
    name = _PARTIAL_SUFFIX.sub("", key.rsplit("/", 1)[-1]).lstrip(".")
    guessed, _ = mimetypes.guess_type(name)
    return guessed or "application/octet-stream"
