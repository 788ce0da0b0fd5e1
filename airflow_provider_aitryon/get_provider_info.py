"""Provider metadata, read by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_provider_aitryon import __version__
from airflow_provider_aitryon.connection import CONN_TYPE, EXTRA_BOOL_FIELDS, EXTRA_FIELDS

_PACKAGE = "airflow_provider_aitryon"
_INTEGRATION = "Alibaba Cloud DashScope AI Try-On"


def _conn_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {
        "workspace": {
            "label": "Workspace",
            "schema": {"type": ["string", "null"]},
            "description": "Optional workspace id, sent as X-DashScope-WorkSpace.",
        }
    }
    for name, (kind, default, minimum) in EXTRA_FIELDS.items():
        json_type = "integer" if kind is int else "number"
        fields[name] = {
            "label": name.replace("_", " ").capitalize(),
            "schema": {"type": [json_type, "null"], "default": default, "minimum": minimum},
        }
    for name, flag in EXTRA_BOOL_FIELDS.items():
        fields[name] = {
            "label": name.replace("_", " ").capitalize(),
            "schema": {"type": ["boolean", "null"], "default": flag},
            "description": "After a lost submit reply, adopt the one task created meanwhile (off for accounts "
            "shared with other submitters: the item then fails instead).",
        }
    return fields


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-aitryon",
        "name": "DashScope AI Try-On",
        "description": "Alibaba Cloud DashScope AI virtual try-on (OutfitAnyone): coarse try-on and "
        "the aitryon-refiner, with a built-in emulator of the API.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": _INTEGRATION,
                "external-doc-url": "https://help.aliyun.com/zh/model-studio/outfitanyone-image-refiner-api",
                "tags": ["service"],
            }
        ],
        "hooks": [{"integration-name": _INTEGRATION, "python-modules": [f"{_PACKAGE}.hooks.dashscope"]}],
        "operators": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": [f"{_PACKAGE}.operators.{name}" for name in ("refiner", "tryon", "storage", "batch")],
            }
        ],
        "sensors": [{"integration-name": _INTEGRATION, "python-modules": [f"{_PACKAGE}.sensors.refiner"]}],
        "triggers": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": [
                    f"{_PACKAGE}.triggers.dashscope",
                    f"{_PACKAGE}.triggers.catalog",
                    f"{_PACKAGE}.triggers.batch",
                ],
            }
        ],
        "extra-links": [f"{_PACKAGE}.links.TryOnResultLink"],
        "connection-types": [
            {
                "connection-type": CONN_TYPE,
                "hook-class-name": f"{_PACKAGE}.hooks.dashscope.DashScopeHook",
                "hook-name": "DashScope (AI try-on)",
                "conn-fields": _conn_fields(),
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port"],
                    "relabeling": {"password": "API key", "host": "Base URL"},
                    "placeholders": {
                        "host": "empty for https://dashscope.aliyuncs.com, or http://127.0.0.1:8089",
                        "password": "your DashScope API key",
                    },
                },
            }
        ],
    }
