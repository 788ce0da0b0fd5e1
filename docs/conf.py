"""Sphinx configuration of the airflow-provider-aitryon documentation (``make docs``).

The build is strict: ``make docs`` runs ``sphinx-build -W --keep-going -n``, so every warning,
including a cross-reference that does not resolve, fails it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))

from airflow_provider_aitryon import __version__  # noqa: E402

project = "airflow-provider-aitryon"
author = "The airflow-provider-aitryon authors"
copyright = "the airflow-provider-aitryon authors, Apache License 2.0"
release = __version__
version = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "myst_parser",
    "clihelp",
    "provider_tables",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]
myst_heading_anchors = 3

# ------------------------------------------------------------------------------------ autodoc

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autodoc_default_options = {"show-inheritance": True}
autodoc_preserve_defaults = False

# ---------------------------------------------------------------------------- nitpicky mode

nitpicky = True
# The build runs offline (no intersphinx inventories can be fetched), so names from Airflow and
# the other libraries in signatures and base-class lists cannot resolve to their sites. Only those
# are ignored; every name of this provider must resolve.
nitpick_ignore_regex = [
    (r"py:.*", r"(airflow|httpx|tenacity|pendulum|requests|PIL|asyncio|logging|collections|typing|enum)(\..*)?"),
    (r"py:.*", r"(decimal|datetime)(\..*)?"),
    (r"py:.*", r"(Context|TaskInstanceKey|BaseOperator|BaseSensorOperator|BaseHook|BaseTrigger|TriggerEvent)"),
    (r"py:.*", r"(PokeReturnValue|BaseOperatorLink|AsyncIterator|Container|Sequence|Callable|Iterator)"),
    (r"py:.*", r"OperatorLineage"),  # the optional openlineage provider's type
]

# ------------------------------------------------------------------------------------- HTML

html_theme = "furo"
html_title = f"airflow-provider-aitryon {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_show_sourcelink = False


def _dataclass_factories(
    app: Any, what: str, name: str, obj: Any, options: Any, signature: str | None, return_annotation: str | None
) -> tuple[str, str | None] | None:
    """A dataclass field with ``default_factory`` shows its default as ``<factory>``, which is not
    Python, so Sphinx cannot parse the signature (it splits ``dict[str, Any]`` at the comma). Show
    ``...`` instead."""
    if signature and "<factory>" in signature:
        return signature.replace("<factory>", "..."), return_annotation
    return None


def setup(app: Any) -> None:
    app.connect("autodoc-process-signature", _dataclass_factories)
