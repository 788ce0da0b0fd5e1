"""The bad-input catalogue: every way a user can get an input wrong, and the exact message they see.

Each case below is one row of the table "Bad input: what you see" (docs/bad-inputs.md), in order; the
test checks that row too (``readme_table()`` prints the whole table). A case provokes the problem
the way a user would (an operator argument, an image URL, an answer of the API, a connection
setting, a catalog line) and pins:

* what the user sees today: the exception type (or a manifest row) and the message, verbatim, with
  ``«...»`` marking the variable parts (a port, a request id, a byte count): a change of either is
  a plain failure, so the README cannot drift from the code;
* the quality rules every message must meet: one line, no traceback, no API key, no query string of
  a signed URL, the field named, no bare KeyError/TypeError/AttributeError/JSONDecodeError or
  requests/httpx error shown as the error, and the right exception type: AirflowFailException for
  a permanent problem (no Airflow retries), AirflowException for a transient one still failing
  after the hook's retries.

A case whose message breaks a quality rule is marked ``xfail(strict=True, raises=KnownBad)``: it
fails with KnownBad until the code is fixed, and then (strict) it fails loudly so the catalogue
entry is updated.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from conftest import API_KEY, FakeTI, set_connection
from PIL import Image
from scripted_server import Reply, ScriptedServer

from airflow_provider_aitryon import api
from airflow_provider_aitryon.catalog import INVALID_LINE, plan_chunks, plan_partition, read_catalog
from airflow_provider_aitryon.compat import AirflowException, AirflowFailException, TaskDeferred
from airflow_provider_aitryon.emulator import Emulator, EmulatorConfig
from airflow_provider_aitryon.emulator.protocol import (
    MSG_INTERNAL,
    MSG_INVALID_API_KEY,
    MSG_INVALID_URL,
    MSG_MODEL_NOT_FOUND,
    MSG_RATE_QUOTA,
)
from airflow_provider_aitryon.failures import airflow_errors
from airflow_provider_aitryon.hooks.dashscope import DashScopeHook
from airflow_provider_aitryon.image_rules import MAX_BYTES
from airflow_provider_aitryon.operators.refiner import RefinerSubmitOperator
from airflow_provider_aitryon.operators.storage import SaveTryOnResultOperator
from airflow_provider_aitryon.operators.tryon import TryOnSubmitOperator
from airflow_provider_aitryon.sensors.refiner import RefinerTaskSensor
from airflow_provider_aitryon.spend import SpendLimits

PERSON = "http://img.example/person.png"
TOP = "http://img.example/top.png"
COARSE = "http://img.example/coarse.png"
# The query string of a signed OSS URL works as a password until it expires: it must never be shown.
SIGNED = "OSSAccessKeyId=LTAI5tDemo&Expires=1767225600&Signature=SIGNATURE-SECRET"
QUERY_MARKERS = ("SIGNATURE-SECRET", "Signature=", "OSSAccessKeyId=")
CONN_ENV = "AIRFLOW_CONN_DASHSCOPE_DEFAULT"
# The images live on loopback servers (the emulator's samples, a closed port) that are not the
# connection's base URL (the scripted API): pre-flight may fetch them only with allow_private_inputs.
FAST = {"backoff_base": 0.001, "backoff_max": 0.01, "max_attempts": 2, "read_timeout": 5, "lost_submit_grace": 0.05,
        "allow_private_inputs": True}  # fmt: skip
DEFAULT_EXPIRY = 86400.0
TASK_ID = "86ecf553-d340-4e21-af6e-a0c6a421c010"

# Variable parts of a message: the regex the test applies, shown as "…" in the README.
VARIABLE = {
    "«port»": r"\d{1,5}",
    "«request_id»": r"[0-9a-f-]{36}",
    "«task_id»": r"[0-9a-f-]{36}",
    "«bytes»": r"\d+",
    "«address»": r"0x[0-9a-f]+",
    "«path»": r"/\S+",
}
# What must never be the error a user reads (alone, or shown as the cause of ours).
BARE = (KeyError, TypeError, AttributeError, json.JSONDecodeError, requests.RequestException, httpx.HTTPError)


class KnownBad(AssertionError):
    """A message breaks a quality rule; the case is a known, reported defect (xfail, strict)."""


# ---------------------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Case:
    id: str
    what: str  # README: what you did
    where: str  # README: where it shows, and the exception type
    message: str | None  # verbatim, «...» for variable parts; None: no message at all
    provoke: Callable[[Env], str | None]  # raises what the user sees, or returns a recorded message
    raises: type[BaseException] | None  # the type the user sees today; None: no exception
    want: type[BaseException] | None  # the type the user should see
    names: tuple[str, ...]  # words the message must contain: the field and the fix
    bad: str | None  # why the message is not good enough (the case is xfail)
    shown: str | None  # README text when there is no message to quote
    sends_nothing: bool  # the problem is found before any request to DashScope

    @property
    def marks(self) -> list[pytest.MarkDecorator]:
        if not self.bad:
            return []
        return [pytest.mark.xfail(strict=True, raises=KnownBad, reason=self.bad)]


CASES: list[Case] = []
_SAME = object()


def case(
    what: str,
    where: str,
    message: str | None,
    *,
    raises: type[BaseException] | None = AirflowFailException,
    want: Any = _SAME,
    names: tuple[str, ...] = (),
    bad: str | None = None,
    shown: str | None = None,
    sends_nothing: bool = False,
) -> Callable[[Callable[[Env], str | None]], Callable[[Env], str | None]]:
    """Register the decorated function as the next case (and README row)."""

    def register(provoke: Callable[[Env], str | None]) -> Callable[[Env], str | None]:
        CASES.append(
            Case(
                id=provoke.__name__.replace("_", "-"),
                what=what,
                where=where,
                message=message,
                provoke=provoke,
                raises=raises,
                want=raises if want is _SAME else want,
                names=names,
                bad=bad,
                shown=shown,
                sends_nothing=sends_nothing,
            )
        )
        return provoke

    return register


# ---------------------------------------------------------------------------- helpers


@dataclass
class Env:
    """What a case can use: the connection, a scripted API server, the emulator and a temp dir."""

    monkeypatch: pytest.MonkeyPatch
    api: ScriptedServer
    emu: Emulator
    tmp_path: Path
    context: dict[str, Any] = field(default_factory=lambda: {"ti": FakeTI()})

    def connect(self, base_url: str | None = None, **extra: Any) -> None:
        set_connection(self.monkeypatch, base_url or self.api.base_url, **{**FAST, **extra})

    def connection(self, **fields: Any) -> None:
        """A connection with some fields replaced; a field set to None is left out."""
        conn = {"conn_type": "dashscope", "host": self.api.base_url, "password": API_KEY, "extra": dict(FAST)}
        conn.update(fields)
        self.monkeypatch.setenv(CONN_ENV, json.dumps({k: v for k, v in conn.items() if v is not None}))

    def sample(self, name: str, query: str = "") -> str:
        return self.emu.sample_url(name) + (f"?{query}" if query else "")

    def catalog(self, *lines: str) -> str:
        path = self.tmp_path / "catalog.jsonl"
        path.write_text("".join(line + "\n" for line in lines))
        return str(path)


def refiner(**overrides: Any) -> RefinerSubmitOperator:
    kwargs: dict[str, Any] = {
        "task_id": "refine",
        "person_image_url": PERSON,
        "top_garment_url": TOP,
        "coarse_image_url": COARSE,
        "gender": "woman",
        "validate_inputs": False,
    }
    kwargs.update(overrides)
    return RefinerSubmitOperator(**kwargs)


def tryon(**overrides: Any) -> TryOnSubmitOperator:
    kwargs: dict[str, Any] = {"task_id": "coarse", "person_image_url": PERSON, "top_garment_url": TOP}
    kwargs.update({"validate_inputs": False, **overrides})
    return TryOnSubmitOperator(**kwargs)


def sensor(**overrides: Any) -> RefinerTaskSensor:
    kwargs: dict[str, Any] = {"task_id": "wait", "dashscope_task_id": TASK_ID, "poke_interval": 0.01, "timeout": 30}
    kwargs.update(overrides)
    return RefinerTaskSensor(**kwargs)


def save(env: Env, **overrides: Any) -> Any:
    kwargs: dict[str, Any] = {"task_id": "save", "image_url": "http://img.example/r.png",
                              "destination": f"{env.tmp_path}/out/", "attempts": 2}  # fmt: skip
    kwargs.update(overrides)
    return SaveTryOnResultOperator(**kwargs).execute(env.context)


def api_error(status: int, code: str, message: str) -> Reply:
    return Reply(status, {"request_id": str(uuid.uuid4()), "code": code, "message": message})


def empty_task_list() -> Reply:
    return Reply(200, {"request_id": str(uuid.uuid4()), "data": [], "total": 0})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def submit_to_emulator(env: Env, person: str) -> str:
    """A coarse task on the emulator, run to its end; returns its task id."""
    env.connect(env.emu.base_url)
    call = api.tryon_call(person_image_url=env.sample(person), top_garment_url=env.sample("top.png"))
    task_id = DashScopeHook().submit(call).task_id
    deadline = time.monotonic() + 10
    while not any(t["task_id"] == task_id and t["ended"] is not None for t in env.emu.tasks()):
        assert time.monotonic() < deadline, "the emulator did not finish the task"
        time.sleep(0.02)
    return task_id


def image(width: int, height: int, fmt: str = "PNG", *, pad_to: int | None = 8 * 1024) -> bytes:
    """A flat image; trailing padding (ignored by decoders) lifts it over the 5 KB minimum."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 160, 200)).save(buf, format=fmt)
    data = buf.getvalue()
    return data + b"\0" * (pad_to - len(data)) if pad_to is not None and len(data) < pad_to else data


