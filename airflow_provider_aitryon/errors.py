"""Exceptions raised by the provider.

Every message is one sentence a user can act on: what failed, what was found and what to do.
The API key never appears in any of them: messages are built only from the fields listed here.
"""

from __future__ import annotations

from typing import Any

# Codes the service returns for problems a retry cannot fix (the spec's "retry? no" column).
# Listed so the classification reads as data; anything unlisted falls back to the HTTP status.
PERMANENT_CODES = frozenset(
    {
        "InvalidParameter",
        "InvalidURL",
        "InvalidPerson",
        "InvalidGarment",
        "InvalidInputLength",
        "DataInspectionFailed",
        "Arrearage",
        "InvalidApiKey",
        "AccessDenied",
        "Model.AccessDenied",
        "AccessDenied.Unpurchased",
        "ModelNotFound",
    }
)
TRANSIENT_CODES = frozenset(
    {
        "RequestTimeOut",
        "Throttling",
        "Throttling.RateQuota",
        "Throttling.AllocationQuota",
        "InternalError",
        "InternalError.Algo",
        "InternalError.Timeout",
        "SystemError",
        "ModelUnavailable",
    }
)
TRANSIENT_HTTP_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Permanent codes that no request of this account can get past (the key, the account, the model's
# access): a batch stops at the first one instead of failing every item the same way.
ACCOUNT_WIDE_CODES = frozenset(
    {"InvalidApiKey", "AccessDenied", "Model.AccessDenied", "AccessDenied.Unpurchased", "Arrearage"}
)

# What the user should do about a code: appended to the message so it reads as a fix, not a riddle.
FIXES: dict[str, str] = {
    "InvalidApiKey": "set the API key as the password of the DashScope connection",
    "AccessDenied": "enable the try-on models for this account or workspace in the DashScope console",
    "Model.AccessDenied": "enable the try-on models for this account or workspace in the DashScope console",
    "AccessDenied.Unpurchased": "purchase or activate the try-on service in the DashScope console",
    "Arrearage": "top up the Alibaba Cloud account; it is overdue",
    "ModelNotFound": "use one of the models aitryon, aitryon-plus or aitryon-refiner",
    "InvalidURL": "use public http(s) URLs of jpg, png or bmp images",
    "InvalidInputLength": "use images of 5 KB to 5 MB whose sides are over 150 px and at most 4096 px",
    "InvalidPerson": "use a person image with exactly one full-body person facing front",
    "InvalidGarment": "use a garment image that shows one complete garment",
    "InvalidParameter": "check the request fields (a coarse image for the refiner must be made with "
    "resolution=-1 and restore_face=true)",
    "DataInspectionFailed": "the content moderation refused an image; use different images",
    "Throttling": "lower the submit or query rate, or raise the account's quota",
    "Throttling.RateQuota": "lower the submit or query rate, or raise the account's quota",
    "Throttling.AllocationQuota": "lower the submit or query rate, or raise the account's quota",
}


class DashScopeError(Exception):
    """Base class of everything this provider raises on purpose."""


class DashScopeConfigError(DashScopeError, ValueError):
    """A connection or argument is set up wrongly; nothing was sent."""


class DashScopeAPIError(DashScopeError):
    """A call to DashScope failed.

    Carries what the service said (HTTP status, code, message, request id) and whether another
    attempt could succeed, so callers decide between a retry and an immediate failure.
    """

    def __init__(
        self,
        *,
        operation: str,
        http_status: int | None = None,
        code: str | None = None,
        message: str | None = None,
        request_id: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        ambiguous: bool = False,
        unresolved: bool = False,
    ) -> None:
        self.operation = operation
        self.http_status = http_status
        self.code = code
        self.api_message = message
        self.request_id = request_id
        self.retry_after = retry_after
        # The request may have reached the service and been acted on (no reply, or a garbled one):
        # for a submit that means a task may exist that we do not know of.
        self.ambiguous = ambiguous
        # An ambiguous submit whose lookup failed too: whether a task exists is still unknown, so
        # it must not be sent again until a later lookup tells (retryable, but not within the hook).
        self.unresolved = unresolved
        self.retryable = classify_retryable(http_status, code) if retryable is None else retryable
        super().__init__(self._sentence())

    def _sentence(self) -> str:
        what = []
        if self.http_status is not None:
            what.append(f"HTTP {self.http_status}")
        if self.code:
            what.append(self.code)
        head = f"DashScope {self.operation} failed"
        if what:
            head += f" ({' '.join(what)})"
        detail = (self.api_message or "no message").rstrip(". ")
        text = f"{head}: {detail}"
        if self.request_id:
            text += f" [request_id {self.request_id}]"
        fix = FIXES.get(self.code or "")
        if fix:
            text += f"; {fix}"
        elif self.retryable:
            text += "; a transient error, retried with backoff"
        return text + "."

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe summary, for trigger events and XCom."""
        return {
            "operation": self.operation,
            "http_status": self.http_status,
            "code": self.code,
            "message": self.api_message,
            "request_id": self.request_id,
            "retryable": self.retryable,
            "ambiguous": self.ambiguous,
        }


def classify_retryable(http_status: int | None, code: str | None) -> bool:
    """Whether another attempt can succeed: the code decides when known, else the HTTP status."""
    if code in PERMANENT_CODES:
        return False
    if code in TRANSIENT_CODES or (code or "").startswith(("Throttling", "InternalError")):
        return True
    if http_status is None:  # no answer at all: connection refused, reset, timed out
        return True
    return http_status in TRANSIENT_HTTP_STATUSES or http_status >= 500


def is_account_wide(code: str | None) -> bool:
    """Whether an error code stops every request of the account, not just this one."""
    return code in ACCOUNT_WIDE_CODES


def is_throttled(exc: DashScopeAPIError) -> bool:
    """The service refused for rate or quota (HTTP 429, any ``Throttling*`` code): slow down."""
    return exc.http_status == 429 or (exc.code or "").startswith("Throttling")
