"""Operator extra links: a button in the Airflow UI that opens the try-on result image."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


class TryOnResultLink(BaseOperatorLink):
    """Opens the result image URL from the task's result (valid for 24 hours after the task ended)."""

    name = "Try-on result"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        value: Any = XCom.get_value(ti_key=ti_key, key="return_value")
        if isinstance(value, dict) and isinstance(value.get("image_url"), str):
            return value["image_url"]
        return ""