def crafted_images() -> dict[str, bytes]:
    """The bad images the emulator serves next to its samples, at /samples/<name>."""
    return {
        "tiny.png": image(200, 300, pad_to=None),
        "huge.png": image(600, 800, pad_to=MAX_BYTES + 1024),
        "top.gif": image(400, 400, "GIF"),
        "bottom.jpg": b"size chart: S M L XL\n" * 400,  # a text file behind an image name
        "narrow.png": image(150, 600),
        "wide.png": image(5000, 300),
        "result.html": b"<!DOCTYPE html><html><body>Sign in to view this image</body></html>",
    }


# ============================================================================ arguments


@case("`RefinerSubmitOperator(person_image_url=\"\")`", "the operator, before any request: AirflowFailException",
      "person_image_url is missing; pass the public http(s) URL of the image.",
      names=("person_image_url",), sends_nothing=True)  # fmt: skip
def arg_person_missing(env: Env) -> None:
    refiner(person_image_url="").execute(env.context)


@case("`top_garment_url=\"ftp://img.example/top.png\"`", "the operator, before any request: AirflowFailException",
      "top_garment_url must be an http(s) URL, an oss://bucket/key URI or an absolute file path, got "
      "'ftp://img.example/top.png'; pass where the image is.", names=("top_garment_url",),
      sends_nothing=True)  # fmt: skip
def arg_top_ftp(env: Env) -> None:
    refiner(top_garment_url="ftp://img.example/top.png").execute(env.context)


@case("`bottom_garment_url=\"file:///data/bottom.png\"` without `upload_local_files=True`",
      "the operator, before any request: AirflowFailException",
      "bottom_garment_url is a local file (file:///data/bottom.png); DashScope cannot read it: set "
      "upload_local_files=True to upload it to DashScope's temporary storage (development only), or pass an http(s) "
      "URL or an oss:// URI.",
      names=("bottom_garment_url", "upload_local_files"), sends_nothing=True)  # fmt: skip
