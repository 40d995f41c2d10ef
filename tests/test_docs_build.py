"""The documentation builds offline with warnings as errors, and its parameter tables are whole.

Sphinx, numpydoc and the theme come with the ``test`` extra, so this runs
wherever the suite runs (CI included).  The intersphinx inventories cannot be
fetched offline; ``docs/conf.py`` reports that as information, so any warning
left is a real defect of the pages (a broken table, a bad reference, a
docstring numpydoc cannot read).
"""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jwst_skymatch_plus.steps.level_match import LevelMatchStep
from jwst_skymatch_plus.steps.pixel_skymatch import PixelSkyMatchStep
from jwst_skymatch_plus.steps.wcs_adjust import ApplyWCSAdjustStep, GetWCSAdjustStep

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    out = tmp_path_factory.mktemp("html")
    start = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.monotonic() - start
    assert run.returncode == 0, f"sphinx-build -W failed:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    return out, elapsed


def test_docs_build_offline_with_warnings_as_errors(html):
    out, elapsed = html
    pages = {p.stem for p in out.glob("*.html")}
    assert {"index", "architecture", "pixel_skymatch", "level_match", "api"} <= pages
    # The architecture page is in the table of contents, not an orphan.
    assert 'href="architecture.html"' in (out / "index.html").read_text()
    assert elapsed < 60, f"the docs took {elapsed:.0f} s to build"


def _table_rows(page: Path) -> list[list[str]]:
    """Cells (as text) of every table row of a built page."""
    rows = []
    for row in re.findall(r"<tr\b.*?</tr>", page.read_text(), flags=re.S):
        cells = re.findall(r"<t[dh]\b.*?</t[dh]>", row, flags=re.S)
        rows.append([re.sub(r"<[^>]+>", "", cell).strip() for cell in cells])
    return rows


def _spec_parameters(step) -> list[str]:
    return [
        line.split("=", 1)[0].strip()
        for line in step.spec.splitlines()
        if "=" in line and not line.strip().startswith("#")
    ]


def test_no_table_row_is_torn(html):
    # In a simple table only the first column cannot wrap: a second line with
    # text in it starts a new row, and the page shows half-empty rows.
    out, _ = html
    pages = [p for p in out.glob("*.html") if p.stem not in {"genindex", "py-modindex", "search"}]
    torn = [(p.stem, cells) for p in pages for cells in _table_rows(p) if not all(cells)]
    assert not torn, f"table rows with empty cells: {torn}"


@pytest.mark.parametrize(
    ("step", "page"),
    [
        (PixelSkyMatchStep, "pixel_skymatch"),
        (LevelMatchStep, "level_match"),
        (GetWCSAdjustStep, "wcs_adjust"),
        (ApplyWCSAdjustStep, "wcs_adjust"),
    ],
)
def test_every_parameter_has_a_whole_table_row(html, step, page):
    out, _ = html
    rows = _table_rows(out / f"{page}.html")
    # A row documents the parameters named (comma separated) in its first cell.
    documented: dict[str, list[list[str]]] = {}
    for cells in rows:
        if cells:
            for name in cells[0].split(","):
                documented.setdefault(name.strip(), []).append(cells)
    parameters = _spec_parameters(step)
    assert parameters
    missing = [p for p in parameters if p not in documented]
    assert not missing, f"{page}.rst has no table row for {missing}"
    broken = [p for p in parameters if not any(len(c) == 3 and all(c) for c in documented[p])]
    assert not broken, f"{page}.rst: rows of {broken} are not parameter | default | meaning"
