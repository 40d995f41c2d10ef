"""PixelSkyMatchStep: SkyMatchStep with sky differences measured pixel by pixel."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np
from jwst.skymatch import SkyMatchStep
from stcal.skymatch.skystatistics import SkyStats

from ..core.finalize import FinalBackgrounds, Gauge, finalize, global_sky, residual_sky, review_alignment
from ..core.grouping import exposure_label, group_exposures, sky_units
from ..core.matching import (
    EXPOSURE_STATUSES,
    MatchConfig,
    MatchResult,
    default_grid_scale,
    match_exposures,
)
from ..core.model_choice import match_auto
from ..core.pairs import DifferenceStatistic
from ..inputs import each_model
from ._library import (
    PACKAGE_LOGGERS,
    AtomicSaveMixin,
    MaskSettings,
    check_parameters,
    check_single_configuration,
    execution_settings,
    exposure_sources,
    file_loads,
    good_pixel_mask,
    open_library_with_metadata,
    package_logging,
    parse_regions,
    report_base,
    sources_from_metadata,
)
from ._report import plot_diagnostics, write_offsets_tables
from ._updates import ModelUpdate, write_updates

__all__ = ["PixelSkyMatchStep"]

log = logging.getLogger(__name__)


class PixelSkyMatchStep(AtomicSaveMixin, SkyMatchStep):
    """Equalize sky backgrounds using per-pixel differences on a common grid.

    A drop-in replacement for jwst's ``SkyMatchStep``: same inputs, same
    parameters with the same meanings, same output (a ``ModelLibrary`` whose
    exposures carry ``meta.background``), and it accepts parameter files
    written for ``SkyMatchStep``.  For ``skymethod='match'`` and
    ``'global+match'`` the sky differences are measured from the per-pixel
    differences of exposures resampled onto one common grid, which cancels
    the sky itself; ``'local'``, ``'global'`` and ``'user'`` behave exactly as
    in ``SkyMatchStep``.

    Exposures are grouped (by visit by default), matched inside each group,
    co-added per group, and all groups are then matched together by a global
    least-squares solution over the overlap graph.  With
    ``fit_type='level+slope'`` a plane per exposure is fitted and subtracted
    from the data; the default ``fit_type='auto'`` fits planes only when the
    pairs show that levels do not fit them, planes are constrained by the
    overlaps and fit significantly better
    (:mod:`~jwst_skymatch_plus.core.model_choice`).
    """

    # What stpipe writes into meta.cal_step (when skipped) and meta.cal_logs:
    # the stock step's key, so that the rest of calwebb_image3 and users'
    # scripts read our record where they read SkyMatchStep's.  strun finds
    # this step as ``pixel_skymatch`` through the package's entry point.
    class_alias = "skymatch"

    spec = """
        # SkyMatchStep's parameters, same meanings:
        skymethod = option('local', 'global', 'match', 'global+match', 'user', default='match') # sky computation method
        match_down = boolean(default=True) # adjust sky to lowest measured value?
        subtract = boolean(default=False) # subtract computed sky from image data?
        skylist = string(default=None) # Filename pointing to list of (imagename skyval) pairs
        stepsize = integer(default=None) # Max vertex separation (local/global polygons)
        skystat = option('median', 'midpt', 'mean', 'mode', default='mode') # statistic of sky (local/global) and of pixel differences (match)
        dqbits = string(default='~DO_NOT_USE+NON_SCIENCE') # "good" DQ bits
        lower = float(default=None) # Lower limit of "good" pixel values
        upper = float(default=None) # Upper limit of "good" pixel values
        nclip = integer(min=0, default=5) # number of sky clipping iterations
        lsigma = float(min=0.0, default=4.0) # Lower clipping limit, in sigma
        usigma = float(min=0.0, default=4.0) # Upper clipping limit, in sigma
        binwidth = float(min=0.0, default=0.1) # Bin width for 'mode' and 'midpt' `skystat`, in sigma
        in_memory = boolean(default=True) # If False, preserve memory using temporary files

        # Pixel matching:
        fit_type = option('auto', 'level', 'level+slope', default='auto') # constant offset or plane per exposure; auto: planes only when levels demonstrably do not fit and planes are constrained and fit better
        grouping = string(default='visit') # groups of exposures (visit, exposure, group_id, +module/+detector, or meta.* keys joined by '+'); exposures sharing a group_id always share one level
        match_within_groups = boolean(default=True) # True: every group_id set gets its own level, groups are the fallback for unmeasurable ones; False: one level per group
        grid_scale = float(default=None) # matching grid pixel size in native pixels (>1 coarser, faster); default: 1 for level fits, 2 for level+slope
        kernel = option('auto', 'square', 'point', 'turbo', 'gaussian', 'lanczos2', 'lanczos3', default='auto') # drizzle kernel for matching; auto: turbo on native pixels (3x faster than square, as accurate), square on coarser grids
        pixfrac = float(default=1.0) # drizzle pixel fraction for matching
        pixmap_stepsize = integer(min=1, default=16) # WCS evaluated every this many pixels, interpolated between
        weighting = option('ivar', 'npix', 'equal', default='ivar') # pair weights in the global solution
        min_overlap_pixels = integer(min=0, default=100) # pairs with fewer overlapping valid pixels are not used
        min_overlap_fraction = float(min=0.0, max=1.0, default=0.0) # ... or a smaller fraction of the smaller group
        min_linear_fraction = float(min=0.0, max=1.0, default=0.0) # ... or a smaller extent along both axes
        robust = boolean(default=True) # reject pairs with outlying residuals after the global fit
        reject_sigma = float(min=0.0, default=5.0) # rejection threshold for robust, in standard deviations
        mask_sources = boolean(default=False) # mask compact sources in both images of a pair (segmentation)
        source_nsigma = float(min=0.0, default=3.0) # detection threshold for mask_sources
        source_npixels = integer(min=1, default=5) # minimum source size for mask_sources
        source_dilate = integer(min=1, default=7) # mask growth (pixels) for mask_sources
        exclude_lyot = boolean(default=True) # leave the MIRI imager's Lyot coronagraph out of matching
        excluded_regions = pass(default='') # more detector regions to leave out: 'rows,cols;...' numpy slices, e.g. '735:,:290' (string; a list is joined back at its commas)
        reference = string(default='') # free constant: '' follows match_down; or most_connected, flattest, closest_to_background, an exposure name or a group number held at zero
        background_times = pass(default='') # MJDs of background observations (comma-separated string, or a list) for reference=closest_to_background
        tie_components = option('independent', 'global', default='independent') # disconnected parts: matched separately, or their global skies equalized
        alignment_check = option('warn', 'error', 'off', default='warn') # measure each overlap's shift: warn or refuse above max_misalignment
        max_misalignment = float(min=0.0, default=0.3) # largest tolerated shift between overlapping groups (grid pixels)
        min_shift_correlation = float(min=0.0, max=1.0, default=0.5) # shifts measured with a weaker correlation (too little structure) are not trusted
        offsets_table = string(default='') # path of the offsets table (ECSV); '' writes one next to saved outputs; 'none' never
        diagnostic_plot = string(default='') # path of a diagnostic PNG (overlap graph, thumbnails); '' none; 'auto' next to the table
        n_workers = integer(default=0) # local worker processes; 1: serial; 0: every usable core (at most 4) when the exposures hold 8 Mpix or more, else serial
        scheduler = string(default='') # Dask scheduler address (tcp://host:port); overrides n_workers
        memory_budget = float(min=0.0, default=None) # GiB the exposures and resampled images may hold in memory; input files above it stay on disk as with in_memory=False, images above what is left wait on disk (default: a quarter of the available memory, 1-3 GiB)
    """  # noqa: E501

    reference_file_types: list = []

    def default_suffix(self) -> str:
        """Suffix of saved products: ``skymatchstep`` when run standalone, as stock."""
        if self.name == type(self).__name__:
            return "skymatchstep"
        return super().default_suffix()

    @staticmethod
    def get_stpipe_loggers():
        """Loggers stpipe configures when this step runs: ours and jwst's."""
        return PACKAGE_LOGGERS

    @classmethod
    def _parse_class_and_name(cls, config, parent=None, name=None, config_file=None):
        # Parameter files written for jwst's SkyMatchStep name that class; they
        # are valid for this step too (same parameters, same meanings).
        if "class" in config and _is_stock_skymatch(config["class"]):
            config = type(config)(config) if not hasattr(config, "dict") else config.dict()
            config.pop("class")
        return super()._parse_class_and_name(config, parent=parent, name=name, config_file=config_file)

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
        check_parameters(self)
        if self.skymethod in ("local", "global", "user"):
            log.info(
                "skymethod=%r involves no matching between images; computing it as SkyMatchStep does.",
                self.skymethod,
            )
            return super().process(input_models)

        # Read: the exposures, their metadata, the sky units; nothing to match ends here.
        library, metas, held_bytes = open_library_with_metadata(self, input_models)
        names = [exposure_label(m, i) for i, m in enumerate(metas)]
        if len(library) < 2 and self.skymethod == "match":
            return self._skip(library, f"only {len(library)} exposure(s): nothing to match")
        check_single_configuration(metas, names)
        units, fallback = sky_units(metas, self.grouping, self.match_within_groups)
        settings = MaskSettings(
            self.dqbits, self.lower, self.upper, self.exclude_lyot, parse_regions(self.excluded_regions)
        )
        previous = np.array([self._previous_level(m, n) for m, n in zip(metas, names, strict=True)])
        if len(units) < 2:
            if self.skymethod == "match":
                return self._skip(
                    library, "all exposures share one sky group (one group_id or one group): nothing to match"
                )
            return self._global_only(library, settings, previous)
        # Match, then finalize: the free constants, the global sky, planes on the detectors.
        sources, result = self._match(
            input_models, library, metas, names, units, fallback, settings, held_bytes
        )
        final = finalize(
            result,
            sources,
            metas,
            group_exposures(metas, self.grouping),
            self._gauge(),
            residual_skies=partial(self._residual_skies, library, settings),
        )
        # Write: log, models, reports.
        self._log_table(result, names, final)
        self._write(library, result, final, previous, metas)
        self._write_reports(library, result, names, final)
        return library

    # -- pieces ----------------------------------------------------------------
    def _match(self, input_models, library, metas, names, units, fallback, settings, held_bytes):
        """Exposure sources and their matching result; the alignment of overlaps reviewed."""
        log.info(
            "Pixel sky matching of %d exposures in %d sky group(s) (grouping=%r, match_within_groups=%s, "
            "fit_type=%r).",
            len(library),
            len(units),
            self.grouping,
            self.match_within_groups,
            self.fit_type,
        )
        config = self._match_config()
        mask = partial(good_pixel_mask, settings=settings, bit_flags=settings.bit_flags)
        with library:
            sources = sources_from_metadata(library, metas, mask, names)
            if sources is None:
                # Headers lack S_REGION or FITS WCS keywords: read every WCS.
                sources = exposure_sources(library, mask, names)
            # Worker processes read files themselves (this process then loads
            # none; each model is loaded when next borrowed).  A serial run
            # loads each model here, into the library it returns.
            for source, load in zip(sources, file_loads(library, input_models, mask, names), strict=True):
                source.portable_load = load
            execution = execution_settings(self, sources, held_bytes)
            if self.fit_type == "auto":
                result, choice = match_auto(sources, units, config, fallback=fallback, execution=execution)
                self._fit_choice = choice.reason
            else:
                result = match_exposures(sources, units, config, fallback=fallback, execution=execution)
        if self.alignment_check != "off":
            review_alignment(
                result,
                names,
                max_misalignment=self.max_misalignment,
                min_correlation=self.min_shift_correlation,
                refuse=self.alignment_check == "error",
            )
        return sources, result

    def _match_config(self) -> MatchConfig:
        grid_scale = default_grid_scale(self.fit_type) if self.grid_scale is None else self.grid_scale
        if not grid_scale > 0:
            raise ValueError(f"grid_scale must be positive, got {self.grid_scale}")
        return MatchConfig(
            fit_type="level" if self.fit_type == "auto" else self.fit_type,
            statistic=DifferenceStatistic(self.skystat, self.nclip, self.lsigma, self.usigma, self.binwidth),
            grid_scale=grid_scale,
            kernel=self.kernel,
            pixfrac=self.pixfrac,
            pixmap_stepsize=self.pixmap_stepsize,
            weighting=self.weighting,
            min_overlap_pixels=self.min_overlap_pixels,
            min_overlap_fraction=self.min_overlap_fraction,
            min_linear_fraction=self.min_linear_fraction,
            robust=self.robust,
            reject_sigma=self.reject_sigma,
            mask_sources=self.mask_sources,
            source_nsigma=self.source_nsigma,
            source_npixels=self.source_npixels,
            source_dilate=self.source_dilate,
            check_alignment=self.alignment_check != "off",
            thumbnail_size=800 if self.diagnostic_plot else 0,
        )

    def _previous_level(self, meta: dict, name: str) -> float:
        """Background already subtracted from an exposure, with SkyMatchStep's checks."""
        level = meta.get("meta.background.level")
        subtracted = meta.get("meta.background.subtracted")
        if subtracted is None:
            if level is not None:
                raise ValueError(f"{name}: background level is set but 'subtracted' is undefined.")
            return 0.0
        if level is None:
            raise ValueError(f"{name}: background was subtracted but its level is undefined.")
        if bool(subtracted) != bool(self.subtract):
            raise ValueError(
                f"'subtract'={self.subtract} is inconsistent with the background already "
                f"recorded in {name} (subtracted={subtracted})."
            )
        return float(level) if subtracted else 0.0

    def _gauge(self) -> Gauge:
        return Gauge(
            reference=self.reference or "",
            match_down=bool(self.match_down),
            background_times=tuple(float(v) for v in self.background_times.replace(",", " ").split()),
            tie_components=self.tie_components == "global",
            add_global_sky=self.skymethod == "global+match",
        )

    def _sky_stats(self) -> SkyStats:
        return SkyStats(
            skystat=self.skystat,
            lower=self.lower,
            upper=self.upper,
            nclip=self.nclip,
            lsig=self.lsigma,
            usig=self.usigma,
            binwidth=self.binwidth,
        )

    def _residual_skies(self, library, settings, levels) -> np.ndarray:
        """Sky statistic of every exposure after removing its level (NaN where none)."""
        stats = self._sky_stats()
        mask_settings = MaskSettings(settings.dqbits, None, None, settings.exclude_lyot, settings.regions)
        skies = np.full(len(library), np.nan)
        for index, model in each_model(library):
            values = model.data[good_pixel_mask(model, mask_settings)]
            skies[index] = residual_sky(values, levels[index], stats)
        return skies

    def _write(self, library, result: MatchResult, final: FinalBackgrounds, previous, metas) -> None:
        filenames = [m.get("meta.filename") for m in metas]
        updates = {
            index: self._model_update(
                result, final, previous, index, filenames[index] or f"exposure {index + 1}"
            )
            for index in range(len(metas))
        }
        if result.fit_type == "level+slope" and not self.subtract:
            log.info(
                "Planes were subtracted from the data (subtracted=True): a scalar level cannot carry a plane."
            )
        write_updates(library, updates)

    def _model_update(
        self, result: MatchResult, final: FinalBackgrounds, previous, index: int, name: str
    ) -> ModelUpdate:
        """What writing exposure ``index``'s result does to its model (warnings are logged now)."""
        method = f"pixel-{self.skymethod}"
        plane = final.planes[index]
        status = str(result.status[index])
        record = {
            "method": method,
            "status": status,
            "level_source": EXPOSURE_STATUSES[status],
            "reason": result.reasons[index],
        }
        if plane is None:
            log.warning(
                "%s: %s (%s): SKIPPED, its sky is left unchanged.",
                name,
                EXPOSURE_STATUSES[status],
                result.reasons[index] or "no usable overlap",
            )
            return ModelUpdate({"cal_step.skymatch": "SKIPPED"}, {"pixel_skymatch": record})
        if status != "measured":
            log.warning(
                "%s: %s (%s); its level %s.",
                name,
                EXPOSURE_STATUSES[status],
                result.reasons[index],
                "comes from its group (its group_id's other members, else its visit)"
                if status == "group"
                else "is the global sky alone",
            )
        subtract = self.subtract or not plane.is_flat
        record.update(
            {
                "fit_type": result.fit_type,
                **({"fit_type_choice": self._fit_choice} if self.fit_type == "auto" else {}),
                "grouping": self.grouping,
                "group": int(result.group_index[index]) + 1,
                "component": int(result.component[index]),
                "reference_group": 0 if final.reference is None else final.reference + 1,
                "match_down": bool(self.match_down),
                "level_uncertainty": float(result.sigma[index, 0]),
                **{f"plane_{k}": v for k, v in plane.as_dict().items()},
            }
        )
        return ModelUpdate(
            {
                "background.level": float(previous[index] + plane.level),
                "background.subtracted": bool(subtract),
                # The stock step's value: downstream code compares it.
                "background.method": str(self.skymethod),
                "cal_step.skymatch": "COMPLETE",
            },
            {"pixel_skymatch": record},
            (plane,) if subtract else (),
        )

    # Why fit_type='auto' chose its model (recorded with every exposure).
    _fit_choice: str = ""

    def _write_reports(self, library, result, names, final: FinalBackgrounds) -> None:
        # After the products: a table never lists exposures whose products are missing.
        self.after_save(partial(self._write_reports_now, library, result, names, final))

    def _write_reports_now(self, library, result, names, final: FinalBackgrounds) -> None:
        table = (self.offsets_table or "").strip()
        parent = getattr(self, "parent", None)
        saving = self.save_results or (parent is not None and parent.save_results)
        directory, stem = report_base(self, library, default="skymatch")
        if table.lower() == "none" or (not table and not saving):
            table_path = None
        else:
            table_path = Path(table) if table else directory / f"{stem}_skymatch_offsets.ecsv"
            meta = {
                "step": "pixel_skymatch",
                "skymethod": self.skymethod,
                "grouping": self.grouping,
                "match_down": bool(self.match_down),
                "reference": self.reference or "match_down",
                "grid_pixel_scale_arcsec": result.grid.pixel_scale * 3600.0,
                "grid_crval": list(result.grid.crval),
                "chi2_dof": result.group_solution.chi2_dof,
            }
            write_offsets_tables(table_path, names, result, final.levels, final.planes, meta)
        plot = (self.diagnostic_plot or "").strip()
        if plot:
            if plot.lower() == "auto":
                base = table_path.with_suffix("") if table_path else directory / f"{stem}_skymatch_offsets"
                plot_path = base.with_name(base.name.replace("_offsets", "") + "_diagnostics.png")
            else:
                plot_path = Path(plot)
            plot_diagnostics(plot_path, result, title=f"{stem}: pixel sky matching")

    def _skip(self, library, reason: str):
        log.warning("Sky matching skipped: %s.", reason)
        write_updates(
            library, dict.fromkeys(range(len(library)), ModelUpdate({"cal_step.skymatch": "SKIPPED"}))
        )
        return library

    def _global_only(self, library, settings, previous):
        """'global+match' with one sky group: only the global sky applies (as in SkyMatchStep)."""
        log.info("All exposures share one sky group: nothing to match; applying the 'global' sky only.")
        n = len(library)
        gsky = float(global_sky(self._residual_skies(library, settings, np.full(n, np.nan))))
        log.info("'Global' sky of every exposure: %.6g", gsky)
        record = {"method": f"pixel-{self.skymethod}", "status": "global sky only (one sky group)"}
        write_updates(
            library,
            {
                index: ModelUpdate(
                    {
                        "background.level": float(previous[index] + gsky),
                        "background.subtracted": bool(self.subtract),
                        "background.method": str(self.skymethod),
                        "cal_step.skymatch": "COMPLETE",
                    },
                    {"pixel_skymatch": record},
                    (gsky,) if self.subtract else (),
                )
                for index in range(n)
            },
        )
        return library

    @staticmethod
    def _log_table(result: MatchResult, names, final: FinalBackgrounds) -> None:
        sol = result.group_solution
        log.info(
            "Sky matching: %d group pair(s) used, %d rejected by the robust fit, %d below overlap limits.",
            int(sol.used.sum()),
            int((~sol.used).sum()),
            len(result.rejected_pairs),
        )
        for k, (pair, used) in enumerate(zip(result.group_pairs, sol.used, strict=True)):
            if not used:
                log.warning(
                    "Pair of groups %d-%d rejected as an outlier: measured %.4g, solution says %.4g.",
                    pair.i + 1,
                    pair.j + 1,
                    pair.coeffs[0],
                    pair.coeffs[0] - sol.residual[k, 0],
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
                final.levels[k],
                result.sigma[k, 0],
            )
        if np.isfinite(sol.chi2_dof):
            log.info("Reduced chi-square of the group solution: %.3g", sol.chi2_dof)
        timings = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
        log.info("Time spent: %s.", timings)


def _is_stock_skymatch(class_name: str) -> bool:
    name = str(class_name)
    return name in ("skymatch", "SkyMatchStep") or name.endswith(".SkyMatchStep")
