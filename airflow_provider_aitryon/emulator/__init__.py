"""An embedded emulator of the DashScope AI try-on HTTP API, for tests, demos and benchmarks.

Why: the real service is paid per image, rate limited, slow (tens of seconds per task) and not
reachable from CI. The provider's hard parts — async submit/poll, queueing behind the 5-running
limit, 429 handling, lost responses, expiry, result download — can only be tested honestly
against something that behaves like the service over real HTTP. This package is that something,
using only the standard library and Pillow.

In process::

    from airflow_provider_aitryon.emulator import Emulator, EmulatorConfig, ManualClock

    with Emulator(EmulatorConfig(latency=0.2, api_key="sk-test")) as emu:
        emu.base_url                      # http://127.0.0.1:<free port>
        emu.sample_url("person.png")      # built-in deterministic sample images
        emu.update(fault_429=0.2)         # change faults/limits at runtime
        emu.update(lost_reply_submits=1)  # the next accepted submit's reply is lost (504)
        emu.stats()                       # same dict as GET /_emulator/stats

As a process: ``python -m airflow_provider_aitryon.emulator --port 0 --url-file /tmp/url``
(see ``--help``).

HTTP surface (paths from ``airflow_provider_aitryon.api``):

* ``POST /api/v1/services/aigc/image2image/image-synthesis[/]`` — submit (needs
  ``Authorization: Bearer <key>`` and ``X-DashScope-Async: enable``);
* ``GET /api/v1/tasks/{id}`` — query; ``POST /api/v1/tasks/{id}/cancel`` — cancel (PENDING only;
  400 ``UnsupportedOperation`` otherwise, 404 ``NotFound`` for unknown/expired ids);
  ``GET /api/v1/tasks?status=&model_name=&start_time=&end_time=&page_no=&page_size=`` — list;
* ``GET /api/v1/uploads?action=getPolicy&model=`` — an upload policy for DashScope's temporary
  storage; ``POST /_oss_upload`` — the OSS form upload it names; a submit with
  ``X-DashScope-OssResourceResolve: enable`` reads ``oss://dashscope-instant/...`` inputs from it
  (``temp_storage``);
* ``GET /results/{id}.png`` — task output (404 until SUCCEEDED and after expiry);
* ``GET /samples/{name}`` — files directly inside ``samples_dir`` (a start-up option), falling
  back to the built-in samples;
* ``GET /health``;
* control, no faults, not logged: ``GET /_emulator/stats``, ``GET /_emulator/tasks``,
  ``GET /_emulator/requests``, ``GET|POST /_emulator/config``, ``POST /_emulator/reset``. Each
  needs the control token in ``X-Emulator-Token`` (``emu.control_headers``; the CLI prints it and
  writes it next to ``--url-file``); POSTs must be JSON; requests from another origin's web page
  are refused. The request log never holds an ``Authorization`` value (``api_key_fingerprint``
  stands in: compare with ``emu.key_fingerprint(key)``).

Deterministic faults for money audits (see ``config``): ``lost_reply_submits`` with
``lost_reply_kind`` (accept a submit, then lose its reply as a 504/502 page, an empty 200 or a
dropped connection), ``clock_skew_seconds`` (the service clock, and every ``Date`` header, runs
ahead or behind) and ``neighbor_submit_seconds`` (each lost reply comes with another submitter's
task on the same account). ``emu.tasks_per_request()`` counts client tasks per request digest.

Behavioural details (scheduling, faults, chosen error codes) are documented in ``state`` and
``server``; image checks and rendering in ``imaging``; sample images in ``samples``.
"""

from __future__ import annotations

from airflow_provider_aitryon.emulator.config import RESULT_SHAPES, EmulatorConfig
from airflow_provider_aitryon.emulator.samples import SAMPLE_NAMES, make_samples, sample_images
from airflow_provider_aitryon.emulator.server import Emulator
from airflow_provider_aitryon.emulator.state import ManualClock

__all__ = [
    "RESULT_SHAPES",
    "SAMPLE_NAMES",
    "Emulator",
    "EmulatorConfig",
    "ManualClock",
    "make_samples",
    "sample_images",
]
