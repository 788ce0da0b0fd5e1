"""``.. cli-help:: python -m MODULE``: the ``--help`` text of one of this project's commands.

The text is produced at build time by running the command with this Python, so the page always
shows the options the installed code has.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


class CliHelp(SphinxDirective):
    """Insert ``<command> --help`` as a literal block; the argument is ``python -m <module>``."""

    required_arguments = 3
    final_argument_whitespace = False

    def run(self) -> list[nodes.Node]:
        program, flag, module = self.arguments
        if program != "python" or flag != "-m":
            raise self.error("cli-help expects: python -m <module>")
        env = {**os.environ, "COLUMNS": "100"}
        done = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, env=env, timeout=120, check=False
        )
        if done.returncode != 0:
            raise self.error(f"python -m {module} --help exited {done.returncode}: {done.stderr.strip()[-500:]}")
        block = nodes.literal_block(done.stdout, done.stdout)
        block["language"] = "text"
        return [block]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("cli-help", CliHelp)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
