"""The Airflow version matrix: one venv per supported Airflow minor, each from its own constraints.

    python scripts/matrix.py test [--minor 3.1 ...] [--ci] [-- pytest args]
    python scripts/matrix.py constraints [--minor 3.1 ...]

``test`` builds ``.venv-matrix/airflow-<minor>`` from the minor's constraints file (reused while
its stamp is newer than that file and pyproject.toml), runs the suite there without the slow
real-Airflow tests (``-m "not integration or matrix"``: the cheap integration tests that run a
real DAG are marked ``matrix``), and prints one table: version, passed, failed, skipped, time.
``--ci`` runs the minors `make test` does not already cover (all but the default one).

``constraints`` regenerates ``constraints/airflow-<minor>.txt``: a fresh venv with the minor's
latest ``apache-airflow`` release and ``.[dev]``, at the default set's versions except where that
minor refuses them, then frozen (Airflow's own constraint files are not reachable from here). The
default minor's set is the root constraints.txt, which `make constraints` re-pins from .venv.

Only the standard library: it runs under any Python 3.10+, before any venv exists.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MATRIX_DIR = REPO / ".venv-matrix"
PYPROJECT = REPO / "pyproject.toml"

# Supported minors and their pinned sets; keep in step with pyproject.toml's apache-airflow range,
# compat.MIN_AIRFLOW and docs/versions.rst (tests/test_compat.py checks the first two).
DEFAULT_MINOR = "3.3"
CONSTRAINTS = {
    "3.1": REPO / "constraints" / "airflow-3.1.txt",
    "3.2": REPO / "constraints" / "airflow-3.2.txt",
    DEFAULT_MINOR: REPO / "constraints.txt",
}

DEFAULT_CONSTRAINTS_NAME = CONSTRAINTS[DEFAULT_MINOR].name
# Set by the minor itself, never carried over from the default set.
AIRFLOW_ITSELF = {"apache-airflow", "apache-airflow-core", "apache-airflow-task-sdk"}

# Everything but the slow real-Airflow tests, plus the integration tests marked ``matrix``: real
# DAG runs (`airflow dags test`, deferring to an in-process triggerer) that take about a minute and
# exercise what differs between versions.
MARKERS = "not integration or matrix"


@dataclass
class Result:
    minor: str
    airflow: str
    constraints: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    returncode: int = 0
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.failed == 0 and self.passed > 0


def venv_dir(minor: str) -> Path:
    return MATRIX_DIR / f"airflow-{minor}"


def python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def pip(venv: Path, *args: str) -> None:
    command = [str(python_of(venv)), "-m", "pip", "-q", "--disable-pip-version-check", *args]
    subprocess.run(command, check=True, cwd=REPO)


def fresh_venv(venv: Path, python: str) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)


def installed(venv: Path, package: str) -> str:
    code = f"from importlib.metadata import version; print(version({package!r}))"
    done = subprocess.run([str(python_of(venv)), "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "?"


def ensure_venv(minor: str, python: str) -> Path:
    """The minor's venv, built from its constraints unless its stamp is newer than them and pyproject."""
    venv, constraints = venv_dir(minor), CONSTRAINTS[minor]
    stamp = venv / ".installed-stamp"
    if not constraints.exists():
        raise SystemExit(f"{constraints.relative_to(REPO)} is missing: run `make constraints-matrix`")
    newest_input = max(constraints.stat().st_mtime, PYPROJECT.stat().st_mtime)
    if stamp.exists() and python_of(venv).exists() and stamp.stat().st_mtime > newest_input:
        return venv
    print(f"== building {venv.relative_to(REPO)} from {constraints.relative_to(REPO)}", flush=True)
    fresh_venv(venv, python)
    pip(venv, "install", "-c", str(constraints), "-e", ".[dev]")
    stamp.touch()
    return venv


