"""Real JWST imaging geometry for the simulator, from the SIAF (``pysiaf``).

``simulate_mosaic(..., geometry='siaf')`` builds its exposures here: every
detector and subarray is a SIAF aperture; its detector -> V2/V3 transform is
the detector's full-frame Sci -> Ideal distortion polynomial (a subarray
shifted to its place in the full frame, as ``assign_wcs`` does) followed by
the planar Ideal -> V2/V3 rotation (``V3IdlYAngle``, ``VIdlParity``,
``V2Ref``, ``V3Ref``), and the V2/V3 -> sky part is jwst's own
(:func:`jwst.assign_wcs.pointing.v23tosky`) built from the exposure's
``wcsinfo`` (``v2_ref``, ``v3_ref``, ``ra_ref``, ``dec_ref``, ``roll_ref``)
exactly as ``assign_wcs`` builds it.  The telescope pointing is an attitude
matrix (``pysiaf.utils.rotations``): the mosaic tile's sky position placed
at the dither offset of the reference aperture's ideal frame, at a V3
position angle.

What is real and what is not:

* Apertures, subarray positions, distortion, the module gap and the MIRI
  coronagraph regions are the SIAF's (the PRD shipped with ``pysiaf``).
* NIRCam ``INTRAMODULEBOX`` (2-16 points), ``FULLBOX`` (4 points and
  ``8NIRSPEC``), ``INTRAMODULE`` (3 and 16 points) and ``FULL`` (3 points)
  are the offsets APT schedules, in the ideal frame of the pointing
  aperture (the last two read off published APT pointing reports).  Other
  point counts and patterns (``INTRAMODULEX``, ``INTRASCA``...) are not
  bundled: pass their offsets explicitly.
* MIRI ``REULEAUX`` with ``pattern_size='DEFAULT'`` has APT's offsets (from
  a published APT pointing report).  ``CYCLING``, and ``REULEAUX`` of the
  other sizes, have the documented shapes (a fixed 311-point table of
  Gaussian-distributed positions; 12 points on a Reuleaux triangle) with
  assumed sizes: the PRD tables are not part of ``pysiaf`` nor of any public
  source found.  Pass explicit offsets (e.g. from an APT ``.pointing`` file)
  for the exact ones.
* Backgrounds (:class:`JwstBackground`): zodiacal light plus telescope
  thermal emission per filter, drifting with time inside a visit.  The
  levels are typical values, not a model of any particular date or field.

Detectors may be binned (``binning``): each simulated pixel stands for
``binning x binning`` real ones, with the real geometry (footprints, gaps,
distortion) and fewer pixels, for fast tests and benchmarks.  Subarray
metadata (``meta.subarray``) is then in binned pixels.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import replace as dc_replace
from types import SimpleNamespace
from typing import Any

import numpy as np

from . import simulate as sim
from ._offline import import_pysiaf

__all__ = [
    "BACKGROUND_MJY_SR",
    "DITHER_PATTERNS",
    "JwstBackground",
    "SiafAperture",
    "attitude_for",
    "detector_to_v2v3",
    "dither_offsets",
    "exposure_apertures",
    "exposure_wcs",
    "miri_region_masks",
    "mosaic_tile_offsets",
    "siaf_aperture",
]

#: MIRI imager subarrays (``meta.subarray.name``) and their SIAF apertures.
MIRI_SUBARRAYS = {
    "FULL": "MIRIM_FULL",
    "BRIGHTSKY": "MIRIM_BRIGHTSKY",
    "SUB256": "MIRIM_SUB256",
    "SUB128": "MIRIM_SUB128",
    "SUB64": "MIRIM_SUB64",
}
#: NIRCam detectors by channel, as SIAF names them (``NRCA5`` is jwst's ``NRCALONG``).
NIRCAM_SHORT = ("NRCA1", "NRCA2", "NRCA3", "NRCA4", "NRCB1", "NRCB2", "NRCB3", "NRCB4")
NIRCAM_LONG = ("NRCA5", "NRCB5")
#: NIRCam imaging subarrays; the "P" ones exist on B1/B5 (and A5) only.
NIRCAM_SUBARRAYS = ("FULL", "SUB640", "SUB320", "SUB160", "SUB400P", "SUB160P", "SUB64P")

#: Typical sky background (MJy/sr) per filter: (zodiacal light, telescope thermal emission).
#: Order-of-magnitude values for a field at moderate ecliptic latitude; the
#: thermal part dominates MIRI beyond ~15 micron.
BACKGROUND_MJY_SR: dict[str, tuple[float, float]] = {
    "F560W": (2.5, 0.0),
    "F770W": (6.0, 0.1),
    "F1000W": (15.0, 0.5),
    "F1130W": (18.0, 1.0),
    "F1280W": (22.0, 3.0),
    "F1500W": (28.0, 10.0),
    "F1800W": (33.0, 30.0),
    "F2100W": (38.0, 120.0),
    "F2550W": (40.0, 500.0),
    "F090W": (0.10, 0.0),
    "F115W": (0.10, 0.0),
    "F150W": (0.12, 0.0),
    "F200W": (0.15, 0.0),
    "F277W": (0.17, 0.0),
    "F356W": (0.20, 0.01),
    "F444W": (0.25, 0.05),
}

# NIRCam primary dither offsets (arcsec, ideal frame of the pointing aperture),
# as APT schedules them.
_INTRAMODULEBOX = (
    (-2.9, -3.1),
    (-3.1, 2.9),
    (2.9, 3.1),
    (3.1, -2.9),
    (3.3, -8.9),
    (-2.7, -9.1),
    (-8.7, -9.3),
    (-8.9, -3.3),
    (-9.1, 2.7),
    (-9.3, 8.7),
    (-3.3, 8.9),
    (2.7, 9.1),
    (8.7, 9.3),
    (8.9, 3.3),
    (9.1, -2.7),
    (9.3, -8.7),
)
_FULLBOX4 = ((-24.35, -12.58), (-24.55, 12.38), (24.35, 12.58), (24.55, -12.38))
_FULLBOX8 = (
    (-24.6, -64.1),
    (-24.4, -89.0),
    (24.6, -88.8),
    (24.4, -63.9),
    (24.6, 64.1),
    (24.4, 89.0),
    (-24.6, 88.8),
    (-24.4, 63.9),
)
# NIRCam INTRAMODULE and FULL primary dithers (arcsec, ideal frame of the
# pointing aperture: DithX/DithY of NRCALL_FULL or NRCBS_FULL), read off APT
# pointing reports published with mirage's test data (spacetelescope/mirage,
# tests/test_data/).  INTRAMODULE, 16 points: misc/01063/NCam010_pid1063v4.pointing
# (APT 25.4.4), a 4 x 4 grid of 7.5-arcsec pitch; every 3-point INTRAMODULE
# report there, from APT 25.4.4 to 2021.3 (PRDOPSSOC-039, e.g.
# obs_mode_tests/skipped_obs.pointing), has its first three points.  FULL,
# 3 points: NIRCam/1144-OTE-10.pointing (APT 26.0.5), misc/01144/OTE-10_1144.pointing
# (26.2.2) and, around its mosaic tiles, misc/00001/m51-mosaic.pointing (25.4.4).
# Other point counts appear in no public report found: not bundled.
_INTRAMODULE16 = (
    (-3.75, 3.75),
    (3.75, -3.75),
    (11.25, -11.25),
    (-11.25, 11.25),
    (11.25, 11.25),
    (-11.25, -11.25),
    (-3.75, -3.75),
    (3.75, 3.75),
    (-11.25, 3.75),
    (11.25, -3.75),
    (3.75, -11.25),
    (-3.75, 11.25),
    (-11.25, -3.75),
    (11.25, 3.75),
    (-3.75, -11.25),
    (3.75, 11.25),
)
_INTRAMODULE = {3: _INTRAMODULE16[:3], 16: _INTRAMODULE16}
_FULL = {3: ((-58.0, -23.5), (0.0, 0.0), (58.0, 23.5))}
# MIRI REULEAUX with APT's pattern size DEFAULT (arcsec, MIRIM_ILLUM ideal
# frame), from the APT 2020.5 (PRDOPSSOC-032) pointing report of an F770W
# exposure in mirage's tests/test_data/obs_mode_tests/miri_img_niriss_wfss.pointing.
_REULEAUX_DEFAULT = (
    (-1.446, 3.956),
    (3.771, -5.358),
    (1.035, 4.889),
    (1.063, -4.955),
    (3.737, 5.319),
    (-1.426, -3.942),
    (4.904, 2.699),
    (-3.694, -2.096),
    (5.190, 0.028),
    (-5.300, 0.025),
    (4.923, -2.695),
    (-3.704, 2.187),
)
# MIRI pattern sizes (arcsec): Reuleaux triangle width, cycling Gaussian FWHM
# (assumed: the tables of these sizes are in no public source found).
_MIRI_SIZES = {"SMALL": 2.5, "MEDIUM": 5.0, "LARGE": 10.0}


def _reuleaux(width: float) -> np.ndarray:
    """12 points around a Reuleaux triangle of ``width``: the 3 corners and 3 points on each arc."""
    r = width / math.sqrt(3.0)  # circumradius of the equilateral triangle of side ``width``
    corners = [np.array([r * math.cos(a), r * math.sin(a)]) for a in np.radians([90.0, 210.0, 330.0])]
    pts = []
    for k in range(3):
        a, b = corners[k], corners[(k + 1) % 3]
        centre = corners[(k + 2) % 3]  # each arc is centred on the opposite corner
        ta = math.atan2(*(a - centre)[::-1])
        tb = math.atan2(*(b - centre)[::-1])
        dt = (tb - ta + math.pi) % (2 * math.pi) - math.pi
        pts.append(a)
        for f in (0.25, 0.5, 0.75):
            t = ta + f * dt
            pts.append(centre + width * np.array([math.cos(t), math.sin(t)]))
    return np.array(pts)


@functools.lru_cache(maxsize=4)
def _cycling(fwhm: float) -> np.ndarray:
    """311 positions drawn once from a 2-D Gaussian of ``fwhm`` (a fixed table, like the PRD's)."""
    rng = np.random.default_rng(311)
    return rng.normal(0.0, fwhm / 2.3548, (311, 2))


#: Named dither patterns: ``name -> (instrument, description)``.
DITHER_PATTERNS = {
    "INTRAMODULEBOX": ("NIRCAM", "2-16 points, ~6-18 arcsec box (APT offsets)"),
    "INTRAMODULE": ("NIRCAM", "3 or 16 points, 7.5-arcsec steps inside one module (APT offsets)"),
    "FULLBOX": ("NIRCAM", "4 points (or 8 with dithers=8: 8NIRSPEC), crosses the module gap (APT offsets)"),
    "FULL": ("NIRCAM", "3 points, ~63-arcsec steps across the module gap (APT offsets)"),
    "CYCLING": ("MIRI", "fixed 311-point Gaussian table, FWHM by pattern_size (assumed sizes)"),
    "REULEAUX": (
        "MIRI",
        "12 points on a Reuleaux triangle: APT's offsets with pattern_size='DEFAULT', "
        "else width by pattern_size (assumed sizes)",
    ),
    "NONE": ("ANY", "every exposure at the tile centre"),
}


def dither_offsets(
    pattern: str | Sequence[Sequence[float]],
    n: int,
    size: str = "MEDIUM",
    start: int = 1,
) -> np.ndarray:
    """Dither offsets (arcsec, ideal frame of the pointing aperture) of ``n`` exposures.

    Parameters
    ----------
    pattern : str or sequence of (x, y)
        A name of :data:`DITHER_PATTERNS`, or explicit offsets in arcsec
        (e.g. ``XOFFSET``/``YOFFSET`` of an APT pointing file), used in turn.
    n : int
        Number of exposures (dither positions).
    size : {'SMALL', 'MEDIUM', 'LARGE', 'DEFAULT'}
        Size of the MIRI patterns (``'DEFAULT'``: APT's REULEAUX offsets;
        the other sizes are assumed).
    start : int
        First point (1-based) of the MIRI cycling table.

    Returns
    -------
    numpy.ndarray
        ``(n, 2)`` offsets in arcsec.
    """
    if n < 1:
        raise ValueError(f"dithers must be at least 1, not {n}")
    if not isinstance(pattern, str):
        pts = np.asarray(pattern, dtype=float).reshape(-1, 2)
        if len(pts) < n:
            raise ValueError(f"dither_pattern has {len(pts)} offsets for {n} dithers")
        return pts[:n].copy()
    name = pattern.upper()
    if name == "NONE":
        return np.zeros((n, 2))
    if name == "INTRAMODULEBOX":
        if n > len(_INTRAMODULEBOX):
            raise ValueError(f"INTRAMODULEBOX has at most {len(_INTRAMODULEBOX)} points, not {n}")
        return np.array(_INTRAMODULEBOX[:n])
    if name == "FULLBOX":
        table = {4: _FULLBOX4, 8: _FULLBOX8}.get(n)
        if table is None:
            raise ValueError(
                "FULLBOX is bundled with 4 points and 8 (8NIRSPEC); pass other offsets explicitly"
            )
        return np.array(table)
    if name in ("INTRAMODULE", "FULL"):
        tables = _INTRAMODULE if name == "INTRAMODULE" else _FULL
        if n not in tables:
            counts = " and ".join(str(k) for k in tables)
            raise ValueError(
                f"{name} is bundled with {counts} points (the counts found in public APT reports), "
                f"not {n}; pass other offsets explicitly"
            )
        return np.array(tables[n])
    size_key = size.upper()
    if name == "REULEAUX" and size_key == "DEFAULT":
        if n > 12:
            raise ValueError(f"REULEAUX has 12 points, not {n}")
        return np.array(_REULEAUX_DEFAULT[:n])
    if size_key not in _MIRI_SIZES:
        also = " (or 'DEFAULT' for REULEAUX)" if name == "REULEAUX" else ""
        raise ValueError(f"pattern_size must be one of {sorted(_MIRI_SIZES)}{also}, not {size!r}")
    if name == "REULEAUX":
        if n > 12:
            raise ValueError(f"REULEAUX has 12 points, not {n}")
        return _reuleaux(_MIRI_SIZES[size_key])[:n]
    if name == "CYCLING":
        table = _cycling(_MIRI_SIZES[size_key])
        idx = (np.arange(n) + start - 1) % len(table)
        return table[idx]
    raise ValueError(
        f"Unknown dither pattern {pattern!r}: choose from {sorted(DITHER_PATTERNS)} or pass offsets"
    )


# --------------------------------------------------------------------------
# Apertures
# --------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _siaf(instrument: str):
    # Importing pysiaf asks GitHub for the newest PRD (no timeout); offline it
    # logs a warning that it cannot, and works from the bundled SIAF.
    pysiaf = import_pysiaf()

    return pysiaf.Siaf({"MIRI": "MIRI", "NIRCAM": "NIRCam"}[instrument.upper()])


def _raw(name: str):
    """The pysiaf aperture ``name`` (shared: never set an attitude on it)."""
    instrument = "MIRI" if name.startswith("MIRIM") else "NIRCAM"
    siaf = _siaf(instrument)
    if name not in siaf.apertures:
        raise ValueError(f"{name} is not an aperture of the {instrument} SIAF")
    return siaf[name]


def _span(name: str) -> tuple[int, int, int, int]:
    """One-based full-frame (sci) pixel range ``(x0, y0, x1, y1)`` of an aperture."""
    ap = _raw(name)
    full = _raw(name.split("_")[0] + "_FULL")
    x0, y0 = full.det_to_sci(*ap.sci_to_det(1.0, 1.0))
    x1, y1 = full.det_to_sci(*ap.sci_to_det(float(ap.XSciSize), float(ap.YSciSize)))
    xs, xe = sorted((round(float(x0)), round(float(x1))))
    ys, ye = sorted((round(float(y0)), round(float(y1))))
    return xs, ys, xe, ye


@dataclass(frozen=True)
class SiafAperture:
    """One SIAF aperture as the simulator uses it (a detector readout, maybe binned).

    ``xstart``/``ystart``/``xsize``/``ysize`` are one-based full-frame
    science-frame pixels (unbinned), as jwst's ``SUBSTRT``/``SUBSIZE``.
    """

    name: str
    instrument: str
    detector: str  # jwst's meta.instrument.detector
    module: str | None
    channel: str | None
    subarray: str
    binning: int
    xstart: int
    ystart: int
    xsize: int
    ysize: int
    pixel_scale: float  # arcsec per unbinned pixel (mean of the SIAF axes)
    v2_ref: float
    v3_ref: float
    v3yangle: float
    vparity: int
    x_sci_ref: float
    y_sci_ref: float

    @property
    def frame(self) -> str:
        """The detector's full-frame aperture, whose distortion every readout of it uses."""
        return self.name.split("_")[0] + "_FULL"

    @property
    def shape(self) -> tuple[int, int]:
        """Simulated array shape ``(ny, nx)`` (binned)."""
        return self.ysize // self.binning, self.xsize // self.binning

    def full_frame_pixels(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """One-based full-frame science pixel coordinates of simulated (0-based, binned) pixels."""
        b = self.binning
        return (
            self.xstart + b * np.asarray(x, float) + (b - 1) / 2.0,
            self.ystart + b * np.asarray(y, float) + (b - 1) / 2.0,
        )

    def sci_pixels(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """The aperture's own (one-based) science coordinates of simulated pixels."""
        b = self.binning
        return b * np.asarray(x, float) + (b + 1) / 2.0, b * np.asarray(y, float) + (b + 1) / 2.0


def siaf_aperture(name: str, binning: int = 1) -> SiafAperture:
    """Describe the SIAF aperture ``name`` (e.g. ``'NRCB1_SUB160P'``, ``'MIRIM_BRIGHTSKY'``).

    Parameters
    ----------
    name : str
        SIAF aperture name.
    binning : int
        Simulated pixels stand for ``binning x binning`` real ones; the
        aperture's size must be a multiple of it.

    Returns
    -------
    SiafAperture
    """
    ap = _raw(name)
    binning = int(binning)
    if binning < 1:
        raise ValueError(f"binning must be a positive integer, not {binning}")
    xs, ys, xe, ye = _span(name)
    xsize, ysize = xe - xs + 1, ye - ys + 1
    if xsize % binning or ysize % binning:
        raise ValueError(f"{name} ({xsize} x {ysize} pixels) cannot be binned by {binning}")
    prefix, _, sub = name.partition("_")
    if prefix == "MIRIM":
        instrument, detector, module, channel = "MIRI", "MIRIMAGE", None, None
    else:
        instrument, module = "NIRCAM", prefix[3]
        long = prefix.endswith("5")
        detector = f"NRC{module}LONG" if long else prefix
        channel = "LONG" if long else "SHORT"
    return SiafAperture(
        name=name,
        instrument=instrument,
        detector=detector,
        module=module,
        channel=channel,
        subarray=sub,
        binning=binning,
        xstart=xs,
        ystart=ys,
        xsize=xsize,
        ysize=ysize,
        pixel_scale=0.5 * (float(ap.XSciScale) + float(ap.YSciScale)),
        v2_ref=float(ap.V2Ref),
        v3_ref=float(ap.V3Ref),
        v3yangle=float(ap.V3IdlYAngle),
        vparity=int(ap.VIdlParity),
        x_sci_ref=float(ap.XSciRef),
        y_sci_ref=float(ap.YSciRef),
    )


def exposure_apertures(
    instrument: str, subarray: str = "FULL", detectors: Sequence[str] | None = None, binning: int = 1
) -> list[SiafAperture]:
    """The apertures one exposure reads out.

    Parameters
    ----------
    instrument : {'miri', 'nircam_short', 'nircam_long'}
        Imaging configuration.
    subarray : str
        ``meta.subarray.name``: MIRI FULL, BRIGHTSKY, SUB256, SUB128, SUB64;
        NIRCam FULL, SUB640, SUB320, SUB160 (every detector), SUB400P,
        SUB160P, SUB64P (the detectors that have them).
    detectors : sequence of str, optional
        Subset of detectors (jwst or SIAF names: ``NRCALONG`` or ``NRCA5``).
    binning : int
        See :func:`siaf_aperture`.

    Returns
    -------
    list of SiafAperture
    """
    sub = subarray.upper()
    if instrument == "miri":
        if sub not in MIRI_SUBARRAYS:
            raise ValueError(
                f"MIRI imaging subarray must be one of {sorted(MIRI_SUBARRAYS)}, not {subarray!r}"
            )
        names = [MIRI_SUBARRAYS[sub]]
    elif instrument in ("nircam_short", "nircam_long"):
        if sub not in NIRCAM_SUBARRAYS:
            raise ValueError(f"NIRCam imaging subarray must be one of {NIRCAM_SUBARRAYS}, not {subarray!r}")
        dets = NIRCAM_SHORT if instrument == "nircam_short" else NIRCAM_LONG
        siaf = _siaf("NIRCAM")
        names = [f"{d}_{sub}" for d in dets if f"{d}_{sub}" in siaf.apertures]
    else:
        raise ValueError(f"Unknown instrument {instrument!r}; choose from miri, nircam_long, nircam_short")
    if detectors is not None:
        wanted = {d.upper().replace("LONG", "5") for d in detectors}
        names = [
            n
            for n in names
            if n.split("_")[0] in wanted or n.split("_")[0].replace("MIRIM", "MIRIMAGE") in wanted
        ]
    if not names:
        raise ValueError(f"No {instrument} aperture for subarray {subarray!r} and detectors {detectors}")
    return [siaf_aperture(n, binning) for n in names]


def _pointing_aperture(apertures: Sequence[SiafAperture]) -> str:
    """The aperture whose reference point the telescope points (APT's choice for this readout)."""
    if len(apertures) == 1:
        return apertures[0].name
    if apertures[0].instrument == "MIRI":
        return "MIRIM_FULL"
    modules = {a.module for a in apertures}
    if modules == {"A", "B"}:
        return "NRCALL_FULL"
    if all(a.channel == "SHORT" for a in apertures):
        return f"NRC{modules.pop()}S_FULL"
    return apertures[0].name.split("_")[0] + "_FULL"


# --------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------
def _polynomial(coeffs: Sequence[float], degree: int):
    """Polynomial2D from SIAF-ordered coefficients (``x^(i-j) y^j`` for i, j = 0.., j <= i)."""
    from astropy.modeling import models as am

    params, k = {}, 0
    for i in range(degree + 1):
        for j in range(i + 1):
            params[f"c{i - j}_{j}"] = float(coeffs[k])
            k += 1
    return am.Polynomial2D(degree, **params)


def _powers(u: np.ndarray, v: np.ndarray, degree: int) -> np.ndarray:
    """Design matrix of SIAF-ordered monomials ``u^(i-j) v^j``."""
    return np.column_stack([u ** (i - j) * v**j for i in range(degree + 1) for j in range(i + 1)])


_INVERSE_DEGREE = 7


@functools.lru_cache(maxsize=128)
def _distortion(name: str) -> dict[str, Any]:
    """SIAF Sci->Idl coefficients of an aperture and an Idl->Sci inverse fitted to them.

    The SIAF's own Idl->Sci polynomials reproduce the forward ones only to
    about 0.1 pixel at the corners of some full frames (MIRIM_FULL,
    NRCA3_FULL); a degree-7 fit on a grid over the aperture (plus a 5 %
    margin) brings the round trip below 10^-3 pixel.
    """
    raw = _raw(name)
    coeffs = raw.get_polynomial_coefficients()
    degree = int(raw.Sci2IdlDeg)
    cx, cy = np.asarray(coeffs["Sci2IdlX"], float), np.asarray(coeffs["Sci2IdlY"], float)
    nx, ny = float(raw.XSciSize), float(raw.YSciSize)
    gx, gy = np.meshgrid(
        np.linspace(0.5 - 0.05 * nx, nx + 0.5 + 0.05 * nx, 21),
        np.linspace(0.5 - 0.05 * ny, ny + 0.5 + 0.05 * ny, 21),
    )
    dx, dy = gx.ravel() - float(raw.XSciRef), gy.ravel() - float(raw.YSciRef)
    basis = _powers(dx, dy, degree)
    xi, yi = basis @ cx, basis @ cy
    scale = float(max(np.abs(xi).max(), np.abs(yi).max()))
    design = _powers(xi / scale, yi / scale, _INVERSE_DEGREE)
    ix = np.linalg.lstsq(design, dx, rcond=None)[0]
    iy = np.linalg.lstsq(design, dy, rcond=None)[0]
    return {
        "degree": degree,
        "x": tuple(cx),
        "y": tuple(cy),
        "scale": scale,
        "ix": tuple(ix),
        "iy": tuple(iy),
    }


def detector_to_v2v3(aperture: SiafAperture):
    """Detector (0-based simulated pixels) -> V2/V3 (arcsec) model of a readout, with its inverse.

    As jwst's ``assign_wcs`` does with one distortion per detector, every
    readout uses its detector's full-frame aperture (:attr:`SiafAperture.frame`):
    binned subarray pixel -> full-frame science pixel (``xstart``,
    ``ystart``) -> SIAF Sci->Idl polynomial -> planar Ideal->V2/V3
    (``V3IdlYAngle``, ``VIdlParity``, ``V2Ref``, ``V3Ref``), as pysiaf's
    ``sci_to_tel``.  (The SIAF's own subarray polynomials differ from the
    full frame's by up to 0.14 pixel on NRCA2/NRCA3.)  Inverse: a polynomial
    fitted to the forward one (see :func:`_distortion`).
    """
    from astropy.modeling import models as am

    full = _raw(aperture.frame)
    dist = _distortion(aperture.frame)
    degree = dist["degree"]
    b = aperture.binning
    a = math.radians(float(full.V3IdlYAngle))
    p = int(full.VIdlParity)
    ref = np.array([float(full.V2Ref), float(full.V3Ref)])
    rot = np.array([[p * math.cos(a), math.sin(a)], [-p * math.sin(a), math.cos(a)]])
    # Simulated pixel X -> full-frame science pixel xstart + b X + (b - 1) / 2, relative to XSciRef.
    x0 = aperture.xstart + (b - 1) / 2.0 - float(full.XSciRef)
    y0 = aperture.ystart + (b - 1) / 2.0 - float(full.YSciRef)
    to_sci = (am.Scale(b) | am.Shift(x0)) & (am.Scale(b) | am.Shift(y0))
    forward = (
        to_sci
        | am.Mapping((0, 1, 0, 1))
        | (_polynomial(dist["x"], degree) & _polynomial(dist["y"], degree))
        | am.AffineTransformation2D(matrix=rot, translation=ref)
    )
    from_sci = (am.Shift(-x0) | am.Scale(1.0 / b)) & (am.Shift(-y0) | am.Scale(1.0 / b))
    inv_rot = np.linalg.inv(rot)
    inverse = (
        am.AffineTransformation2D(matrix=inv_rot, translation=-inv_rot @ ref)
        | (am.Scale(1.0 / dist["scale"]) & am.Scale(1.0 / dist["scale"]))
        | am.Mapping((0, 1, 0, 1))
        | (_polynomial(dist["ix"], _INVERSE_DEGREE) & _polynomial(dist["iy"], _INVERSE_DEGREE))
        | from_sci
    )
    forward.inverse = inverse
    forward.name = f"{aperture.name}_det2v2v3"
    return forward


def attitude_for(
    aperture: str, ra: float, dec: float, pa_v3: float, x_idl: float = 0.0, y_idl: float = 0.0
) -> np.ndarray:
    """Attitude matrix placing sky position ``(ra, dec)`` at ideal ``(x_idl, y_idl)`` of ``aperture``.

    Parameters
    ----------
    aperture : str
        SIAF aperture name (e.g. ``'NRCALL_FULL'``).
    ra, dec : float
        Sky position (degrees).
    pa_v3 : float
        Position angle of the V3 axis at that position (degrees).
    x_idl, y_idl : float
        Ideal-frame position (arcsec), e.g. a dither offset.

    Returns
    -------
    numpy.ndarray
        3 x 3 attitude matrix (``pysiaf.utils.rotations``).
    """
    rotations = import_pysiaf().utils.rotations

    v2, v3 = _raw(aperture).idl_to_tel(x_idl, y_idl)
    return rotations.attitude(float(v2), float(v3), ra, dec, pa_v3)


def _sky(attitude: np.ndarray, v2, v3) -> tuple[np.ndarray, np.ndarray]:
    rotations = import_pysiaf().utils.rotations

    ra, dec = rotations.tel_to_sky(attitude, np.atleast_1d(v2), np.atleast_1d(v3))
    return np.degrees(ra.value) % 360.0, np.degrees(dec.value)


def exposure_wcs(aperture: SiafAperture, attitude: np.ndarray) -> tuple[Any, dict[str, float]]:
    """3-frame gwcs (detector -> v2v3 -> world) of an aperture at a telescope attitude.

    Returns
    -------
    wcs : gwcs.WCS
        With a bounding box over the (binned) array.
    wcsinfo : dict
        ``v2_ref``, ``v3_ref``, ``ra_ref``, ``dec_ref``, ``roll_ref``,
        ``v3yangle``, ``vparity``: what jwst's ``v23tosky`` reads.
    """
    from astropy import coordinates as coord
    from astropy import units as u
    from gwcs import coordinate_frames as cf
    from gwcs import wcs as gwcs_wcs
    from jwst.assign_wcs.pointing import v23tosky

    rotations = import_pysiaf().utils.rotations

    ra_ref, dec_ref = rotations.pointing(attitude, aperture.v2_ref, aperture.v3_ref)
    info = {
        "v2_ref": aperture.v2_ref,
        "v3_ref": aperture.v3_ref,
        "ra_ref": float(ra_ref) % 360.0,
        "dec_ref": float(dec_ref),
        "roll_ref": float(rotations.posangle(attitude, aperture.v2_ref, aperture.v3_ref)),
        "v3yangle": aperture.v3yangle,
        "vparity": aperture.vparity,
    }
    tel2sky = v23tosky(SimpleNamespace(meta=SimpleNamespace(wcsinfo=SimpleNamespace(**info))))
    detector = cf.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    v2v3 = cf.Frame2D(name="v2v3", axes_order=(0, 1), axes_names=("v2", "v3"), unit=(u.arcsec, u.arcsec))
    world = cf.CelestialFrame(reference_frame=coord.ICRS(), name="world")
    w = gwcs_wcs.WCS([(detector, detector_to_v2v3(aperture)), (v2v3, tel2sky), (world, None)])
    ny, nx = aperture.shape
    w.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    w.array_shape = (ny, nx)
    return w, info


@functools.lru_cache(maxsize=128)
def _tel_corners(aperture_name: str) -> tuple[np.ndarray, np.ndarray]:
    """V2/V3 corners (arcsec) of an aperture."""
    v2, v3 = _raw(aperture_name).corners("tel")
    return np.asarray(v2, dtype=float), np.asarray(v3, dtype=float)


def _ideal_corners(aperture_name: str, reference: str) -> np.ndarray:
    """Corners of an aperture in the ideal frame (arcsec) of ``reference``."""
    v2, v3 = _tel_corners(aperture_name)
    x, y = _raw(reference).tel_to_idl(v2, v3)
    return np.column_stack([x, y])


def _field_corners(apertures: Sequence[SiafAperture], reference: str) -> np.ndarray:
    """Corners of a readout's field (MIRI FULL: the imager field) in the ideal frame of ``reference``."""
    names = ["MIRIM_ILLUM" if a.name == "MIRIM_FULL" else a.name for a in apertures]
    return np.vstack([_ideal_corners(n, reference) for n in names])


def _field_centre(apertures: Sequence[SiafAperture], reference: str) -> np.ndarray:
    """Centre of a readout's field in the ideal frame of ``reference`` (see :func:`_field_corners`)."""
    corners = _field_corners(apertures, reference)
    return 0.5 * (corners.max(axis=0) + corners.min(axis=0))


def mosaic_tile_offsets(
    tiles: tuple[int, int], overlap: float | tuple[float, float], extent: tuple[float, float]
) -> np.ndarray:
    """Tile centres (arcsec, ideal frame of the pointing aperture) of an APT-style mosaic.

    Parameters
    ----------
    tiles : (int, int)
        Columns (ideal x) and rows (ideal y).
    overlap : float or (float, float)
        Fraction of the field shared by neighbouring tiles along x and y
        (APT's percentage / 100); negative values leave gaps.
    extent : (float, float)
        Field size along ideal x and y (arcsec).

    Returns
    -------
    numpy.ndarray
        ``(ntiles, 2)``, row by row, centred on (0, 0).
    """
    ox, oy = (overlap, overlap) if np.isscalar(overlap) else overlap
    ncol, nrow = tiles
    step_x, step_y = (1.0 - ox) * extent[0], (1.0 - oy) * extent[1]
    out = [
        ((i - (ncol - 1) / 2.0) * step_x, (j - (nrow - 1) / 2.0) * step_y)
        for j in range(nrow)
        for i in range(ncol)
    ]
    return np.array(out, dtype=float)


def miri_region_masks(aperture: SiafAperture) -> dict[str, np.ndarray]:
    """Where the MIRI coronagraph regions fall on a (binned) MIRI array.

    Returns boolean arrays of the aperture's shape: ``lyot`` (the Lyot
    coronagraph field, ``MIRIM_CORONLYOT``), ``coron4qpm`` (the three 4QPM
    fields, ``MIRIM_CORON1065/1140/1550``) and ``illuminated`` (the imager
    field ``MIRIM_ILLUM`` or the Lyot field).
    """
    ny, nx = aperture.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    fx, fy = aperture.full_frame_pixels(xx, yy)

    def inside(name):
        x0, y0, x1, y1 = _span(name)
        return (fx > x0 - 0.5) & (fx < x1 + 0.5) & (fy > y0 - 0.5) & (fy < y1 + 0.5)

    lyot = inside("MIRIM_CORONLYOT")
    coron = inside("MIRIM_CORON1065") | inside("MIRIM_CORON1140") | inside("MIRIM_CORON1550")
    return {"lyot": lyot, "coron4qpm": coron, "illuminated": inside("MIRIM_ILLUM") | lyot}


# --------------------------------------------------------------------------
# Backgrounds
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class JwstBackground:
    """Per-exposure sky that varies as JWST's does: zodiacal light plus telescope thermal emission.

    Exposure ``k`` of visit ``v`` at time ``t`` (hours since the visit began)
    sees ``Z (1 + z_v) + T (1 + e_v + r_v t) + w_k``: ``Z``, ``T`` the
    filter's zodiacal and thermal levels (:data:`BACKGROUND_MJY_SR` unless
    given), ``z_v``, ``e_v`` visit-to-visit fractions, ``r_v`` a thermal
    drift rate per hour and ``w_k`` a small random walk (fraction of the
    total) from exposure to exposure.

    Parameters
    ----------
    zodi, thermal : float, optional
        Levels (MJy/sr); default from the filter.
    zodi_visit : float
        RMS fractional change of the zodiacal light between visits.
    thermal_visit : float
        RMS fractional change of the thermal emission between visits.
    thermal_drift : float
        RMS of the thermal drift rate inside a visit (fraction per hour).
    jitter : float
        RMS step of the exposure-to-exposure random walk (fraction of the total).
    """

    zodi: float | None = None
    thermal: float | None = None
    zodi_visit: float = 0.02
    thermal_visit: float = 0.02
    thermal_drift: float = 0.03
    jitter: float = 0.001

    def levels(self, filter_name: str) -> tuple[float, float]:
        """Zodiacal and thermal levels (MJy/sr) for a filter."""
        z, t = BACKGROUND_MJY_SR.get(filter_name.upper(), (None, None))
        zodi = self.zodi if self.zodi is not None else z
        thermal = self.thermal if self.thermal is not None else t
        if zodi is None or thermal is None:
            raise ValueError(
                f"No typical background for filter {filter_name!r}: "
                "give JwstBackground(zodi=..., thermal=...)"
            )
        return float(zodi), float(thermal)


# --------------------------------------------------------------------------
# The simulation
# --------------------------------------------------------------------------
@dataclass
class _Exposure:
    visit: int
    tile: int
    dither: int
    subarray: str
    apertures: list
    pointing_aperture: str
    attitude: np.ndarray
    true_attitudes: dict  # module -> attitude
    offset: tuple[float, float]
    start: float = 0.0


def _as_list(value, n: int, what: str) -> list:
    if isinstance(value, str) or np.isscalar(value):
        return [value] * n
    values = list(value)
    if not values:
        raise ValueError(f"{what} is empty")
    return [values[i % len(values)] for i in range(n)]


def _simulate_siaf_mosaic(
    survey: sim._Survey,
    offsets: sim._Offsets,
    errors: sim._PointingErrors,
    scene_spec: sim._SceneSpec,
    defects: sim._Defects,
    output: sim._Output,
    options: sim._SiafOptions,
) -> sim.SimulatedMosaic:
    """Simulate a mosaic on the real (SIAF) geometry.

    The engine of ``simulate_mosaic(..., geometry='siaf')``, whose docstring
    describes every parameter; the bundles are the ones it makes of them.
    """
    rotations = import_pysiaf().utils.rotations
    subarray, binning, background = options.subarray, options.binning, options.background

    instrument = survey.instrument
    if instrument not in sim.INSTRUMENTS:
        raise ValueError(f"Unknown instrument {instrument!r}; choose from {sorted(sim.INSTRUMENTS)}")
    base_layout = sim.INSTRUMENTS[instrument]
    filter_name = survey.filter or base_layout.filter
    rng = np.random.default_rng(survey.seed)
    n_visits = survey.n_visits
    subarrays = [s.upper() for s in _as_list(subarray, n_visits, "subarray")]
    rolls = [float(r) for r in _as_list(survey.roll, n_visits, "roll")]
    ap_sets = {
        s: exposure_apertures(instrument, s, survey.detectors, binning) for s in dict.fromkeys(subarrays)
    }
    pointing_aps = {s: _pointing_aperture(aps) for s, aps in ap_sets.items()}
    pattern = survey.dither_pattern or ("CYCLING" if instrument == "miri" else "INTRAMODULEBOX")
    dither_idl = dither_offsets(pattern, survey.dithers, options.pattern_size)
    pattern_name = pattern.upper() if isinstance(pattern, str) else "CUSTOM"
    first = ap_sets[subarrays[0]]
    tiling = _siaf_tiling(survey, first, pointing_aps[subarrays[0]], rolls[0])

    all_dets = sorted({a.detector for aps in ap_sets.values() for a in aps})
    draws = sim._draw_visits(rng, n_visits, all_dets, offsets, errors)
    exposures = _siaf_exposures(
        survey,
        tiling,
        [(ap_sets[s], pointing_aps[s], s) for s in subarrays],
        rolls,
        dither_idl,
        draws,
        errors,
    )
    # Background levels before the scene, so that the random stream does not depend on its size.
    common, visit_part, drift = _siaf_backgrounds(
        rng, exposures, background, filter_name, offsets, draws.offsets, n_visits
    )

    pixel_scale = float(np.mean([a.pixel_scale for aps in ap_sets.values() for a in aps])) * binning
    scene = sim._make_scene(
        rng, survey.center, _scene_extent(exposures, survey.center), pixel_scale, scene_spec
    )
    layout = dc_replace(
        base_layout,
        shape=first[0].shape,
        pixel_scale=pixel_scale,
        filter=filter_name,
        detectors=tuple(_detector(a) for a in first),
        v3yangle=first[0].v3yangle,
        vparity=first[0].vparity,
    )
    chips = {a.name: _siaf_chip(layout, a) for aps in ap_sets.values() for a in aps}

    rows = sim._Exposures(rng, scene, draws, common, offsets, defects, scene_spec.emission, output)
    for k, e in enumerate(exposures):
        exposure_grad = (
            rng.normal(0.0, offsets.exposure_gradient_sigma, 2)
            if offsets.exposure_gradient_sigma
            else np.zeros(2)
        )
        for a in e.apertures:
            ny, nx = a.shape
            # Gradients in data units across a readout, per pixel of it.
            grad = (draws.gradients[e.visit - 1] + exposure_grad) / np.array([nx, ny])
            finish = functools.partial(
                _siaf_metadata,
                a=a,
                e=e,
                pattern_name=pattern_name,
                dithers=survey.dithers,
                rotations=rotations,
            )
            readout = _siaf_readout(chips[a.name], a, e)
            rows.add(readout, visit_part[e.visit - 1], drift[k], grad, finish=finish)

    config = {
        "instrument": instrument,
        "geometry": "siaf",
        "shape": first[0].shape,
        "tiles": survey.tiles,
        "dithers": survey.dithers,
        "dither_pattern": pattern_name,
        "dither_offsets": dither_idl,
        "mosaic_aperture": tiling.mosaic_ref,
        "field_extent": tiling.extent,
        "field_centre": tuple(float(v) for v in tiling.centre_idl),
        "tile_offsets": tiling.tile_idl,
        "subarray": subarrays,
        "binning": binning,
        "apertures": rows.apertures,
        "visits_per_tile": survey.visits_per_tile,
        "seed": survey.seed,
        "noise": offsets.noise,
    }
    return rows.mosaic(layout, config)


@dataclass(frozen=True)
class _Tiling:
    """Mosaic tiles in the ideal frame of the first readout's pointing aperture, and on the sky."""

    mosaic_ref: str  # that aperture
    extent: tuple[float, float]  # field size along ideal x, y (arcsec)
    centre_idl: np.ndarray  # field centre in the ideal frame
    tile_idl: np.ndarray  # (n_tiles, 2) tile centres in the ideal frame
    ra: np.ndarray  # tile centres on the sky (deg)
    dec: np.ndarray


def _siaf_tiling(
    survey: sim._Survey, apertures: Sequence[SiafAperture], mosaic_ref: str, roll: float
) -> _Tiling:
    """Tiles sized by the field of ``apertures`` (the MIRI imager field for FULL).

    The tile offsets point where they do with the field centre on
    ``survey.center``; each tile then puts its centre at the field centre
    plus the dither offset.
    """
    corners = _field_corners(apertures, mosaic_ref)
    extent = tuple(float(v) for v in np.ptp(corners, axis=0))
    centre_idl = 0.5 * (corners.max(axis=0) + corners.min(axis=0))
    tile_idl = mosaic_tile_offsets(survey.tiles, survey.tile_overlap, extent) + centre_idl
    att0 = attitude_for(mosaic_ref, survey.center[0], survey.center[1], roll, *centre_idl)
    tile_v2, tile_v3 = _raw(mosaic_ref).idl_to_tel(tile_idl[:, 0], tile_idl[:, 1])
    tile_ra, tile_dec = _sky(att0, tile_v2, tile_v3)
    return _Tiling(mosaic_ref, extent, centre_idl, tile_idl, tile_ra, tile_dec)


_OVERHEAD = 60.0  # seconds between exposures of a visit
_SLEW = 1800.0  # seconds between visits


def _siaf_exposures(
    survey: sim._Survey,
    tiling: _Tiling,
    readouts: list[tuple[list[SiafAperture], str, str]],
    rolls: list[float],
    dither_idl: np.ndarray,
    draws: sim._VisitDraws,
    errors: sim._PointingErrors,
) -> list[_Exposure]:
    """Every exposure, tile by tile, repeat (visit) by repeat, dither by dither, all detectors at once.

    ``readouts`` gives each visit's apertures, pointing aperture and
    subarray.  The nominal attitude puts the tile centre at the field centre
    plus the dither offset; the true ones add the visit's pointing error (and
    a module's).
    """
    clock = sim._T0
    exposures: list[_Exposure] = []
    visit = 0
    for tile in range(survey.tiles[0] * survey.tiles[1]):
        ra, dec = tiling.ra[tile], tiling.dec[tile]
        for _rep in range(survey.visits_per_tile):
            visit += 1
            apertures, pref, sub = readouts[visit - 1]
            pa = rolls[visit - 1]
            ex, ey, droll = draws.shifts[visit]
            # The field centre in this readout's pointing-aperture frame.
            cx, cy = tiling.centre_idl if pref == tiling.mosaic_ref else _field_centre(apertures, pref)
            for d in range(survey.dithers):
                dx, dy = (float(v) for v in dither_idl[d])
                att = attitude_for(pref, ra, dec, pa, cx + dx, cy + dy)
                true = {None: attitude_for(pref, ra, dec, pa + droll, cx + dx + ex, cy + dy + ey)}
                for module, (mx, my) in (errors.module_misalignment or {}).items():
                    true[module] = attitude_for(
                        pref, ra, dec, pa + droll, cx + dx + ex + mx, cy + dy + ey + my
                    )
                exposures.append(
                    _Exposure(visit, tile, d, sub, apertures, pref, att, true, (dx, dy), start=clock)
                )
                clock += (sim._TEXP + _OVERHEAD) / 86400.0
            clock += _SLEW / 86400.0
    return exposures


def _siaf_backgrounds(
    rng: np.random.Generator,
    exposures: list[_Exposure],
    background: str | JwstBackground,
    filter_name: str,
    offsets: sim._Offsets,
    visit_offsets: np.ndarray,
    n_visits: int,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Common sky, per-visit part and per-exposure drift of the background.

    ``'simple'``: ``sky_level``, the drawn visit offsets and a random walk
    inside each visit.  :class:`JwstBackground`: the filter's zodiacal plus
    thermal levels, their visit-to-visit changes, a thermal drift in time
    and a small random walk.
    """
    drift = np.zeros(len(exposures))
    if isinstance(background, str) and background.lower() == "simple":
        state: dict[int, float] = {}
        for k, e in enumerate(exposures):
            state[e.visit] = state.get(e.visit, 0.0) + (
                rng.normal(0.0, offsets.exposure_offset_sigma) if e.dither else 0.0
            )
            drift[k] = state[e.visit]
        return offsets.sky_level, visit_offsets, drift
    model = JwstBackground() if isinstance(background, str) and background.lower() == "jwst" else background
    if not isinstance(model, JwstBackground):
        raise ValueError(f"background must be 'simple', 'jwst' or a JwstBackground, not {background!r}")
    zodi, thermal = model.levels(filter_name)
    common = zodi + thermal
    visit_part = zodi * rng.normal(0.0, model.zodi_visit, n_visits) + thermal * rng.normal(
        0.0, model.thermal_visit, n_visits
    )
    rates = rng.normal(0.0, model.thermal_drift, n_visits)
    starts: dict[int, float] = {}
    walk: dict[int, float] = {}
    for k, e in enumerate(exposures):
        starts.setdefault(e.visit, e.start)
        walk[e.visit] = walk.get(e.visit, 0.0) + (rng.normal(0.0, model.jitter * common) if e.dither else 0.0)
        hours = (e.start + 0.5 * sim._TEXP / 86400.0 - starts[e.visit]) * 24.0
        drift[k] = thermal * rates[e.visit - 1] * hours + walk[e.visit]
    return common, visit_part, drift


def _scene_extent(exposures: list[_Exposure], center: tuple[float, float]) -> float:
    """Size (arcsec) of a scene around ``center`` that covers every true footprint."""
    cosd = math.cos(math.radians(center[1]))
    far = 0.0
    for e in exposures:
        for a in e.apertures:
            v2, v3 = _tel_corners(a.name)
            for att in e.true_attitudes.values():
                ra, dec = _sky(att, v2, v3)
                dra = ((ra - center[0] + 180.0) % 360.0 - 180.0) * cosd
                far = max(far, float(np.max(np.hypot(dra, dec - center[1]))) * 3600.0)
    return 2.0 * far + 10.0


def _detector(a: SiafAperture) -> sim.Detector:
    return sim.Detector(a.detector, a.v2_ref, a.v3_ref, a.module)


def _siaf_chip(layout: sim.InstrumentLayout, a: SiafAperture) -> sim._Chip:
    """An aperture as the simulator reads it out: its layout, detector and (MIRI) coronagraph regions."""
    ap_layout = dc_replace(
        layout,
        shape=a.shape,
        channel=a.channel or layout.channel,
        v3yangle=a.v3yangle,
        vparity=a.vparity,
        pixel_scale=a.pixel_scale * a.binning,
    )
    regions = None
    if a.instrument == "MIRI":
        # The Lyot, the part that sees no sky (neither illuminated nor 4QPM), the flagged part.
        reg = miri_region_masks(a)
        regions = (reg["lyot"], ~reg["illuminated"] & ~reg["coron4qpm"], ~reg["illuminated"])
    return sim._Chip(ap_layout, _detector(a), regions, fits_wcs=False, aperture=a.name)


def _siaf_readout(chip: sim._Chip, a: SiafAperture, e: _Exposure) -> sim._Readout:
    """One aperture of one exposure, with its nominal WCS and the true one."""
    wcs, info = exposure_wcs(a, e.attitude)
    twcs, _ = exposure_wcs(a, e.true_attitudes.get(a.module, e.true_attitudes[None]))
    pointing = (info["ra_ref"], info["dec_ref"], info["roll_ref"])
    return sim._Readout(chip, wcs, twcs, pointing, (a.v2_ref, a.v3_ref), e.visit, e.tile, e.dither, e.start)


def _siaf_metadata(model, a: SiafAperture, e: _Exposure, pattern_name: str, dithers: int, rotations) -> None:
    """SIAF-specific keywords: subarray, aperture, dither, pointing, SIP WCS."""
    import logging
    import warnings

    from jwst.assign_wcs.util import update_fits_wcsinfo

    b = a.binning
    ny, nx = a.shape
    sub = model.meta.subarray
    sub.name = a.subarray
    sub.xstart = (a.xstart - 1) // b + 1
    sub.ystart = (a.ystart - 1) // b + 1
    sub.xsize = nx
    sub.ysize = ny
    model.meta.aperture.name = a.name
    model.meta.aperture.pps_name = e.pointing_aperture
    dith = model.meta.dither
    dith.primary_type = pattern_name
    dith.position_number = e.dither + 1
    dith.total_points = dithers
    dith.x_offset, dith.y_offset = e.offset
    ra_v1, dec_v1 = rotations.pointing(e.attitude, 0.0, 0.0)
    model.meta.pointing.ra_v1 = float(ra_v1) % 360.0
    model.meta.pointing.dec_v1 = float(dec_v1)
    model.meta.pointing.pa_v3 = float(rotations.posangle(e.attitude, 0.0, 0.0))
    model.meta.wcsinfo.siaf_xref_sci = (a.x_sci_ref - (b + 1) / 2.0) / b + 1.0
    model.meta.wcsinfo.siaf_yref_sci = (a.y_sci_ref - (b + 1) / 2.0) / b + 1.0
    # What assign_wcs writes (sip_approx=True): CD matrix and SIP distortion
    # fitted to the gwcs.  On full MIRI frames the degree-6 inverse misses
    # its 0.01-pixel target at the corners (gwcs warns); the FITS WCS is an
    # approximation either way, the gwcs is the truth.
    log = logging.getLogger("jwst.assign_wcs.util")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Failed to achieve requested SIP approximation")
            update_fits_wcsinfo(model, npoints=12)
    finally:
        log.setLevel(level)
