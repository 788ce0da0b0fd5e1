"""The path class ``ObjectStoragePath`` wraps for ``oss://``, found through an entry point.

Airflow's ``ObjectStoragePath`` is a universal_pathlib (``upath``) path. Building one for
``oss://bucket/key`` asks upath's registry for the scheme's path class *before* Airflow loads any
file system; for ``oss`` upath would fall back to fsspec's built-in entry, which points at
``ossfs`` and fails with "Install ossfs". This package declares, in ``pyproject.toml``::

    [project.entry-points."universal_pathlib.implementations"]
    oss = "airflow_provider_aitryon.oss.path:OssPath"

so upath finds `OssPath` instead. Importing this module also registers `OssFileSystem` as
fsspec's class for ``oss`` (unless another is already loaded), which upath uses to parse paths
(``bucket/key``: no leading or trailing slash). Neither step needs the OSS SDK: a path can be
built without the ``oss`` extra, and its first use then says which extra to install. The file
system instance itself always comes from Airflow (`airflow_provider_aitryon.oss.fs.get_fs`), with
the connection's credentials.
"""

from __future__ import annotations

import contextlib

import fsspec
from upath import UPath

from airflow_provider_aitryon.oss.fs import OssFileSystem
from airflow_provider_aitryon.oss.uri import SCHEME

# ValueError: another oss file system class is already imported; upath then parses with that
# one, which is harmless, since Airflow still hands out this provider's file system.
with contextlib.suppress(ValueError):
    fsspec.register_implementation(SCHEME, OssFileSystem)


class OssPath(UPath):
    """A upath path for ``oss://bucket/key``; Airflow's ``ObjectStoragePath`` wraps it."""

    __slots__ = ()