def arg_bottom_file(env: Env) -> None:
    refiner(bottom_garment_url="file:///data/bottom.png").execute(env.context)


@case("`coarse_image_url=\"img.example/coarse.png\"` (no scheme)",
      "the operator, before any request: AirflowFailException",
      "coarse_image_url must be an http(s) URL, an oss://bucket/key URI or an absolute file path, got "
      "'img.example/coarse.png'; pass where the image is.", names=("coarse_image_url",),
      sends_nothing=True)  # fmt: skip
def arg_coarse_no_scheme(env: Env) -> None:
    refiner(coarse_image_url="img.example/coarse.png").execute(env.context)


@case("a signed URL without its scheme: `top_garment_url=\"//img.example/top.png?OSSAccessKeyId=…&Signature=…\"`",
      "the operator, before any request: AirflowFailException",
      "top_garment_url must be an http(s) URL, an oss://bucket/key URI or an absolute file path, got "
      "'//img.example/top.png'; pass where the image is.", names=("top_garment_url",), sends_nothing=True)  # fmt: skip
def arg_signed_url_without_scheme(env: Env) -> None:
    refiner(top_garment_url=f"//img.example/top.png?{SIGNED}").execute(env.context)


@case("`person_image_url=[\"http://…/person.png\"]` (a list, e.g. from XCom)",
      "the operator, before any request: AirflowFailException",
      "person_image_url must be a URL string, got list; pass the public http(s) URL of the image.",
      names=("person_image_url",), sends_nothing=True)  # fmt: skip
def arg_person_not_a_string(env: Env) -> None:
    refiner(person_image_url=[PERSON]).execute(env.context)


@case("`gender=\"female\"`", "the operator, before any request: AirflowFailException",
      "gender must be one of woman, man, got 'female'; set gender to one of those values.",
      names=("gender",), sends_nothing=True)  # fmt: skip
def arg_bad_gender(env: Env) -> None:
    refiner(gender="female").execute(env.context)


@case("`TryOnSubmitOperator` with no garment URL", "the operator, before any request: AirflowFailException",
      "top_garment_url and bottom_garment_url are both empty; give at least one garment (a dress or jumpsuit "
      "goes in top_garment_url).", names=("top_garment_url", "bottom_garment_url"), sends_nothing=True)  # fmt: skip
def arg_tryon_no_garment(env: Env) -> None:
    tryon(top_garment_url=None).execute(env.context)


@case("`TryOnSubmitOperator(resolution=1024)` (for_refiner=True, the default)",
      "parsing the DAG (an import error of the DAG file): AirflowFailException",
      "Task 'coarse': resolution is 1024 but a coarse image for the refiner must keep the person image's size; "
      "set resolution=-1, or for_refiner=False if you will not refine it.", names=("resolution",),
      sends_nothing=True)  # fmt: skip
def arg_tryon_resolution_for_refiner(env: Env) -> None:
    tryon(resolution=1024)


@case("`TryOnSubmitOperator(restore_face=False)` (for_refiner=True)",
      "parsing the DAG (an import error of the DAG file): AirflowFailException",
      "Task 'coarse': restore_face is false but a coarse image for the refiner must be made with "
      "restore_face=true; set restore_face=True, or for_refiner=False if you will not refine it.",
      names=("restore_face",), sends_nothing=True)  # fmt: skip
def arg_tryon_restore_face_for_refiner(env: Env) -> None:
    tryon(restore_face=False)


@case("`TryOnSubmitOperator(resolution=720)`",
      "parsing the DAG (an import error of the DAG file): AirflowFailException",
      "Task 'coarse': resolution must be one of -1, 1024 or 1280, got 720; use -1 to keep the person image's "
      "size.", names=("resolution",), sends_nothing=True)  # fmt: skip
def arg_tryon_bad_resolution(env: Env) -> None:
    tryon(resolution=720)


@case("`TryOnSubmitOperator(restore_face=\"maybe\")`",
      "parsing the DAG (an import error of the DAG file): AirflowFailException",
      "Task 'coarse': restore_face must be true or false, got 'maybe'; set restore_face to a boolean.",
      names=("restore_face",), sends_nothing=True)  # fmt: skip
def arg_tryon_restore_face_not_boolean(env: Env) -> None:
    tryon(restore_face="maybe")


@case("`TryOnSubmitOperator(model=\"\")`", "the operator, before any request: AirflowFailException",
      "model must be a model name such as aitryon or aitryon-plus, got ''; set model.", names=("model",),
      sends_nothing=True)  # fmt: skip
def arg_tryon_empty_model(env: Env) -> None:
    tryon(model="").execute(env.context)


@case("`RefinerTaskSensor(dashscope_task_id=\"\")` (the submit task returned nothing)",
      "the sensor, before any request: AirflowFailException",
      "dashscope_task_id is empty; pass the DashScope task id that the submit task returned (for example "
      "submit.output).", names=("dashscope_task_id",), sends_nothing=True)  # fmt: skip
def arg_sensor_empty_task_id(env: Env) -> None:
    sensor(dashscope_task_id="").execute(env.context)


@case("`RefinerTaskSensor(dashscope_task_id=\"tasks/86ec…\")` (a slash in the id)",
      "the sensor, before any request: AirflowFailException",
      f"dashscope_task_id 'tasks/{TASK_ID}' is not a DashScope task id; pass the id the submit task returned.",
      names=("dashscope_task_id",), sends_nothing=True)  # fmt: skip
def arg_sensor_task_id_with_slash(env: Env) -> None:
    sensor(dashscope_task_id=f"tasks/{TASK_ID}").execute(env.context)


@case("`SaveTryOnResultOperator(image_url=None)`", "the operator, before any download: AirflowFailException",
      "image_url is missing; pass the public http(s) URL of the image.", names=("image_url",),
      sends_nothing=True)  # fmt: skip
def arg_save_no_image_url(env: Env) -> None:
    save(env, image_url=None)


