"""GetWCSAdjustStep and ApplyWCSAdjustStep: per-visit WCS corrections carried between bands.

JWST's relative pointing within a visit is excellent while guide-star
astrometry differs between visits by up to a few arcsec.  ``get_wcs_adjust``
measures one correction per visit in a reference band, with tweakreg on point
sources or by cross-correlating the visits' overlaps; ``apply_wcs_adjust``
applies it to any band's exposures of the same visits.  The table between
them is ECSV, ASDF or TOML (see ``docs/wcs_adjust.rst``).  This module is the
stpipe layer: the measurements and fits live in :mod:`jwst_skymatch_plus.core`.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import logging
import math
import tempfile
from pathlib import Path

import numpy as np
from jwst.stpipe import Step

from ..core.alignment import apply_affine_to_wcs, detector_samples
from ..core.grouping import nircam_module
from ..core.keys import visit_key
from ..core.visit_correction import combine_visit, fit_shift_error
from ..core.visit_shifts import correlate_visits
from ..core.wcs_adjust_table import (
    TABLE_FORMATS,
    build_wcs_adjust_table,
    read_wcs_adjust_table,
    row_affine,
    unit_name,
    visit_id,
    write_wcs_adjust_table,
)
from ..inputs import each_model
from ._library import (
    PACKAGE_LOGGERS,
    AtomicSaveMixin,
    MaskSettings,
    good_pixel_mask,
    open_library,
    package_logging,
    report_base,
)
from ._updates import RECORD_KEY

log = logging.getLogger(__name__)

__all__ = [
    "ApplyWCSAdjustStep",
    "GetWCSAdjustStep",
    "load_function",
    "load_reference_image",
    "read_wcs_adjust_table",
    "visit_key",
    "write_wcs_adjust_table",
]

METHODS = ("tweakreg", "cross_corr")


# --------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------
def _parse_mapping(text: str, what: str) -> dict:
    if not (text or "").strip():
        return {}
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as err:
        raise ValueError(f"{what}={text!r} is not a dict literal: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what}={text!r} is not a dict")
    return value


# --------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------
class GetWCSAdjustStep(AtomicSaveMixin, Step):
    """Measure one WCS correction per visit in a reference band and write it to a table.

    ``method='tweakreg'``: the reference band's exposures are aligned by
    jwst's TweakRegStep (on copies; the input is returned unchanged), with
    ``tweakreg_parameters`` passed through, sources from
    ``custom_catalog_function`` if given, and ``alignment_catalog`` as the
    absolute reference catalog.  With ``group_dithers`` the exposures of a
    visit are aligned as one rigid group (per NIRCam module with
    ``degroup_nircam_modules``).  ``method='cross_corr'``: the visits'
    co-added dithers are registered on each other in their overlaps
    (:func:`~jwst_skymatch_plus.core.visit_shifts.correlate_visits`), for
    bands without point sources.  For each visit one correction of geometry
    ``fitgeometry`` is fitted to how the measurement moved its exposures'
    detector grids on the sky.  Visits that could not be measured are
    logged and written with ``measured=False`` and NaN values, never as
    zero.
    """

    class_alias = "get_wcs_adjust"

    spec = """
        method = string(default='tweakreg') # 'tweakreg' (point sources) or 'cross_corr' (image overlaps), or a dict by instrument, e.g. "{'nircam': 'tweakreg', 'miri': 'cross_corr'}"
        fitgeometry = option('shift', 'rshift', 'rscale', 'general', default='rshift') # per-visit correction: shift; + rotation; + scale; full linear (cross_corr: shift or rshift)
        group_dithers = boolean(default=True) # align the exposures of a visit as one rigid group, or co-added for cross_corr (else one by one, then averaged)
        degroup_nircam_modules = boolean(default=False) # NIRCam: measure modules A and B separately (one table row per visit and module)
        tweakreg_parameters = string(default='') # TweakRegStep parameters as a dict literal, e.g. "{'snr_threshold': 5, 'searchrad': 3.0}"
        alignment_catalog = string(default='') # absolute reference catalog (RA/DEC columns) for tweakreg's absolute step, or a dict literal {target: catalog}
        custom_catalog_function = string(default='') # tweakreg: 'package.module:function' or 'file.py:function' returning an exposure's source table (x, y detector pixels, 0-based)
        custom_catalog_function_kwargs = string(default='') # keyword arguments of custom_catalog_function, as a dict literal
        max_shift = float(min=0.0, default=3.0) # cross_corr: largest shift between two visits searched, arcsec
        min_correlation = float(min=0.0, max=1.0, default=0.3) # cross_corr: overlap blocks correlating less are not used
        min_overlap_pixels = integer(min=16, default=1000) # cross_corr: overlap blocks with fewer common valid pixels are not used
        passes = integer(min=1, default=6) # cross_corr: measure-and-correct passes at most
        coarse_search = option('difference', 'phase', default='difference') # cross_corr: whole-pixel search by least squared difference, or scikit-image's masked phase correlation
        reference_image = string(default='') # cross_corr: FITS image with a celestial WCS (e.g. an earlier mosaic) the visits are aligned to, not only to each other
        dqbits = string(default='~DO_NOT_USE+NON_SCIENCE') # cross_corr: DQ flags of usable pixels
        table_path = string(default='') # where to write the table ('' = <output_dir>/<product>_wcs_adjust.ecsv)
        table_formats = string(default='ecsv,toml') # comma-separated: ecsv, asdf, toml
        overwrite = boolean(default=True) # if False and the table exists, keep it and measure nothing
        in_memory = boolean(default=True) # if False, keep exposures on disk between uses
    """  # noqa: E501

    reference_file_types: list = []

    @staticmethod
    def get_stpipe_loggers():
        """Loggers stpipe configures when this step runs."""
        return PACKAGE_LOGGERS

    def save_model(self, model, *args, **kwargs):
        """The product is the table: the exposures are not saved."""
        del model, args, kwargs

    def process(self, input_data):
        """Measure per-visit corrections and write the table.

        Parameters
        ----------
        input_data : str, Path, list, ModelContainer or ModelLibrary
            The reference band's exposures.

        Returns
        -------
        ModelLibrary
            The input exposures, unchanged.
        """
        with package_logging():
            return self._process(input_data)

    def _process(self, input_data):
        formats = [f.strip().lower() for f in self.table_formats.split(",") if f.strip()]
        if not formats or any(f not in TABLE_FORMATS for f in formats):
            raise ValueError(f"table_formats={self.table_formats!r}: use one or more of {TABLE_FORMATS}")
        params = _parse_mapping(self.tweakreg_parameters, "tweakreg_parameters")
        params.setdefault("fitgeometry", self.fitgeometry)
        # TweakRegStep's default (False) matches every group against the
        # first group's catalog alone, so mosaic tiles that do not overlap
        # the first visit are never aligned.  Growing the reference catalog
        # with each aligned group chains the whole mosaic together.
        params.setdefault("expand_refcat", True)
        library = open_library(self, input_data)
        directory, stem = report_base(self, library)
        path = Path(self.table_path) if self.table_path else directory / f"{stem}_wcs_adjust.ecsv"
        if not self.overwrite and path.exists():
            log.info("%s exists and overwrite=False: kept, nothing measured.", path)
            self.table = read_wcs_adjust_table(path)
            self.table_paths = [path]
            return library
        copies, keys, filters, instruments, targets = [], [], [], [], []
        for _, model in each_model(library):
            copy = model.copy()
            module = nircam_module(model) if self.degroup_nircam_modules else ""
            keys.append((*visit_key(model), module))
            if self.group_dithers:
                # tweakreg fits one correction per group_id: a whole
                # visit constrains rotation far better than one dither.
                copy.meta.group_id = visit_id(keys[-1]) + module
            copies.append(copy)
            filters.append(str(model.meta.instrument.filter or ""))
            instruments.append(str(model.meta.instrument.name or "").lower())
            targets.append(str(model.meta.target.catalog_name or model.meta.target.proposer_name or ""))
        if len(set(filters)) > 1:
            log.warning(
                "The reference exposures mix filters (%s): one band is expected.",
                ", ".join(sorted(set(filters))),
            )
        method = self._resolve_method(instruments)
        catalog = self._resolve_alignment_catalog(targets)
        if catalog:
            params["abs_refcat"] = catalog
        samples = [detector_samples(m.data.shape) for m in copies]
        before = [m.meta.wcs(*s) for m, s in zip(copies, samples, strict=True)]
        if method == "cross_corr":
            after, fits = self._cross_correlate(copies, keys, samples)
        else:
            with tempfile.TemporaryDirectory(prefix="wcs_adjust_catalogs") as catdir:
                if self.custom_catalog_function.strip():
                    params.update(self._write_custom_catalogs(copies, Path(catdir)))
                after, fits = self._tweakreg(copies, samples, params)
        rows = []
        for key in dict.fromkeys(keys):
            members = [i for i, k in enumerate(keys) if k == key]
            rows.append(
                combine_visit(
                    key,
                    [before[i] for i in members],
                    [after[i] for i in members],
                    [fits[i] for i in members],
                    method=method,
                    filter_name=filters[members[0]],
                    fitgeometry=self.fitgeometry,
                )
            )
        table = build_wcs_adjust_table(
            rows,
            {
                "method": method,
                "fitgeometry": self.fitgeometry,
                "absolute": bool(params.get("abs_refcat"))
                or (method == "cross_corr" and bool(self.reference_image.strip())),
                "degroup_nircam_modules": bool(self.degroup_nircam_modules),
            },
        )
        self.table = table
        self.table_paths = write_wcs_adjust_table(table, path, formats)
        n_measured = int(np.sum(table["measured"]))
        log.info("%d of %d visit row(s) measured by %s.", n_measured, len(table), method)
        for p in self.table_paths:
            log.info("WCS adjustment table written: %s", p)
        return library

    def _resolve_method(self, instruments: list[str]) -> str:
        """The method for these exposures: ``method`` itself, or its entry for their instrument."""
        text = self.method.strip()
        if text.startswith("{"):
            choice = {str(k).lower(): v for k, v in _parse_mapping(text, "method").items()}
            found = sorted(set(instruments))
            if len(found) != 1:
                raise ValueError(
                    f"method={text!r} chooses by instrument, but the exposures are from {found}: "
                    "run get_wcs_adjust once per reference band."
                )
            if found[0] not in choice:
                raise ValueError(f"method={text!r} has no entry for instrument {found[0]!r}")
            text = str(choice[found[0]])
            log.info("Method for %s: %s.", found[0].upper(), text)
        if text not in METHODS:
            raise ValueError(f"method={self.method!r}: use one of {METHODS} or a dict of them by instrument")
        return text

    def _resolve_alignment_catalog(self, targets: list[str]) -> str:
        """The absolute catalog file: ``alignment_catalog``, or its entry for the exposures' target."""
        text = self.alignment_catalog.strip()
        if not text.startswith("{"):
            return text
        choice = {
            str(k).strip().lower(): str(v) for k, v in _parse_mapping(text, "alignment_catalog").items()
        }
        names = sorted({t.strip().lower() for t in targets})
        hits = [choice[n] for n in names if n in choice]
        if len(set(hits)) > 1:
            raise ValueError(f"alignment_catalog: the exposures' targets {names} map to several catalogs")
        if not hits:
            log.warning("alignment_catalog has no entry for target(s) %s: relative alignment only.", names)
            return ""
        return hits[0]

    def _write_custom_catalogs(self, copies, directory: Path) -> dict:
        """Run the user's catalog function on every exposure; TweakRegStep parameters that use the results."""
        from astropy.table import Table as _Table

        function = load_function(self.custom_catalog_function)
        kwargs = _parse_mapping(self.custom_catalog_function_kwargs, "custom_catalog_function_kwargs")
        lines = []
        for i, model in enumerate(copies):
            catalog = function(model, **kwargs)
            if not isinstance(catalog, _Table):
                try:
                    catalog = _Table(catalog)
                except Exception as err:
                    raise TypeError(
                        f"{self.custom_catalog_function} returned {type(catalog).__name__} for "
                        f"{model.meta.filename}, not a table: {err}"
                    ) from None
            names = set(catalog.colnames)
            if not (
                {"x", "y"} <= names
                or {"xcentroid", "ycentroid"} <= names
                or {"x_centroid", "y_centroid"} <= names
            ):
                raise ValueError(
                    f"{self.custom_catalog_function}: the catalog of {model.meta.filename} has columns "
                    f"{sorted(names)}; it needs x and y (or xcentroid and ycentroid), detector pixels."
                )
            name = f"catalog_{i:05d}.ecsv"
            catalog.write(directory / name, format="ascii.ecsv", overwrite=True)
            lines.append(f"{model.meta.filename} {name}")
            log.info(
                "%s: %d source(s) from %s.", model.meta.filename, len(catalog), self.custom_catalog_function
            )
        catfile = directory / "catfile.txt"
        catfile.write_text("\n".join(lines) + "\n")
        return {"use_custom_catalogs": True, "catfile": str(catfile)}

    def _tweakreg(self, copies, samples, params):
        """Sky positions of every exposure's samples after tweakreg (None: not aligned), and fit info."""
        if not params.get("abs_refcat"):
            return self._run_tweakreg(copies, samples, params)
        # TweakRegStep fits the absolute catalog with all groups as one
        # rigid body, after their relative fit: groups that overlap no other
        # (separate tiles, the two NIRCam modules) would keep their errors.
        # Each group is fitted to the catalog on its own instead.
        params = {"abs_fitgeometry": params["fitgeometry"], **params}
        ids = [str(m.meta.group_id) if self.group_dithers else str(i) for i, m in enumerate(copies)]
        after, fits = [None] * len(copies), [{} for _ in copies]
        for group in dict.fromkeys(ids):
            members = [i for i, g in enumerate(ids) if g == group]
            log.info("Group %s: %d exposure(s) aligned to %s.", group, len(members), params["abs_refcat"])
            got, info = self._run_tweakreg(
                [copies[i] for i in members], [samples[i] for i in members], params
            )
            for i, a, f in zip(members, got, info, strict=True):
                after[i], fits[i] = a, {**f, "group_id": group}
        return after, fits

    def _run_tweakreg(self, copies, samples, params):
        tweakreg = _tweakreg_class()(**params)
        aligned = tweakreg.run(copies)
        fits = tweakreg.fit_info or [{}] * len(copies)
        statuses = [str(f.get("status", "")) for f in fits]
        # A reference nothing was aligned to measures nothing.
        any_success = any("SUCCESS" in st for st in statuses)
        after = []
        for i, model in each_model(aligned):
            # tweakreg's reference group keeps its WCS: a measured zero.
            ok = "SUCCESS" in statuses[i] or (statuses[i] == "REFERENCE" and any_success)
            after.append(model.meta.wcs(*samples[i]) if ok else None)
        for f in fits:
            f["shift_error"] = fit_shift_error(f)
        return after, fits

    def _cross_correlate(self, copies, keys, samples):
        """Sample sky positions after cross-correlating the visits (None: unmeasured), and fit info."""
        settings = MaskSettings(self.dqbits, None, None, True, ())
        data = [(np.nan_to_num(m.data), good_pixel_mask(m, settings)) for m in copies]
        wcsinfo = [
            {k: float(getattr(m.meta.wcsinfo, k)) for k in ("v2_ref", "v3_ref", "roll_ref")} for m in copies
        ]
        # A visit's dithers co-added as one unit, or (group_dithers=False)
        # every exposure its own unit, the visit's correction their average.
        unit_keys = keys if self.group_dithers else [(*k, i) for i, k in enumerate(keys)]
        units = list(dict.fromkeys(unit_keys))
        unit_of = [units.index(k) for k in unit_keys]
        if self.fitgeometry in ("rscale", "general"):
            log.info(
                "cross_corr fits shifts and rotations: fitgeometry=%r done as 'rshift'.", self.fitgeometry
            )
        result = correlate_visits(
            data,
            [m.meta.wcs for m in copies],
            wcsinfo,
            unit_of,
            max_shift_arcsec=self.max_shift,
            fit_rotation=self.fitgeometry != "shift",
            min_pixels=self.min_overlap_pixels,
            min_correlation=self.min_correlation,
            passes=self.passes,
            coarse=self.coarse_search,
            reference=load_reference_image(self.reference_image) if self.reference_image.strip() else None,
        )
        used = [s for s, ok in zip(result.samples, result.solution.used, strict=True) if ok]
        after, fits = [], []
        for i, u in enumerate(unit_of):
            mine = [s.correlation for s in used if u in (s.a, s.b)]
            ok = bool(result.measured[u])
            after.append(result.wcs[i](*samples[i]) if ok else None)
            fits.append(
                {
                    "status": "SUCCESS" if ok else "FAILED",
                    "nmatches": len(mine),
                    "group_id": str(u),
                    "correlation": float(np.median(mine)) if mine else math.nan,
                    "shift_error": float(result.solution.uncertainty[u]) * result.pixel_scale_arcsec,
                }
            )
        return after, fits


