"""Pre-flight's address policy (`downloads.AddressPolicy`): which hosts an input image may come from.

Link-local addresses (cloud metadata at 169.254.169.254) are refused always; loopback, private and
other non-public ones unless the connection sets ``allow_private_inputs`` or the image is on the
connection's own base URL (the emulator). Names are judged by what they resolve to, every redirect
hop is checked before it is connected to, and the connection goes to the address that was checked.

No test connects outside this machine: ``connects`` records every TCP connection the HTTP core
opens and refuses any that is not to loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpcore
import pytest
from airflow.sdk import Connection
from conftest import FakeTI, set_connection
from test_preflight import ImageHost, image

from airflow_provider_aitryon.compat import AirflowFailException
from airflow_provider_aitryon.connection import ConnectionSettings
from airflow_provider_aitryon.downloads import (
    AddressPolicy,
    AddressRefused,
    DownloadBounds,
    DownloadError,
    address_class,
    fetch,
)
from airflow_provider_aitryon.emulator import Emulator, EmulatorConfig
from airflow_provider_aitryon.errors import DashScopeConfigError
from airflow_provider_aitryon.operators.tryon import TryOnSubmitOperator
from airflow_provider_aitryon.preflight import InputInspector, input_policy

PUBLIC_IP = "93.184.216.34"  # a global address the tests never really connect to
PRIVATE_FIX = (
    "set the connection extra allow_private_inputs=true for hosts on your network, or pass a public http(s) URL."
)
NEVER_FIX = (
    "link-local and cloud metadata addresses are never fetched; DashScope must be able to fetch the image from a "
    "public http(s) URL without credentials."
)
SIGNED = "X-Amz-Signature=SECRET-SIG"
BOUNDS = DownloadBounds(connect_timeout=2, read_timeout=5, deadline=10)


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every TCP connection the HTTP core opens; only loopback ones are really made."""
    seen: list[tuple[str, int]] = []
    original = httpcore.AnyIOBackend.connect_tcp

    async def record(self: Any, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        seen.append((host, port))
        if not ipaddress.ip_address(host.strip("[]")).is_loopback:
            raise httpcore.ConnectError("the tests never connect outside this machine")
        return await original(self, host, port, *args, **kwargs)

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", record)
    return seen


@pytest.fixture
def host() -> Iterator[ImageHost]:
    with ImageHost() as server:
        yield server


def refusal(policy: AddressPolicy, url: str, field: str = "person_image_url") -> str:
    with InputInspector(policy=policy, attempts=1) as inspector, pytest.raises(DashScopeConfigError) as info:
        inspector.inspect(field, url)
    return str(info.value)


# ---------------------------------------------------------------------------- the classes


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("169.254.169.254", "link-local"),
        ("169.254.0.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%1", "link-local"),
        ("::ffff:169.254.169.254", "link-local"),  # IPv4-mapped
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("::a9fe:a9fe", "link-local"),  # IPv4-compatible (deprecated)
        ("2002:a9fe:a9fe::1", "link-local"),  # 6to4
        ("100.100.100.200", "cloud metadata"),  # Alibaba Cloud ECS metadata
        ("fd00:ec2::254", "cloud metadata"),  # AWS metadata over IPv6
        ("127.0.0.1", "loopback"),
        ("127.1.2.3", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.10", "private"),
        ("fd12:3456::1", "private"),
        ("fec0::1", "private"),  # site-local (deprecated)
        ("::ffff:10.0.0.1", "private"),
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "reserved"),  # carrier-grade NAT
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_address_classes(address: str, kind: str | None) -> None:
    assert address_class(ipaddress.ip_address(address)) == kind


# ---------------------------------------------------------------------------- literal addresses


@pytest.mark.parametrize(
    ("netloc", "problem"),
    [
        ("127.0.0.1:9", "is a loopback address"),
        ("[::1]:9", "is a loopback address"),
        ("10.0.0.7", "is a private address"),
        ("192.168.0.20:8080", "is a private address"),
        ("0.0.0.0:9", "is the unspecified address"),
        ("100.64.1.1", "is a reserved address"),
    ],
)
def test_private_literals_are_refused_without_the_extra(netloc, problem, connects):
    url = f"http://{netloc}/p.png?{SIGNED}"
    message = refusal(AddressPolicy(), url)
    shown = url.split("?", 1)[0]
    assert message == f"person_image_url: {shown} {problem}; {PRIVATE_FIX}"
    assert connects == []


@pytest.mark.parametrize(
    ("netloc", "problem"),
    [
        ("169.254.169.254", "is a link-local address"),
        ("[fe80::1]", "is a link-local address"),
        ("[::ffff:169.254.169.254]", "is a link-local address"),
        ("[::ffff:a9fe:a9fe]", "is a link-local address"),
        ("100.100.100.200", "is a cloud metadata address"),
    ],
)
def test_link_local_and_metadata_literals_are_refused_even_with_the_extra(netloc, problem, connects):
    url = f"http://{netloc}/latest/meta-data/?{SIGNED}"
    for policy in (AddressPolicy(), AddressPolicy(allow_private=True)):
        message = refusal(policy, url, "top_garment_url")
        assert message.startswith("top_garment_url: http://")
        assert message.endswith(f"/latest/meta-data/ {problem}; {NEVER_FIX}")
        assert "SECRET" not in message
    assert connects == []


def test_the_extra_allows_a_loopback_host(host, connects):
    url = host.serve("/p.png", image(300, 300))
    assert "is a loopback address" in refusal(AddressPolicy(), url)
    assert host.hits == []
    with InputInspector(policy=AddressPolicy(allow_private=True)) as inspector:
        assert inspector.inspect("person_image_url", url).width == 300
    assert [h.method for h in host.hits] == ["HEAD", "GET"]


# ---------------------------------------------------------------------------- names


def test_a_name_resolving_to_loopback_is_refused(host, connects):
    url = host.url("/p.png").replace("127.0.0.1", "localhost")
    host.serve("/p.png", image(300, 300))
    message = refusal(AddressPolicy(), url)
    assert re.fullmatch(
        rf"person_image_url: {re.escape(url)} resolves to a loopback address \((127\.0\.0\.1|::1)\); "
        + re.escape(PRIVATE_FIX),
        message,
    ), message
    assert connects == [] and host.hits == []
    with InputInspector(policy=AddressPolicy(allow_private=True)) as inspector:
        assert inspector.inspect("person_image_url", url).width == 300


def test_a_name_resolving_to_metadata_is_refused_with_the_extra(connects):
    async def metadata(host: str, port: int) -> list[str]:
        return ["169.254.169.254"]

    message = refusal(AddressPolicy(allow_private=True, resolver=metadata), "http://metadata.test/latest")
    assert message == (
        f"person_image_url: http://metadata.test/latest resolves to a link-local address (169.254.169.254); {NEVER_FIX}"
    )
    assert connects == []


def test_one_private_address_among_public_ones_refuses_the_name(connects):
    async def mixed(host: str, port: int) -> list[str]:
        return [PUBLIC_IP, "10.0.0.5"]

    message = refusal(AddressPolicy(resolver=mixed), "https://cdn.test/p.png")
    assert (
        message == f"person_image_url: https://cdn.test/p.png resolves to a private address (10.0.0.5); {PRIVATE_FIX}"
    )
    assert connects == []


def test_the_connection_goes_to_the_address_that_was_checked(connects):
    """DNS rebinding: a second look-up answering 127.0.0.1 is never asked; the checked address is used."""
    lookups: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        lookups.append(host)
        return [PUBLIC_IP] if len(lookups) == 1 else ["127.0.0.1"]

    with pytest.raises(DownloadError) as info:
        fetch("http://rebind.test:8080/p.png", bounds=BOUNDS, policy=AddressPolicy(resolver=rebinding))
    assert info.value.kind == "broken"  # the fixture refused the (public) connection
    assert connects == [(PUBLIC_IP, 8080)]
    assert lookups == ["rebind.test"]


def test_a_pinned_connection_keeps_the_host_name_in_the_request(connects):
    async def to_loopback(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    with Emulator(EmulatorConfig(log_requests=False)) as emu:
        url = emu.sample_url("person.png").replace("127.0.0.1", "images.test")
        reply = fetch(url, bounds=BOUNDS, policy=AddressPolicy(allow_private=True, resolver=to_loopback))
        assert reply.status == 200
        assert emu.requests()[-1]["headers"]["Host"] == f"images.test:{emu.port}"
        assert connects == [("127.0.0.1", emu.port)]


def test_the_name_look_up_is_bounded_by_the_connect_timeout(connects):
    async def hanging(host: str, port: int) -> list[str]:
        await asyncio.sleep(30)
        return [PUBLIC_IP]

    started = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch("http://slow-dns.test/p.png", bounds=DownloadBounds(connect_timeout=0.3, read_timeout=1, deadline=5),
              policy=AddressPolicy(resolver=hanging))  # fmt: skip
    assert info.value.kind == "unreachable"
    assert time.monotonic() - started < 3
    assert connects == []


# ---------------------------------------------------------------------------- redirects


def test_a_redirect_to_cloud_metadata_is_refused_before_connecting(host, connects):
    url = host.serve("/r.png", redirect_to=f"http://169.254.169.254/latest/meta-data/iam?{SIGNED}")
    message = refusal(AddressPolicy(allow_private=True), url + "?" + SIGNED)
    assert message == (
        f"person_image_url: {url} redirected to http://169.254.169.254/latest/meta-data/iam, which is a link-local "
        f"address; {NEVER_FIX}"
    )
    assert "SECRET" not in message
    assert all(h != "169.254.169.254" for h, _ in connects)
    assert {h for h, _ in connects} == {"127.0.0.1"}


def test_a_redirect_from_the_trusted_origin_to_a_name_resolving_to_loopback_is_refused(host, connects):
    async def names(name: str, port: int) -> list[str]:
        return {"inside.test": ["127.0.0.1"]}[name]

    start = host.serve("/go.png", redirect_to="http://inside.test:8089/secret?token=SECRET")
    base_url = start.rsplit("/", 1)[0]  # the image host plays the connection's base URL
    policy = AddressPolicy(trusted_origins=AddressPolicy.for_base_url(base_url).trusted_origins, resolver=names)
    with pytest.raises(AddressRefused) as info:
        fetch(start, bounds=BOUNDS, policy=policy)
    assert info.value.reason == (
        "redirected to http://inside.test:8089/secret, which resolves to a loopback address (127.0.0.1)"
    )
    assert info.value.address_class == "loopback" and not info.value.always
    assert host.methods("/go.png") == ["GET"]
    assert ("127.0.0.1", 8089) not in connects


# ---------------------------------------------------------------------------- the emulator's own origin


def test_the_emulator_origin_is_allowed_without_the_extra(host, connects):
    with Emulator(EmulatorConfig(log_requests=False)) as emu:
        policy = AddressPolicy.for_base_url(emu.base_url)
        with InputInspector(policy=policy) as inspector:
            assert inspector.inspect("person_image_url", emu.sample_url("person.png")).width == 576
        # Another loopback port is not the emulator.
        assert "is a loopback address" in refusal(policy, host.serve("/p.png", image(300, 300)))
    assert host.hits == []


def test_the_emulator_origin_still_refuses_link_local():
    async def link_local(host: str, port: int) -> list[str]:
        return ["169.254.10.10"]

    policy = AddressPolicy.for_base_url("http://emulator.test:8089", allow_private=False)
    policy = AddressPolicy(trusted_origins=policy.trusted_origins, resolver=link_local)
    assert policy.trusted_origins == frozenset({("emulator.test", 8089)})
    message = refusal(policy, "http://emulator.test:8089/samples/person.png")
    assert "resolves to a link-local address (169.254.10.10)" in message


# ---------------------------------------------------------------------------- through the connection


def test_the_connection_extra_is_read_and_defaults_to_off():
    def settings(**extra: Any) -> ConnectionSettings:
        conn = Connection(conn_id="c", conn_type="dashscope", host="http://127.0.0.1:8089", password="k",
                          extra=json.dumps(extra))  # fmt: skip
        return ConnectionSettings.from_connection(conn)

    assert settings().allow_private_inputs is False
    assert settings(allow_private_inputs="true").allow_private_inputs is True
    assert input_policy(settings(allow_private_inputs=True)) == AddressPolicy(
        allow_private=True, trusted_origins=frozenset({("127.0.0.1", 8089)})
    )
    with pytest.raises(DashScopeConfigError, match="extra field allow_private_inputs must be true or false"):
        settings(allow_private_inputs="sometimes")


def test_an_operator_refuses_a_loopback_image_unless_the_connection_allows_it(monkeypatch, host, connects):
    with Emulator(EmulatorConfig(log_requests=False, latency=0.0)) as emu:
        garment = host.serve("/top.png", image(512, 512))

        def op() -> TryOnSubmitOperator:
            return TryOnSubmitOperator(task_id="submit", person_image_url=emu.sample_url("person.png"),
                                       top_garment_url=garment)  # fmt: skip

        set_connection(monkeypatch, emu.base_url)
        with pytest.raises(AirflowFailException, match=r"^top_garment_url: http://127\.0\.0\.1:\d+/top\.png is a "
                                                       r"loopback address; set the connection extra"):  # fmt: skip
            op().execute({"ti": FakeTI()})
        assert emu.stats()["submits_accepted"] == 0 and host.hits == []

        set_connection(monkeypatch, emu.base_url, allow_private_inputs=True)
        op().execute({"ti": FakeTI()})
        assert emu.stats()["submits_accepted"] == 1


def test_the_extra_still_refuses_cloud_metadata_and_submits_nothing(monkeypatch, connects):
    with Emulator(EmulatorConfig(log_requests=False, latency=0.0)) as emu:
        set_connection(monkeypatch, emu.base_url, allow_private_inputs=True)
        op = TryOnSubmitOperator(task_id="submit", person_image_url=emu.sample_url("person.png"),
                                 top_garment_url=f"http://169.254.169.254/latest/user-data?{SIGNED}")  # fmt: skip
        with pytest.raises(AirflowFailException) as info:
            op.execute({"ti": FakeTI()})
        assert str(info.value) == (
            f"top_garment_url: http://169.254.169.254/latest/user-data is a link-local address; {NEVER_FIX}"
        )
        assert emu.stats()["submits_accepted"] == 0
    assert all(h == "127.0.0.1" for h, _ in connects)