@case("`SaveTryOnResultOperator(image_url={\"task_id\": …, \"task_status\": \"FAILED\"})`",
      "the operator, before any download: AirflowFailException",
      "image_url is a dict without an 'image_url' key (keys: task_id, task_status); pass the result URL or the "
      "dict the DashScope sensor returned.", names=("image_url",), sends_nothing=True)  # fmt: skip
def arg_save_dict_without_image_url(env: Env) -> None:
    save(env, image_url={"task_id": TASK_ID, "task_status": "FAILED"})


@case("`SaveTryOnResultOperator(destination=\"\")`", "the operator, before any download: AirflowFailException",
      "destination is missing; pass a local path, a file:// URI or an object storage URI such as "
      "s3://bucket/results/.", names=("destination",), sends_nothing=True)  # fmt: skip
def arg_save_no_destination(env: Env) -> None:
    save(env, destination="")


# ============================================================================ images


PREFLIGHT = "pre-flight (`validate_inputs=True`), nothing submitted: AirflowFailException"


@case("a person image of under 5 KB", PREFLIGHT,
      "person_image_url: the image is «bytes» bytes; images must be 5 KB to 5 MB.", names=("person_image_url",),
      sends_nothing=True)  # fmt: skip
def img_too_small(env: Env) -> None:
    refiner(validate_inputs=True, person_image_url=env.sample("tiny.png")).execute(env.context)


@case("a garment image of over 5 MB", PREFLIGHT,
      "top_garment_url: the image is 5.0 MB (5243904 bytes); images must be 5 KB to 5 MB.",
      names=("top_garment_url",), sends_nothing=True)  # fmt: skip
def img_too_big(env: Env) -> None:
    refiner(validate_inputs=True, person_image_url=env.sample("person.png"), top_garment_url=env.sample("huge.png"),
            coarse_image_url=env.sample("person.png")).execute(env.context)  # fmt: skip


@case("a GIF garment", PREFLIGHT,
      "top_garment_url: the image is in GIF format; allowed formats are JPEG, PNG and BMP (also WEBP and HEIC "
      "where Pillow reads them).", names=("top_garment_url",), sends_nothing=True)  # fmt: skip
def img_gif(env: Env) -> None:
    tryon(validate_inputs=True, person_image_url=env.sample("person.png"),
          top_garment_url=env.sample("top.gif")).execute(env.context)  # fmt: skip


@case("a text file named `bottom.jpg`", PREFLIGHT,
      "bottom_garment_url: the data is not a recognisable image (it starts with b'size cha'); allowed formats are "
      "JPEG, PNG and BMP (also WEBP and HEIC where Pillow reads them).", names=("bottom_garment_url",),
      sends_nothing=True)  # fmt: skip
def img_text_file(env: Env) -> None:
    tryon(validate_inputs=True, person_image_url=env.sample("person.png"), top_garment_url=env.sample("top.png"),
          bottom_garment_url=env.sample("bottom.jpg")).execute(env.context)  # fmt: skip


@case("a person image 150 px wide", PREFLIGHT,
      "person_image_url: the image is 150x600 px; the shortest side must be more than 150 px.",
      names=("person_image_url",), sends_nothing=True)  # fmt: skip
def img_side_150(env: Env) -> None:
    tryon(validate_inputs=True, person_image_url=env.sample("narrow.png"),
          top_garment_url=env.sample("top.png")).execute(env.context)  # fmt: skip


@case("a coarse image 5000 px wide", PREFLIGHT,
      "coarse_image_url: the image is 5000x300 px; the longest side must be at most 4096 px.",
      names=("coarse_image_url",), sends_nothing=True)  # fmt: skip
def img_side_5000(env: Env) -> None:
    refiner(validate_inputs=True, person_image_url=env.sample("person.png"), top_garment_url=env.sample("top.png"),
            coarse_image_url=env.sample("wide.png")).execute(env.context)  # fmt: skip


@case("a coarse image of another size than the person image", PREFLIGHT,
      "coarse_image_url: the image is 600x1000 px but person_image_url is 576x1024 px; the coarse image must have "
      "the person image's size — make it with resolution=-1 and restore_face=true.", names=("coarse_image_url",),
      sends_nothing=True)  # fmt: skip
def img_coarse_size_mismatch(env: Env) -> None:
    refiner(validate_inputs=True, person_image_url=env.sample("person.png"), top_garment_url=env.sample("top.png"),
            coarse_image_url=env.sample("coarse_mismatch.png")).execute(env.context)  # fmt: skip


@case("a signed person image URL that answers 404", PREFLIGHT,
      "person_image_url: http://127.0.0.1:«port»/samples/missing.png answered HTTP 404 Not Found; DashScope must be "
      "able to fetch the image from a public http(s) URL without credentials.", names=("person_image_url",),
      sends_nothing=True)  # fmt: skip
def img_not_found(env: Env) -> None:
    tryon(validate_inputs=True, person_image_url=env.sample("missing.png", SIGNED),
          top_garment_url=env.sample("top.png")).execute(env.context)  # fmt: skip


@case("a person image URL whose host refuses connections", PREFLIGHT,
      "person_image_url: http://127.0.0.1:«port»/person.png could not be fetched (connection refused) after 3 "
      "attempts; DashScope must be able to fetch the image from a public http(s) URL without credentials.",
      names=("person_image_url",), sends_nothing=True)  # fmt: skip
def img_connection_refused(env: Env) -> None:
    url = f"http://127.0.0.1:{closed_port()}/person.png?{SIGNED}"
    tryon(validate_inputs=True, person_image_url=url, top_garment_url=env.sample("top.png")).execute(env.context)


@case("saving a signed result URL after DashScope deleted it (404)",
      "`SaveTryOnResultOperator`: AirflowFailException",
      "DashScope result download failed (HTTP 404): the result URL http://127.0.0.1:«port»/results/"
      f"{TASK_ID}.png has expired or is not reachable; DashScope deletes results 24 hours after the task ends, so "
      "results must be saved within 24 hours (re-run the try-on if that time has passed).",
      sends_nothing=True)  # fmt: skip
