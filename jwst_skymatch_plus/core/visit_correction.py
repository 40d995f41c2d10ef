"""One correction per visit from the measurements of its exposures.

A measurement (tweakreg's fit to point sources, or the cross-correlation of
visits, :mod:`~jwst_skymatch_plus.core.visit_shifts`) moves the sky
positions of every exposure's detector samples.  The visit's correction is
the single affine map (:func:`~jwst_skymatch_plus.core.alignment.fit_sky_affine`)
that best reproduces those moves for all its aligned exposures together; its
shift error combines the errors of the fits it averages.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np

from .alignment import fit_sky_affine
from .wcs_adjust_table import affine_columns, table_row, unit_name

__all__ = ["combine_visit", "fit_shift_error"]

log = logging.getLogger(__name__)


def fit_shift_error(fit: Mapping) -> float:
    """Standard error (arcsec) of the shift of one tweakreg fit: its RMS over the root of its matches.

    Parameters
    ----------
    fit : mapping
        The fit's ``nmatches``, ``rmse`` (arcsec) and ``status``.

    Returns
    -------
    float
        0 for the reference of a relative alignment without matches (it
        defines the frame), NaN for any other fit without matches.
    """
    n, rmse = int(fit.get("nmatches", 0) or 0), float(fit.get("rmse", math.nan))
    return rmse / math.sqrt(n) if n > 0 else (0.0 if fit.get("status") == "REFERENCE" else math.nan)


def combine_visit(
    key: tuple[str, ...],
    before: Sequence[tuple[np.ndarray, np.ndarray]],
    after: Sequence[tuple[np.ndarray, np.ndarray] | None],
    fits: Sequence[Mapping],
    *,
    method: str,
    filter_name: str,
    fitgeometry: str,
) -> dict:
    """The table row of one visit: its correction fitted to how the measurement moved its exposures.

    Parameters
    ----------
    key : tuple of str
        ``(program, observation, visit[, module])`` of the row.
    before : sequence of (ra, dec)
        Per exposure of the visit: sky positions (deg) of its detector
        samples with the WCS it had.
    after : sequence of (ra, dec) or None
        The same samples after the measurement; None for an exposure the
        measurement did not align (left out).
    fits : sequence of mapping
        Per exposure: its fit's ``status``, ``group_id``, ``nmatches``,
        ``shift_error`` (arcsec) and ``correlation``.  Exposures fitted
        together (one rigid group, one cross-correlation unit) share a
        ``group_id`` and are counted once; without one, each exposure is its
        own fit.
    method : str
        How the visit was measured (recorded in the row).
    filter_name : str
        Filter of the reference band (recorded in the row).
    fitgeometry : {'shift', 'rshift', 'rscale', 'general'}
        Geometry of the visit's correction.

    Returns
    -------
    dict
        A row of :func:`~jwst_skymatch_plus.core.wcs_adjust_table.build_wcs_adjust_table`:
        unmeasured (NaN, ``measured=False``, logged) when no exposure was
        aligned.  The shift error is that of the mean of the visit's fits,
        and no less than the scatter of its fits about the visit's
        correction allows.
    """
    ok = [i for i in range(len(before)) if after[i] is not None]
    common = {"method": method, "filter": filter_name, "n_exposures": len(before)}
    if not ok:
        log.warning(
            "Visit %s: %s aligned none of its exposures; recorded as unmeasured.", unit_name(key), method
        )
        return table_row(key, status=f"{method} could not align any exposure of this visit", **common)
    ra = np.concatenate([before[i][0] for i in ok])
    dec = np.concatenate([before[i][1] for i in ok])
    ra_new = np.concatenate([after[i][0] for i in ok])
    dec_new = np.concatenate([after[i][1] for i in ok])
    ra0, dec0 = float(np.mean(ra)), float(np.mean(dec))
    affine, rms = fit_sky_affine(ra, dec, ra_new, dec_new, ra0, dec0, fitgeometry)
    status = "" if len(ok) == len(before) else f"{len(before) - len(ok)} exposure(s) not aligned, left out"
    if all(fits[i].get("status") == "REFERENCE" for i in ok):
        status = "reference of the relative alignment"
    # One fit per group (a rigid visit, or a cross-correlation unit):
    # count its matches and error once.
    groups = {str(fits[i].get("group_id", i)): fits[i] for i in ok}
    common["n_matches"] = sum(int(f.get("nmatches", 0) or 0) for f in groups.values())
    errors = np.array([float(f.get("shift_error", math.nan)) for f in groups.values()])
    # The visit's correction averages its groups' fits.
    error = float(np.sqrt(np.sum(errors**2)) / errors.size)
    if len(groups) > 1 and len(ok) > 1:
        error = max(error, rms / math.sqrt(len(groups)))
    correlations = [float(f.get("correlation", math.nan)) for f in groups.values()]
    common["correlation"] = float(np.nanmedian(correlations)) if np.isfinite(correlations).any() else math.nan
    log.info(
        "Visit %s: shift (%+.4f, %+.4f) +- %.4f arcsec, rotation %+.5f deg from %d exposure(s).",
        unit_name(key),
        affine.shift[0],
        affine.shift[1],
        error,
        affine.rotation,
        len(ok),
    )
    return table_row(
        key,
        measured=True,
        status=status,
        n_aligned=len(ok),
        fit_rms=rms,
        shift_error=error,
        **common,
        **affine_columns(affine),
    )
