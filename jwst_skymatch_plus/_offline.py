"""Imports that would otherwise reach for the network.

``pysiaf`` asks GitHub, when imported, whether a newer PRD exists (a web
request without a timeout).  This package works offline: the check is
skipped, and the SIAF data bundled with the installed ``pysiaf`` are used.
"""

from __future__ import annotations

import logging
import sys
from types import ModuleType

__all__ = ["import_pysiaf"]


def import_pysiaf() -> ModuleType:
    """Import ``pysiaf`` with its online PRD version check skipped.

    Returns
    -------
    module
        The ``pysiaf`` package.
    """
    if "pysiaf" in sys.modules:
        return sys.modules["pysiaf"]
    import requests

    real_get = requests.get

    def offline(*args, **kwargs):
        raise requests.ConnectionError("jwst-skymatch-plus imports pysiaf offline")

    quiet = logging.getLogger("pysiaf")
    level = quiet.level
    requests.get = offline
    quiet.setLevel(logging.ERROR)  # its "cannot check the online version" warning
    try:
        import pysiaf
    finally:
        requests.get = real_get
        quiet.setLevel(level)
    return pysiaf