def img_result_expired(env: Env) -> None:
    save(env, image_url=f"{env.emu.base_url}/results/{TASK_ID}.png?{SIGNED}")


@case("saving a result URL that answers a web page", "`SaveTryOnResultOperator`: AirflowFailException",
      "DashScope result download failed: the body of http://127.0.0.1:«port»/samples/result.html is not an image "
      "Pillow can read (UnidentifiedImageError); check that image_url is the try-on result URL and not a web "
      "page.", names=("image_url",),
      sends_nothing=True)  # fmt: skip
def img_result_is_a_web_page(env: Env) -> None:
    save(env, image_url=env.sample("result.html", SIGNED))


# ============================================================================ API answers


SUBMIT = "submit (`RefinerSubmitOperator`): AirflowFailException, at once"
EXHAUSTED = "submit, after the hook's retries: AirflowException (Airflow retries the task)"


@case("submit answered 400 `InvalidURL`", SUBMIT,
      f"DashScope submit failed (HTTP 400 InvalidURL): {MSG_INVALID_URL.rstrip('.')} [request_id «request_id»]; "
      "use public http(s) URLs of jpg, png or bmp images.")  # fmt: skip
def api_400_invalid_url(env: Env) -> None:
    env.api.add(api_error(400, "InvalidURL", MSG_INVALID_URL))
    refiner().execute(env.context)


@case("a wrong API key: 401 `InvalidApiKey`", SUBMIT,
      f"DashScope submit failed (HTTP 401 InvalidApiKey): {MSG_INVALID_API_KEY.rstrip('.')} "
      "[request_id «request_id»]; set the API key as the password of the DashScope connection.")  # fmt: skip
def api_401_invalid_api_key(env: Env) -> None:
    env.api.add(api_error(401, "InvalidApiKey", MSG_INVALID_API_KEY))
    refiner().execute(env.context)


@case("an account without the try-on service: 403 `AccessDenied.Unpurchased`", SUBMIT,
      "DashScope submit failed (HTTP 403 AccessDenied.Unpurchased): Access to model denied [request_id "
      "«request_id»]; purchase or activate the try-on service in the DashScope console.")  # fmt: skip
def api_403_unpurchased(env: Env) -> None:
    env.api.add(api_error(403, "AccessDenied.Unpurchased", "Access to model denied."))
    refiner().execute(env.context)


@case("`model=\"aitryon-refiner-v9\"`: 404 `ModelNotFound`", SUBMIT,
      f"DashScope submit failed (HTTP 404 ModelNotFound): {MSG_MODEL_NOT_FOUND.rstrip('.')} [request_id "
      "«request_id»]; use one of the models aitryon, aitryon-plus or aitryon-refiner.")  # fmt: skip
def api_404_model_not_found(env: Env) -> None:
    env.api.add(api_error(404, "ModelNotFound", MSG_MODEL_NOT_FOUND))
    refiner(model="aitryon-refiner-v9").execute(env.context)


@case("submitting faster than the account's rate: 429 on every attempt", EXHAUSTED,
      f"DashScope submit failed (HTTP 429 Throttling.RateQuota): {MSG_RATE_QUOTA.rstrip('.')} [request_id "
      "«request_id»]; lower the submit or query rate, or raise the account's quota.",
      raises=AirflowException)  # fmt: skip
def api_429_exhausted(env: Env) -> None:
    env.api.add(*(api_error(429, "Throttling.RateQuota", MSG_RATE_QUOTA) for _ in range(2)))
    refiner().execute(env.context)


@case("a service fault: 500 `InternalError` on every attempt", EXHAUSTED,
      f"DashScope submit failed (HTTP 500 InternalError): {MSG_INTERNAL.rstrip('.')} [request_id «request_id»]; "
      "a transient error, retried with backoff.", raises=AirflowException)  # fmt: skip
def api_500_exhausted(env: Env) -> None:
    env.api.add(*(api_error(500, "InternalError", MSG_INTERNAL) for _ in range(2)))
    refiner().execute(env.context)


AMBIGUOUS = "submit, after the task list showed no task was created: AirflowException (Airflow retries the task)"


@case("a gateway's HTML page with 502 (the service may have taken the task)", AMBIGUOUS,
      "DashScope submit failed (HTTP 502): the reply to the submit was lost (the response was not JSON (it began "
      "'<html><head><title>502 Bad Gateway</title></head><body><h1>5')), so whether a task was created is unknown; "
      "a transient error, retried with backoff.", raises=AirflowException)  # fmt: skip
def api_html_502(env: Env) -> None:
    env.connect(max_attempts=1, read_timeout=1)
    page = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
    env.api.add(Reply(502, page, {"Content-Type": "text/html"}), empty_task_list(), empty_task_list())
    refiner().execute(env.context)


@case("submit answered 200 with an empty body", AMBIGUOUS,
      "DashScope submit failed (HTTP 200): the reply to the submit was lost (the response body was empty), so "
      "whether a task was created is unknown; a transient error, retried with backoff.",
      raises=AirflowException)  # fmt: skip
def api_empty_body(env: Env) -> None:
    env.connect(max_attempts=1, read_timeout=1)
    env.api.add(Reply(200, b""), empty_task_list(), empty_task_list())
    refiner().execute(env.context)


@case("submit answered 200 with truncated JSON", AMBIGUOUS,
      "DashScope submit failed (HTTP 200): the reply to the submit was lost (the response was not JSON (it "
      "began '{\"request_id\": \"7d1e\", \"output\": {\"task_st')), so whether a task was created is unknown; a "
      "transient error, retried with backoff.", raises=AirflowException)  # fmt: skip
def api_truncated_json(env: Env) -> None:
    env.connect(max_attempts=1, read_timeout=1)
    env.api.add(Reply(200, b'{"request_id": "7d1e", "output": {"task_st'), empty_task_list(), empty_task_list())
    refiner().execute(env.context)


