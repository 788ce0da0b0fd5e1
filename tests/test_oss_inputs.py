"""Private ``oss://`` inputs: signed just before pre-flight and the submit, never shown signed.

The emulator plays DashScope, the OSS stand-in plays a private bucket that checks every
signature. Proof is the stand-in's request log (signed GETs only, none refused, no HEAD on a URL
signed for GET), the emulator's counters (one paid task per request, also after a re-signed
retry) and the text of logs, XCom and errors (no signature anywhere).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import FakeTI, quiet_emulator_config, set_connection

from airflow_provider_aitryon import api
from airflow_provider_aitryon.emulator import Emulator
from airflow_provider_aitryon.emulator.oss import OssStandIn, SignatureV4Verifier
from airflow_provider_aitryon.emulator.samples import sample_images
from airflow_provider_aitryon.failures import AirflowFailException
from airflow_provider_aitryon.operators.refiner import RefinerSubmitOperator
from airflow_provider_aitryon.operators.tryon import TryOnSubmitOperator
from airflow_provider_aitryon.oss import client as oss_client

SECRET = "oss-secret-NEVER-SHOWN-51f0"
BUCKET = "shop-looks"


@pytest.fixture
def oss(monkeypatch: pytest.MonkeyPatch) -> Iterator[OssStandIn]:
    oss_client.get_client.cache_clear()
    with OssStandIn(access_key_id="LTAI-test-id", access_key_secret=SECRET) as stand_in:
        for name in ("person.png", "top.png", "bottom.png", "coarse.png"):
            stand_in.put(BUCKET, f"models/{name}", sample_images()[name], "image/png")
        monkeypatch.setenv("AIRFLOW_CONN_OSS_DEFAULT", stand_in.connection_json())
        yield stand_in
    oss_client.get_client.cache_clear()


@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    with Emulator(quiet_emulator_config()) as emulator:
        # The stand-in is on loopback, a private address: pre-flight may fetch it only when allowed.
        set_connection(monkeypatch, emulator.base_url, allow_private_inputs=True)
        yield emulator


@pytest.fixture
def signatures(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every signature the stand-in checked (a test-side spy; the stand-in itself keeps none)."""
    seen: list[str] = []
    original = SignatureV4Verifier._compare

    def spy(self: Any, canonical: str, timestamp: str, date: str, secret: str, provided: str, key_id: str) -> None:
        seen.append(provided)
        original(self, canonical, timestamp, date, secret, provided, key_id)

    monkeypatch.setattr(SignatureV4Verifier, "_compare", spy)
    return seen


def uri(name: str) -> str:
    return f"oss://{BUCKET}/models/{name}"


def tryon(**overrides: Any) -> TryOnSubmitOperator:
    kwargs: dict[str, Any] = {
        "task_id": "coarse", "person_image_url": uri("person.png"), "top_garment_url": uri("top.png"),
        "bottom_garment_url": uri("bottom.png"), "wait_for_completion": True, "deferrable": False,
        "poll_interval": 0.2,
    }  # fmt: skip
    kwargs.update(overrides)
    return TryOnSubmitOperator(**kwargs)


def no_secret_in(texts: list[str], signatures: list[str]) -> None:
    blob = "\n".join(texts)
    assert SECRET not in blob
    assert "x-oss-signature" not in blob.lower()
    assert "x-oss-credential" not in blob.lower()
    for signature in signatures:
        assert signature not in blob


