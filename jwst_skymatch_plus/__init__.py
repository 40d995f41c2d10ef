"""Pixel-based sky matching for JWST level-3 imaging mosaics.

Steps and pipelines are imported lazily so that ``import jwst_skymatch_plus``
(and the core algorithms) do not pay for importing jwst.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("jwst-skymatch-plus")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

_LAZY = {
    "PixelSkyMatchStep": "jwst_skymatch_plus.steps.pixel_skymatch",
    "LevelMatchStep": "jwst_skymatch_plus.steps.level_match",
    "GetWCSAdjustStep": "jwst_skymatch_plus.steps.wcs_adjust",
    "ApplyWCSAdjustStep": "jwst_skymatch_plus.steps.wcs_adjust",
    "Image3PlusPipeline": "jwst_skymatch_plus.pipeline",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jwst_skymatch_plus' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