@case("submit answered 200 with a JSON array", AMBIGUOUS,
      "DashScope submit failed (HTTP 200): the reply to the submit was lost (the response was JSON but not an "
      "object (got list)), so whether a task was created is unknown; a transient error, retried with backoff.",
      raises=AirflowException)  # fmt: skip
def api_json_array(env: Env) -> None:
    env.connect(max_attempts=1, read_timeout=1)
    env.api.add(Reply(200, b'["PENDING"]'), empty_task_list(), empty_task_list())
    refiner().execute(env.context)


@case("a person image without a person: the task ends FAILED `InvalidPerson`",
      "`RefinerTaskSensor`: AirflowFailException",
      "DashScope task «task_id» failed: InvalidPerson: The input image has no human body or multi human bodies. "
      "Please upload other image with single person [request_id «request_id»]; use a person image with exactly one "
      "full-body person facing front.")  # fmt: skip
def api_failed_invalid_person(env: Env) -> None:
    task_id = submit_to_emulator(env, "blank_person.png")
    sensor(dashscope_task_id=task_id).execute(env.context)


@case("waiting for a task after DashScope forgot it (expired): UNKNOWN", "`RefinerTaskSensor`: AirflowFailException",
      "DashScope task «task_id» is unknown to DashScope (it expired after 24 hours or never existed) "
      "[request_id «request_id»]; submit the task again, or check that the task id and the connection's API key "
      "belong to the same account.", names=("submit",))  # fmt: skip
def api_unknown_expired_task(env: Env) -> None:
    task_id = submit_to_emulator(env, "person.png")
    env.emu.update(expiry_seconds=0.0)
    try:
        sensor(dashscope_task_id=task_id).execute(env.context)
    finally:
        env.emu.update(expiry_seconds=DEFAULT_EXPIRY)


@case("a task SUCCEEDED but every answer lacks the image URL",
      "`RefinerTaskSensor`, after the trigger's polls: AirflowException (Airflow retries the wait, never the submit)",
      "DashScope query failed: the task SUCCEEDED but the response held no image URL [request_id «request_id»]; "
      "a transient error, retried with backoff.", raises=AirflowException)  # fmt: skip
def api_succeeded_without_image_url(env: Env) -> None:
    no_url = {"task_id": TASK_ID, "task_status": "SUCCEEDED", "results": {}}
    env.api.add(*(Reply(200, {"request_id": str(uuid.uuid4()), "output": no_url}) for _ in range(20)))
    waiting = sensor()
    try:
        waiting.execute(env.context)
    except TaskDeferred as deferred:  # the first poke could not read it: the wait moves to the triggerer
        events = asyncio.run(_events(deferred.trigger))
    else:
        raise AssertionError("the sensor should have deferred")
    waiting.execute_complete(env.context, events[-1])


async def _events(trigger: Any) -> list[dict[str, Any]]:
    return [event.payload async for event in trigger.run()]


# ============================================================================ connection settings


CONNECTION = "the first task that uses the connection, before any request: AirflowFailException"


@case("a connection without a password (API key)", CONNECTION,
      "Connection 'dashscope_default' has no API key; set its password to your DashScope API key (the emulator "
      "accepts any non-empty value).", names=("password",), sends_nothing=True)  # fmt: skip
def conn_no_api_key(env: Env) -> str | None:
    env.connection(password=None)
    return refiner().execute(env.context)


@case("connection host `ftp://x`", CONNECTION,
      "Connection 'dashscope_default' host 'ftp://x' is not an http(s) URL; set it to a base URL such as "
      "https://dashscope.aliyuncs.com or http://127.0.0.1:8089 for the emulator.", names=("host",),
      sends_nothing=True)  # fmt: skip
def conn_host_ftp(env: Env) -> str | None:
    env.connection(host="ftp://x")
    return refiner().execute(env.context)


@case("connection Extra that is not JSON (`{read_timeout: 30}`)", CONNECTION,
      "Connection 'dashscope_default' Extra is not valid JSON; set it to a JSON object such as "
      "{\"workspace\": \"ws-123\", \"read_timeout\": 30}.", names=("Extra",), sends_nothing=True)  # fmt: skip
def conn_extra_not_json(env: Env) -> str | None:
    env.connection(extra="{read_timeout: 30}")
    return refiner().execute(env.context)


@case("connection Extra that is a JSON list", CONNECTION,
      "Connection 'dashscope_default' Extra must be a JSON object, got list; set it to a JSON object such as "
      "{\"read_timeout\": 30}.", names=("Extra",), sends_nothing=True)  # fmt: skip
def conn_extra_list(env: Env) -> str | None:
    env.connection(extra="[30]")
    return refiner().execute(env.context)


@case("Extra `\"read_timeout\": \"abc\"`", CONNECTION,
      "Connection 'dashscope_default' extra field read_timeout must be a number of at least 0.001, got 'abc'; fix "
      "it in the connection's Extra.", names=("read_timeout",), sends_nothing=True)  # fmt: skip
def conn_read_timeout_text(env: Env) -> str | None:
    env.connection(extra={**FAST, "read_timeout": "abc"})
    return refiner().execute(env.context)


@case("Extra `\"max_attempts\": -1`", CONNECTION,
      "Connection 'dashscope_default' extra field max_attempts must be a whole number of at least 1, got -1; fix it "
      "in the connection's Extra.", names=("max_attempts",), sends_nothing=True)  # fmt: skip
def conn_negative_max_attempts(env: Env) -> str | None:
    env.connection(extra={**FAST, "max_attempts": -1})
    return refiner().execute(env.context)


@case("a bare host with Extra `\"scheme\": \"gopher\"`", CONNECTION,
      "Connection 'dashscope_default' extra field scheme must be http or https, got 'gopher'; fix it in the "
      "connection's Extra.", names=("scheme",), sends_nothing=True)  # fmt: skip
