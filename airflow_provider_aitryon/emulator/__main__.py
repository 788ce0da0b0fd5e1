"""Run the emulator as a process: ``python -m airflow_provider_aitryon.emulator --help``.

Why a process mode: demos, DAG runs under a real Airflow scheduler and shell benchmarks need a
server that outlives one Python call. Scripts start it with ``--port 0 --url-file F`` and read the
chosen URL from F (written atomically before the "listening" line is printed), and stop it with
SIGTERM, which shuts it down cleanly with exit status 0.

The deterministic money-audit faults are settable here too (``--lost-reply-submits``,
``--lost-reply-kind``, ``--clock-skew-seconds``, ``--neighbor-submit-seconds``) and, at runtime, via
``POST /_emulator/config``.

The control routes (``/_emulator/...``) need the control token in the ``X-Emulator-Token`` header.
It is random per start (or ``$AITRYON_EMULATOR_CONTROL_TOKEN``), printed on the line after
"listening", and written (mode 0600) to ``--token-file``, by default ``<url-file>.token`` next to
``--url-file``; the token file is written before the URL file, so a script that sees the URL can
read the token.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from airflow_provider_aitryon.emulator.config import LOST_REPLY_KINDS, RESULT_SHAPES, EmulatorConfig
from airflow_provider_aitryon.emulator.samples import make_samples
from airflow_provider_aitryon.emulator.server import Emulator

API_KEY_ENV = "AITRYON_EMULATOR_API_KEY"
CONTROL_TOKEN_ENV = "AITRYON_EMULATOR_CONTROL_TOKEN"


def _rate(text: str) -> float | None:
    value = float(text)
    return value if value > 0 else None


def _model_latency(text: str) -> tuple[str, float]:
    model, sep, seconds = text.partition("=")
    if not sep or not model:
        raise argparse.ArgumentTypeError("expected MODEL=SECONDS, e.g. aitryon-refiner=8")
    return model, float(seconds)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m airflow_provider_aitryon.emulator",
        description="Local emulator of the DashScope AI try-on HTTP API (binds 127.0.0.1 by default).",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8089, help="0 picks a free port (see --url-file)")
    p.add_argument("--latency", type=float, default=2.0, help="seconds each task spends RUNNING")
    p.add_argument(
        "--latency-model",
        type=_model_latency,
        action="append",
        default=[],
        metavar="MODEL=SECONDS",
        help="per-model latency override, repeatable",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"only this bearer key is accepted (default: ${API_KEY_ENV}; unset = any non-empty key)",
    )
    p.add_argument("--max-running", type=int, default=5, help="tasks RUNNING at once per API key")
    p.add_argument("--submit-rate", type=_rate, default=10.0, help="submits/s per key; 0 = unlimited")
    p.add_argument("--query-rate", type=_rate, default=20.0, help="queries/s per key; 0 = unlimited")
    p.add_argument("--expiry-seconds", type=float, default=86400.0, help="task and result lifetime after it ends")
    p.add_argument("--samples", type=Path, help="serve the files of this directory at /samples/<name>")
    p.add_argument(
        "--make-samples",
        type=Path,
        metavar="DIR",
        help="write the deterministic sample images to DIR (and serve DIR unless --samples is given)",
    )
    p.add_argument("--no-serve", action="store_true", help="with --make-samples: write the samples and exit")
    p.add_argument("--result-shape", choices=RESULT_SHAPES, default="object")
    for kind, what in (
        ("5xx", "answer 500 InternalError / 503 ModelUnavailable"),
        ("429", "answer 429 Throttling without creating anything"),
        ("drop", "close the connection without a response (half of them after the work was done)"),
        ("slow", "sleep --slow-seconds before answering"),
        ("malformed", "answer an HTML 502 page or truncated JSON"),
    ):
        p.add_argument(f"--fault-{kind}", type=float, default=0.0, metavar="P", help=f"probability to {what}")
    p.add_argument("--slow-seconds", type=float, default=3.0)
    p.add_argument(
        "--lost-reply-submits",
        type=int,
        default=0,
        metavar="N",
        help="process the next N accepted submits normally (task created and charged), then lose their reply "
        "as --lost-reply-kind says; rejected submits do not count",
    )
    p.add_argument(
        "--lost-reply-kind",
        choices=LOST_REPLY_KINDS,
        default="504",
        help="how a reply is lost: 504/502 = HTML gateway error page, empty = HTTP 200 with no body, "
        "drop = connection closed without a response (default: 504)",
    )
    p.add_argument(
        "--clock-skew-seconds",
        type=float,
        default=0.0,
        metavar="S",
        help="the service's wall clock runs S seconds ahead (negative: behind) of the host: task times, "
        "list filters and the Date header all shift",
    )
    p.add_argument(
        "--neighbor-submit-seconds",
        type=float,
        default=None,
        metavar="S",
        help="each lost reply first creates another submitter's task on the same account with the same inputs, "
        "submitted S seconds earlier, whose result PNG differs from ours",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the fault generator")
    p.add_argument("--workers", type=int, default=4, help="render threads")
    p.add_argument("--allow-external-fetch", action="store_true", help="also fetch non-loopback image URLs")
    p.add_argument("--url-file", type=Path, help="write the base URL to this file once listening")
    p.add_argument(
        "--token-file",
        type=Path,
        help="write the control token (for the /_emulator/ routes' X-Emulator-Token header) to this file "
        f"(default: <url-file>.token when --url-file is given); ${CONTROL_TOKEN_ENV} sets the token, else it is random",
    )
    p.add_argument("--quiet", action="store_true", help="no per-request log lines on stderr")
    return p


def token_file_for(url_file: Path) -> Path:
    """Where the control token goes by default: ``<url-file>.token``, next to the URL file."""
    return url_file.with_name(url_file.name + ".token")


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file readable by its owner only (0600): fine for the URL, needed for the token.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    samples_dir = args.samples
    if args.make_samples is not None:
        written = make_samples(args.make_samples)
        print(f"wrote {len(written)} sample images to {args.make_samples}", file=sys.stderr, flush=True)
        if args.no_serve:
            return 0
        samples_dir = samples_dir or args.make_samples
    try:
        config = EmulatorConfig(
            host=args.host,
            port=args.port,
            latency=args.latency,
            latency_by_model=dict(args.latency_model),
            api_key=args.api_key or None,
            max_running=args.max_running,
            submit_rate=args.submit_rate,
            query_rate=args.query_rate,
            expiry_seconds=args.expiry_seconds,
            samples_dir=samples_dir,
            result_shape=args.result_shape,
            fault_5xx=args.fault_5xx,
            fault_429=args.fault_429,
            fault_drop=args.fault_drop,
            fault_slow=args.fault_slow,
            fault_malformed=args.fault_malformed,
            slow_seconds=args.slow_seconds,
            lost_reply_submits=args.lost_reply_submits,
            lost_reply_kind=args.lost_reply_kind,
            clock_skew_seconds=args.clock_skew_seconds,
            neighbor_submit_seconds=args.neighbor_submit_seconds,
            seed=args.seed,
            workers=args.workers,
            allow_external_fetch=args.allow_external_fetch,
            log_requests=not args.quiet,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    emulator = Emulator(config, control_token=os.environ.get(CONTROL_TOKEN_ENV) or None).start()
    try:
        token_file = args.token_file or (token_file_for(args.url_file) if args.url_file is not None else None)
        if token_file is not None:
            _write_atomically(token_file, emulator.control_token + "\n")
        if args.url_file is not None:
            _write_atomically(args.url_file, emulator.base_url + "\n")
        print(f"DashScope emulator listening on {emulator.base_url}", flush=True)
        where = f" (also in {token_file})" if token_file is not None else ""
        print(f"Control token for the /_emulator/ routes' X-Emulator-Token header{where}: {emulator.control_token}",
              flush=True)  # fmt: skip
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
    print("DashScope emulator stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
