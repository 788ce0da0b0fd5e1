"""RefinerSubmitOperator: submit an aitryon-refiner task and hand its task id to XCom."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_provider_aitryon import api
from airflow_provider_aitryon.operators.base import DashScopeSubmitOperator


class RefinerSubmitOperator(DashScopeSubmitOperator):
    """Submit a coarse try-on image to ``aitryon-refiner``; return the DashScope task id.

    The person and garment URLs must be the ones the coarse stage was given, and the coarse image
    must have been made with ``resolution=-1`` and ``restore_face=true`` (TryOnSubmitOperator does
    that by default). Every argument is checked before any HTTP call. The task id is the XCom
    ``return_value`` (also pushed as ``dashscope_task_id`` the moment it is known), the request id
    is pushed as ``request_id``. Wait with ``RefinerTaskSensor``, or set ``wait_for_completion``.

    :param person_image_url: http(s) URL of the person image (templated).
    :param top_garment_url: http(s) URL of the top garment, or a dress (templated).
    :param coarse_image_url: http(s) URL of the coarse try-on result (templated).
    :param gender: ``woman`` or ``man`` (templated).
    :param bottom_garment_url: http(s) URL of the bottom garment; None or empty for a dress (templated).
    :param model: the refiner model name, one setting away from a successor model (templated).

    The connection, reuse-on-retry, pre-flight and wait arguments are those of
    :class:`~airflow_provider_aitryon.operators.base.DashScopeSubmitOperator`.
    """

    template_fields: Sequence[str] = (
        "person_image_url",
        "top_garment_url",
        "bottom_garment_url",
        "coarse_image_url",
        "gender",
        "model",
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
        model: Any = api.MODEL_REFINER,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.person_image_url = person_image_url
        self.top_garment_url = top_garment_url
        self.bottom_garment_url = bottom_garment_url
        self.coarse_image_url = coarse_image_url
        self.gender = gender
        self.model = model

    def build_call(self) -> api.ApiCall:
        return api.refiner_call(
            person_image_url=self.person_image_url,
            top_garment_url=self.top_garment_url,
            bottom_garment_url=self.bottom_garment_url,
            coarse_image_url=self.coarse_image_url,
            gender=self.gender,
            model=self.model,
        )
