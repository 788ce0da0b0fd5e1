"""ConnectionSettings.from_connection: base URL, API key, extra fields, and one-sentence errors."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk import BaseHook, Connection

from airflow_provider_aitryon.api import DEFAULT_BASE_URL
from airflow_provider_aitryon.connection import EXTRA_BOOL_FIELDS, EXTRA_FIELDS, ConnectionSettings
from airflow_provider_aitryon.errors import DashScopeConfigError
from airflow_provider_aitryon.hooks.dashscope import DashScopeHook

API_KEY = "sk-test-key-123"


def conn(
    host: str | None = None,
    port: int | None = None,
    password: str | None = API_KEY,
    extra: dict[str, Any] | None = None,
    conn_id: str = "ds_test",
) -> Connection:
    return Connection(
        conn_id=conn_id,
        conn_type="dashscope",
        host=host,
        port=port,
        password=password,
        extra=json.dumps(extra) if extra is not None else None,
    )


def settings_of(**kwargs: Any) -> ConnectionSettings:
    return ConnectionSettings.from_connection(conn(**kwargs))


def one_sentence(text: str) -> bool:
    """Ends with a full stop and has no other sentence break inside."""
    return text.endswith(".") and ". " not in text.rstrip(".")


# --------------------------------------------------------------------------------------------
# Base URL
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "base_url"),
    [
        pytest.param({"host": "https://dashscope.aliyuncs.com"}, "https://dashscope.aliyuncs.com", id="full"),
        pytest.param({"host": "http://127.0.0.1:8089"}, "http://127.0.0.1:8089", id="full-with-port"),
        pytest.param({"host": "http://127.0.0.1:8089/"}, "http://127.0.0.1:8089", id="trailing-slash"),
        pytest.param({"host": "  https://proxy.example/ds  "}, "https://proxy.example/ds", id="with-path"),
        pytest.param({"host": "dashscope.aliyuncs.com"}, "https://dashscope.aliyuncs.com", id="bare"),
        pytest.param({"host": "127.0.0.1", "port": 8089}, "https://127.0.0.1:8089", id="bare-port"),
        pytest.param(
            {"host": "127.0.0.1", "port": 8089, "extra": {"scheme": "http"}},
            "http://127.0.0.1:8089",
            id="bare-port-http",
        ),
        pytest.param({"host": "emu.local", "extra": {"scheme": "HTTP"}}, "http://emu.local", id="scheme-case"),
        pytest.param({"host": "emu.local", "extra": {"scheme": "https"}}, "https://emu.local", id="https"),
        pytest.param({"host": None}, DEFAULT_BASE_URL, id="none"),
        pytest.param({"host": ""}, DEFAULT_BASE_URL, id="empty"),
        pytest.param({"host": "   "}, DEFAULT_BASE_URL, id="blank"),
    ],
)
def test_base_url(kwargs, base_url):
    assert settings_of(**kwargs).base_url == base_url


def test_empty_host_is_the_vendor_default():
    assert settings_of(host="").base_url == "https://dashscope.aliyuncs.com"


@pytest.mark.parametrize("host", ["ftp://files.example", "http:///no-host", "file:///tmp/x"])
def test_non_http_host_url_is_refused(host):
    with pytest.raises(DashScopeConfigError) as info:
        settings_of(host=host)
    message = str(info.value)
    assert "'ds_test'" in message
    assert "is not an http(s) URL" in message


def test_bad_extra_scheme_is_refused():
    with pytest.raises(DashScopeConfigError) as info:
        settings_of(host="emu.local", extra={"scheme": "ftp"})
    message = str(info.value)
    assert "'ds_test'" in message
    assert "scheme must be http or https, got 'ftp'" in message
    assert one_sentence(message)


# --------------------------------------------------------------------------------------------
# API key
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("password", [None, "", "   "])
def test_missing_api_key_names_the_connection_and_the_password(password):
    with pytest.raises(DashScopeConfigError) as info:
        settings_of(password=password, conn_id="my_dashscope")
    message = str(info.value)
    assert "'my_dashscope'" in message
    assert "no API key" in message
    assert "set its password" in message


def test_api_key_is_stripped():
    assert settings_of(password="  sk-abc-123\n").api_key == "sk-abc-123"


def test_api_key_is_not_in_repr_or_str():
    settings = settings_of(host="http://127.0.0.1:8089", extra={"workspace": "ws-1"})
    assert settings.api_key == API_KEY
    assert API_KEY not in repr(settings)
    assert API_KEY not in str(settings)
    assert "ws-1" in repr(settings)


# --------------------------------------------------------------------------------------------
# Extra fields
# --------------------------------------------------------------------------------------------


def test_defaults_without_extra():
    settings = settings_of()
    assert settings.conn_id == "ds_test"
    assert settings.workspace is None
    assert (settings.connect_timeout, settings.read_timeout) == (10.0, 30.0)
    assert settings.max_attempts == 6
    assert settings.max_retry_seconds == 120.0
    assert (settings.backoff_base, settings.backoff_max) == (1.0, 30.0)


def test_extra_values_are_read_and_typed():
    settings = settings_of(
        extra={
            "workspace": " ws-77 ",
            "connect_timeout": 2,
            "read_timeout": "0.2",
            "max_attempts": "4",
            "max_retry_seconds": 0,
            "backoff_base": 0.001,
            "backoff_max": 0.01,
        }
    )
    assert settings.workspace == "ws-77"
    assert settings.connect_timeout == 2.0 and isinstance(settings.connect_timeout, float)
    assert settings.read_timeout == 0.2
    assert settings.max_attempts == 4 and isinstance(settings.max_attempts, int)
    assert settings.max_retry_seconds == 0.0
    assert (settings.backoff_base, settings.backoff_max) == (0.001, 0.01)


@pytest.mark.parametrize("workspace", ["", "   ", None])
def test_blank_workspace_is_none(workspace):
    assert settings_of(extra={"workspace": workspace}).workspace is None


BAD_NUMBERS = [
    pytest.param("fast", id="string"),
    pytest.param(-1, id="negative"),
    pytest.param(True, id="bool-true"),
    pytest.param(False, id="bool-false"),
    pytest.param([1], id="list"),
    pytest.param({"v": 1}, id="object"),
]


@pytest.mark.parametrize("value", BAD_NUMBERS)
@pytest.mark.parametrize("name", list(EXTRA_FIELDS))
def test_bad_extra_number_is_one_sentence_naming_the_field(name, value):
    with pytest.raises(DashScopeConfigError) as info:
        settings_of(extra={name: value})
    message = str(info.value)
    assert f"extra field {name} must be" in message
    assert "'ds_test'" in message
    assert repr(value) in message
    assert one_sentence(message), message
    assert API_KEY not in message


@pytest.mark.parametrize("value", [None, "", "  "])
def test_unset_extra_takes_its_default(value):
    # Airflow's connection form saves untouched and cleared fields as null (3.1 saves every field
    # so, having no defaults): each means the default, as if the key were absent.
    names = [*EXTRA_FIELDS, *EXTRA_BOOL_FIELDS]
    assert settings_of(extra=dict.fromkeys(names, value)) == settings_of(extra={})


@pytest.mark.parametrize(
    ("name", "value"),
    [("max_attempts", 0), ("connect_timeout", 0), ("read_timeout", 0.0), ("backoff_max", -0.5)],
)
def test_extra_number_below_its_minimum_is_refused(name, value):
    with pytest.raises(DashScopeConfigError, match=f"extra field {name} must be .* of at least"):
        settings_of(extra={name: value})


@pytest.mark.parametrize("name", ["read_timeout", "backoff_base"])
def test_nan_extra_number_is_refused(name):
    with pytest.raises(DashScopeConfigError, match=name):
        settings_of(extra={name: "nan"})


def test_fractional_max_attempts_is_refused():
    with pytest.raises(DashScopeConfigError, match="max_attempts must be a whole number"):
        settings_of(extra={"max_attempts": 2.5})


def test_extra_that_is_not_an_object_is_refused():
    with pytest.raises(DashScopeConfigError) as info:
        ConnectionSettings.from_connection(
            Connection(conn_id="ds_list", conn_type="dashscope", password=API_KEY, extra="[1, 2]")
        )
    message = str(info.value)
    assert "'ds_list'" in message
    assert "Extra must be a JSON object, got list" in message


def test_extra_that_cannot_be_read_is_a_config_error():
    class Broken:
        conn_id = "ds_broken"
        host = None
        port = None
        password = API_KEY

        @property
        def extra_dejson(self) -> dict[str, Any]:
            raise ValueError("Expecting value: line 1 column 1")

    with pytest.raises(DashScopeConfigError) as info:
        ConnectionSettings.from_connection(Broken())
    assert "'ds_broken' Extra is not valid JSON; set it to a JSON object" in str(info.value)


def test_unknown_extra_fields_are_logged(caplog):
    caplog.set_level(logging.WARNING, logger="airflow_provider_aitryon.connection")
    settings_of(extra={"read_timout": 5, "workspace": "ws"})
    warnings = [r.getMessage() for r in caplog.records if r.name == "airflow_provider_aitryon.connection"]
    assert warnings == ["Connection 'ds_test' has extra fields this provider does not use: read_timout"]


def test_plain_object_with_connection_attributes_works():
    ns = SimpleNamespace(
        conn_id="ds_ns", host="127.0.0.1", port=8089, password=API_KEY, extra_dejson={"scheme": "http"}
    )
    settings = ConnectionSettings.from_connection(ns)
    assert (settings.conn_id, settings.base_url, settings.api_key) == ("ds_ns", "http://127.0.0.1:8089", API_KEY)


# --------------------------------------------------------------------------------------------
# Connections from the environment, as the hook reads them
# --------------------------------------------------------------------------------------------


def test_uri_form_env_var(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_DS_URI",
        "dashscope://:sk-key-from-uri@127.0.0.1:8089?scheme=http&max_attempts=3&backoff_base=0.001&workspace=ws-uri",
    )
    airflow_conn = BaseHook.get_connection("ds_uri")
    # What Airflow's URI parser gives: host and port split, query string in extra (as strings on
    # 3.2+; 3.1 turns numbers into numbers, and the provider reads both).
    assert (airflow_conn.host, airflow_conn.port, airflow_conn.password) == ("127.0.0.1", 8089, "sk-key-from-uri")
    assert {key: str(value) for key, value in airflow_conn.extra_dejson.items()} == {
        "scheme": "http",
        "max_attempts": "3",
        "backoff_base": "0.001",
        "workspace": "ws-uri",
    }
    settings = DashScopeHook(dashscope_conn_id="ds_uri").settings
    assert settings.conn_id == "ds_uri"
    assert settings.base_url == "http://127.0.0.1:8089"
    assert settings.api_key == "sk-key-from-uri"
    assert settings.max_attempts == 3
    assert settings.backoff_base == 0.001
    assert settings.workspace == "ws-uri"


def test_uri_form_without_scheme_extra_is_https(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_DS_URI_TLS", "dashscope://:sk-key-2@dashscope.aliyuncs.com")
    settings = DashScopeHook(dashscope_conn_id="ds_uri_tls").settings
    assert settings.base_url == "https://dashscope.aliyuncs.com"


def test_json_env_var(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_DS_JSON",
        json.dumps(
            {
                "conn_type": "dashscope",
                "host": "http://127.0.0.1:9999",
                "password": API_KEY,
                "extra": {"workspace": "ws-j", "read_timeout": 0.2},
            }
        ),
    )
    settings = DashScopeHook(dashscope_conn_id="ds_json").settings
    assert (settings.base_url, settings.api_key, settings.workspace, settings.read_timeout) == (
        "http://127.0.0.1:9999",
        API_KEY,
        "ws-j",
        0.2,
    )


def test_hook_without_key_raises_config_error_naming_the_connection(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_DS_NOKEY", json.dumps({"conn_type": "dashscope", "host": "http://127.0.0.1:9"}))
    with pytest.raises(DashScopeConfigError, match="'ds_nokey' has no API key; set its password"):
        _ = DashScopeHook(dashscope_conn_id="ds_nokey").settings


def test_extra_text_that_is_not_json_is_refused_although_airflow_would_ignore_it():
    """Airflow's extra_dejson logs bad JSON and returns {}: the task would run on unchosen defaults."""
    conn = Connection(conn_id="ds_typo", conn_type="dashscope", password=API_KEY, extra="{read_timeout: 30}")
    with pytest.raises(DashScopeConfigError, match="'ds_typo' Extra is not valid JSON; set it to a JSON object"):
        ConnectionSettings.from_connection(conn)
