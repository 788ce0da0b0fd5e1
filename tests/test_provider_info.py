"""Provider metadata: valid against Airflow's own schema, discoverable, and every path in it imports."""

from __future__ import annotations

import json
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path

import airflow
import jsonschema
import pytest

from airflow_provider_aitryon.connection import EXTRA_AMOUNT_FIELDS, EXTRA_BOOL_FIELDS, EXTRA_FIELDS, EXTRA_TEXT_FIELDS
from airflow_provider_aitryon.get_provider_info import get_provider_info

INFO = get_provider_info()


def test_provider_info_matches_airflows_schema():
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(INFO, schema)


def test_the_entry_point_airflow_reads_returns_it():
    (entry,) = [e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("airflow_provider_aitr")]
    assert entry.load()() == INFO


def test_airflows_providers_manager_finds_the_connection_type():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert "airflow-provider-aitryon" in manager.providers
    hook = manager.hooks["dashscope"]
    assert hook is not None
    assert hook.hook_class_name == "airflow_provider_aitryon.hooks.dashscope.DashScopeHook"
    assert hook.connection_id_attribute_name == "dashscope_conn_id"


@pytest.mark.parametrize("kind", ["hooks", "operators", "sensors", "triggers"])
def test_every_listed_module_imports(kind):
    modules = [module for entry in INFO[kind] for module in entry["python-modules"]]
    assert modules
    for module in modules:
        import_module(module)


def test_classes_named_in_it_exist():
    for dotted in [INFO["connection-types"][0]["hook-class-name"], *INFO["extra-links"]]:
        module, _, name = dotted.rpartition(".")
        assert getattr(import_module(module), name)


def test_connection_form_fields_are_the_extras_the_hook_reads():
    (conn,) = INFO["connection-types"]
    assert conn["connection-type"] == "dashscope"
    assert set(conn["conn-fields"]) == {*EXTRA_TEXT_FIELDS, *EXTRA_FIELDS, *EXTRA_BOOL_FIELDS, *EXTRA_AMOUNT_FIELDS}


def test_every_extra_in_the_form_says_what_it_does():
    (conn,) = INFO["connection-types"]
    for name, field in conn["conn-fields"].items():
        assert len(field.get("description", "")) > 20, f"extra {name} has no description"


def test_the_form_and_the_hook_show_the_same_labels_and_hints():
    from airflow_provider_aitryon.hooks.dashscope import DashScopeHook

    (conn,) = INFO["connection-types"]
    hook_side = {key.replace("_", "-"): value for key, value in DashScopeHook.get_ui_field_behaviour().items()}
    assert conn["ui-field-behaviour"] == hook_side
    assert "127.0.0.1:8089" in hook_side["placeholders"]["host"]
    assert conn["ui-field-behaviour"]["relabeling"] == {"password": "API key", "host": "Base URL"}
