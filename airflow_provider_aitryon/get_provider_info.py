"""Provider metadata, read by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_provider_aitryon import __version__
from airflow_provider_aitryon.connection import (
    CONN_TYPE,
    EXTRA_AMOUNT_FIELDS,
    EXTRA_BOOL_FIELDS,
    EXTRA_DESCRIPTIONS,
    EXTRA_FIELDS,
    UI_FIELD_BEHAVIOUR,
)

_PACKAGE = "airflow_provider_aitryon"
_INTEGRATION = "Alibaba Cloud DashScope AI Try-On"


def _conn_fields() -> dict[str, Any]:
    """The connection form's extra fields, from the one table the hook parses them with."""
    fields: dict[str, Any] = {
        "workspace": {"label": "Workspace", "schema": {"type": ["string", "null"]}},
        "scheme": {"label": "Scheme", "schema": {"type": ["string", "null"], "enum": ["https", "http", None]}},
    }
    for name, (kind, default, minimum) in EXTRA_FIELDS.items():
        json_type = "integer" if kind is int else "number"
        fields[name] = {
            "label": _label(name),
            "schema": {"type": [json_type, "null"], "default": default, "minimum": minimum},
        }
    for name, flag in EXTRA_BOOL_FIELDS.items():
        fields[name] = {"label": _label(name), "schema": {"type": ["boolean", "null"], "default": flag}}
    for name in EXTRA_AMOUNT_FIELDS:
        fields[name] = {"label": _label(name), "schema": {"type": ["number", "null"], "minimum": 0}}
    for name, spec in fields.items():
        spec["description"] = EXTRA_DESCRIPTIONS[name]
    return fields


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def _ui_field_behaviour() -> dict[str, Any]:
    # Provider metadata spells the keys with hyphens; the hook's classmethod with underscores.
    return {key.replace("_", "-"): value for key, value in UI_FIELD_BEHAVIOUR.items()}


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
                "python-modules": [
                    f"{_PACKAGE}.operators.{name}"
                    for name in ("refiner", "tryon", "storage", "batch", "approval", "report")
                ],
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
        # oss:// for ObjectStoragePath; imports without the [oss] extra, whose absence get_fs reports.
        "filesystems": [f"{_PACKAGE}.oss.fs"],
        "extra-links": [
            f"{_PACKAGE}.links.TryOnResultLink",
            f"{_PACKAGE}.links.SavedImageLink",
            f"{_PACKAGE}.links.ReviewGalleryLink",
        ],
        "connection-types": [
            {
                "connection-type": CONN_TYPE,
                "hook-class-name": f"{_PACKAGE}.hooks.dashscope.DashScopeHook",
                "hook-name": "DashScope (AI try-on)",
                "conn-fields": _conn_fields(),
                "ui-field-behaviour": _ui_field_behaviour(),
            }
        ],
    }