def conn_scheme_gopher(env: Env) -> str | None:
    env.connection(host="dashscope.aliyuncs.com", extra={**FAST, "scheme": "gopher"})
    return refiner().execute(env.context)


@case("connection host where nothing listens", EXHAUSTED,
      f"DashScope submit failed: POST {api.SUBMIT_PATH} to http://127.0.0.1:«port» could not connect or the "
      "connection dropped (ConnectError); check the host of connection 'dashscope_default' and that the service "
      "is reachable from here; a transient error, retried with backoff.",
      raises=AirflowException, sends_nothing=True)  # fmt: skip
def conn_host_unreachable(env: Env) -> str | None:
    env.connect(f"http://127.0.0.1:{closed_port()}")
    return refiner().execute(env.context)


@case("`dashscope_conn_id=\"dashscope_prod\"`, a connection that is not defined",
      "the operator, before any request: AirflowFailException",
      "Connection 'dashscope_prod' is not defined; create a connection of type dashscope with that id (or set "
      "AIRFLOW_CONN_DASHSCOPE_PROD), or pass dashscope_conn_id of one that exists.",
      names=("dashscope_conn_id",), sends_nothing=True)  # fmt: skip
def conn_not_defined(env: Env) -> str | None:
    return refiner(dashscope_conn_id="dashscope_prod").execute(env.context)


# ============================================================================ catalog lines


MANIFEST = "the backfill's `manifest.jsonl` (status failed, code InvalidCatalogLine); the run goes on"


def catalog_row(env: Env, *lines: str) -> str:
    """The manifest row read_catalog makes for the last line: a permanent, per-item failure."""
    _items, bad = read_catalog(env.catalog(*lines))
    row = bad[-1]
    assert (row.status, row.code, row.retryable) == ("failed", INVALID_LINE, False)
    return str(row.message)


GOOD_LINE = json.dumps({"sku": "A-1", "person_image_url": PERSON, "top_garment_url": TOP, "gender": "woman"})


@case("a catalog line that is not JSON", MANIFEST,
      "catalog line 1 is not valid JSON; write one JSON object per line.", raises=None, names=("JSON",))  # fmt: skip
def catalog_not_json(env: Env) -> str:
    return catalog_row(env, "{'sku': 'A-1', 'gender': 'woman'}")


@case("a catalog line without `sku`", MANIFEST,
      "catalog line 1 has no sku; give every line a non-empty sku.", raises=None, names=("sku",))  # fmt: skip
def catalog_no_sku(env: Env) -> str:
    return catalog_row(env, json.dumps({"person_image_url": PERSON, "top_garment_url": TOP, "gender": "woman"}))


@case("a catalog line with `\"gender\": \"female\"`", MANIFEST,
      "catalog line 1 (sku A-1): gender must be one of woman, man, got 'female'; set gender to one of those "
      "values.", raises=None, names=("gender",))  # fmt: skip
def catalog_bad_gender(env: Env) -> str:
    return catalog_row(env, GOOD_LINE.replace('"woman"', '"female"'))


@case("a catalog line with an `s3://` person image", MANIFEST,
      "catalog line 1 (sku A-1): person_image_url must be an http(s) URL or an oss://bucket/key URI, got "
      "'s3://looks/p.jpg'; DashScope can only fetch images from public http(s) URLs or private OSS objects.",
      raises=None,
      names=("person_image_url",))  # fmt: skip
def catalog_s3_url(env: Env) -> str:
    return catalog_row(env, GOOD_LINE.replace(PERSON, "s3://looks/p.jpg"))


@case("a catalog with the same sku twice", MANIFEST,
      "catalog line 2 repeats sku A-1; skus must be unique.", raises=None, names=("sku",))  # fmt: skip
def catalog_duplicate_sku(env: Env) -> str:
    return catalog_row(env, GOOD_LINE, GOOD_LINE)


@case("a backfill run whose catalog file does not exist", "the backfill's `plan` task: AirflowFailException",
      "catalog «path» does not exist; pass the catalog JSONL path or URI as the catalog param.",
      names=("catalog",))  # fmt: skip
def catalog_missing_file(env: Env) -> None:
    with airflow_errors():  # as the plan task of dags/aitryon_catalog_backfill.py runs it
        plan_chunks(str(env.tmp_path / "2026-01-01.jsonl"), str(env.tmp_path / "out"))


@case("a backfill `output` that names a file", "the backfill's `plan` task: AirflowFailException",
      "output «path» cannot be a folder because «path» is a file; point output at a folder (it is created if "
      "missing).", names=("output", "folder"), sends_nothing=True)  # fmt: skip
def backfill_output_is_a_file(env: Env) -> None:
    catalog = env.catalog(GOOD_LINE)
    with airflow_errors():
        plan_chunks(catalog, catalog, holder="dag/run")


@case("a backfill `output=\"s3://bucket/looks\"` on workers without the Amazon provider",
      "the backfill's `plan` task: AirflowFailException",
      "output s3://bucket/looks needs the filesystem for s3://, which is not installed; install "
      "apache-airflow-providers-amazon[s3fs] on every worker.", names=("output", "install"),
      sends_nothing=True)  # fmt: skip
def backfill_output_store_not_installed(env: Env) -> None:
    with airflow_errors():
        plan_chunks(env.catalog(GOOD_LINE), "s3://bucket/looks", holder="dag/run")


@case("a backfill run whose estimate is above `max_cost`", "the backfill's `plan` task: AirflowFailException",
      "This run would pay for 2 images, estimated CNY 0.50, above max_cost CNY 0.40; nothing was submitted: raise "
      "max_cost, or split the catalog.", names=("max_cost",), sends_nothing=True)  # fmt: skip
def backfill_over_max_cost(env: Env) -> None:
    with airflow_errors():  # as the plan task of dags/aitryon_catalog_backfill.py runs it
        plan_partition(env.catalog(GOOD_LINE), str(env.tmp_path / "out"), holder="dag/run",
                       limits=SpendLimits.resolve({"max_cost": 0.4}))  # fmt: skip


