"""Sphinx configuration for jwst-skymatch-plus."""

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
html_theme = "sphinx_rtd_theme"
exclude_patterns = ["_build"]
