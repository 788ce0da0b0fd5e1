"""Local files for development: DashScope's temporary storage, our upload and the official SDK's, end to end.

The emulator plays the whole service (policy call, OSS form upload, ``oss://`` resolution on submit),
so these tests check the wire shapes both ways: our `upload_local_image` against the emulator, and
the official SDK's own ``OssUtils.upload`` (dashscope 2.0.2) against the same emulator.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import API_KEY, quiet_emulator_config, set_connection

from airflow_provider_aitryon import api, uploads
from airflow_provider_aitryon.emulator import Emulator, ManualClock, sample_images
from airflow_provider_aitryon.emulator.temp_storage import UPLOAD_ROUTE, TemporaryStorage, UploadRefused
from airflow_provider_aitryon.errors import DashScopeAPIError, DashScopeConfigError
from airflow_provider_aitryon.hooks.dashscope import DashScopeHook
from airflow_provider_aitryon.models import TaskResult
from airflow_provider_aitryon.uploads import OSS_RESOURCE_RESOLVE_HEADER, upload_local_image

MODEL = api.MODEL_TRYON


@pytest.fixture(autouse=True)
def _fresh_policy_cache() -> Iterator[None]:
    uploads.clear_policy_cache()
    yield
    uploads.clear_policy_cache()


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    """The emulator's person and garment samples as local files."""
    samples = sample_images()
    out = {}
    for name in ("person.png", "top.png", "bottom.png"):
        out[name] = tmp_path / name
        out[name].write_bytes(samples[name])
    return out


def upload(emu: Emulator, path: Any, model: str = MODEL, key: str = API_KEY) -> str:
    return upload_local_image(path, model=model, base_url=emu.base_url, api_key=key)


def sha(data: bytes | None) -> str:
    assert data is not None
    return hashlib.sha256(data).hexdigest()


def run_to_end(emu: Emulator, monkeypatch: pytest.MonkeyPatch, call: api.ApiCall, timeout: float = 30.0) -> TaskResult:
    """Submit through the hook (as an operator would) and poll until the task ends."""
    set_connection(monkeypatch, emu.base_url)
    hook = DashScopeHook()
    submitted = hook.submit(call, claimed=())
    deadline = time.monotonic() + timeout
    while True:
        result = hook.get_task(submitted.task_id)
        if result.status.is_terminal or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def tryon(person: str, top: str, *, resolve: bool) -> api.ApiCall:
    call = api.tryon_call(person_image_url=person, top_garment_url=top, model=MODEL)
    return dataclasses.replace(call, extra_headers=dict(OSS_RESOURCE_RESOLVE_HEADER)) if resolve else call


# --------------------------------------------------------------------------- our upload


def test_upload_gives_an_oss_url_whose_bytes_the_emulator_holds(emu: Emulator, images: dict[str, Path]) -> None:
    url = upload(emu, images["person.png"])

    assert url.startswith("oss://dashscope-instant/") and url.endswith("/person.png")
    assert uploads.is_temporary_url(url)
    assert sha(emu.state.uploaded_object(url)) == sha(images["person.png"].read_bytes())
    stats = emu.stats()
    assert (stats["upload_policy_requests"], stats["uploads"], stats["uploaded_objects"]) == (1, 1, 1)


def test_a_file_uri_is_uploaded_too(emu: Emulator, images: dict[str, Path]) -> None:
    url = upload(emu, images["top.png"].as_uri())

    assert sha(emu.state.uploaded_object(url)) == sha(images["top.png"].read_bytes())


async def test_the_async_twin_uploads_from_an_event_loop(emu: Emulator, images: dict[str, Path]) -> None:
    url = await uploads.aupload_local_image(images["person.png"], model=MODEL, base_url=emu.base_url, api_key=API_KEY)

    assert sha(emu.state.uploaded_object(url)) == sha(images["person.png"].read_bytes())