@case("a backfill run with `max_cost: \"lots\"`", "the backfill's `plan` task: AirflowFailException",
      "DAG param max_cost must be an amount in CNY of 0 or more (such as 500 or 1234.50), got 'lots'; fix it or "
      "leave it empty for no limit.", names=("max_cost",), sends_nothing=True)  # fmt: skip
def backfill_max_cost_text(env: Env) -> None:
    with airflow_errors():
        SpendLimits.resolve({"max_cost": "lots"})


@case("Extra `\"approve_above\": -5`", CONNECTION,
      "Connection 'dashscope_default' extra field approve_above must be an amount in CNY of 0 or more (such as 500 "
      "or 1234.50), got -5; fix it or leave it empty for no limit.", names=("approve_above",),
      sends_nothing=True)  # fmt: skip
def conn_negative_approve_above(env: Env) -> str | None:
    env.connection(extra={**FAST, "approve_above": -5})
    return refiner().execute(env.context)


@case("`person_image_url=\"http://169.254.169.254/latest/meta-data\"` (cloud metadata)",
      "the operator's pre-flight, before submitting: AirflowFailException",
      "person_image_url: http://169.254.169.254/latest/meta-data is a link-local address; link-local and cloud "
      "metadata addresses are never fetched; DashScope must be able to fetch the image from a public http(s) URL "
      "without credentials.",
      names=("person_image_url",), sends_nothing=True)  # fmt: skip
def preflight_cloud_metadata(env: Env) -> str | None:
    env.connect(env.api.base_url, allow_private_inputs=True)
    return refiner(person_image_url="http://169.254.169.254/latest/meta-data", validate_inputs=True).execute(
        env.context
    )


# ---------------------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    samples = tmp_path_factory.mktemp("bad-images")
    for name, data in crafted_images().items():
        (samples / name).write_bytes(data)
    config = EmulatorConfig(latency=0.05, api_key=API_KEY, samples_dir=samples, log_requests=False)
    with Emulator(config) as emu:
        yield emu


@pytest.fixture(scope="module")
def scripted_api() -> Iterator[ScriptedServer]:
    with ScriptedServer() as server:
        yield server


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, scripted_api: ScriptedServer, emulator: Emulator, tmp_path: Path) -> Env:
    scripted_api.replies.clear()
    scripted_api.requests.clear()
    environment = Env(monkeypatch, scripted_api, emulator, tmp_path)
    environment.connect()
    return environment


def pattern(message: str) -> re.Pattern[str]:
    parts = re.split("(" + "|".join(map(re.escape, VARIABLE)) + ")", message)
    return re.compile("".join(VARIABLE.get(part, re.escape(part)) for part in parts))


def shown_chain(error: BaseException) -> list[BaseException]:
    """The exceptions a traceback shows: the error, then its cause or (unless suppressed) its context."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


def quality_problems(case: Case, error: BaseException | None, message: str | None) -> list[str]:
    if message is None:
        return ["the bad input was accepted without any message"]
    problems = []
    if "\n" in message or "Traceback" in message:
        problems.append("the message is not one line, or holds a traceback")
    if API_KEY in message:
        problems.append("the message shows the API key")
    if any(marker in message for marker in QUERY_MARKERS):
        problems.append("the message shows the query string of a signed URL")
    problems += [f"the message does not say {name!r}" for name in case.names if name not in message]
    if (type(error) if error is not None else None) is not case.want:
        problems.append(f"the user sees {type(error).__name__}, should see {getattr(case.want, '__name__', None)}")
    if error is not None:
        problems += [f"a bare {type(e).__name__} is shown" for e in shown_chain(error) if isinstance(e, BARE)]
    return problems


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, env: Env) -> None:
    error: BaseException | None = None
    try:
        message = case.provoke(env)
    except Exception as exc:
        error, message = exc, str(exc)

    # What the user sees today, as the README's catalogue says: a drift is a plain failure.
    seen = type(error) if error is not None else None
    assert seen is case.raises, f"the user sees {seen} ({message!r}), the catalogue says {case.raises}"
    if case.message is None:
        assert message is None, f"the catalogue says no message, the user sees {message!r}"
    else:
        assert message is not None and pattern(case.message).fullmatch(message), f"the user sees {message!r}"
    if case.sends_nothing:
        assert env.api.requests == [], "a request reached DashScope"
    rows, index = readme_rows(), CASES.index(case)
    assert rows[index : index + 1] == [readme_row(case)], "the README row is out of date: see readme_table()"

    problems = quality_problems(case, error, message)
    if problems:
        raise KnownBad("; ".join(problems))


# ---------------------------------------------------------------------------- the README table


# The catalogue lives in the documentation (docs/bad-inputs.md); the name README is kept for its callers.
README = Path(__file__).resolve().parent.parent / "docs" / "bad-inputs.md"
README_MARKERS = ("<!-- BAD-INPUTS:START -->", "<!-- BAD-INPUTS:END -->")


def readme_row(item: Case) -> str:
    """The README row of a case: the message verbatim in a code span, ``…`` for its variable parts."""

    def code(text: str) -> str:
        text = text.replace("|", "\\|")
        return f"`` {text} ``" if "`" in text else f"`{text}`"

    if item.message is None:
        seen = str(item.shown)
    else:
        seen = code(re.sub("|".join(map(re.escape, VARIABLE)), "…", item.message))
    return f"| {item.what} | {item.where} | {seen} |"


def readme_table() -> str:
    """The README table, one row per case in order. To refresh the README after changing a case:
    ``cd tests && python -c "import test_bad_inputs as t; print(t.readme_table())"``."""
    header = ["| What you did | Where it shows | The message you see |", "| --- | --- | --- |"]
    return "\n".join(header + [readme_row(item) for item in CASES])


def readme_rows() -> list[str]:
    start, end = README_MARKERS
    section = README.read_text(encoding="utf-8").split(start, 1)[1].split(end, 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ")][2:]
