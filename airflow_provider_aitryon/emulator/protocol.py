"""Request validation and the service's error vocabulary, independent of HTTP plumbing.

Why a separate module: the checks the real service makes *synchronously* at submit time (HTTP
4xx, no task created) are a different contract from the ones it makes while running a task (a
FAILED task, HTTP 200). Keeping the synchronous ones here, as pure functions, makes that split
explicit and testable without a socket.

Messages quote the vendor's text where the vendor publishes one; where it does not, the message
names the offending field, because that is what a DAG author needs to fix the call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airflow_provider_aitryon.api import GENDERS, MODEL_REFINER, MODEL_TRYON, MODEL_TRYON_PLUS

MODELS = (MODEL_TRYON, MODEL_TRYON_PLUS, MODEL_REFINER)
COARSE_MODELS = (MODEL_TRYON, MODEL_TRYON_PLUS)
RESOLUTIONS = (-1, 1024, 1280)

# Vendor texts (spec error table and the refiner page).
MSG_INVALID_URL = (
    "The request URL is invalid, please check the request URL is available and the request image "
    "format is one of the following types: JPEG, JPG, PNG, BMP, and WEBP."
)
MSG_INVALID_LENGTH = (
    "The image resolution is invalid, please make sure that the largest length of image is smaller "
    "than 4096, and the smallest length of image is larger than 150. and the size of image ranges "
    "from 5KB to 5MB."
)
MSG_INVALID_PERSON = (
    "The input image has no human body or multi human bodies. Please upload other image with single person."
)
MSG_INVALID_GARMENT = "The input garment image has no garment. Please upload an image of a single, complete garment."
MSG_SIZE_MISMATCH = "The size of person image and coarse_image are not the same."
MSG_INVALID_PARAMETER = (
    "The request is missing required parameters or in a wrong format, please check the parameters that you send."
)
MSG_INVALID_API_KEY = "Invalid API-key provided."
MSG_SYNC_NOT_SUPPORTED = "current user api does not support synchronous calls"
MSG_MODEL_NOT_FOUND = "Model not exist."
MSG_RATE_QUOTA = "Requests rate limit exceeded, please try again later."
MSG_THROTTLING = "Requests throttling triggered."
MSG_INTERNAL = "An internal error has occured, please try again later or contact service support."
MSG_MODEL_UNAVAILABLE = "Model is unavailable, please try again later."
MSG_CANCEL_NOT_PENDING = (
    "Failed to cancel the task, please confirm if the task status can be canceled: "
    "a task can only be canceled while it is PENDING."
)
MSG_TASK_NOT_FOUND = "The task does not exist or has expired."


class ApiError(Exception):
    """A synchronous error: HTTP status, DashScope code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SubmitRequest:
    """A submit body that passed every synchronous check, with defaults filled in."""

    model: str
    input: dict[str, str]
    parameters: dict[str, Any]


def _bad(message: str, code: str = "InvalidParameter") -> ApiError:
    return ApiError(400, code, message)


def _url_field(inp: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = inp.get(name)
    # An empty string or null means "not given": the vendor says to leave bottom_garment_url
    # empty for a dress.
    if value is None or value == "":
        if required:
            raise _bad(f"Field required: input.{name}")
        return None
    if not isinstance(value, str):
        raise _bad(f"input.{name} must be a string URL, got {type(value).__name__}")
    # oss:// is accepted here and judged when the task reads it (temp_storage.py): resolved from the
    # temporary storage with X-DashScope-OssResourceResolve: enable, a FAILED task without it.
    if not value.startswith(("http://", "https://", "oss://")):
        raise _bad(f"input.{name} is not a valid URL: it must start with http:// or https://", "InvalidURL")
    return value


def validate_submit(body: Any) -> SubmitRequest:
    """Check a decoded submit body the way the service does before it creates a task."""
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object with model, input and parameters")
    model = body.get("model")
    if model is None or model == "":
        raise _bad("Field required: model")
    if not isinstance(model, str):
        raise _bad("model must be a string")
    if model not in MODELS:
        raise ApiError(404, "ModelNotFound", MSG_MODEL_NOT_FOUND)
    inp = body.get("input")
    if inp is None:
        raise _bad("Field required: input")
    if not isinstance(inp, dict):
        raise _bad("input must be a JSON object")
    params = body.get("parameters")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise _bad("parameters must be a JSON object")

    urls: dict[str, str] = {}
    person = _url_field(inp, "person_image_url", required=True)
    assert person is not None
    urls["person_image_url"] = person
    out_params: dict[str, Any] = {}
    if model == MODEL_REFINER:
        top = _url_field(inp, "top_garment_url", required=True)
        assert top is not None
        urls["top_garment_url"] = top
        bottom = _url_field(inp, "bottom_garment_url", required=False)
        if bottom is not None:
            urls["bottom_garment_url"] = bottom
        coarse = _url_field(inp, "coarse_image_url", required=True)
        assert coarse is not None
        urls["coarse_image_url"] = coarse
        gender = params.get("gender")
        if gender is None or gender == "":
            raise _bad("Field required: parameters.gender (woman or man)")
        if gender not in GENDERS:
            raise _bad(f"parameters.gender must be 'woman' or 'man', got {gender!r}")
        out_params["gender"] = gender
    else:
        top = _url_field(inp, "top_garment_url", required=False)
        bottom = _url_field(inp, "bottom_garment_url", required=False)
        if top is None and bottom is None:
            raise _bad("At least one of input.top_garment_url and input.bottom_garment_url is required")
        if top is not None:
            urls["top_garment_url"] = top
        if bottom is not None:
            urls["bottom_garment_url"] = bottom
        resolution = params.get("resolution", -1)
        # bool is an int subclass; true/false is not a resolution.
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution not in RESOLUTIONS:
            raise _bad(f"parameters.resolution must be one of -1, 1024, 1280, got {resolution!r}")
        restore_face = params.get("restore_face", True)
        if not isinstance(restore_face, bool):
            raise _bad(f"parameters.restore_face must be a boolean, got {restore_face!r}")
        out_params["resolution"] = resolution
        out_params["restore_face"] = restore_face
    return SubmitRequest(model=model, input=urls, parameters=out_params)
