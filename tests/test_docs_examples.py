"""The self-contained Python examples of the documentation run as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"\.\. code-block:: python\n\n((?:[ ]{3,}.*\n|\n)+)")


def examples() -> list:
    """Code blocks that set themselves up (they start by disabling CRDS step parameters)."""
    found = []
    for page in sorted(DOCS.glob("*.rst")):
        for k, block in enumerate(BLOCK.findall(page.read_text())):
            lines = block.rstrip().splitlines()
            indent = min(len(x) - len(x.lstrip()) for x in lines if x.strip())
            code = "\n".join(x[indent:] for x in lines)
            if "STPIPE_DISABLE_CRDS_STEPPARS" in code:
                found.append(pytest.param(code, id=f"{page.stem}-{k}"))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("code", examples())
def test_documentation_example_runs(code, tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_examples_are_found():
    assert len(examples()) >= 2
