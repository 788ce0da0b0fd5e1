"""Start and stop a real Airflow 3.3 (scheduler, triggerer, API server, dag processor) for tests.

What `airflow standalone` wires, but as separate processes a test can kill and restart one by one:
LocalExecutor on SQLite, every listening socket on 127.0.0.1 (the API server on a free port; the
log-serving subprocesses of the scheduler and triggerer, which would bind all interfaces, are
skipped with ``--skip-serve-logs``), short heartbeat and detection intervals so that restarts and
lost workers are noticed in seconds, a fixed JWT secret, API secret key and Fernet key shared by
all components, and a simple-auth-manager user whose password the test knows.

Each component is started in its own session; everything it forks stays in that session (task
processes only move to their own process group) and also carries ``AITRYON_REAL_AIRFLOW_TOKEN``.
``stop_all()`` finds the processes by session id (or token), SIGKILLs them by pid and reaps them:
the test process is made a child subreaper meanwhile, because orphans (a task process whose
supervisor was killed) would otherwise become zombies of a PID 1 that may never reap them. Nothing
is left behind, also when a test fails or is interrupted.

Usage::

    with RealAirflow.started(workdir, emulator.base_url, api_key, dag_files=[...], dag_ids=[...]) as af:
        af.trigger("aitryon_pipeline", run_id="r1", conf={"output": "/tmp/out"})
        af.wait_until(lambda: af.ti_state("aitryon_pipeline", "r1", "wait_for_coarse") == "deferred", 60, "...")
        assert af.wait_for_run("aitryon_pipeline", "r1", timeout=120) == "success"
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import REPO, airflow_env, migrate

T = TypeVar("T")

AIRFLOW_BIN = Path(sys.executable).with_name("airflow")
TOKEN_VAR = "AITRYON_REAL_AIRFLOW_TOKEN"
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
USERNAME = "tester"

# Seconds. The task heartbeat timeout must stay well above the workers' heartbeat interval so that
# a healthy task on a busy 2-core machine is never taken for a lost one.
TASK_HEARTBEAT_TIMEOUT = 15
WORKER_HEARTBEAT_INTERVAL = 2
TRIGGERER_HEALTH_CHECK_THRESHOLD = 5


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def component_args(name: str, api_port: int) -> list[str]:
    if name == "api-server":
        return ["api-server", "--host", "127.0.0.1", "--port", str(api_port), "--workers", "1"]
    if name in ("scheduler", "triggerer"):
        return [name, "--skip-serve-logs"]
    if name == "dag-processor":
        return ["dag-processor"]
    raise ValueError(f"unknown Airflow component {name!r}")


def real_airflow_env(
    home: Path,
    base_url: str,
    api_key: str,
    *,
    dags_folder: Path,
    api_port: int,
    token: str,
    fernet_key: str,
    passwords_file: Path,
    **extra: str,
) -> dict[str, str]:
    """harness.airflow_env plus what the long-running components need (see the module docstring)."""
    env = airflow_env(home, base_url, api_key=api_key)
    env.update(
        {
            TOKEN_VAR: token,
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "True",  # airflow.cfg would say false
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__CORE__FERNET_KEY": fernet_key,
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USERNAME}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(24),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(TASK_HEARTBEAT_TIMEOUT),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": str(WORKER_HEARTBEAT_INTERVAL),
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(TRIGGERER_HEALTH_CHECK_THRESHOLD),
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            # The DAG files never change during a test: parse them once at start, not every 30 s.
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "600",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        }
    )
    env.update(extra)
    return env


@dataclass
class Component:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class RealAirflow:
    """One private Airflow installation under ``workdir`` and the components running on it."""

    def __init__(
        self,
        workdir: Path,
        base_url: str,
        api_key: str,
        *,
        dag_files: Iterable[Path],
        **extra_env: str,
    ) -> None:
        self.workdir = workdir
        self.home = workdir / "airflow_home"
        self.dags_folder = workdir / "dags"
        self.component_logs = workdir / "component_logs"
        for path in (self.home, self.dags_folder, self.component_logs):
            path.mkdir(parents=True, exist_ok=True)
        for dag_file in dag_files:
            link = self.dags_folder / Path(dag_file).name
            if not link.exists():
                link.symlink_to(Path(dag_file).resolve())
        self.token = uuid.uuid4().hex
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.password = secrets.token_urlsafe(16)
        passwords_file = self.home / "simple_auth_manager_passwords.json"
        passwords_file.write_text(json.dumps({USERNAME: self.password}))
        from cryptography.fernet import Fernet

        self.fernet_key = Fernet.generate_key().decode()
        self.env = real_airflow_env(
            self.home,
            base_url,
            api_key,
            dags_folder=self.dags_folder,
            api_port=self.api_port,
            token=self.token,
            fernet_key=self.fernet_key,
            passwords_file=passwords_file,
            **extra_env,
        )
        self.components: list[Component] = []
        self._counts: dict[str, int] = {}
        # Orphans (a task process whose supervisor was killed, a killed component's children) would
        # otherwise go to PID 1, which in a container may never reap them. stop_all() restores this.
        self._was_subreaper = _set_child_subreaper(True)
        self._api_token: str | None = None

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    @contextlib.contextmanager
    def started(
        cls,
        workdir: Path,
        base_url: str,
        api_key: str,
        *,
        dag_files: Iterable[Path],
        dag_ids: Iterable[str],
        startup_timeout: float = 120,
        **extra_env: str,
    ) -> Iterator[RealAirflow]:
        """Migrate the DB, start all four components, wait until they work and the DAGs are parsed."""
        airflow = cls(workdir, base_url, api_key, dag_files=dag_files, **extra_env)
        try:
            migrate(airflow.env)
            for name in ("api-server", "dag-processor", "scheduler", "triggerer"):
                airflow.start(name)
            deadline = time.monotonic() + startup_timeout
            airflow.wait_for_api(timeout=deadline - time.monotonic())
            airflow.wait_until(
                lambda: all(airflow.dag_parsed(dag_id) for dag_id in dag_ids),
                deadline - time.monotonic(),
                f"the DAGs {sorted(dag_ids)} to be parsed",
            )
            airflow.wait_until(
                lambda: airflow.alive_job_id("SchedulerJob"), deadline - time.monotonic(), "a scheduler heartbeat"
            )
            airflow.wait_until(
                lambda: airflow.alive_job_id("TriggererJob"), deadline - time.monotonic(), "a triggerer heartbeat"
            )
            yield airflow
        finally:
            airflow.stop_all()

    def start(self, name: str) -> Component:
        """Start one component in its own session (process group), its output to a log file."""
        count = self._counts[name] = self._counts.get(name, 0) + 1
        log_path = self.component_logs / f"{name}-{count}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [str(AIRFLOW_BIN), *component_args(name, self.api_port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                start_new_session=True,
            )
        component = Component(name, process, log_path)
        self.components.append(component)
        return component

    def running(self, name: str) -> Component:
        matches = [c for c in self.components if c.name == name and c.alive()]
        if len(matches) != 1:
            raise RuntimeError(f"expected one running {name}, found {len(matches)}")
        return matches[0]

    def kill(self, component: Component, sig: signal.Signals = signal.SIGKILL, timeout: float = 30) -> int:
        """Signal a component and wait for it to exit; then SIGKILL whatever it left behind.

        SIGKILL goes to the whole process group and every descendant (a crash of the host);
        any other signal only to the component's main process (a polite stop that Airflow handles).
        Returns the main process's exit code.
        """
        descendants = _descendants(component.pid)
        if sig == signal.SIGKILL:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(component.pid, signal.SIGKILL)
            _kill_pids(descendants)
        else:
            with contextlib.suppress(ProcessLookupError):
                component.process.send_signal(sig)
        try:
            code = component.process.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(
                f"{component.name} (pid {component.pid}) did not exit within {timeout:g}s of {sig.name}:\n"
                f"{component.log_tail()}"
            ) from exc
        finally:
            leftovers = [pid for pid in descendants if _alive(pid)]
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(component.pid, signal.SIGKILL)
            _kill_pids(leftovers)
            self.reap()
        return code

    def processes(self) -> list[int]:
        """Every live process of this instance, by pid: in a component's session or carrying the token.

        Each component leads its own session; Airflow's task processes move to their own process
        group but stay in the session, so the session id finds them even after their parent died.
        (The environment token alone is not enough: setproctitle overwrites /proc/<pid>/environ.)
        """
        sessions = {c.pid for c in self.components}
        token = f"{TOKEN_VAR}={self.token}".encode()
        found = []
        for pid, session, state in _all_processes():
            if pid == os.getpid() or state == "Z":
                continue
            if session in sessions or token in _environ(pid):
                found.append(pid)
        return found

    def reap(self) -> None:
        """Collect exited processes of this instance that were orphaned to us (we are their subreaper)."""
        for component in self.components:
            component.process.poll()  # the components themselves are reaped by their Popen
        for pid in self._zombies():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)

    def stop_all(self, timeout: float = 30) -> None:
        """SIGKILL every process of this instance, by pid, and reap them all; leave nothing behind."""
        try:
            deadline = time.monotonic() + timeout
            while True:
                for component in self.components:
                    if component.process.poll() is None:
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(component.pid, signal.SIGKILL)
                live = self.processes()
                _kill_pids(live)
                self.reap()
                running = [c.pid for c in self.components if c.process.poll() is None]
                if not live and not running and not self._zombies():
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Airflow processes left after SIGKILL: {live or running or self._zombies()}")
                time.sleep(0.05)
        finally:
            _set_child_subreaper(self._was_subreaper)

    def _zombies(self) -> list[int]:
        """Exited, unreaped processes of this instance that are our children, except the components."""
        sessions = {c.pid for c in self.components}
        return [
            pid
            for pid, session, state in _all_processes()
            if state == "Z" and session in sessions and pid not in sessions and _parent(pid) == os.getpid()
        ]

    # ------------------------------------------------------------------ waiting

    def check_components(self) -> None:
        """Fail fast, with its log, when a component that should be running has died."""
        for component in self.components:
            if component.process.returncode is None and component.process.poll() is not None:
                raise RuntimeError(
                    f"{component.name} exited unexpectedly with {component.process.returncode}:\n{component.log_tail()}"
                )

    def wait_until(
        self,
        predicate: Callable[[], T],
        timeout: float,
        what: str,
        interval: float = 0.25,
        run: tuple[str, str] | None = None,
    ) -> T:
        """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds.

        The failure shows the components' last output and, with ``run=(dag_id, run_id)``, the task
        states and the errors in that run's task logs.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            self.check_components()
            self.reap()
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {c.name} ({c.log_path.name})\n{c.log_tail(1500)}" for c in self.components)
                about_run = ""
                if run is not None:
                    about_run = f"\nTask states: {self.task_states(*run)}\nTask log errors:\n{self.task_errors(*run)}"
                raise AssertionError(f"Timed out after {timeout:.0f}s waiting for {what}.{about_run}\n{tails}")
            time.sleep(interval)

    def task_errors(self, dag_id: str, run_id: str, limit: int = 6000) -> str:
        """Error and warning lines (with tracebacks) from the task logs of one run."""
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
        out = []
        for path in sorted(folder.rglob("*.log")):
            for line in path.read_text(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and entry.get("level") in ("warning", "error", "critical"):
                    detail = json.dumps(entry.get("error_detail"))[-1500:] if entry.get("error_detail") else ""
                    out.append(f"{path.parent.name}/{path.name}: {entry.get('event')} {detail}")
        return "\n".join(out)[-limit:] or "(none)"

    def wait_for_api(self, timeout: float) -> None:
        import requests

        def healthy() -> bool:
            try:
                return requests.get(f"{self.api_url}/api/v2/monitor/health", timeout=5).status_code == 200
            except requests.RequestException:
                return False

        self.wait_until(healthy, timeout, "the API server", interval=0.5)

    # ------------------------------------------------------------------ metadata DB

    def query(self, sql: str, params: tuple[Any, ...] = (), timeout: float = 30) -> list[tuple[Any, ...]]:
        """Read the metadata DB (read-only connection), riding out a writer's lock."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                db = sqlite3.connect(f"file:{self.home / 'airflow.db'}?mode=ro", uri=True, timeout=10)
                try:
                    return db.execute(sql, params).fetchall()
                finally:
                    db.close()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def dump_db(self) -> str:
        """The whole metadata DB as SQL text (sqlite3 iterdump)."""
        deadline = time.monotonic() + 30
        while True:
            try:
                db = sqlite3.connect(f"file:{self.home / 'airflow.db'}?mode=ro", uri=True, timeout=10)
                try:
                    return "\n".join(db.iterdump())
                finally:
                    db.close()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def snapshot_db(self, label: str) -> dict[str, Any]:
        """Keep the DB as it is now, for rows that later disappear (triggers, ledger Variables).

        Writes ``db_snapshots/<label>.sql`` (iterdump) and ``<label>.decrypted.json``: trigger kwargs
        and Variable values are Fernet-encrypted in the DB, so a scan of the dump alone would not
        see what they hold. Returns ``{"dump", "triggers", "variables"}``.
        """
        folder = self.workdir / "db_snapshots"
        folder.mkdir(exist_ok=True)
        dump = self.dump_db()
        (folder / f"{label}.sql").write_text(dump)
        triggers = [
            {"id": trigger_id, "classpath": classpath, "kwargs": self._plain(kwargs)}
            for trigger_id, classpath, kwargs in self.query("SELECT id, classpath, kwargs FROM trigger")
        ]
        variables = {
            key: self.decrypt(val) if encrypted else val
            for key, val, encrypted in self.query("SELECT key, val, is_encrypted FROM variable")
        }
        decrypted = {"triggers": triggers, "variables": variables}
        (folder / f"{label}.decrypted.json").write_text(json.dumps(decrypted, indent=1))
        return {"dump": dump, **decrypted}

    def _plain(self, kwargs: str) -> str:
        return kwargs if kwargs.startswith("{") else self.decrypt(kwargs)

    def dag_parsed(self, dag_id: str) -> bool:
        return bool(
            self.query(
                "SELECT 1 FROM dag d JOIN serialized_dag s ON s.dag_id = d.dag_id "
                "WHERE d.dag_id = ? AND NOT d.is_stale",
                (dag_id,),
            )
        )

    def alive_job_id(self, job_type: str) -> int | None:
        """Id of the newest running job of this type with a heartbeat in the last few seconds."""
        rows = self.query(
            "SELECT id FROM job WHERE job_type = ? AND state = 'running' AND end_date IS NULL "
            "AND latest_heartbeat > strftime('%Y-%m-%d %H:%M:%f', 'now', ?) ORDER BY id DESC LIMIT 1",
            (job_type, f"-{TRIGGERER_HEALTH_CHECK_THRESHOLD} seconds"),
        )
        return int(rows[0][0]) if rows else None

    def ti(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any] | None:
        """The task instance row joined with its trigger row (``trigger_*`` keys), or None."""
        rows = self.query(
            "SELECT ti.state, ti.try_number, ti.trigger_id, t.triggerer_id, t.classpath, ti.pid, ti.hostname "
            "FROM task_instance ti LEFT JOIN trigger t ON t.id = ti.trigger_id "
            "WHERE ti.dag_id = ? AND ti.run_id = ? AND ti.task_id = ? AND ti.map_index = -1",
            (dag_id, run_id, task_id),
        )
        if not rows:
            return None
        state, try_number, trigger_id, triggerer_id, classpath, pid, hostname = rows[0]
        return {
            "state": state,
            "try_number": try_number,
            "trigger_id": trigger_id,
            "trigger_triggerer_id": triggerer_id,
            "trigger_classpath": classpath,
            "pid": pid,
            "hostname": hostname,
        }

    def ti_state(self, dag_id: str, run_id: str, task_id: str) -> str | None:
        row = self.ti(dag_id, run_id, task_id)
        return row["state"] if row else None

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        rows = self.query(
            "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ? AND map_index = -1",
            (dag_id, run_id),
        )
        return {task_id: state for task_id, state in rows}

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        rows = self.query("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", (dag_id, run_id))
        return rows[0][0] if rows else None

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> str:
        """Wait until the run ends; return its final state."""
        return str(
            self.wait_until(
                lambda: (state := self.run_state(dag_id, run_id)) in ("success", "failed") and state,
                timeout,
                f"run {run_id} of {dag_id} to end",
                run=(dag_id, run_id),
            )
        )

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        rows = self.query(
            "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = ? AND key = ? AND map_index = -1",
            (dag_id, run_id, task_id, key),
        )
        if not rows:
            return None
        value = rows[0][0]
        if isinstance(value, bytes):
            value = value.decode()
        return json.loads(value) if isinstance(value, str) else value

    def decrypt(self, token: str) -> str:
        """Undo Airflow's Fernet encryption (trigger kwargs, encrypted variables) with this instance's key."""
        from cryptography.fernet import Fernet

        return Fernet(self.fernet_key.encode()).decrypt(token.encode()).decode()

    # ------------------------------------------------------------------ CLI and REST API

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run an ``airflow`` CLI command against this instance; its output is kept under component_logs."""
        result = subprocess.run(
            [str(AIRFLOW_BIN), *args], env=self.env, capture_output=True, text=True, timeout=timeout, cwd=REPO
        )
        count = self._counts["cli"] = self._counts.get("cli", 0) + 1
        (self.component_logs / f"cli-{count}.log").write_text(
            f"$ airflow {' '.join(args)}\n[exit {result.returncode}]\n{result.stdout}\n{result.stderr}"
        )
        return result

    def trigger(self, dag_id: str, run_id: str, conf: Mapping[str, Any] | None = None) -> None:
        """``airflow dags trigger`` with a known run id."""
        args = ["dags", "trigger", dag_id, "--run-id", run_id]
        if conf:
            args += ["--conf", json.dumps(dict(conf))]
        result = self.cli(*args)
        if result.returncode != 0:
            raise RuntimeError(f"airflow dags trigger failed:\n{result.stdout}\n{result.stderr}")

    def api_token(self) -> str:
        """A JWT from the simple auth manager: ``POST /auth/token`` with the test user's password."""
        import requests

        if self._api_token is None:
            response = requests.post(
                f"{self.api_url}/auth/token",
                json={"username": USERNAME, "password": self.password},
                timeout=30,
            )
            response.raise_for_status()
            self._api_token = str(response.json()["access_token"])
        return self._api_token

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the public REST API (``/api/v2`` + path) as the test user."""
        import requests

        headers = {"Authorization": f"Bearer {self.api_token()}", **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.api_url}/api/v2{path}", headers=headers, timeout=60, **kwargs)


# ---------------------------------------------------------------------- processes, by pid


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _kill_pids(pids: Iterable[int]) -> None:
    for pid in pids:
        if pid == os.getpid():
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _all_processes() -> list[tuple[int, int, str]]:
    """(pid, session id, state letter) of every process, from /proc."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp session ...; comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        out.append((int(proc.name), int(fields[3]), fields[0]))
    return out


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def _set_child_subreaper(enable: bool) -> bool:
    """prctl(PR_SET_CHILD_SUBREAPER) for this process; returns the previous setting (Linux only)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        previous = ctypes.c_int(0)
        libc.prctl(37, ctypes.byref(previous), 0, 0, 0)  # PR_GET_CHILD_SUBREAPER
        libc.prctl(36, int(enable), 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
        return bool(previous.value)
    except (OSError, AttributeError):
        return False
