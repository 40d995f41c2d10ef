"""LevelMatchStep: multi-stage level matching (dithers, Lyot, NIRCam short chips, tiles)."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np
from astropy.table import Table
from jwst.stpipe import Step

from .._atomic import atomic_path
from ..core.grouping import exposure_label
from ..core.keys import lyot_region
from ..core.matching import MatchConfig
from ..core.pairs import DifferenceStatistic
from ..core.stages import STAGES, check_solution, run_stages
from ._library import (
    PACKAGE_LOGGERS,
    AtomicSaveMixin,
    MaskSettings,
    check_parameters,
    check_single_configuration,
    execution_settings,
    exposure_sources,
    good_pixel_mask,
    open_library_with_metadata,
    package_logging,
    report_base,
)
from ._updates import ModelUpdate, write_updates

__all__ = ["LevelMatchStep"]

log = logging.getLogger(__name__)

#: PJPipe's reprojection functions and the drizzle kernel that plays each part here.
REPROJECT_KERNELS = {"interp": "auto", "exact": "square", "adaptive": "gaussian"}
#: PJPipe's pair weights and ours.
WEIGHT_METHODS = {"equal": "equal", "npix": "npix", "rms": "ivar"}


class LevelMatchStep(AtomicSaveMixin, Step):
    """Match background levels stage by stage and subtract them from the data.

    Stages (each optional, each with its own fit type), in order: dithers
    inside each mosaic tile; the MIRI Lyot coronagraph region onto its
    exposure's main field (``recombine_lyot``); the NIRCam short-wavelength
    chips against each other (``combine_nircam_short``); mosaic tiles against
    each other (NIRCam modules A and B of a tile each with its own level,
    ``split_nircam_modules``).  Every correction is subtracted from the data
    (constants and planes alike) and recorded per stage in
    ``meta.skymatch_plus.level_match`` and in a table written next to the
    outputs; ``meta.background`` is left to sky matching.  Grouping comes
    from metadata, never from file names.
    """

    class_alias = "level_match"

    spec = """
        do_dithers = boolean(default=True) # match dithers inside each mosaic tile
        recombine_lyot = boolean(default=False) # match the MIRI Lyot coronagraph region to its exposure's main field
        combine_nircam_short = boolean(default=False) # match the four NIRCam short chips of each module
        do_mosaic_tiles = boolean(default=True) # match mosaic tiles (visits) against each other
        split_nircam_modules = boolean(default=True) # in the tile stage, NIRCam modules A and B of each tile are units of their own (each its own level) when overlaps tie them together
        fit_type_dithers = option('auto', 'level', 'level+slope', default='auto') # fit per stage: constant, plane, or auto (planes only when the exposure pairs of the whole mosaic demonstrably need them, as in pixel_skymatch)
        fit_type_recombine_lyot = option('auto', 'level', 'level+slope', default='level')
        fit_type_combine_nircam_short = option('auto', 'level', 'level+slope', default='level')
        fit_type_mosaic_tiles = option('auto', 'level', 'level+slope', default='auto') # auto: follows the dither stage's choice (levels once its planes are removed), else chooses on the tiles' own pairs
        reference = string(default='auto') # tile held fixed: auto (closest to background obs. if known, else most overlapping pairs), flattest, most_connected, closest_to_background, a name or tile number, '' (match_down)
        background_times = pass(default='') # MJDs of background observations (comma-separated string, or a list)
        match_down = boolean(default=True) # gauge when no reference tile applies
        do_local_subtraction = boolean(default=True) # mask sources (segmentation of each image) before differencing
        sigma = float(min=0.0, default=3.0) # detection threshold (sigma) for source masks and clipping threshold
        npixels = integer(min=1, default=3) # minimum source size (pixels) for source masks
        dilate_size = integer(min=1, default=7) # source mask growth (pixels)
        do_sigma_clip = boolean(default=True) # sigma-clip the per-pixel differences
        max_iters = integer(min=0, default=20) # clipping iterations
        max_points = integer(min=1, default=10000) # largest number of points drawn per pair in diagnostic histograms
        weight_method = option('equal', 'npix', 'rms', default='rms') # pair weights in the solution (rms: inverse variance)
        min_area_percent = float(min=0.0, max=1.0, default=0.002) # pairs overlapping less than this fraction of the smaller image are dropped
        min_linear_frac = float(min=0.0, max=1.0, default=0.2) # ... or less than this fraction of its extent along both axes
        rms_sig_limit = float(min=0.0, default=5.0) # pairs deviating by more than this many sigma after the fit are cut
        reproject_func = option('interp', 'exact', 'adaptive', default='interp') # resampling onto the common grid: drizzle kernel auto (turbo on native pixels, square on coarser grids), square or gaussian
        grid_scale = float(default=None) # matching grid pixel in native pixels (default 1; 2 when a stage's fit_type is level+slope)
        check_sigma = float(min=0.0, default=5.0) # after all stages, measure every overlapping exposure pair again and warn about pairs differing by more than this many sigma (0: no check)
        dqbits = string(default='~DO_NOT_USE+NON_SCIENCE') # good DQ bits
        table = string(default='') # path of the corrections table (ECSV); '' next to saved outputs; 'none' never
        in_memory = boolean(default=True) # keep exposures in memory
        n_workers = integer(default=0) # local worker processes; 1: serial; 0: every usable core (at most 4) when the exposures hold 8 Mpix or more, else serial
        scheduler = string(default='') # Dask scheduler address (tcp://host:port); overrides n_workers
        memory_budget = float(min=0.0, default=None) # GiB the exposures and resampled images may hold in memory; input files above it stay on disk as with in_memory=False, images above what is left wait on disk (default: a quarter of the available memory, 1-3 GiB)
    """  # noqa: E501

    reference_file_types: list = []

    @staticmethod
    def get_stpipe_loggers():
        """Loggers stpipe configures when this step runs: ours and jwst's."""
        return PACKAGE_LOGGERS

    def process(self, input_models):
        """Match levels stage by stage.

        Parameters
        ----------
        input_models : str, list, ModelContainer or ModelLibrary
            An association, a list of models or files, or a library.

        Returns
        -------
        ModelLibrary
            The exposures with the corrections subtracted from their data.
        """
        with package_logging():
            return self._process(input_models)

    def _stages(self) -> list[str]:
        wanted = {
            "dithers": self.do_dithers,
            "lyot": self.recombine_lyot,
            "nircam_short": self.combine_nircam_short,
            "tiles": self.do_mosaic_tiles,
        }
        return [s for s in STAGES if wanted[s]]

    def _config(self) -> MatchConfig:
        plane = "level+slope" in (
            self.fit_type_dithers,
            self.fit_type_recombine_lyot,
            self.fit_type_combine_nircam_short,
            self.fit_type_mosaic_tiles,
        )
        grid_scale = self.grid_scale if self.grid_scale is not None else (2.0 if plane else 1.0)
        nclip = self.max_iters if self.do_sigma_clip else 0
        return MatchConfig(
            # The core's most precise robust statistic of differences (the
            # kernel-density mode), as PixelSkyMatchStep uses by default.
            statistic=DifferenceStatistic("mode", nclip, self.sigma, self.sigma),
            grid_scale=grid_scale,
            kernel=REPROJECT_KERNELS[self.reproject_func],
            weighting=WEIGHT_METHODS[self.weight_method],
            min_overlap_fraction=self.min_area_percent,
            min_linear_fraction=self.min_linear_frac,
            robust=True,
            reject_sigma=self.rms_sig_limit,
            mask_sources=self.do_local_subtraction,
            source_nsigma=self.sigma,
            source_npixels=self.npixels,
            source_dilate=self.dilate_size,
        )

    def _process(self, input_models):
        check_parameters(self)
        library, metas, held_bytes = open_library_with_metadata(self, input_models)
        names = [exposure_label(m, i) for i, m in enumerate(metas)]
        stages = self._stages()
        if len(library) < 2 or not stages:
            reason = "no stage selected" if not stages else f"only {len(library)} exposure(s)"
            log.warning("Level matching skipped: %s.", reason)
            return library
        check_single_configuration(metas, names)
        # The Lyot region takes part only in its own stage; the mask keeps it.
        settings = MaskSettings(self.dqbits, None, None, False, ())
        mask = partial(good_pixel_mask, settings=settings, bit_flags=settings.bit_flags)
        lyot = [lyot_region(m) for m in metas]
        background_times = [float(v) for v in self.background_times.replace(",", " ").split()]
        log.info("Level matching of %d exposures, stages: %s.", len(library), ", ".join(stages))
        config = self._config()
        with library:
            sources = exposure_sources(library, mask, names)
            execution = execution_settings(self, sources, held_bytes)
            outcomes = run_stages(
                sources,
                metas,
                stages,
                {
                    "dithers": self.fit_type_dithers,
                    "lyot": self.fit_type_recombine_lyot,
                    "nircam_short": self.fit_type_combine_nircam_short,
                    "tiles": self.fit_type_mosaic_tiles,
                },
                config,
                lyot_region=lambda k: lyot[k],
                reference=self.reference,
                background_times=background_times,
                match_down=self.match_down,
                progress=lambda line: log.info("Level matching %s", line),
                execution=execution,
                split_modules=self.split_nircam_modules,
            )
            if self.check_sigma > 0:
                check_solution(
                    sources,
                    outcomes,
                    config,
                    nsigma=self.check_sigma,
                    lyot_region=lambda k: lyot[k],
                    execution=execution,
                )
        self._apply(library, outcomes, [s.shape for s in sources])
        self._write_table(library, names, outcomes)
        return library

    def _apply(self, library, outcomes, shapes) -> None:
        updates = {}
        for index in range(len(library)):
            applied = [(o.stage, o.corrections[index]) for o in outcomes if o.corrections[index] is not None]
            record = {}
            for stage, c in applied:
                entry = c.plane.as_dict()
                if c.region is not None:
                    shape = shapes[index]
                    entry["rows"] = [c.region[0].start or 0, c.region[0].stop or shape[0]]
                    entry["columns"] = [c.region[1].start or 0, c.region[1].stop or shape[1]]
                record[stage] = entry
            choices = {o.stage: o.choice for o in outcomes if o.choice is not None}
            level_match = {
                "stages": [o.stage for o in outcomes],
                "corrections": record,
                # Why fit_type='auto' chose as it did, per stage that chose.
                **(
                    {"fit_type_choice": {st: f"{c.fit_type}: {c.reason}" for st, c in choices.items()}}
                    if choices
                    else {}
                ),
            }
            updates[index] = ModelUpdate(
                records={"level_match": level_match}, corrections=tuple(c for _, c in applied)
            )
        write_updates(library, updates)

    def _write_table(self, library, names, outcomes) -> None:
        parent = getattr(self, "parent", None)
        saving = self.save_results or (parent is not None and parent.save_results)
        if (self.table or "").lower() == "none" or (not self.table and not saving):
            return
        rows = []
        for outcome in outcomes:
            for k, c in enumerate(outcome.corrections):
                plane = c.plane if c is not None else None
                rows.append(
                    {
                        "exposure": names[k],
                        "stage": outcome.stage,
                        "applied": c is not None,
                        "region": "lyot" if c is not None and c.region is not None else "detector",
                        "level": plane.level if plane else np.nan,
                        "slope_x": plane.slope_x if plane else np.nan,
                        "slope_y": plane.slope_y if plane else np.nan,
                        "x_center": plane.x_center if plane else np.nan,
                        "y_center": plane.y_center if plane else np.nan,
                    }
                )
        table = Table(rows=rows)
        table.meta["reference"] = next((o.reference for o in outcomes if o.reference), "")
        directory, stem = report_base(self, library, default="mosaic")
        path = Path(self.table) if self.table else directory / f"{stem}_level_match.ecsv"

        def write() -> None:
            with atomic_path(path) as tmp:
                table.write(tmp, format="ascii.ecsv", overwrite=True)
            log.info("Level-matching corrections written to %s", path)

        # After the products: a table never lists exposures whose products are missing.
        self.after_save(write)
