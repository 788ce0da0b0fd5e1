"""Alibaba Cloud OSS: the connection, V4-presigned URLs and the ``oss://`` file system.

Private OSS objects are where Alibaba Cloud users keep their images; this package lets the
provider read and write them with the credentials of an Airflow ``oss`` connection (the official
Alibaba provider's conventions, `settings`):

* `presign_get` (`presign`): ``oss://bucket/key`` → a V4-signed https URL valid for a while
  (6 hours by default), for DashScope and pre-flight to fetch;
* `fs`: an fsspec file system for ``oss://`` that Airflow's ``ObjectStoragePath`` loads through
  this provider's metadata, so saving results to OSS is the same code as saving them to disk;
* `client`: the SDK client with bounded timeouts and retries, and its errors as one sentence.

Everything needs the ``oss`` extra (``pip install 'airflow-provider-aitryon[oss]'``). This package
imports without it; using it then fails with one sentence naming the extra (`OssExtraMissing`).
A local stand-in that verifies signatures lives apart, in `airflow_provider_aitryon.emulator.oss`.
"""

from __future__ import annotations

from airflow_provider_aitryon.oss.errors import (
    INSTALL_HINT,
    OssAccessDenied,
    OssConfigError,
    OssError,
    OssExtraMissing,
    OssNotFound,
)
from airflow_provider_aitryon.oss.presign import DEFAULT_EXPIRES, presign_get, presign_url
from airflow_provider_aitryon.oss.settings import CONN_TYPE, DEFAULT_CONN_ID, OssSettings, load_settings
from airflow_provider_aitryon.oss.uri import OssLocation, is_oss_uri, parse_oss_uri

__all__ = [
    "CONN_TYPE",
    "DEFAULT_CONN_ID",
    "DEFAULT_EXPIRES",
    "INSTALL_HINT",
    "OssAccessDenied",
    "OssConfigError",
    "OssError",
    "OssExtraMissing",
    "OssLocation",
    "OssNotFound",
    "OssSettings",
    "is_oss_uri",
    "load_settings",
    "parse_oss_uri",
    "presign_get",
    "presign_url",
]