def test_a_submit_with_the_resolve_header_succeeds_and_without_it_fails(
    emu: Emulator, images: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    person, top = upload(emu, images["person.png"]), upload(emu, images["top.png"])

    with_header = run_to_end(emu, monkeypatch, tryon(person, top, resolve=True))
    without = run_to_end(emu, monkeypatch, tryon(person, top, resolve=False))

    assert with_header.status.value == "SUCCEEDED" and with_header.image_url
    assert without.status.value == "FAILED" and without.code == "InvalidURL"
    sent = [r for r in emu.requests() if r["path"].startswith(api.SUBMIT_PATH)]
    resolve = [{k.lower(): v for k, v in r["headers"].items()}.get("x-dashscope-ossresourceresolve") for r in sent]
    assert resolve == ["enable", None]
    assert emu.stats()["oss_inputs_resolved"] == 2


def test_the_official_sdk_upload_works_against_the_emulator(
    emu: Emulator, images: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    dashscope = pytest.importorskip("dashscope", reason="the official SDK (dashscope==2.0.2, `dev` extra) is needed")
    from dashscope.utils.oss_utils import OssUtils, check_and_upload_local

    monkeypatch.setattr(dashscope, "base_http_api_url", emu.base_url + "/api/v1")

    person, certificate = OssUtils.upload(model=MODEL, file_path=str(images["person.png"]), api_key=API_KEY)
    uploaded, top, _ = check_and_upload_local(MODEL, images["top.png"].as_uri(), API_KEY, certificate)

    assert person.startswith("oss://dashscope-instant/") and uploaded and top.startswith("oss://dashscope-instant/")
    assert sha(emu.state.uploaded_object(person)) == sha(images["person.png"].read_bytes())
    assert sha(emu.state.uploaded_object(top)) == sha(images["top.png"].read_bytes())
    assert emu.stats()["upload_policy_requests"] == 1  # the SDK reused its certificate
    result = run_to_end(emu, monkeypatch, tryon(person, top, resolve=True))
    assert result.status.value == "SUCCEEDED"


# --------------------------------------------------------------------------- bad inputs


def _six_mb(tmp_path: Path) -> Path:
    path = tmp_path / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (6 * 1024 * 1024))
    return path


def _text_as_png(tmp_path: Path) -> Path:
    path = tmp_path / "notes.png"
    path.write_bytes(b"these are my notes, not a picture\n" * 400)
    return path


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda tmp: tmp / "missing.png", "does not exist"),
        (lambda tmp: tmp, "is a directory"),
        (_six_mb, "larger than 5.0 MB"),
        (_text_as_png, "not a recognisable image"),
        (lambda tmp: "relative/person.png", "relative path"),
        (lambda tmp: "file://otherhost/tmp/person.png", "on host 'otherhost'"),
    ],
    ids=["missing", "directory", "6MB", "text-named-png", "relative", "remote-file-uri"],
)
def test_a_bad_local_file_is_one_sentence_and_nothing_is_sent(
    emu: Emulator, tmp_path: Path, make: Any, expected: str
) -> None:
    with pytest.raises(DashScopeConfigError) as caught:
        upload_local_image(
            make(tmp_path), model=MODEL, base_url=emu.base_url, api_key=API_KEY, field="person_image_url"
        )

    text = str(caught.value)
    assert expected in text and text.startswith("person_image_url")
    assert text.endswith(".") and ". " not in text  # one sentence
    stats = emu.stats()
    assert (stats["upload_policy_requests"], stats["uploads"], stats["uploads_rejected"]) == (0, 0, 0)


def test_a_file_over_the_policys_limit_is_refused_before_the_upload(tmp_path: Path, images: dict[str, Path]) -> None:
    with Emulator(quiet_emulator_config(upload_max_file_size_mb=1)) as emu:
        big = tmp_path / "big.bmp"
        from PIL import Image

        Image.new("RGB", (800, 600), (120, 30, 200)).save(big)  # 1.4 MB: under 5 MB, over the policy's 1 MB
        with pytest.raises(DashScopeConfigError, match="at most 1 MB"):
            upload(emu, big)
        assert (emu.stats()["upload_policy_requests"], emu.stats()["uploads"]) == (1, 0)


# --------------------------------------------------------------------------- secrets