def load_reference_image(path: str) -> tuple[np.ndarray, np.ndarray, object]:
    """``(data, good, wcs)`` of a FITS image: its SCI extension, else the first 2-D celestial image."""
    from astropy.io import fits
    from astropy.wcs import WCS

    with fits.open(path) as hdul:
        candidates = [h for h in hdul if h.name == "SCI"] + [h for h in hdul if h.name != "SCI"]
        for hdu in candidates:
            if hdu.data is None or np.ndim(hdu.data) != 2:
                continue
            wcs = WCS(hdu.header)
            if wcs.has_celestial and wcs.naxis == 2:
                data = np.asarray(hdu.data, np.float64)
                log.info("Reference image: %s[%s], %d x %d pixels.", path, hdu.name, *data.shape[::-1])
                return data, np.isfinite(data), wcs
    raise ValueError(f"{path}: no 2-D image with a celestial WCS")


def load_function(spec: str):
    """The function ``'package.module:function'`` or ``'path/to/file.py:function'`` names."""
    target, sep, name = spec.strip().rpartition(":")
    if not sep or not target or not name:
        raise ValueError(f"{spec!r}: give a function as 'package.module:function' or 'file.py:function'")
    if target.endswith(".py"):
        file = Path(target).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"{spec!r}: no file {file}")
        module_spec = importlib.util.spec_from_file_location(f"_wcs_adjust_user_{file.stem}", file)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise ValueError(f"{spec!r}: cannot import {target!r}: {err}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ValueError(f"{spec!r}: {target!r} has no function {name!r}")
    return function


def _tweakreg_class():
    from jwst.tweakreg import TweakRegStep

    class FitInfoTweakRegStep(TweakRegStep):
        """TweakRegStep keeping each exposure's fit status (reference, success, failure)."""

        fit_info: list | None = None

        def _apply_tweakreg_solution(self, images, correctors, *args, **kwargs):
            self.fit_info = [
                {**c.meta.get("fit_info", {}), "group_id": c.meta.get("group_id")} for c in correctors
            ]
            return super()._apply_tweakreg_solution(images, correctors, *args, **kwargs)

    return FitInfoTweakRegStep


class ApplyWCSAdjustStep(AtomicSaveMixin, Step):
    """Apply per-visit WCS corrections from a ``get_wcs_adjust`` table to any band's exposures.

    Each exposure is matched to a table row by program, observation and
    visit number, and by NIRCam module where the table has a row per module
    (``degroup_nircam_modules``).  Its gwcs is corrected through tweakwcs' JWST corrector
    (as tweakreg corrects it), then the FITS WCS keywords
    (``update_fits_wcsinfo``) and ``s_region`` are recomputed and what was
    applied is recorded in ``meta.skymatch_plus.wcs_adjust``.  Exposures of
    visits absent from the table, or not measured, are logged and left
    unchanged.  Input files are never modified; a ModelLibrary is returned.
    """

    class_alias = "apply_wcs_adjust"

    spec = """
        table = string(default='') # the table (.ecsv, .asdf or .toml) written by get_wcs_adjust
        in_memory = boolean(default=True) # if False, keep exposures on disk between uses
    """

    reference_file_types: list = []

    @staticmethod
    def get_stpipe_loggers():
        """Loggers stpipe configures when this step runs."""
        return PACKAGE_LOGGERS

    def process(self, input_data):
        """Apply the table's corrections.

        Parameters
        ----------
        input_data : str, Path, list, ModelContainer or ModelLibrary
            Exposures of any band observed in the table's visits.

        Returns
        -------
        ModelLibrary
            The exposures with corrected WCS.
        """
        with package_logging():
            return self._process(input_data)

    def _process(self, input_data):
        if not self.table.strip():
            raise ValueError("apply_wcs_adjust needs 'table': a file written by get_wcs_adjust.")
        table = read_wcs_adjust_table(self.table)
        rows = {(r["program"], r["observation"], r["visit"], r["module"]): r for r in table}
        library = open_library(self, input_data)
        applied: dict[tuple, int] = {}
        with library:
            for i in range(len(library)):
                model = library.borrow(i)
                key = visit_key(model)
                # A module's own row (degroup_nircam_modules) before the visit's.
                row = rows.get((*key, nircam_module(model)), rows.get((*key, "")))
                changed = self._apply_one(model, row)
                if changed:
                    unit = (row["program"], row["observation"], row["visit"], row["module"])
                    applied[unit] = applied.get(unit, 0) + 1
                library.shelve(model, i, modify=changed)
        for unit, count in applied.items():
            row = rows[unit]
            log.info(
                "Visit %s: %d exposure(s) shifted by (%+.4f, %+.4f) arcsec, rotated %+.5f deg.",
                unit_name(unit),
                count,
                row["shift_ra"],
                row["shift_dec"],
                row["rotation"],
            )
        log.info("WCS corrections applied to %d of %d exposure(s).", sum(applied.values()), len(library))
        return library

    def _apply_one(self, model, row) -> bool:
        from jwst.assign_wcs.util import update_fits_wcsinfo, update_s_region_imaging

        name = model.meta.filename
        if row is None:
            log.warning(
                "%s: visit %s is not in the table; WCS left unchanged.", name, visit_id(visit_key(model))
            )
            return False
        if not row["measured"]:
            log.warning(
                "%s: visit %s was not measured (%s); WCS left unchanged.",
                name,
                row["visit_id"],
                row["status"],
            )
            return False
        affine = row_affine(row)
        wi = model.meta.wcsinfo
        model.meta.wcs = apply_affine_to_wcs(
            model.meta.wcs, {"v2_ref": wi.v2_ref, "v3_ref": wi.v3_ref, "roll_ref": wi.roll_ref}, affine
        )
        update_fits_wcsinfo(model)
        update_s_region_imaging(model)
        record = {"table": str(Path(self.table).name), **{k: _plain(row[k]) for k in row.colnames}}
        model.meta.instance.setdefault(RECORD_KEY, {})["wcs_adjust"] = record
        log.debug(
            "%s: visit %s shifted by (%+.4f, %+.4f) arcsec, rotated %+.5f deg.",
            name,
            unit_name((row["program"], row["observation"], row["visit"], row["module"])),
            affine.shift[0],
            affine.shift[1],
            affine.rotation,
        )
        return True


def _plain(value):
    """Table values as plain Python (for the datamodel's metadata tree)."""
    return value.item() if isinstance(value, np.generic) else value
