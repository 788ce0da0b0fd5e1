"""TryOnSubmitOperator: the coarse try-on stage (``aitryon``, ``aitryon-plus``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_provider_aitryon import api
from airflow_provider_aitryon.errors import DashScopeConfigError
from airflow_provider_aitryon.failures import AirflowFailException
from airflow_provider_aitryon.operators.base import DashScopeSubmitOperator


class TryOnSubmitOperator(DashScopeSubmitOperator):
    """Submit a coarse try-on task: a person image dressed in one or two garments.

    With ``for_refiner=True`` (the default) it sends ``resolution=-1`` and ``restore_face=true``,
    the only settings whose result ``aitryon-refiner`` accepts, and refuses others when the DAG is
    parsed (literal values) or run (templated values).

    :param person_image_url: http(s) URL of the person image (templated).
    :param top_garment_url: http(s) URL of the top garment; a dress or jumpsuit goes here (templated).
    :param bottom_garment_url: http(s) URL of the bottom garment (templated). At least one garment.
    :param model: ``aitryon`` (default), ``aitryon-plus`` or a successor model's name (templated).
    :param resolution: -1 (keep the person image's size), 1024 (576x1024) or 1280 (720x1280).
    :param restore_face: keep the person's face.
    :param for_refiner: the result will be refined; enforces resolution=-1 and restore_face=True.

    The connection, reuse-on-retry, pre-flight and wait arguments are those of
    :class:`~airflow_provider_aitryon.operators.base.DashScopeSubmitOperator`.
    """

    template_fields: Sequence[str] = (
        "person_image_url",
        "top_garment_url",
        "bottom_garment_url",
        "model",
        "resolution",
        "restore_face",
        "dashscope_conn_id",
    )
    ui_color = "#ede7f6"

    def __init__(
        self,
        *,
        person_image_url: Any,
        top_garment_url: Any = None,
        bottom_garment_url: Any = None,
        model: Any = api.MODEL_TRYON,
        resolution: Any = -1,
        restore_face: Any = True,
        for_refiner: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.person_image_url = person_image_url
        self.top_garment_url = top_garment_url
        self.bottom_garment_url = bottom_garment_url
        self.model = model
        self.resolution = resolution
        self.restore_face = restore_face
        self.for_refiner = for_refiner
        if not _templated(resolution) and not _templated(restore_face):
            # Fail when the DAG is parsed: a wrong coarse setting would only surface as a paid,
            # failed refiner task much later.
            try:
                api.check_tryon_parameters(resolution, restore_face, for_refiner)
            except DashScopeConfigError as exc:
                raise AirflowFailException(f"Task {self.task_id!r}: {exc}") from None

    def build_call(self) -> api.ApiCall:
        return api.tryon_call(
            person_image_url=self.person_image_url,
            top_garment_url=self.top_garment_url,
            bottom_garment_url=self.bottom_garment_url,
            model=self.model,
            resolution=self.resolution,
            restore_face=self.restore_face,
            for_refiner=self.for_refiner,
        )


def _templated(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)
