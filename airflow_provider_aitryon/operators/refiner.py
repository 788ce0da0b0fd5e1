"""RefinerSubmitOperator: submit an aitryon-refiner task and hand its task id to XCom."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_aitryon import api
from airflow_provider_aitryon.connection import DEFAULT_CONN_ID
from airflow_provider_aitryon.failures import airflow_errors
from airflow_provider_aitryon.hooks.dashscope import DashScopeHook

if TYPE_CHECKING:
    from airflow.sdk import Context


class RefinerSubmitOperator(BaseOperator):
    """Submit a coarse try-on image to ``aitryon-refiner``; return the DashScope task id.

    The person and garment URLs must be the ones the coarse stage was given, and the coarse image
    must have been made with ``resolution=-1`` and ``restore_face=true``. Every argument is checked
    before any HTTP call. The task id is the XCom ``return_value``; the request id is pushed as
    ``request_id`` for support tickets. Wait for the result with ``RefinerTaskSensor``.

    :param person_image_url: http(s) URL of the person image (templated).
    :param top_garment_url: http(s) URL of the top garment, or a dress (templated).
    :param coarse_image_url: http(s) URL of the coarse try-on result (templated).
    :param gender: ``woman`` or ``man`` (templated).
    :param bottom_garment_url: http(s) URL of the bottom garment; None for a dress (templated).
    :param dashscope_conn_id: connection of type ``dashscope``.
    """

    template_fields: Sequence[str] = (
        "person_image_url",
        "top_garment_url",
        "bottom_garment_url",
        "coarse_image_url",
        "gender",
        "dashscope_conn_id",
    )
    ui_color = "#f3e5f5"

    def __init__(
        self,
        *,
        person_image_url: Any,
        top_garment_url: Any,
        coarse_image_url: Any,
        gender: Any = "woman",
        bottom_garment_url: Any = None,
        dashscope_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.person_image_url = person_image_url
        self.top_garment_url = top_garment_url
        self.bottom_garment_url = bottom_garment_url
        self.coarse_image_url = coarse_image_url
        self.gender = gender
        self.dashscope_conn_id = dashscope_conn_id

    def build_call(self) -> api.ApiCall:
        return api.refiner_call(
            person_image_url=self.person_image_url,
            top_garment_url=self.top_garment_url,
            bottom_garment_url=self.bottom_garment_url,
            coarse_image_url=self.coarse_image_url,
            gender=self.gender,
        )

    def execute(self, context: Context) -> str:
        with airflow_errors():
            call = self.build_call()
            submitted = DashScopeHook(dashscope_conn_id=self.dashscope_conn_id).submit(call)
        context["ti"].xcom_push(key="request_id", value=submitted.request_id)
        return submitted.task_id
