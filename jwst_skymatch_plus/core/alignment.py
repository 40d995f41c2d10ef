"""Per-visit WCS corrections: tangent-plane affine fits and their application.

A correction is an affine map of sky positions in a local tangent plane
centred on the visit: ``X -> matrix @ X + shift`` with ``X = (xi, eta)``
the (East, North) offsets from the tangent point in arcsec.  This is the
convention of tweakwcs' ``set_correction(matrix, shift, ref_tpwcs)`` when
``ref_tpwcs`` is a TAN projection with 1 arcsec pixels, East and North axes,
which :func:`tangent_corrector` builds; so a correction measured in one band
can be applied to any other band's exposures of the same visit through
tweakwcs' JWST corrector, which updates the V2/V3 part of the gwcs exactly
as tweakreg does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "FITGEOMETRIES",
    "SkyAffine",
    "apply_affine_to_wcs",
    "detector_samples",
    "fit_sky_affine",
    "sky_to_tangent",
    "tangent_corrector",
    "tangent_to_sky",
]

FITGEOMETRIES = ("shift", "rshift", "rscale", "general")
_ARCSEC = 3600.0


def sky_to_tangent(ra, dec, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic projection about ``(ra0, dec0)``: (East, North) offsets in arcsec."""
    ra, dec = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    a0, d0 = math.radians(ra0), math.radians(dec0)
    cosc = np.sin(d0) * np.sin(dec) + np.cos(d0) * np.cos(dec) * np.cos(ra - a0)
    xi = np.cos(dec) * np.sin(ra - a0) / cosc
    eta = (np.cos(d0) * np.sin(dec) - np.sin(d0) * np.cos(dec) * np.cos(ra - a0)) / cosc
    return np.degrees(xi) * _ARCSEC, np.degrees(eta) * _ARCSEC