def test_oss_inputs_are_signed_checked_and_refined(oss, emu, signatures, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    ti = FakeTI()
    coarse = tryon().execute({"ti": ti})
    assert coarse["task_status"] == "SUCCEEDED"
    refine_ti = FakeTI()
    refined = RefinerSubmitOperator(
        task_id="refine", person_image_url=uri("person.png"), top_garment_url=uri("top.png"),
        bottom_garment_url=uri("bottom.png"), coarse_image_url=coarse["image_url"], gender="woman",
        wait_for_completion=True, deferrable=False, poll_interval=0.2,
    ).execute({"ti": refine_ti})  # fmt: skip
    assert refined["task_status"] == "SUCCEEDED"

    # Every request to the private bucket was a signed GET the stand-in verified: pre-flight's and
    # DashScope's (the emulator fetches what it was sent). No HEAD on a URL signed for GET.
    gets = [r for r in oss.requests if r.bucket == BUCKET]
    assert gets and {(r.method, r.auth, r.status) for r in gets} == {("GET", "presigned", 200)}
    assert oss.refused == 0
    assert len(signatures) == len(gets)
    # Pre-flight fetched each of the 3 images once per operator; the emulator each input it used.
    assert sum(r.key == "models/person.png" for r in gets) >= 4
    # DashScope was sent https URLs, never oss:// (the emulator would have failed the task).
    assert emu.stats()["submits_by_model"] == {api.MODEL_TRYON: 1, api.MODEL_REFINER: 1}

    # Operators log through structlog (to the captured stdout/stderr), libraries through logging.
    out, err = capfd.readouterr()
    texts = [caplog.text, out, err, repr(coarse), repr(refined), repr(ti.pushed), repr(refine_ti.pushed)]
    no_secret_in(texts, signatures)
    assert f"Pre-flight person_image_url: {uri('person.png')} is PNG" in out + err


def test_a_retry_with_freshly_signed_urls_pays_nothing_more(oss, emu, signatures):
    ti = FakeTI()
    first = tryon(wait_for_completion=False).execute({"ti": ti})
    # The retry's call is built again and would be signed anew: the fingerprint is the unsigned
    # call's, so the registry sees the same request and reuses the task, fetching nothing.
    second = tryon(wait_for_completion=False).execute({"ti": FakeTI(try_number=2)})
    assert second == first
    assert emu.stats()["submits_by_model"] == {api.MODEL_TRYON: 1}
    assert len(set(signatures)) == 3  # the three inputs, signed once: by the first try only


def test_a_missing_oss_connection_is_one_sentence_and_submits_nothing(emu, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_OSS_DEFAULT", raising=False)
    with pytest.raises(AirflowFailException) as raised:
        tryon(oss_conn_id="oss_missing").execute({"ti": FakeTI()})
    message = str(raised.value)
    assert "oss_missing" in message and message.endswith(".")
    assert emu.stats()["submits_by_model"] == {}


def test_a_wrong_secret_fails_in_pre_flight_naming_the_uri(oss, emu, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_OSS_DEFAULT", oss.connection_json(access_key_secret="not-the-secret"))
    oss_client.get_client.cache_clear()
    with pytest.raises(AirflowFailException) as raised:
        tryon().execute({"ti": FakeTI()})
    message = str(raised.value)
    assert uri("person.png") in message
    assert "not-the-secret" not in message and SECRET not in message and "x-oss-" not in message.lower()
    assert oss.refused >= 1
    assert emu.stats()["submits_by_model"] == {}


def test_sendable_signs_only_oss_inputs_for_the_expiry_asked(oss):
    from urllib.parse import parse_qs, urlsplit

    from airflow_provider_aitryon.sources import sendable

    call = api.tryon_call(person_image_url=uri("person.png"), top_garment_url="https://cdn.example/top.png")
    sent = sendable(call, expires=__import__("datetime").timedelta(hours=2))
    person = sent.call.body["input"]["person_image_url"]
    assert urlsplit(person).scheme == "http" and parse_qs(urlsplit(person).query)["x-oss-expires"] == ["7200"]
    assert sent.call.body["input"]["top_garment_url"] == "https://cdn.example/top.png"
    assert sent.shown == {person: uri("person.png")} and sent.get_only == {person}
    assert call.body["input"]["person_image_url"] == uri("person.png")  # the built call is not changed
    again = sendable(call)
    assert again.call.body["input"]["person_image_url"] != person  # signed anew each time...
    assert api.tryon_call(person_image_url=uri("person.png"), top_garment_url="https://cdn.example/top.png"
                          ).fingerprint() == call.fingerprint()  # ...while the request stays the same  # fmt: skip
    assert "X-DashScope-OssResourceResolve" not in sent.call.headers("k")


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("oss://Bad_Bucket/a.png", "person_image_url"),
        ("oss://bucket-only", "person_image_url"),
        ("ftp://host/a.png", "must be an http(s) URL, an oss://bucket/key URI or an absolute file path"),
        ("/data/person.png", "upload_local_files=True"),
    ],
)
def test_bad_image_references_are_one_sentence_before_any_request(emu, value, says):
    with pytest.raises(AirflowFailException) as raised:
        tryon(person_image_url=value).execute({"ti": FakeTI()})
    assert says in str(raised.value)
    assert emu.stats()["submits_by_model"] == {}


def test_a_catalog_line_may_name_oss_images_but_not_local_files(tmp_path):
    from airflow_provider_aitryon.catalog import read_catalog

    good = '{"sku": "a", "person_image_url": "oss://b-1/p.png", "top_garment_url": "oss://b-1/t.png", "gender": "man"}'
    local = '{"sku": "b", "person_image_url": "/data/p.png", "top_garment_url": "oss://b-1/t.png", "gender": "man"}'
    path = tmp_path / "catalog.jsonl"
    path.write_text(good + "\n" + local + "\n")
    items, bad = read_catalog(str(path))
    assert [item.sku for item in items] == ["a"]
    assert items[0].person_image_url == "oss://b-1/p.png"
    assert [row.sku for row in bad] == ["b"]
    assert "private OSS objects" in str(bad[0].message)


def test_local_files_are_uploaded_when_asked_and_refined(emu, tmp_path, capfd):
    """Development only: local files go to DashScope's temporary storage, the submit asks it to resolve them."""
    from airflow_provider_aitryon.uploads import clear_policy_cache

    clear_policy_cache()
    for name in ("person.png", "top.png"):
        (tmp_path / name).write_bytes(sample_images()[name])
    result = tryon(
        person_image_url=str(tmp_path / "person.png"), top_garment_url=(tmp_path / "top.png").as_uri(),
        bottom_garment_url=None, upload_local_files=True,
    ).execute({"ti": FakeTI()})  # fmt: skip
    assert result["task_status"] == "SUCCEEDED"
    stats = emu.stats()
    assert stats["uploads"] == 2 and stats["submits_by_model"] == {api.MODEL_TRYON: 1}
    out, err = capfd.readouterr()
    assert "Pre-flight" not in out + err  # checked before the upload; nothing left to fetch


def test_an_oss_output_with_a_broken_connection_says_so_before_anything_is_paid(monkeypatch, tmp_path):
    from airflow_provider_aitryon.catalog import plan_chunks
    from airflow_provider_aitryon.errors import DashScopeConfigError

    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text('{"sku": "a", "person_image_url": "oss://b-1/p.png", "top_garment_url": "oss://b-1/t.png", '
                       '"gender": "man"}\n')  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_OSS_DEFAULT", '{"conn_type": "oss", "extra": {"auth_type": "AK"}}')
    oss_client.get_client.cache_clear()
    with pytest.raises(DashScopeConfigError) as raised:
        plan_chunks(str(catalog), "oss://shop-looks/backfill/2026-01-05", holder="dag/run")
    message = str(raised.value)
    assert "oss_default" in message and "no installed Airflow provider" not in message
