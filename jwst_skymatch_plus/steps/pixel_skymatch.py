"""PixelSkyMatchStep: SkyMatchStep with sky differences measured pixel by pixel."""

from __future__ import annotations

import logging
import math
from functools import partial

import numpy as np
from jwst.skymatch import SkyMatchStep
from stcal.skymatch.skystatistics import SkyStats

from ..core.grouping import exposure_label, group_exposures
from ..core.matching import MatchConfig, MatchResult, match_exposures
from ..core.pairs import DifferenceStatistic
from ..core.planes import DetectorPlane, detector_plane
from ..core.solve import apply_match_down
from ._library import (
    PACKAGE_LOGGERS,
    MaskSettings,
    check_single_configuration,
    exposure_sources,
    good_pixel_mask,
    open_library,
    package_logging,
    read_all_metadata,
)

__all__ = ["PixelSkyMatchStep"]

log = logging.getLogger(__name__)

#: Namespace of this package's per-exposure records in ``model.meta``.
RECORD_KEY = "skymatch_plus"


class PixelSkyMatchStep(SkyMatchStep):
    """Equalize sky backgrounds using per-pixel differences on a common grid.

    A drop-in replacement for jwst's ``SkyMatchStep``: same inputs, same
    parameters with the same meanings, same output (a ``ModelLibrary`` whose
    exposures carry ``meta.background``).  For ``skymethod='match'`` and
    ``'global+match'`` the sky differences are measured from the per-pixel
    differences of exposures resampled onto one common grid, which cancels
    the sky itself; ``'local'``, ``'global'`` and ``'user'`` behave exactly as
    in ``SkyMatchStep``.

    Exposures are grouped (by visit by default), matched inside each group,
    co-added per group, and all groups are then matched together by a global
    least-squares solution over the overlap graph.  With
    ``fit_type='level+slope'`` a plane per exposure is fitted and subtracted
    from the data.
    """

    class_alias = "pixel_skymatch"

    spec = """
        # SkyMatchStep's parameters, same meanings:
        skymethod = option('local', 'global', 'match', 'global+match', 'user', default='match') # sky computation method
        match_down = boolean(default=True) # adjust sky to lowest measured value?
        subtract = boolean(default=False) # subtract computed sky from image data?
        skylist = string(default=None) # Filename pointing to list of (imagename skyval) pairs
        stepsize = integer(default=None) # Max vertex separation (local/global polygons)
        skystat = option('median', 'midpt', 'mean', 'mode', default='median') # statistic of sky (local/global) and of pixel differences (match)
        dqbits = string(default='~DO_NOT_USE+NON_SCIENCE') # "good" DQ bits
        lower = float(default=None) # Lower limit of "good" pixel values
        upper = float(default=None) # Upper limit of "good" pixel values
        nclip = integer(min=0, default=5) # number of sky clipping iterations
        lsigma = float(min=0.0, default=4.0) # Lower clipping limit, in sigma
        usigma = float(min=0.0, default=4.0) # Upper clipping limit, in sigma
        binwidth = float(min=0.0, default=0.1) # Bin width for 'mode' and 'midpt' `skystat`, in sigma
        in_memory = boolean(default=True) # If False, preserve memory using temporary files

        # Pixel matching:
        fit_type = option('level', 'level+slope', default='level') # constant offset or plane per exposure
        grouping = string(default='visit') # exposures sharing one sky: visit, exposure, group_id, +module/+detector, or meta.* keys joined by '+'
        match_within_groups = boolean(default=True) # also match the exposures inside each group (drifts within a visit)
        grid_scale = float(default=1.0) # matching grid pixel size in native pixels (>1 is coarser and faster)
        kernel = option('square', 'point', 'turbo', 'gaussian', 'lanczos2', 'lanczos3', default='square') # drizzle kernel for matching
        pixfrac = float(default=1.0) # drizzle pixel fraction for matching
        pixmap_stepsize = integer(min=1, default=16) # WCS evaluated every this many pixels, interpolated between
        weighting = option('ivar', 'npix', 'equal', default='ivar') # pair weights in the global solution
        min_overlap_pixels = integer(min=0, default=100) # pairs with fewer overlapping valid pixels are not used
        min_overlap_fraction = float(min=0.0, max=1.0, default=0.0) # ... or a smaller fraction of the smaller group
        min_linear_fraction = float(min=0.0, max=1.0, default=0.0) # ... or a smaller extent along both axes
        robust = boolean(default=True) # reject pairs with outlying residuals after the global fit
        reject_sigma = float(min=0.0, default=5.0) # rejection threshold for robust, in robust sigma
        exclude_lyot = boolean(default=True) # leave the MIRI imager's Lyot coronagraph out of matching
    """  # noqa: E501

    reference_file_types: list = []

    @staticmethod
    def get_stpipe_loggers():
        """Loggers stpipe configures when this step runs: ours and jwst's."""
        return PACKAGE_LOGGERS

    # -- stpipe entry point --------------------------------------------------
    def process(self, input_models):
        """Match sky backgrounds.

        Parameters
        ----------
        input_models : str, Path, list, ModelContainer or ModelLibrary
            Anything ``SkyMatchStep`` accepts (association file, list of
            models or files, container or library).

        Returns
        -------
        ModelLibrary
            The input exposures with ``meta.background`` set.

        """
        with package_logging():
            return self._process(input_models)

    def _process(self, input_models):
        if self.skymethod in ("local", "global", "user"):
            log.info(
                "skymethod=%r involves no matching between images; computing it as SkyMatchStep does.",
                self.skymethod,
            )
            return super().process(input_models)

        library = open_library(self, input_models)
        metas = read_all_metadata(library)
        names = [exposure_label(m, i) for i, m in enumerate(metas)]
        if len(library) < 2:
            return self._skip(library, f"only {len(library)} exposure(s): nothing to match")
        check_single_configuration(metas, names)
        groups = group_exposures(metas, self.grouping)
        if len(groups) < 2 and not self.match_within_groups:
            return self._skip(library, f"all exposures fall in one group (grouping={self.grouping!r})")

        config = self._match_config()
        settings = MaskSettings(self.dqbits, self.lower, self.upper, self.exclude_lyot)
        with library:
            previous = self._previous_levels(library)
            sources = exposure_sources(
                library, partial(good_pixel_mask, settings=settings, bit_flags=settings.bit_flags), names
            )
            result = match_exposures(sources, groups, config)
        levels, planes = self._finalize(library, result, sources, settings)
        self._log_table(result, names, levels)
        self._write(library, result, levels, planes, previous)
        return library

    # -- pieces ----------------------------------------------------------------
    def _match_config(self) -> MatchConfig:
        if self.grid_scale is None or not self.grid_scale > 0:
            raise ValueError(f"grid_scale must be positive, got {self.grid_scale}")
        return MatchConfig(
            fit_type=self.fit_type,
            statistic=DifferenceStatistic(self.skystat, self.nclip, self.lsigma, self.usigma, self.binwidth),
            grid_scale=self.grid_scale,
            kernel=self.kernel,
            pixfrac=self.pixfrac,
            pixmap_stepsize=self.pixmap_stepsize,
            match_within_groups=self.match_within_groups,
            weighting=self.weighting,
            min_overlap_pixels=self.min_overlap_pixels,
            min_overlap_fraction=self.min_overlap_fraction,
            min_linear_fraction=self.min_linear_fraction,
            robust=self.robust,
            reject_sigma=self.reject_sigma,
        )

    def _previous_levels(self, library) -> np.ndarray:
        """Background already subtracted from each exposure, with SkyMatchStep's checks."""
        previous = np.zeros(len(library))
        for index in range(len(library)):
            model = library.borrow(index)
            try:
                bkg = model.meta.background
                if bkg.subtracted is None:
                    if bkg.level is not None:
                        raise ValueError(
                            f"{model.meta.filename}: background level is set but 'subtracted' is undefined."
                        )
                else:
                    if bkg.level is None:
                        raise ValueError(
                            f"{model.meta.filename}: background was subtracted but its level is undefined."
                        )
                    if bool(bkg.subtracted) != bool(self.subtract):
                        raise ValueError(
                            f"'subtract'={self.subtract} is inconsistent with the background already "
                            f"recorded in {model.meta.filename} (subtracted={bkg.subtracted})."
                        )
                    if bkg.subtracted:
                        previous[index] = float(bkg.level)
            finally:
                library.shelve(model, index, modify=False)
        return previous

    def _finalize(self, library, result: MatchResult, sources, settings):
        """Fix the free constants, add the global sky if asked, build detector planes."""
        n = len(sources)
        planes: list[DetectorPlane | None] = [None] * n
        for k, src in enumerate(sources):
            if np.all(np.isfinite(result.coefficients[k])):
                planes[k] = detector_plane(
                    result.coefficients[k], src.wcs, src.shape, result.grid, result.plane_scale
                )
        centre = np.array([p.level if p is not None else np.nan for p in planes])
        shift = apply_match_down(centre, result.component, self.match_down) - centre
        levels = centre + np.nan_to_num(shift)
        if self.skymethod == "global+match":
            gsky = self._global_sky(library, levels, settings)
            log.info("'Global' sky added to every exposure after matching: %.6g", gsky)
            levels = np.where(np.isfinite(levels), levels + gsky, gsky)
        planes = [
            None
            if not np.isfinite(levels[k])
            else DetectorPlane(
                float(levels[k]),
                p.slope_x if p else 0.0,
                p.slope_y if p else 0.0,
                p.x_center if p else (sources[k].shape[1] - 1) / 2.0,
                p.y_center if p else (sources[k].shape[0] - 1) / 2.0,
            )
            for k, p in enumerate(planes)
        ]
        return levels, planes

    def _global_sky(self, library, levels, settings) -> float:
        """Smallest sky statistic over all exposures after matching (SkyMatchStep's 'global')."""
        stats = SkyStats(
            skystat=self.skystat,
            lower=self.lower,
            upper=self.upper,
            nclip=self.nclip,
            lsig=self.lsigma,
            usig=self.usigma,
            binwidth=self.binwidth,
        )
        mask_settings = MaskSettings(settings.dqbits, None, None, settings.exclude_lyot)
        best = math.inf
        with library:
            for index in range(len(library)):
                model = library.borrow(index)
                try:
                    good = good_pixel_mask(model, mask_settings)
                    values = model.data[good] - (levels[index] if np.isfinite(levels[index]) else 0.0)
                finally:
                    library.shelve(model, index, modify=False)
                if values.size:
                    sky, _ = stats(values)
                    if np.isfinite(sky):
                        best = min(best, float(sky))
        if not np.isfinite(best):
            log.warning("Unable to compute a 'global' sky value; using 0.")
            return 0.0
        return best

    def _write(self, library, result: MatchResult, levels, planes, previous) -> None:
        method = f"pixel-{self.skymethod}"
        with library:
            for index in range(len(library)):
                model = library.borrow(index)
                try:
                    plane = planes[index]
                    if plane is None:
                        log.warning(
                            "%s: overlaps no other exposure group; its sky is left unchanged.",
                            model.meta.filename,
                        )
                        model.meta.cal_step.skymatch = "SKIPPED"
                        continue
                    subtract = self.subtract or not plane.is_flat
                    if subtract:
                        model.data -= plane.evaluate(model.data.shape)
                    model.meta.background.level = float(previous[index] + plane.level)
                    model.meta.background.subtracted = bool(subtract)
                    model.meta.background.method = method
                    model.meta.cal_step.skymatch = "COMPLETE"
                    record = {
                        "method": method,
                        "fit_type": self.fit_type,
                        "grouping": self.grouping,
                        "group": int(result.group_index[index]) + 1,
                        "component": int(result.component[index]),
                        "match_down": bool(self.match_down),
                        "level_uncertainty": float(result.sigma[index, 0]),
                        **{f"plane_{k}": v for k, v in plane.as_dict().items()},
                    }
                    model.meta.instance.setdefault(RECORD_KEY, {})["pixel_skymatch"] = record
                finally:
                    library.shelve(model, index)
        if self.fit_type == "level+slope" and not self.subtract:
            log.info(
                "Planes were subtracted from the data (subtracted=True): a scalar level cannot carry a plane."
            )

    def _skip(self, library, reason: str):
        log.warning("Sky matching skipped: %s.", reason)
        with library:
            for index in range(len(library)):
                model = library.borrow(index)
                model.meta.cal_step.skymatch = "SKIPPED"
                library.shelve(model, index)
        return library

    @staticmethod
    def _log_table(result: MatchResult, names, levels) -> None:
        sol = result.group_solution
        log.info(
            "Sky matching: %d group pair(s) used, %d rejected by the robust fit, %d below overlap limits.",
            int(sol.used.sum()),
            int((~sol.used).sum()),
            len(result.rejected_pairs),
        )
        labels = np.unique(result.component[result.component >= 0])
        if labels.size > 1:
            for label in labels:
                members = [names[k] for k in np.flatnonzero(result.component == label)]
                log.warning(
                    "Overlap graph component %d (%d exposures, e.g. %s) is matched on its own: "
                    "its sky is not tied to the other components.",
                    label,
                    len(members),
                    members[0],
                )
        log.info("%-5s %-6s %-52s %14s %12s", "group", "comp", "exposure", "level", "uncertainty")
        for k in np.argsort(result.group_index, kind="stable"):
            log.info(
                "%-5d %-6d %-52s %14.6g %12.3g",
                result.group_index[k] + 1,
                result.component[k],
                names[k][:52],
                levels[k],
                result.sigma[k, 0],
            )
        if np.isfinite(sol.chi2_dof):
            log.info("Reduced chi-square of the group solution: %.3g", sol.chi2_dof)