def run_suite(minor: str, python: str, workers: int, extra: list[str]) -> Result:
    venv = ensure_venv(minor, python)
    result = Result(minor, installed(venv, "apache-airflow"), str(CONSTRAINTS[minor].relative_to(REPO)))
    home = venv / "airflow-home"  # each version its own airflow.cfg and SQLite database
    home.mkdir(exist_ok=True)
    junit = venv / "junit.xml"
    junit.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["AIRFLOW_HOME"] = str(home)
    command = [str(python_of(venv)), "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    if workers > 1:
        command += ["-n", str(workers), "--dist", "loadfile"]
    command += extra or ["-m", MARKERS]
    print(f"== Airflow {result.airflow}: {' '.join(command[1:])}", flush=True)
    started = time.monotonic()
    result.returncode = subprocess.run(command, cwd=REPO, env=env, check=False).returncode
    result.seconds = time.monotonic() - started
    if junit.exists():
        suites = ET.parse(junit).getroot()
        for suite in suites.iter("testsuite"):
            tests, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
            failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            result.passed += tests - failed - skipped
            result.failed += failed
            result.skipped += skipped
    else:
        result.note = "pytest wrote no report"
    if result.returncode and not result.failed:
        result.note = result.note or f"pytest exited {result.returncode}"
    return result


def table(results: list[Result], description: str) -> str:
    rows = [
        "| Airflow | constraints | passed | failed | skipped | time | result |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        minutes, seconds = divmod(round(r.seconds), 60)
        verdict = "pass" if r.ok else "FAIL" + (f" ({r.note})" if r.note else "")
        rows.append(
            f"| {r.airflow} | {r.constraints} | {r.passed} | {r.failed} | {r.skipped} | {minutes}m{seconds:02d}s "
            f"| {verdict} |"
        )
    return f"Airflow matrix ({description}):\n" + "\n".join(rows)


def cmd_test(args: argparse.Namespace) -> int:
    minors = args.minor or ([m for m in CONSTRAINTS if m != DEFAULT_MINOR] if args.ci else list(CONSTRAINTS))
    extra = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    results = [run_suite(minor, args.python, args.workers, extra) for minor in minors]
    description = " ".join(extra) if extra else f'-m "{MARKERS}"'
    report = table(results, description)
    MATRIX_DIR.mkdir(exist_ok=True)
    (MATRIX_DIR / "results.md").write_text(report + "\n")
    print("\n" + report)
    passed, failed = sum(r.passed for r in results), sum(r.failed for r in results)
    print(f"matrix: {passed} passed, {failed} failed, {sum(r.skipped for r in results)} skipped")
    return 0 if all(r.ok for r in results) else 1


def latest_patch(venv: Path, minor: str) -> str:
    """The newest ``apache-airflow`` release of ``minor`` on the package index, as pip resolves it alone."""
    major, number = (int(part) for part in minor.split("."))
    command = [str(python_of(venv)), "-m", "pip", "install", "--disable-pip-version-check", "--quiet", "--dry-run"]
    command += ["--no-deps", "--ignore-installed", "--report", "-", f"apache-airflow>={minor},<{major}.{number + 1}"]
    report = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    (item,) = report["install"]
    return str(item["metadata"]["version"])


def install_preferring_default_pins(venv: Path, spec: str) -> list[str]:
    """Install ``spec`` and ``.[dev]``, each package at the default set's version where that works.

    A plain resolve takes today's latest of everything Airflow does not cap, which an older Airflow
    may not survive (Airflow 3.2.2 with fastapi 0.165 and cadwyn 9 cannot build its execution API).
    The default set is known to work with Airflow's newest minor, so it is the nearest thing here to
    the constraint files Airflow publishes. So: resolve freely first (a consistent set), then move
    every package back to the default set's version, keeping the free one only for the packages pip
    says the older minor refuses. Every package is pinned in each try, so pip never backtracks.

    :return: the names of the packages kept at their free version though the default set pins another.
    """
    pip(venv, "install", spec, "-e", ".[dev]")
    free = _frozen(venv)
    default = {
        _name(line): line
        for line in CONSTRAINTS[DEFAULT_MINOR].read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    chosen = {name: default.get(name, line) if name not in AIRFLOW_ITSELF else line for name, line in free.items()}
    seed, kept = venv / "seed-constraints.txt", []
    for _ in range(len(chosen) + 1):
        seed.write_text("\n".join(chosen.values()) + "\n")
        command = [str(python_of(venv)), "-m", "pip", "install", "--disable-pip-version-check", "-c", str(seed)]
        done = subprocess.run([*command, spec, "-e", ".[dev]"], cwd=REPO, capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return kept
        said = done.stdout + done.stderr
        # pip names a refused pin in its conflict report (as the user's constraint, or as a pinned release
        # whose own requirements clash), or as the requirement nothing satisfies.
        pattern = r"user requested \(constraint\) ([\w.\-\[\]]+)==|No matching distribution found for ([\w.\-]+)"
        refused = {_name(a or b) for a, b in re.findall(pattern, said)}
        for name, version in re.findall(r"^\s+([\w.\-]+) (\S+) depends on ", said, re.MULTILINE):
            if chosen.get(_name(name), "").endswith(f"=={version}"):
                refused.add(_name(name))
        movable = sorted(name for name in refused if name in chosen and chosen[name] != free[name])
        if not movable:
            sys.stderr.write(said[-4000:])
            raise SystemExit(f"pip could not install {spec} with .[dev]")
        for name in movable:
            print(f"   Airflow {spec} refuses {chosen[name]}: keeping {free[name]}", flush=True)
            chosen[name] = free[name]
            kept.append(name)
    raise SystemExit("no pins left to let go")


def _frozen(venv: Path) -> dict[str, str]:
    """What ``pip freeze`` says is installed, by normalised name (editable installs left out)."""
    command = [str(python_of(venv)), "-m", "pip", "freeze", "--exclude-editable", "--disable-pip-version-check"]
    frozen = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return {_name(line): line for line in frozen.splitlines() if line and not line.startswith("-e ")}


def _name(requirement: str) -> str:
    """A requirement's project name, normalised (PEP 503)."""
    name = re.split(r"[\[=<>!~; ]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def cmd_constraints(args: argparse.Namespace) -> int:
    minors = args.minor or [m for m in CONSTRAINTS if m != DEFAULT_MINOR]
    for minor in minors:
        if minor == DEFAULT_MINOR:
            raise SystemExit(f"Airflow {minor}'s set is constraints.txt: re-pin it with `make constraints`")
        venv, target = venv_dir(minor), CONSTRAINTS[minor]
        fresh_venv(venv, args.python)
        spec = f"apache-airflow=={latest_patch(venv, minor)}"  # pinned: pip would rather backtrack to x.y.0
        print(f"== {venv.relative_to(REPO)}: {spec} and .[dev], from {DEFAULT_CONSTRAINTS_NAME}'s pins", flush=True)
        kept = install_preferring_default_pins(venv, spec)
        pins = sorted(_frozen(venv).values(), key=str.lower)
        target.parent.mkdir(exist_ok=True)
        header = [
            f"# Airflow {minor} test-matrix constraints: apache-airflow {installed(venv, 'apache-airflow')} and "
            f"airflow-provider-aitryon[dev], resolved by pip",
            f"# on {datetime.date.today().isoformat()} with Python {'.'.join(map(str, sys.version_info[:2]))} "
            f"at {DEFAULT_CONSTRAINTS_NAME}'s versions but where Airflow {minor} refuses them:",
            f"# {', '.join(sorted(kept)) or 'none'}. Regenerate with `make constraints-matrix`.",
        ]
        target.write_text("\n".join([*header, *pins]) + "\n")
        (venv / ".installed-stamp").touch()  # the venv is exactly what the file pins
        print(f"wrote {target.relative_to(REPO)} ({len(pins)} pins)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=sys.executable, help="interpreter the venvs are made with")
    sub = parser.add_subparsers(dest="command", required=True)
    test = sub.add_parser("test", help="run the suite on each Airflow minor")
    test.add_argument("--minor", action="append", choices=sorted(CONSTRAINTS), help="only this minor (repeatable)")
    test.add_argument("--ci", action="store_true", help="only the minors `make test` does not cover")
    test.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (1: none)")
    test.add_argument("pytest_args", nargs=argparse.REMAINDER, help="-- then pytest arguments instead of the default")
    constraints = sub.add_parser("constraints", help="regenerate constraints/airflow-<minor>.txt")
    constraints.add_argument("--minor", action="append", choices=sorted(CONSTRAINTS), help="only this minor")
    args = parser.parse_args(argv)
    return cmd_test(args) if args.command == "test" else cmd_constraints(args)


if __name__ == "__main__":
    sys.exit(main())
