"""Sphinx configuration for jwst-skymatch-plus."""

import logging
import os

os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "true")

project = "jwst-skymatch-plus"
author = "jwst-skymatch-plus developers"
copyright = "2026, jwst-skymatch-plus developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx.ext.intersphinx",
    "numpydoc",
]
numpydoc_show_class_members = False
autodoc_member_order = "bysource"
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
}
# Links into the Python and numpy docs are a nicety: offline (CI, the test
# suite) their inventories cannot be fetched, and the build must still pass
# with -W.  Give up quickly and report the miss as information, not a warning.
intersphinx_timeout = 5


class _InventoryUnreachable(logging.Filter):
    """Turn intersphinx's 'failed to reach any of the inventories' warning into an info line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and "failed to reach any of the inventories" in str(record.msg):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


logging.getLogger("sphinx.sphinx.ext.intersphinx").addFilter(_InventoryUnreachable())
html_theme = "sphinx_rtd_theme"
exclude_patterns = ["_build"]