def tangent_to_sky(xi, eta, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`sky_to_tangent` (degrees)."""
    x = np.radians(np.asarray(xi, float) / _ARCSEC)
    y = np.radians(np.asarray(eta, float) / _ARCSEC)
    a0, d0 = math.radians(ra0), math.radians(dec0)
    rho = np.hypot(x, y)
    c = np.arctan(rho)
    with np.errstate(invalid="ignore", divide="ignore"):
        dec = np.arcsin(np.cos(c) * np.sin(d0) + np.where(rho > 0, y * np.sin(c) * np.cos(d0) / rho, 0.0))
    ra = a0 + np.arctan2(x * np.sin(c), rho * np.cos(d0) * np.cos(c) - y * np.sin(d0) * np.sin(c))
    return np.degrees(ra) % 360.0, np.degrees(dec)


@dataclass
class SkyAffine:
    """A small linear correction of sky positions about a tangent point.

    Parameters
    ----------
    ra0, dec0 : float
        Tangent point (degrees), normally the centre of the visit.
    matrix : numpy.ndarray, shape (2, 2)
        Linear part acting on (East, North) tangent-plane offsets in arcsec.
    shift : numpy.ndarray, shape (2,)
        Displacement of the tangent point, arcsec (East, North).
    """

    ra0: float
    dec0: float
    matrix: np.ndarray = field(default_factory=lambda: np.eye(2))
    shift: np.ndarray = field(default_factory=lambda: np.zeros(2))

    def __post_init__(self) -> None:
        self.matrix = np.array(self.matrix, dtype=float).reshape(2, 2)
        self.shift = np.array(self.shift, dtype=float).reshape(2)

    def apply(self, ra, dec) -> tuple[np.ndarray, np.ndarray]:
        """Corrected sky positions (degrees)."""
        xi, eta = sky_to_tangent(ra, dec, self.ra0, self.dec0)
        x = self.matrix @ np.vstack([np.ravel(xi), np.ravel(eta)]) + self.shift[:, None]
        ra2, dec2 = tangent_to_sky(x[0], x[1], self.ra0, self.dec0)
        return ra2.reshape(np.shape(ra)), dec2.reshape(np.shape(dec))

    @property
    def rotation(self) -> float:
        """Change of position angle (degrees, East of North) the matrix causes."""
        m = self.matrix
        # A counter-clockwise turn in (East, North) lowers position angles.
        return -math.degrees(math.atan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1]))

    @property
    def scale(self) -> float:
        """Area scale factor ``sqrt(|det(matrix)|)``."""
        return math.sqrt(abs(float(np.linalg.det(self.matrix))))


def fit_sky_affine(
    ra, dec, ra_new, dec_new, ra0: float, dec0: float, fitgeometry: str = "rshift"
) -> tuple[SkyAffine, float]:
    """Fit the correction moving ``(ra, dec)`` onto ``(ra_new, dec_new)``.

    Parameters
    ----------
    ra, dec, ra_new, dec_new : array_like
        Matching positions before and after, degrees.
    ra0, dec0 : float
        Tangent point of the correction.
    fitgeometry : {'shift', 'rshift', 'rscale', 'general'}
        Shift only; shift and rotation; shift, rotation and scale; full
        linear transformation (tweakwcs' names).

    Returns
    -------
    SkyAffine
        The fitted correction.
    float
        RMS of the fit residuals, arcsec.
    """
    if fitgeometry not in FITGEOMETRIES:
        raise ValueError(f"fitgeometry={fitgeometry!r}: use one of {FITGEOMETRIES}")
    x = np.vstack(sky_to_tangent(np.ravel(ra), np.ravel(dec), ra0, dec0))
    y = np.vstack(sky_to_tangent(np.ravel(ra_new), np.ravel(dec_new), ra0, dec0))
    good = np.all(np.isfinite(x), axis=0) & np.all(np.isfinite(y), axis=0)
    x, y = x[:, good], y[:, good]
    if x.shape[1] < 3:
        raise ValueError("fit_sky_affine needs at least 3 finite positions")
    xm, ym = x.mean(axis=1, keepdims=True), y.mean(axis=1, keepdims=True)
    xc, yc = x - xm, y - ym
    if fitgeometry == "shift":
        matrix = np.eye(2)
    elif fitgeometry == "general":
        matrix = np.linalg.lstsq(xc.T, yc.T, rcond=None)[0].T
    else:
        # Orthogonal Procrustes: the best rotation (and, for rscale, scale).
        u, s, vt = np.linalg.svd(yc @ xc.T)
        d = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
        matrix = u @ d @ vt
        if fitgeometry == "rscale":
            matrix = matrix * (s @ np.diag(d) / np.sum(xc * xc))
    shift = (ym - matrix @ xm).ravel()
    resid = y - (matrix @ x + shift[:, None])
    rms = float(math.sqrt(np.mean(np.sum(resid**2, axis=0))))
    return SkyAffine(ra0, dec0, matrix, shift), rms


def detector_samples(shape: tuple[int, int], n: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """A regular ``n x n`` grid of detector positions spanning ``shape`` (y, x)."""
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, n), np.linspace(0, ny - 1, n))
    return gx.ravel(), gy.ravel()


def tangent_corrector(ra0: float, dec0: float):
    """A tweakwcs corrector whose tangent plane is (East, North) arcsec about ``(ra0, dec0)``."""
    from astropy.wcs import WCS
    from tweakwcs.correctors import FITSWCSCorrector

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra0, dec0]
    # tweakwcs evaluates tangent-plane positions with origin 0, so FITS
    # pixel 1 (0-based 0) is the tangent point.
    w.wcs.crpix = [1.0, 1.0]
    w.wcs.cdelt = [1.0 / _ARCSEC, 1.0 / _ARCSEC]
    w.pixel_shape = (2, 2)  # required by tweakwcs, never used
    w.wcs.set()
    return FITSWCSCorrector(w)


def apply_affine_to_wcs(wcs, wcsinfo: dict, affine: SkyAffine):
    """A copy of a JWST gwcs corrected by ``affine`` (through tweakwcs' JWST corrector).

    Parameters
    ----------
    wcs : gwcs.WCS
        The exposure's WCS (not modified).
    wcsinfo : dict
        ``v2_ref``, ``v3_ref`` (arcsec) and ``roll_ref`` (deg) of the exposure.
    affine : SkyAffine
        The correction of sky positions.

    Returns
    -------
    gwcs.WCS
        The corrected WCS.
    """
    from tweakwcs.correctors import JWSTWCSCorrector

    corrector = JWSTWCSCorrector(
        wcs=_copy_wcs(wcs),
        wcsinfo={k: float(wcsinfo[k]) for k in ("v2_ref", "v3_ref", "roll_ref")},
    )
    corrector.set_correction(
        affine.matrix, affine.shift, ref_tpwcs=tangent_corrector(affine.ra0, affine.dec0)
    )
    return corrector.wcs


def _copy_wcs(wcs):
    import copy

    # The corrector edits the pipeline it is given: keep the caller's intact.
    return copy.deepcopy(wcs)
