"""The stpipe steps and what they share.

``pixel_skymatch``, ``level_match`` and ``wcs_adjust`` hold the steps: they
read models, call :mod:`jwst_skymatch_plus.core` and write the results into
metadata and files.  ``_library`` opens and checks their input and hands the
core its exposures; ``_report`` writes the offsets tables and figures.
"""

from .pixel_skymatch import PixelSkyMatchStep

__all__ = ["PixelSkyMatchStep"]
