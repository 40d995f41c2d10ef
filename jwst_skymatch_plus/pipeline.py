"""calwebb_image3 with pixel-based sky matching and the stages around it."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from jwst.pipeline import Image3Pipeline

from .background import BGR_CHECK_ALIASES, BGR_CHECK_TYPES, BackgroundRule
from .core.grouping import exposure_label, instrument_family, parse_families, regrouped_id
from .inputs import (
    each_model,
    is_association,
    load_association,
    open_exposures,
    read_exposure_metadata,
    unvalidated_reads,
)
from .steps._library import (
    PACKAGE_LOGGERS,
    AtomicSaveMixin,
    check_exposure_types,
    check_image,
    check_parameters,
    pass_background_times,
)
from .steps.level_match import LevelMatchStep
from .steps.pixel_skymatch import PixelSkyMatchStep
from .steps.wcs_adjust import ApplyWCSAdjustStep, GetWCSAdjustStep

__all__ = ["Image3PlusPipeline"]

log = logging.getLogger(__name__)

#: Our optional stages: they run only when their ``skip`` is set to False.
OPTIONAL_STAGES = ("get_wcs_adjust", "apply_wcs_adjust", "level_match")


class Image3PlusPipeline(AtomicSaveMixin, Image3Pipeline):
    """Image3Pipeline with :class:`PixelSkyMatchStep` and optional stages of ours.

    Stages, in order: ``assign_mtwcs`` (moving targets) or
    ``get_wcs_adjust`` and ``apply_wcs_adjust`` (optional) and ``tweakreg``; ``level_match``
    (optional); ``skymatch`` (:class:`PixelSkyMatchStep`);
    ``outlier_detection``; ``resample``; ``source_catalog``.  Then, when asked,
    every exposure drizzled alone onto the mosaic grid (``do_drizzle``,
    ``*_i2d_single.fits``) and the mosaic blotted back onto every exposure's
    detector (``do_blot``, ``*_i2d_blot.fits``).

    The optional stages are skipped by default and run with
    ``--steps.get_wcs_adjust.skip=false`` (measures this band's table),
    ``--steps.apply_wcs_adjust.skip=false`` (applies its ``table``, or the
    one just measured) and ``--steps.level_match.skip=false``.  Every jwst stage keeps its
    parameters under ``steps.``.  Grouping switches change the exposures'
    group metadata for this run only; input files are never changed.
    """

    class_alias = "calwebb_image3_plus"

    spec = (
        Image3Pipeline.spec
        + f"""
    tweakreg_group_dithers = pass(default='')  # families (miri, nircam_long, nircam_short) whose dithers of a visit tweakreg aligns as one group
    tweakreg_degroup_dithers = pass(default='')  # families whose exposures tweakreg aligns one by one (jwst's default)
    tweakreg_degroup_nircam_modules = boolean(default=False)  # tweakreg aligns NIRCam modules A and B separately
    tweakreg_degroup_nircam_short_chips = boolean(default=False)  # tweakreg aligns each NIRCam short-wavelength chip separately
    skymatch_group_dithers = pass(default='')  # families whose dithers of a visit share one sky level (skymatch grouping 'visit')
    skymatch_degroup_dithers = pass(default='')  # families whose exposures each get their own sky level (grouping 'group_id')
    bgr_check_type = option({", ".join(repr(t) for t in (*BGR_CHECK_TYPES, *BGR_CHECK_ALIASES))}, default='asn_exptype')  # how background observations are recognised (PJPipe's names accepted)
    bgr_background_name = string(default='off')  # text in the file name (bgr_check_type='name') or target name ('target_name')
    bgr_keyword = string(default='meta.observation.bkgdtarg')  # metadata keyword for bgr_check_type='keyword'
    bgr_keyword_value = string(default='true')  # value of bgr_keyword that marks a background observation
    process_bgr_like_science = boolean(default=False)  # put background observations into the mosaic like science
    do_drizzle = boolean(default=False)  # also drizzle each exposure alone onto the mosaic grid (*_i2d_single)
    do_blot = boolean(default=False)  # also blot the mosaic onto each exposure's detector (*_i2d_blot)
    blot_fillval = string(default='nan')  # value of blotted pixels outside the mosaic
    """  # noqa: E501
    )

    step_defs = {
        "assign_mtwcs": Image3Pipeline.step_defs["assign_mtwcs"],
        "get_wcs_adjust": GetWCSAdjustStep,
        "apply_wcs_adjust": ApplyWCSAdjustStep,
        "tweakreg": Image3Pipeline.step_defs["tweakreg"],
        "level_match": LevelMatchStep,
        "skymatch": PixelSkyMatchStep,
        "outlier_detection": Image3Pipeline.step_defs["outlier_detection"],
        "resample": Image3Pipeline.step_defs["resample"],
        "source_catalog": Image3Pipeline.step_defs["source_catalog"],
    }

    @classmethod
    def load_spec_file(cls, preserve_comments=None):
        """The pipeline's spec, with our optional stages skipped by default."""
        kwargs = {} if preserve_comments is None else {"preserve_comments": preserve_comments}
        spec = super().load_spec_file(**kwargs)
        for name in OPTIONAL_STAGES:
            if name in spec["steps"]:
                spec["steps"][name]["skip"] = "boolean(default=True)"
        return spec

    @staticmethod
    def get_stpipe_loggers():
        """Loggers stpipe configures when this pipeline runs: ours and jwst's."""
        return PACKAGE_LOGGERS

    @classmethod
    def _get_crds_parameters(cls, dataset):
        """CRDS parameters of the first science member, or of the first member of any type.

        jwst's version fails on an association without science members (one
        of background observations only, which this pipeline can process).
        An empty association, or a first member that cannot be read, raises
        ``ValueError`` / ``OSError`` saying so (stpipe then carries on, and
        the run itself refuses the input with the same message).
        """
        if is_association(dataset):
            from jwst.datamodels import ModelLibrary

            asn = load_association(dataset)
            members = asn["products"][0]["members"]
            if not members:
                raise ValueError(f"No exposures to process: the association {Path(dataset).name} is empty.")
            science = [m for m in members if m.get("exptype", "science").lower() == "science"]
            first = Path((science or members)[0]["expname"])
            read_exposure_metadata(first if first.is_absolute() else Path(dataset).parent / first)
            if not science:
                library = ModelLibrary(os.fspath(dataset), asn_n_members=1)
                with library, unvalidated_reads():
                    return dict(library.read_metadata(0)), "jwst"
        return super()._get_crds_parameters(dataset)

    # ------------------------------------------------------------------ run

    def _adjust_wcs(self, library):
        """The optional WCS stages: measure this band's per-visit table, apply a table."""
        library = self.get_wcs_adjust.run(library)
        measured = getattr(self.get_wcs_adjust, "table_paths", None)
        if measured and not self.apply_wcs_adjust.table.strip():
            # No table given: align this band by the one just measured.
            self.apply_wcs_adjust.table = str(measured[0])
            log.info("apply_wcs_adjust uses the table get_wcs_adjust wrote: %s", measured[0])
        elif measured and self.apply_wcs_adjust.skip:
            log.info("WCS adjustment table written (%s); apply_wcs_adjust is skipped.", measured[0])
        return self.apply_wcs_adjust.run(library)

    def process(self, input_data):
        """Run the level-3 imaging stages on an association or a list of exposures.

        Parameters
        ----------
        input_data : str, dict, list, ModelLibrary or DataModel
            An image3 association (file or dictionary), a list of models or
            file names, or a ``ModelLibrary``.
        """
        log.info("Starting calwebb_image3_plus ...")
        self._check_grouping_parameters()
        for step in (self.level_match, self.skymatch):
            if not step.skip:
                check_parameters(step)  # refused now, not after tweakreg
        self.outlier_detection.suffix = "crf"
        self.outlier_detection.mode = "imaging"
        self.outlier_detection.save_results = self.save_results
        self.resample.suffix = "i2d"
        self.resample.save_results = self.save_results
        self.source_catalog.save_results = self.save_results

        # Background observations are recognised by bgr_check_type; their
        # times go to skymatch and level_match as the time reference of
        # reference='closest_to_background'.
        opened = open_exposures(
            input_data,
            rule=self._background_rule(),
            keep_background=self.process_bgr_like_science,
            on_disk=not self.in_memory,
        )
        pass_background_times(opened.exposures, [self.skymatch, self.level_match])
        library, metas = opened.library, opened.metas
        if self.output_file is None and "name" in library.asn["products"][0]:
            self.output_file = library.asn["products"][0]["name"]
        if len(library) == 0:
            raise ValueError("No exposures to process")
        check_exposure_types(metas, [exposure_label(m, i) for i, m in enumerate(metas)])
        self._configure_skymatch_grouping(metas)

        if len(library.group_names) >= 1:
            from jwst.lib.exposure_types import is_moving_target

            with library:
                is_moving = is_moving_target(library.read_metadata(0))
            if is_moving:
                library = self.assign_mtwcs.run(library)
            else:
                self._check_wcs(library)
                library = self._adjust_wcs(library)
                jwst_groups = self._regroup_for_tweakreg(library, metas)
                library = self.tweakreg.run(library)
                if jwst_groups is not None:
                    # Outlier detection and resample need jwst's exposure groups.
                    set_group_ids(library, jwst_groups)
            library = self.level_match.run(library)
            library = self.skymatch.run(library)
            library = self.outlier_detection.run(library)
        elif self.skymatch.skymethod == "match":
            log.warning("Only one exposure: sky matching skipped (there is nothing to match it to).")
        else:
            library = self.skymatch.run(library)

        mosaic = self.resample.run(library)
        from stdatamodels.jwst import datamodels

        if not isinstance(mosaic, datamodels.ImageModel) or mosaic.meta.cal_step.resample != "COMPLETE":
            return
        self.source_catalog.run(mosaic)
        if self.do_drizzle:
            self._drizzle_singles(library, mosaic)
        if self.do_blot:
            self._blot_mosaic(library, mosaic)

    # ------------------------------------------------------- input and grouping

    def _check_wcs(self, library) -> None:
        """Name an exposure whose WCS is unusable before the alignment stages meet it.

        tweakreg fails on a WCS that gives NaN deep in spherical geometry
        ("Out of domain for acos"), without naming the exposure.  Sky
        matching checks the WCS itself.
        """
        if all(getattr(self, name).skip for name in ("get_wcs_adjust", "apply_wcs_adjust", "tweakreg")):
            return
        for index, model in each_model(library):
            check_image(model, model.meta.filename or f"exposure {index}")

    def _background_rule(self) -> BackgroundRule:
        return BackgroundRule(
            check_type=self.bgr_check_type,
            name=self.bgr_background_name,
            keyword=self.bgr_keyword,
            value=self.bgr_keyword_value,
        )

    def _check_grouping_parameters(self) -> None:
        for stage in ("tweakreg", "skymatch"):
            joined = parse_families(getattr(self, f"{stage}_group_dithers"), f"{stage}_group_dithers")
            split = parse_families(getattr(self, f"{stage}_degroup_dithers"), f"{stage}_degroup_dithers")
            if joined & split:
                raise ValueError(
                    f"{', '.join(sorted(joined & split))} listed in both {stage}_group_dithers "
                    f"and {stage}_degroup_dithers"
                )

    def _configure_skymatch_grouping(self, metas: Sequence[Mapping]) -> None:
        families = {instrument_family(m) for m in metas}
        joined = parse_families(self.skymatch_group_dithers, "skymatch_group_dithers")
        split = parse_families(self.skymatch_degroup_dithers, "skymatch_degroup_dithers")
        if families & joined:
            self.skymatch.grouping = "visit"
        elif families & split:
            self.skymatch.grouping = "group_id"
        else:
            return
        log.info(
            "Sky matching grouping for %s: %r", ", ".join(sorted(families - {None})), self.skymatch.grouping
        )

    def _regroup_for_tweakreg(self, library, metas: Sequence[Mapping]) -> list[str] | None:
        """Give tweakreg the grouping asked for; return jwst's ids to restore, or None."""
        joined = parse_families(self.tweakreg_group_dithers, "tweakreg_group_dithers")
        if not (joined or self.tweakreg_degroup_nircam_modules or self.tweakreg_degroup_nircam_short_chips):
            # tweakreg_degroup_dithers is jwst's own grouping: nothing to change.
            return None
        ids = [
            regrouped_id(
                m,
                group_dithers=instrument_family(m) in joined,
                split_modules=self.tweakreg_degroup_nircam_modules,
                split_short_chips=self.tweakreg_degroup_nircam_short_chips,
            )
            for m in metas
        ]
        log.info("tweakreg aligns %d group(s) of %d exposures", len(set(ids)), len(ids))
        return set_group_ids(library, ids)

    # ------------------------------------------------- per-exposure products

    def _drizzle_singles(self, library, mosaic) -> None:
        """Drizzle every exposure alone onto the mosaic's grid (``*_i2d_single``)."""
        from jwst.datamodels import ModelLibrary
        from jwst.resample.resample import ResampleImage

        kwargs = self.resample.get_drizpars()
        kwargs["output_wcs"] = _grid_wcs(mosaic)
        kwargs["wcs_pars"] = None
        kwargs["blendheaders"] = False
        log.info("Drizzling %d exposure(s) one by one onto the mosaic grid", len(library))
        for _, model in each_model(library):
            single = ResampleImage(
                ModelLibrary([model.copy()], on_disk=False),
                enable_ctx=False,
                enable_var=False,
                compute_err="driz_err",
                **kwargs,
            ).resample_many_to_one()
            single.meta.filename = None
            self._save_product(single, model.meta.filename, "i2d_single")

    def _blot_mosaic(self, library, mosaic) -> None:
        """Blot the mosaic back onto every exposure's detector (``*_i2d_blot``)."""
        from stcal.outlier_detection.utils import gwcs_blot
        from stdatamodels.jwst import datamodels

        fillval = _parse_fillval(self.blot_fillval)
        log.info("Blotting the mosaic onto %d exposure frame(s)", len(library))
        for _, model in each_model(library):
            data = gwcs_blot(
                mosaic.data,
                mosaic.meta.wcs,
                model.data.shape,
                model.meta.wcs,
                fillval=fillval,
                pixmap_stepsize=self.resample.pixmap_stepsize,
                pixmap_order=self.resample.pixmap_order,
            )
            blot = datamodels.ImageModel(data=data)
            blot.update(model, only="PRIMARY")
            blot.update(model, only="SCI")
            blot.meta.wcs = model.meta.wcs
            blot.meta.wcsinfo = model.meta.wcsinfo
            blot.meta.bunit_data = mosaic.meta.bunit_data
            self._save_product(blot, model.meta.filename, "i2d_blot")

    def _save_product(self, model, exposure_name: str, suffix: str) -> None:
        if not self.save_results:
            return
        self.save_model(model, output_file=exposure_name, suffix=suffix, force=True)


def set_group_ids(library, group_ids: Sequence[str]) -> list[str]:
    """Set a ModelLibrary's member group ids (and its models'); return the old ones.

    stpipe's ``ModelLibrary`` keeps the association members it was built
    from and gives no setter for them; tweakreg reads the grouping both from
    the members (``group_names``) and from each model's ``meta.group_id``;
    outlier detection and resample from the members.  Both are updated
    here, for a library in memory or on disk.
    """
    members = library._members
    if len(group_ids) != len(members):
        raise ValueError(f"{len(group_ids)} group ids for {len(members)} exposures")
    original = [m["group_id"] for m in members]
    for member, gid in zip(members, group_ids, strict=True):
        member["group_id"] = gid
    # modify=True: an on-disk library reloads models from its own
    # temporary files without re-applying the member's id.
    for index, model in each_model(library, modify=True):
        model.meta.group_id = group_ids[index]
    return original


def _grid_wcs(mosaic) -> dict:
    """The mosaic's grid as jwst's resampling takes a custom output WCS."""
    import copy

    wcs = copy.deepcopy(mosaic.meta.wcs)
    ny, nx = mosaic.data.shape
    wcs.array_shape = (ny, nx)
    wcs.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    area = mosaic.meta.photometry.pixelarea_arcsecsq
    scale = math.sqrt(area) if area else None
    return {"wcs": wcs, "pixel_scale": scale, "pixel_area": area}


def _parse_fillval(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"blot_fillval must be a number or 'nan', not {text!r}") from exc
