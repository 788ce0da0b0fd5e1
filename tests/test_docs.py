"""Cheap checks of the documentation; the Sphinx build itself is `make docs` (strict), run by CI.

* every public operator, sensor, trigger and hook documents each argument of its ``__init__`` with
  a ``:param name:`` line, as the API reference renders it;
* the pages the index names exist, and the README points at the docs, never outside the repository;
* every ``AITRYON_*`` environment variable the DAGs, scripts or the package read is documented;
* the ``docs`` extra is pinned and its pins are in ``constraints.txt``; the package has its URLs.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

import pytest

from airflow_provider_aitryon.get_provider_info import get_provider_info

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PACKAGE = "airflow_provider_aitryon"
PARAM = re.compile(r":param\s+(?:[^:\n]*\s)?(\w+)\s*:")


def _provider_modules() -> list[str]:
    info = get_provider_info()
    names: list[str] = []
    for kind in ("hooks", "operators", "sensors", "triggers"):
        for group in info.get(kind, []):
            names += group["python-modules"]
    return names


def _public_classes() -> list[type]:
    """The classes Airflow loads from this provider: those defined in the modules it lists."""
    found: dict[str, type] = {}
    for module_name in _provider_modules():
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and not name.startswith("_") and obj.__module__ == module_name:
                found[f"{module_name}.{name}"] = obj
    for link in get_provider_info().get("extra-links", []):
        module_name, _, name = link.rpartition(".")
        found[link] = getattr(importlib.import_module(module_name), name)
    return [found[key] for key in sorted(found)]


def _own_init_params(cls: type) -> list[str]:
    """The named arguments of ``cls.__init__`` if this class defines it (not self, *args, **kwargs)."""
    init = cls.__dict__.get("__init__")
    if init is None:
        return []
    params = inspect.signature(init).parameters.values()
    skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in params if p.name != "self" and p.kind not in skip]


def test_the_provider_lists_classes() -> None:
    names = {cls.__name__ for cls in _public_classes()}
    for expected in ("DashScopeHook", "TryOnSubmitOperator", "RefinerSubmitOperator", "RefinerTaskSensor",
                     "SaveTryOnResultOperator", "RefineCatalogChunkOperator", "DashScopeTaskTrigger",
                     "CatalogChunkTrigger"):  # fmt: skip
        assert expected in names


@pytest.mark.parametrize("cls", _public_classes(), ids=lambda cls: cls.__qualname__)
def test_every_init_argument_has_a_param_line(cls: type) -> None:
    """Each class of this package in the MRO that defines ``__init__`` documents its own arguments."""
    assert (cls.__doc__ or "").strip(), f"{cls.__name__} has no docstring"
    missing: list[str] = []
    for klass in cls.__mro__:
        if not klass.__module__.startswith(PACKAGE):
            continue
        documented = set(PARAM.findall(klass.__doc__ or ""))
        missing += [f"{klass.__name__}({name})" for name in _own_init_params(klass) if name not in documented]
    assert not missing, f"arguments without a ':param name:' line in the class docstring: {', '.join(missing)}"


def _doc_sources() -> list[Path]:
    """The documentation's source pages (not the build output)."""
    return [p for p in DOCS.rglob("*") if p.suffix in (".md", ".rst") and "_build" not in p.relative_to(DOCS).parts]


def _toctree_entries(index: str) -> list[str]:
    entries: list[str] = []
    for block in re.findall(r"\.\. toctree::\n((?:[ \t]+.*\n|\n)+)", index):
        for line in block.splitlines():
            line = line.strip()
            if line and not line.startswith(":"):
                entries.append(line)
    return entries


def test_every_page_of_the_index_exists() -> None:
    entries = _toctree_entries((DOCS / "index.rst").read_text(encoding="utf-8"))
    assert {"installation", "versions", "connection", "security", "lineage", "changelog"} <= set(entries)
    missing = [e for e in entries if not any((DOCS / f"{e}{suffix}").exists() for suffix in (".rst", ".md"))]
    assert not missing, f"pages named in docs/index.rst that do not exist: {missing}"


def test_readme_is_the_front_door() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make docs" in readme
    assert "## Supported Airflow versions" in readme
    for text in [readme, *(p.read_text(encoding="utf-8") for p in _doc_sources())]:
        assert "../shared" not in text and "/work/shared" not in text, "a link to a folder outside the repository"


def test_every_environment_variable_is_documented() -> None:
    read = set()
    for folder in ("dags", "scripts", PACKAGE):
        for path in (ROOT / folder).rglob("*.py"):
            read |= set(re.findall(r"\bAITRYON_[A-Z0-9_]+\b", path.read_text(encoding="utf-8")))
    docs = "\n".join(p.read_text(encoding="utf-8") for p in _doc_sources())
    assert "AITRYON_SAMPLES_URL" in read
    undocumented = sorted(name for name in read if name not in docs)
    assert not undocumented, f"environment variables read but not documented under docs/: {undocumented}"


def test_docs_dependencies_are_pinned() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    docs = project["optional-dependencies"]["docs"]
    constraints = {
        line.split("==")[0].lower(): line.strip()
        for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
        if "==" in line
    }
    for requirement in docs:
        name, sep, version = requirement.partition("==")
        assert sep, f"the docs extra pins exact versions: {requirement!r}"
        assert constraints.get(name.lower(), "").lower() == f"{name}=={version}".lower(), requirement
    urls = project["urls"]
    assert {"Documentation", "Source", "Changelog"} <= set(urls)
