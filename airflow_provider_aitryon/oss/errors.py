"""What the OSS layer raises: one sentence each, never a secret or a signature.

The classes also derive from the builtin exceptions fsspec callers expect (``FileNotFoundError``
for a missing object, ``PermissionError`` for a refused request, ``OSError`` for the rest), so
``ObjectStoragePath.exists()``, ``storage.atomic_write`` and fsspec's own helpers treat OSS like
any other file system.
"""

from __future__ import annotations

from airflow_provider_aitryon.errors import DashScopeConfigError, DashScopeError

#: The one line that installs what ``oss://`` needs; every "missing SDK" message quotes it.
INSTALL_HINT = "pip install 'airflow-provider-aitryon[oss]'"


class OssConfigError(DashScopeConfigError):
    """The OSS connection, a URI or an argument is wrong; nothing was sent to OSS."""


class OssExtraMissing(OssConfigError, ImportError):
    """The ``oss`` extra (the ``alibabacloud-oss-v2`` SDK) is not installed.

    An ``ImportError`` too, so code that probes for optional file systems (``storage``'s
    destination check, Airflow's own loaders) sees the usual "not installed" signal.
    """


class OssError(DashScopeError, OSError):
    """A request to OSS failed.

    :param message: the one sentence shown to the user.
    :param status: the HTTP status OSS answered, if it answered.
    :param code: the OSS error code (``NoSuchKey``, ``SignatureDoesNotMatch``, ...), if any.
    :param request_id: OSS's ``x-oss-request-id``, which Alibaba Cloud support asks for.
    :param retryable: whether the same request may succeed later (5xx, throttling, timeouts).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.request_id = request_id
        self.retryable = retryable

    def __str__(self) -> str:
        # OSError formats "[Errno x] ..." when given two arguments; this class is always given one.
        return str(self.args[0]) if self.args else ""


class OssNotFound(OssError, FileNotFoundError):
    """The bucket or object does not exist."""


class OssAccessDenied(OssError, PermissionError):
    """OSS refused the credentials or the permission (403)."""