def test_no_key_signature_or_access_key_id_in_logs_or_errors(
    emu: Emulator, images: dict[str, Path], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    upload(emu, images["person.png"])
    (cached,) = uploads._POLICIES.values()
    secrets = [API_KEY, cached.policy.signature, cached.policy.oss_access_key_id]

    # An upload host that echoes the form's secrets in its refusal: the error text is scrubbed.
    def echoing(self: TemporaryStorage, content_type: str | None, body: bytes, *, ttl: float) -> Any:
        raise UploadRefused(400, "InvalidArgument", f"bad {cached.policy.signature} for {self.access_key_id}")

    monkeypatch.setattr(TemporaryStorage, "accept", echoing)
    with pytest.raises(DashScopeAPIError) as refused:
        upload(emu, images["top.png"])
    # A wrong API key on the policy call.
    with (
        Emulator(quiet_emulator_config(api_key="sk-the-right-one")) as strict,
        pytest.raises(DashScopeAPIError) as unauthorised,
    ):
        upload(strict, images["top.png"])

    assert refused.value.code == "OSS.InvalidArgument" and uploads.REDACTED in str(refused.value)
    assert unauthorised.value.code == "InvalidApiKey"
    # The emulator's request log keeps an upload's size, not its form.
    shown = caplog.text + str(refused.value) + str(unauthorised.value) + repr(cached.policy) + repr(emu.requests())
    for secret in secrets:
        assert secret not in shown


# --------------------------------------------------------------------------- the policy cache


def test_one_policy_serves_several_uploads(emu: Emulator, images: dict[str, Path]) -> None:
    person, top = upload(emu, images["person.png"]), upload(emu, images["top.png"])
    again = upload(emu, images["person.png"])

    assert person.rsplit("/", 1)[0] == top.rsplit("/", 1)[0]  # one upload_dir
    assert again == person  # the same file under the same policy is not sent twice
    stats = emu.stats()
    assert (stats["upload_policy_requests"], stats["uploads"]) == (1, 2)


def test_a_second_file_of_the_same_name_gets_a_fresh_policy(
    emu: Emulator, images: dict[str, Path], tmp_path: Path
) -> None:
    other = tmp_path / "other" / "person.png"
    other.parent.mkdir()
    other.write_bytes(images["top.png"].read_bytes())

    first, second = upload(emu, images["person.png"]), upload(emu, other)

    assert first != second and first.endswith("/person.png") and second.endswith("/person.png")
    assert sha(emu.state.uploaded_object(second)) == sha(other.read_bytes())
    assert (emu.stats()["upload_policy_requests"], emu.stats()["uploads_rejected"]) == (2, 0)


def test_a_policy_is_renewed_before_it_expires(
    emu: Emulator, images: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(uploads, "_now", lambda: now[0])
    upload(emu, images["person.png"])
    now[0] += 300 - 61  # the emulator's policies live 300 s; ours are retired 60 s early
    upload(emu, images["top.png"])
    calls_while_fresh = emu.stats()["upload_policy_requests"]
    now[0] += 2
    upload(emu, images["bottom.png"])
    assert (calls_while_fresh, emu.stats()["upload_policy_requests"]) == (1, 2)


def test_a_refused_cached_policy_is_replaced_once(emu: Emulator, images: dict[str, Path]) -> None:
    upload(emu, images["person.png"])
    emu.reset()  # the emulator forgets the policy it issued: the next upload with it is refused (403)

    url = upload(emu, images["top.png"])

    assert sha(emu.state.uploaded_object(url)) == sha(images["top.png"].read_bytes())
    stats = emu.stats()
    assert (stats["upload_policy_requests"], stats["uploads"], stats["upload_rejections_by_code"]) == (
        1,
        1,
        {"AccessDenied": 1},
    )


# --------------------------------------------------------------------------- the emulator's storage


def _policy(emu: Emulator, model: str = MODEL, key: str = API_KEY) -> httpx.Response:
    return httpx.get(
        emu.base_url + uploads.UPLOADS_PATH,
        params={"action": "getPolicy", "model": model},
        headers={"Authorization": f"Bearer {key}"},
    )


def _post(emu: Emulator, data: dict[str, Any], content: bytes = b"x" * 10) -> httpx.Response:
    return httpx.post(emu.base_url + UPLOAD_ROUTE, data=data, files={"file": ("a.png", content, "image/png")})


def _form(policy: dict[str, Any], name: str = "a.png") -> dict[str, str]:
    return {
        "OSSAccessKeyId": policy["oss_access_key_id"],
        "Signature": policy["signature"],
        "policy": policy["policy"],
        "key": f"{policy['upload_dir']}/{name}",
        "x-oss-object-acl": policy["x_oss_object_acl"],
        "x-oss-forbid-overwrite": policy["x_oss_forbid_overwrite"],
        "success_action_status": "200",
    }


def test_the_policy_reply_has_the_fields_the_sdk_reads(emu: Emulator) -> None:
    first, second = _policy(emu).json()["data"], _policy(emu).json()["data"]

    assert set(first) == {
        "policy", "signature", "upload_dir", "upload_host", "expire_in_seconds", "max_file_size_mb",
        "capacity_limit_mb", "oss_access_key_id", "x_oss_object_acl", "x_oss_forbid_overwrite",
    }  # fmt: skip
    assert first["upload_host"] == emu.base_url + UPLOAD_ROUTE
    assert first["upload_dir"].startswith("dashscope-instant/") and first["upload_dir"] != second["upload_dir"]
    assert (first["x_oss_object_acl"], first["x_oss_forbid_overwrite"]) == ("private", "true")


@pytest.mark.parametrize(
    ("params", "key", "status", "code"),
    [
        ({"action": "getPolicy", "model": MODEL}, None, 401, "InvalidApiKey"),
        ({"action": "list", "model": MODEL}, API_KEY, 400, "InvalidParameter"),
        ({"action": "getPolicy"}, API_KEY, 400, "InvalidParameter"),
        ({"action": "getPolicy", "model": "qwen-max"}, API_KEY, 404, "ModelNotFound"),
    ],
)
def test_the_policy_call_is_an_api_call(emu: Emulator, params: dict[str, str], key: str | None, status: int,
                                        code: str) -> None:  # fmt: skip
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    reply = httpx.get(emu.base_url + uploads.UPLOADS_PATH, params=params, headers=headers)
    assert (reply.status_code, reply.json()["code"]) == (status, code)


def test_the_policy_call_is_rate_limited_per_account_and_model() -> None:
    with Emulator(quiet_emulator_config(upload_policy_rate=2, clock=ManualClock(0.0))) as emu:
        codes = [_policy(emu).status_code for _ in range(3)] + [_policy(emu, model="aitryon-plus").status_code]
        assert codes == [200, 200, 429, 200]


@pytest.mark.parametrize(
    ("tamper", "status", "code"),
    [
        (lambda form: form.update(Signature="AAAA" + form["Signature"][4:]), 403, "SignatureDoesNotMatch"),
        (lambda form: form.update(OSSAccessKeyId="LTAI-someone-else"), 403, "InvalidAccessKeyId"),
        (lambda form: form.update(key="dashscope-instant/elsewhere/a.png"), 403, "AccessDenied"),
        (lambda form: form.update({"x-oss-forbid-overwrite": "false"}), 403, "AccessDenied"),
        (lambda form: form.pop("policy"), 400, "InvalidArgument"),
    ],
    ids=["signature", "access-key-id", "key-outside-upload-dir", "acl-condition", "no-policy"],
)
def test_the_upload_route_checks_the_form_as_oss_does(emu: Emulator, tamper: Any, status: int, code: str) -> None:
    form = _form(_policy(emu).json()["data"])
    tamper(form)
    reply = _post(emu, form)
    assert reply.status_code == status and f"<Code>{code}</Code>" in reply.text
    assert emu.stats()["uploads"] == 0


def test_the_upload_route_forbids_overwrites_and_oversize_files() -> None:
    with Emulator(quiet_emulator_config(upload_max_file_size_mb=1)) as emu:
        form = _form(_policy(emu).json()["data"])
        assert _post(emu, form).status_code == 200
        assert _post(emu, form).status_code == 409
        big = _form(_policy(emu).json()["data"])
        assert _post(emu, big, b"x" * (1024 * 1024 + 1)).status_code == 400  # content-length-range
        huge = _post(emu, big, b"x" * (2 * 1024 * 1024))  # refused from Content-Length, unread
        assert huge.status_code == 400 and "EntityTooLarge" in huge.text
        assert emu.stats()["upload_rejections_by_code"] == {"FileAlreadyExists": 1, "EntityTooLarge": 2}


def test_an_expired_policy_is_refused(clock: ManualClock) -> None:
    with Emulator(quiet_emulator_config(clock=clock)) as emu:
        form = _form(_policy(emu).json()["data"])
        clock.advance(301)
        reply = _post(emu, form)
        assert reply.status_code == 403 and "Policy expired" in reply.text


def _submit_and_wait(
    emu: Emulator, clock: ManualClock, body: dict[str, Any], *, resolve: bool = True
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {API_KEY}", "X-DashScope-Async": "enable"}
    if resolve:
        headers.update(OSS_RESOURCE_RESOLVE_HEADER)
    task_id = httpx.post(emu.base_url + api.SUBMIT_PATH, json=body, headers=headers).json()["output"]["task_id"]
    assert emu.wait_idle(30)
    clock.advance(5)
    reply = httpx.get(emu.base_url + api.task_path(task_id), headers={"Authorization": f"Bearer {API_KEY}"})
    return dict(reply.json()["output"])


def test_an_uploaded_file_expires_after_48_hours_and_is_bound_to_its_model(
    clock: ManualClock, images: dict[str, Path]
) -> None:
    with Emulator(quiet_emulator_config(clock=clock)) as emu:
        person, top = upload(emu, images["person.png"]), upload(emu, images["top.png"])
        plus_person = upload(emu, images["person.png"], model="aitryon-plus")

        def body(model: str, person_url: str) -> dict[str, Any]:
            return {"model": model, "input": {"person_image_url": person_url, "top_garment_url": top}}

        assert _submit_and_wait(emu, clock, body(MODEL, person))["task_status"] == "SUCCEEDED"
        wrong_model = _submit_and_wait(emu, clock, body(MODEL, plus_person))
        never = _submit_and_wait(emu, clock, body(MODEL, person.rsplit("/", 1)[0] + "/never.png"))
        clock.advance(48 * 3600)
        expired = _submit_and_wait(emu, clock, body(MODEL, person))

        for failed in (wrong_model, never, expired):
            assert (failed["task_status"], failed["code"]) == ("FAILED", "InvalidURL")
        assert emu.stats()["oss_inputs_refused"] == 3
