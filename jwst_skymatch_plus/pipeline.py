"""calwebb_image3 with pixel-based sky matching."""

from __future__ import annotations

from jwst.pipeline import Image3Pipeline

from .steps._library import PACKAGE_LOGGERS
from .steps.pixel_skymatch import PixelSkyMatchStep

__all__ = ["Image3PlusPipeline"]


class Image3PlusPipeline(Image3Pipeline):
    """Image3Pipeline with :class:`PixelSkyMatchStep` as its ``skymatch`` step.

    Every other stage and parameter is jwst's own, so
    ``strun calwebb_image3_plus asn.json --steps.skymatch.fit_type=level+slope``
    and ``--steps.resample.<param>=...`` work as for ``calwebb_image3``.
    """

    class_alias = "calwebb_image3_plus"

    step_defs = {**Image3Pipeline.step_defs, "skymatch": PixelSkyMatchStep}

    @staticmethod
    def get_stpipe_loggers():
        """Loggers stpipe configures when this pipeline runs: ours and jwst's."""
        return PACKAGE_LOGGERS
