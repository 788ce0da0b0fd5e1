"""SaveTryOnResultOperator: copy a try-on result to durable storage before DashScope deletes it.

The storage library it runs on (``save_image``, ``atomic_write``, ``resolve_destination``) lives in
`airflow_provider_aitryon.storage`; its names stay importable from here for existing DAGs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_aitryon import lineage
from airflow_provider_aitryon.links import SavedImageLink, remember_result
from airflow_provider_aitryon.operators.report import emit_asset_extra
from airflow_provider_aitryon.storage import (  # noqa: F401  (kept importable from here)
    DEFAULT_ATTEMPTS,
    DEFAULT_MAX_BYTES,
    DEFAULT_TIMEOUT,
    MAX_RESULT_SIDE,
    StorageTarget,
    atomic_write,
    resolve_destination,
    save_image,
)

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context


class SaveTryOnResultOperator(BaseOperator):
    """Copy a try-on result image to durable storage; return what was saved.

    DashScope deletes result URLs 24 hours after the task ends, so schedule this right after the
    sensor. The download is capped, retried on transient errors, checked to be a real image and
    written atomically (see ``save_image`` and ``atomic_write``). An expired URL fails the task
    without retries, because none could succeed.

    The XCom ``return_value`` is ``{"uri", "bytes", "sha256", "format", "width", "height",
    "source_url"}``. To make downstream DAGs run when the file lands, pass
    ``outlets=[Asset(...)]``: each Asset outlet's event carries that dict as its ``extra``, so a
    consumer finds the saved file's URI and checksum in ``triggering_asset_events``.

    :param image_url: the result URL, or the dict the DashScope sensor returned (then its
        ``task_id`` names the file in a directory destination); an XComArg such as
        ``wait.output`` works (templated).
    :param destination: local path, ``file://`` URI or ObjectStoragePath URI; ending with ``/`` (or
        an existing directory) means "in this directory" (templated).
    :param max_bytes: largest body accepted, default 20 MiB.
    :param timeout: seconds, or (connect, read) seconds, per HTTP read.
    :param overwrite: replace an existing file (default); False fails when the file exists.
    :param conn_id: Airflow connection for the object store, e.g. ``aws_default`` (templated).
    :param attempts: tries for transient download failures before the task fails.
    """

    template_fields: Sequence[str] = ("image_url", "destination", "conn_id")
    ui_color = "#e8f5e9"
    operator_extra_links = (SavedImageLink(),)

    def __init__(
        self,
        *,
        image_url: Any,
        destination: Any,
        max_bytes: int = DEFAULT_MAX_BYTES,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        overwrite: bool = True,
        conn_id: str | None = None,
        attempts: int = DEFAULT_ATTEMPTS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.image_url = image_url
        self.destination = destination
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.overwrite = overwrite
        self.conn_id = conn_id
        self.attempts = attempts

    def execute(self, context: Context) -> dict[str, Any]:
        saved = save_image(
            self.image_url,
            self.destination,
            max_bytes=self.max_bytes,
            timeout=self.timeout,
            overwrite=self.overwrite,
            conn_id=self.conn_id or None,
            attempts=self.attempts,
            report_lineage=False,  # this operator names its datasets itself (get_openlineage_facets_on_complete)
        )
        remember_result(self, saved)  # for the "Saved image" link
        self._lineage_saved = saved  # for get_openlineage_facets_on_complete
        # A downstream DAG scheduled on the Asset learns which file landed from the event's extra.
        emit_asset_extra(context, self.outlets, saved)
        return saved

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage | None:
        """OpenLineage: the result URL read (input, without its query string), the saved copy written
        (output, with its size and its sha256 as the dataset version) and any Asset outlets.

        Named by `airflow_provider_aitryon.lineage`. None when the openlineage provider is not installed.
        """
        return lineage.save_lineage(self.image_url, getattr(self, "_lineage_saved", None), outlets=self.outlets)
