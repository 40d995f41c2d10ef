"""Relative WCS corrections of visits from cross-correlating their overlaps.

Each visit (its exposures co-added on the common grid) is compared with every
visit it overlaps.  The overlap is cut into blocks; in each block
:func:`register_block` finds the whole-pixel shift of least squared
difference, then fits the sub-pixel remainder on the images' gradients, to a
few hundredths of a pixel, with a formal error.  Every block gives two linear
equations for the two visits' displacement fields
``D_u(p) = t_u + w_u * R (p - c_u)`` (a shift ``t_u`` and, when asked, a
small rotation ``w_u`` about the visit centre ``c_u``; ``R`` turns by 90
degrees), and all visits are solved together by weighted least squares.
Block measurements that disagree with the solution by more than
``reject_sigma`` times their errors (robustly scaled) are dropped and the
solution repeated.

Differences fix the displacements only up to a transform common to each
connected set of visits; the solution is the one of least norm, with the
mean displacement of each set removed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .grid import BBox, SkyGrid, overlap_bbox
from .resample import Resampled, weighted_coadd

__all__ = [
    "ShiftSample",
    "UnitSolution",
    "measure_block_shifts",
    "solve_unit_shifts",
    "unit_correction_points",
]

log = logging.getLogger(__name__)

_ROT = np.array([[0.0, -1.0], [1.0, 0.0]])
_PRESMOOTH = 1.0  # Gaussian sigma (pixels) applied to both cutouts before the sub-pixel fit


@dataclass(frozen=True)
class ShiftSample:
    """Features of unit ``a`` at grid position ``(x, y)`` appear at ``(x + dx, y + dy)`` in unit ``b``."""

    a: int
    b: int
    x: float
    y: float
    dx: float
    dy: float
    correlation: float
    n_pixels: int
    sigma_x: float = math.nan
    sigma_y: float = math.nan


@dataclass
class UnitSolution:
    """Displacement field of every unit on the grid (pixels), and how well it is known."""

    shift: np.ndarray  # (n, 2): t_u, grid pixels
    rotation: np.ndarray  # (n,): w_u, radians
    center: np.ndarray  # (n, 2): c_u, grid pixels
    component: np.ndarray  # (n,): connected set; -1 unmeasured
    n_samples: np.ndarray  # (n,): block measurements used
    rms: float  # residual RMS of the used samples, grid pixels
    uncertainty: np.ndarray  # (n,): 1-sigma of the shift, grid pixels
    used: np.ndarray  # (n_samples,) bool

    def displacement(self, u: int, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Displacement of unit ``u`` at grid positions (pixels)."""
        px = np.asarray(x, float) - self.center[u, 0]
        py = np.asarray(y, float) - self.center[u, 1]
        w = self.rotation[u]
        return self.shift[u, 0] - w * py, self.shift[u, 1] + w * px


@dataclass(frozen=True)
class BlockShift:
    """Shift of one block: features of ``a`` at ``p`` appear at ``p + (dx, dy)`` in ``b``."""

    dx: float
    dy: float
    correlation: float
    n_pixels: int
    sigma_x: float = math.nan  # formal 1-sigma error of dx (white noise assumed)
    sigma_y: float = math.nan


def _has_structure(filled: np.ndarray, valid: np.ndarray, noise: float, threshold: float = 5.0) -> bool:
    """Whether an image (holes filled, noise known) holds structure well above its noise."""
    from astropy.stats import mad_std
    from scipy import ndimage

    if not np.isfinite(noise):
        return False
    smooth = ndimage.gaussian_filter(filled, 2.0)[valid]
    scatter = mad_std(smooth)
    return bool(scatter > threshold * noise / (4.0 * math.sqrt(math.pi)))


def _noise(image: np.ndarray, valid: np.ndarray) -> float:
    """Pixel noise from differences of horizontal neighbours (robust; NaN if too few)."""
    from astropy.stats import mad_std

    pairs = valid[:, 1:] & valid[:, :-1]
    if pairs.sum() < 100:
        return math.nan
    diff = np.diff(image, axis=1)[pairs]
    return float(mad_std(diff) / math.sqrt(2.0))


def _tame_outliers(filled: np.ndarray, noise: float, k: float = 4.0) -> np.ndarray:
    """An image (holes filled) with each pixel held within ``k`` ``noise`` of its 3x3 median.

    A cosmic ray's square dominates a sum of squared differences; whether it
    falls inside the common area changes with the shift and can move the
    minimum.  Bounded like this it cannot, while a point source keeps its
    place (its 3x3 median is high too).
    """
    from scipy import ndimage

    median = ndimage.median_filter(filled, 3)
    bound = k * noise
    if not np.isfinite(bound):
        return median
    return median + np.clip(filled - median, -bound, bound)


def _one_sided_outliers(
    a: np.ndarray, b: np.ndarray, both: np.ndarray, noise: float, k: float = 5.0, relative: float = 0.0
):
    """Pixels where one image holds something the other has nowhere nearby (cosmic rays, bad pixels).

    With the images aligned to within a pixel, a feature of the sky in
    ``b`` lies between the smallest and largest value of ``a`` in the 3x3
    neighbourhood (and vice versa), up to the noise and the level
    difference; a cosmic ray does not.  This is the envelope test of
    drizzle-style outlier rejection.  Flagged pixels are grown by one pixel,
    the spread resampling gives them.  ``relative`` widens the margin by
    that fraction of the local value, for images whose gains may differ.
    """
    from scipy import ndimage

    if not np.isfinite(noise) or not both.any():
        return np.zeros_like(both)
    level = float(np.median((b - a)[both]))
    margin = k * noise + relative * np.abs(a - np.median(a[both]))
    out = (b - level > ndimage.maximum_filter(a, 3) + margin) | (
        b - level < ndimage.minimum_filter(a, 3) - margin
    )
    out |= (a + level > ndimage.maximum_filter(b, 3) + margin) | (
        a + level < ndimage.minimum_filter(b, 3) - margin
    )
    return ndimage.binary_dilation(out & both)


def register_block(
    image_a: np.ndarray,
    valid_a: np.ndarray,
    image_b: np.ndarray,
    valid_b: np.ndarray,
    *,
    max_shift: int,
    min_pixels: int = 1000,
    iterations: int = 8,
    clip: float = 5.0,
    coarse: str = "difference",
    fit_gain: bool = False,
) -> BlockShift | None:
    """Shift between two co-registered cutouts: least squared difference, then a gradient fit.

    The whole-pixel shift minimises the mean squared difference of the
    cutouts over their common valid pixels, a background level removed
    (:func:`~jwst_skymatch_plus.core.registration.masked_difference`): the
    noise likelihood of the shift, which uses all the structure, extended
    emission included, without the bias a normalised correlation has on
    smooth emission.  The sub-pixel remainder is fitted by linear least
    squares on the images' gradients (``b - a = -grad(a) . d + c``),
    iterated with ``a`` re-interpolated at the current shift; once the fit
    has settled, pixels off it by more than ``clip`` robust standard
    deviations (cosmic rays, variable sources) are left out.  Only a level
    is fitted, not a plane: on smooth emission a plane is nearly the same
    as a shift.  Returns None when the best shift lies on the edge of the
    search, or too few valid pixels remain.

    ``fit_gain`` adds a gain to the sub-pixel fit (``b - a = -grad(a) . d
    + c + (g - 1) a``), for images of different bands or units; a gain
    error left unfitted would put a copy of the structure in the difference,
    which correlates with the gradients.  Between exposures of one band the
    gain is 1 and fitting it would only cost precision: on smooth emission
    ``a`` is nearly a plane, nearly a shift.

    ``coarse='phase'`` finds the whole-pixel shift with scikit-image's
    masked phase correlation instead (normalised, hence biased on smooth
    emission; kept for comparison and for bands whose two images differ by
    more than a level).
    """
    from scipy import ndimage

    from .registration import fill_invalid, masked_difference

    n_a, n_b = int(valid_a.sum()), int(valid_b.sum())
    if min(n_a, n_b) < min_pixels:
        return None
    # Holes filled and noise measured once, for every stage below.
    filled_a, filled_b = fill_invalid(image_a, valid_a), fill_invalid(image_b, valid_b)
    noise_a, noise_b = _noise(image_a, valid_a), _noise(image_b, valid_b)
    if not (_has_structure(filled_a, valid_a, noise_a) and _has_structure(filled_b, valid_b, noise_b)):
        return None  # a flat or noise-only block would give a chance minimum
    min_common = max(min_pixels, 0.5 * min(n_a, n_b))
    if coarse == "phase":
        shift = _phase_integer_shift(image_a, valid_a, image_b, valid_b)
        if shift is None or max(abs(shift[0]), abs(shift[1])) >= max_shift:
            return None
        ky, kx = shift
    elif coarse == "difference":
        msd, n = masked_difference(
            _tame_outliers(filled_a, noise_a), valid_a, _tame_outliers(filled_b, noise_b), valid_b, max_shift
        )
        # A minimum found on a sliver of the block (large shift) is not trusted.
        msd = np.where(n >= min_common, msd, np.inf)
        iy, ix = np.unravel_index(int(np.argmin(msd)), msd.shape)
        if not np.isfinite(msd[iy, ix]) or max(abs(iy - max_shift), abs(ix - max_shift)) >= max_shift:
            return None  # on the edge: the true minimum may lie outside the search
        ky, kx = int(iy - max_shift), int(ix - max_shift)
    else:
        raise ValueError(f"coarse={coarse!r}: use 'difference' or 'phase'")
    # Compare b(p) with a(p - k) on the rows and columns both cover.
    ny, nx = image_a.shape
    ys, yd = (slice(0, ny - ky), slice(ky, ny)) if ky >= 0 else (slice(-ky, ny), slice(0, ny + ky))
    xs, xd = (slice(0, nx - kx), slice(kx, nx)) if kx >= 0 else (slice(-kx, nx), slice(0, nx + kx))
    good_a, good_b = valid_a[ys, xs], valid_b[yd, xd]
    if (good_a & good_b).sum() < min_common:
        return None
    a_k, b_k = fill_invalid(image_a[ys, xs], good_a), fill_invalid(image_b[yd, xd], good_b)
    noise = math.hypot(noise_a, noise_b)
    outliers = _one_sided_outliers(a_k, b_k, good_a & good_b, noise, relative=0.05 if fit_gain else 0.0)
    good_a, good_b = good_a & ~outliers, good_b & ~outliers
    # Both smoothed alike before any sub-pixel interpolation: interpolating
    # raw pixels averages their noise by an amount that depends on the
    # fractional shift, which pulls the fit towards half-pixel shifts
    # whenever the structure is weak.  After a 1-pixel Gaussian the
    # interpolation hardly changes the noise.
    a_k = ndimage.gaussian_filter(fill_invalid(a_k, good_a), _PRESMOOTH)
    b_k = ndimage.gaussian_filter(fill_invalid(b_k, good_b), _PRESMOOTH)
    both = ndimage.binary_erosion(good_a & good_b, iterations=2)
    yy, xx = np.nonzero(both)
    if yy.size < min_pixels:
        return None
    keep = np.ones(yy.size, bool)
    d = np.zeros(2)  # (dy, dx) beyond the whole-pixel shift
    for it in range(iterations):
        a_d = ndimage.shift(a_k, d, order=3, mode="nearest")
        # Gradient of the mean of both images: symmetric, so less biased by
        # either one's noise.
        gy, gx = np.gradient(0.5 * (a_d + b_k))
        columns = [-gx[yy, xx], -gy[yy, xx], np.ones(yy.size)]
        if fit_gain:
            columns.append(a_d[yy, xx] - a_d[yy, xx].mean())
        design = np.column_stack(columns)
        target = b_k[yy, xx] - a_d[yy, xx]
        coef, *_ = np.linalg.lstsq(design[keep], target[keep], rcond=None)
        d += (coef[1], coef[0])
        if np.max(np.abs(d)) > 1.5:
            return None  # the gradient fit left the whole-pixel minimum
        step = float(np.hypot(coef[0], coef[1]))
        if step < 0.05 or it >= 2:
            resid = target - design @ coef
            keep = np.abs(resid) < clip * 1.4826 * np.median(np.abs(resid[keep])) + 1e-30
        if step < 1e-4:
            break
    a_d = ndimage.shift(a_k, d, order=3, mode="nearest")
    corr = float(np.corrcoef(a_d[yy, xx][keep], b_k[yy, xx][keep])[0, 1])
    # Formal errors of the last fit.  Where the structure in the block is
    # close to a plane, a shift is nearly a level change and these grow: the
    # block then carries little weight in the joint solution.
    # The smoothing correlates the noise over about 4 pi sigma^2 pixels,
    # which the white-noise formula would count as independent.
    resid = (target - design @ coef)[keep]
    dof = max(int(keep.sum()) - design.shape[1], 1)
    try:
        cov = np.linalg.inv(design[keep].T @ design[keep]) * float(resid @ resid) / dof
        cov *= 4.0 * math.pi * _PRESMOOTH**2
        sx, sy = float(np.sqrt(cov[0, 0])), float(np.sqrt(cov[1, 1]))
    except np.linalg.LinAlgError:
        sx = sy = math.inf
    return BlockShift(kx + float(d[1]), ky + float(d[0]), corr, int(keep.sum()), sx, sy)


def _phase_integer_shift(image_a, valid_a, image_b, valid_b) -> tuple[int, int] | None:
    """Whole-pixel shift of ``b`` relative to ``a`` by scikit-image's masked phase correlation, or None."""
    from skimage.registration import phase_cross_correlation

    a = np.where(valid_a, image_a, 0.0)
    b = np.where(valid_b, image_b, 0.0)
    shift = phase_cross_correlation(b, a, reference_mask=valid_b, moving_mask=valid_a, overlap_ratio=0.5)
    shift = np.asarray(shift[0] if isinstance(shift, tuple) else shift, dtype=float)
    if not np.all(np.isfinite(shift)):
        return None
    ky, kx = np.rint(shift).astype(int).tolist()
    return ky, kx


def _blocks(box: BBox, size: int) -> list[BBox]:
    ny, nx = box.shape
    nbx, nby = max(1, round(nx / size)), max(1, round(ny / size))
    xs = np.linspace(box.x0, box.x1, nbx + 1).round().astype(int)
    ys = np.linspace(box.y0, box.y1, nby + 1).round().astype(int)
    return [BBox(xs[i], xs[i + 1], ys[j], ys[j + 1]) for j in range(nby) for i in range(nbx)]


def measure_block_shifts(
    images: Sequence[Resampled],
    *,
    max_shift: int,
    block_size: int = 256,
    min_pixels: int = 1000,
    min_correlation: float = 0.3,
    coarse: str = "difference",
    gain_unit: int | None = None,
) -> tuple[list[ShiftSample], int]:
    """Shifts between every pair of overlapping units, block by block.

    Parameters
    ----------
    images : sequence of Resampled
        Each unit's co-added image on the common grid.
    max_shift : int
        Largest shift searched, grid pixels.
    block_size : int
        Overlaps are cut into blocks of at most about this many pixels a
        side, and at least three along their longer side (several blocks
        per overlap constrain rotations; each must hold structure).
    min_pixels, min_correlation : float
        Blocks with fewer common valid pixels or a weaker correlation (after
        alignment) are not used.
    coarse : {'difference', 'phase'}
        Whole-pixel search of :func:`register_block`.
    gain_unit : int, optional
        A unit from another band or in other units (a reference image):
        blocks it takes part in fit a gain too.

    Returns
    -------
    samples : list of ShiftSample
    n_tried : int
        Blocks examined.
    """
    samples, tried = [], 0
    for a in range(len(images)):
        for b in range(a + 1, len(images)):
            common = overlap_bbox(images[a].bbox, images[b].bbox)
            if common.size < min_pixels:
                continue
            size = min(block_size, max(64, max(common.shape) // 3))
            for block in _blocks(common, size):
                ia, wa = images[a].cutout(block)
                ib, wb = images[b].cutout(block)
                both = (wa > 0) & (wb > 0)
                if both.sum() < min_pixels:
                    continue
                tried += 1
                shift = register_block(
                    ia,
                    wa > 0,
                    ib,
                    wb > 0,
                    max_shift=max_shift,
                    min_pixels=min_pixels,
                    coarse=coarse,
                    fit_gain=gain_unit in (a, b),
                )
                if shift is None or shift.correlation < min_correlation:
                    continue
                yy, xx = np.nonzero(both)
                samples.append(
                    ShiftSample(
                        a,
                        b,
                        float(block.x0 + xx.mean()),
                        float(block.y0 + yy.mean()),
                        shift.dx,
                        shift.dy,
                        shift.correlation,
                        shift.n_pixels,
                        shift.sigma_x,
                        shift.sigma_y,
                    )
                )
    return samples, tried


def _components(n: int, samples: Sequence[ShiftSample], used: np.ndarray) -> np.ndarray:
    """Connected set of each unit through the used samples (-1: none)."""
    from .solve import pair_components

    pairs = np.array([(s.a, s.b) for s, ok in zip(samples, used, strict=True) if ok], dtype=int)
    return pair_components(n, *pairs.reshape(-1, 2).T)


def solve_unit_shifts(
    n: int,
    samples: Sequence[ShiftSample],
    centers: np.ndarray,
    *,
    fit_rotation: bool = True,
    reject_sigma: float = 5.0,
    max_iter: int = 5,
    sigma_floor: float = 0.02,
) -> UnitSolution:
    """Least-squares displacement fields of all units from block shift samples.

    Parameters
    ----------
    n : int
        Number of units.
    samples : sequence of ShiftSample
        Measurements (see :func:`measure_block_shifts`).
    centers : numpy.ndarray, shape (n, 2)
        Grid position of each unit's centre (rotation pivot).
    fit_rotation : bool
        Fit a small rotation per unit as well as a shift.
    reject_sigma : float
        Samples off the solution by more than this many robust standard
        deviations are dropped (iteratively).
    max_iter : int
        Rejection rounds.
    sigma_floor : float
        Added in quadrature to each sample's formal error (grid pixels) for
        its weight: no block is trusted beyond what resampling allows.

    Returns
    -------
    UnitSolution
    """
    npar = 3 if fit_rotation else 2
    m = len(samples)
    used = np.ones(m, bool)
    centers = np.asarray(centers, float)
    if m == 0:
        return UnitSolution(
            np.full((n, 2), np.nan),
            np.full(n, np.nan),
            centers,
            np.full(n, -1),
            np.zeros(n, int),
            math.nan,
            np.full(n, np.nan),
            used,
        )
    # Two rows per sample: d = D_b(p) - D_a(p).
    design = np.zeros((2 * m, npar * n))
    target = np.zeros(2 * m)
    weight = np.zeros(2 * m)
    for k, s in enumerate(samples):
        for unit, sign in ((s.b, 1.0), (s.a, -1.0)):
            col = npar * unit
            design[2 * k, col] = sign
            design[2 * k + 1, col + 1] = sign
            if fit_rotation:
                rx, ry = _ROT @ (np.array([s.x, s.y]) - centers[unit])
                design[2 * k, col + 2] = sign * rx
                design[2 * k + 1, col + 2] = sign * ry
        target[2 * k : 2 * k + 2] = (s.dx, s.dy)
        weight[2 * k : 2 * k + 2] = [
            1.0 / math.hypot(e, sigma_floor) if math.isfinite(e) else 1.0 / sigma_floor
            for e in (s.sigma_x, s.sigma_y)
        ]
    params = np.zeros(npar * n)
    for _ in range(max(max_iter, m // 5)):
        rows = np.repeat(used, 2)
        w = weight[rows]
        params, *_ = np.linalg.lstsq(design[rows] * w[:, None], target[rows] * w, rcond=None)
        # Residuals in units of each sample's error.
        resid = ((target - design @ params) * weight).reshape(m, 2)
        dist = np.hypot(resid[:, 0], resid[:, 1])
        scale = 1.4826 * np.median(dist[used]) + 1e-6
        worst = np.argmax(np.where(used, dist, -1.0))
        if dist[worst] <= reject_sigma * scale or used.sum() <= 2:
            break
        used[worst] = False
    comp = _components(n, samples, used)
    shift = params.reshape(n, npar)[:, :2].copy()
    rotation = params.reshape(n, npar)[:, 2].copy() if fit_rotation else np.zeros(n)
    # Least-norm already centres each set; make it explicit for the shifts.
    for label in np.unique(comp[comp >= 0]):
        sel = comp == label
        shift[sel] -= shift[sel].mean(axis=0)
    shift[comp < 0] = np.nan
    rotation[comp < 0] = np.nan
    resid = (target - design @ params).reshape(m, 2)[used]
    rms = float(np.sqrt(np.mean(np.sum(resid**2, axis=1)))) if resid.size else math.nan
    counts = np.zeros(n, int)
    for s, ok in zip(samples, used, strict=True):
        if ok:
            counts[[s.a, s.b]] += 1
    # Shift errors from the weighted least-squares covariance (least-norm
    # gauge, as the solution), scaled by the reduced chi-square when the
    # samples scatter more than their errors say.
    rows = np.repeat(used, 2)
    a_w = design[rows] * weight[rows][:, None]
    chi = (target[rows] - design[rows] @ params) * weight[rows]
    dof = max(int(rows.sum()) - np.linalg.matrix_rank(a_w), 1)
    cov = np.linalg.pinv(a_w.T @ a_w) * max(1.0, float(chi @ chi) / dof)
    var = np.diag(cov).reshape(n, npar)
    uncertainty = np.sqrt(var[:, 0] + var[:, 1])
    uncertainty[comp < 0] = np.nan
    return UnitSolution(shift, rotation, centers, comp, counts, rms, uncertainty, used)


def unit_correction_points(
    solution: UnitSolution, u: int, box: BBox, grid: SkyGrid
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sky positions before and after correcting unit ``u``, on a 5 x 5 grid over its box.

    A feature that unit ``u``'s WCS places at grid position ``p`` truly lies
    at ``p - D_u(p)``: the correction moves sky positions from the first to
    the second set returned.

    Returns
    -------
    ra, dec, ra_new, dec_new : numpy.ndarray
        Degrees.
    """
    xs = np.linspace(box.x0, box.x1 - 1, 5)
    ys = np.linspace(box.y0, box.y1 - 1, 5)
    x, y = (a.ravel() for a in np.meshgrid(xs, ys))
    dx, dy = solution.displacement(u, x, y)
    ra, dec = grid.pixel_to_world(x, y)
    ra_new, dec_new = grid.pixel_to_world(x - dx, y - dy)
    return np.asarray(ra), np.asarray(dec), np.asarray(ra_new), np.asarray(dec_new)


@dataclass
class CorrelationAlignment:
    """Outcome of :func:`correlate_visits`."""

    wcs: list  # corrected gwcs per exposure (the input object where its visit was not measured)
    measured: np.ndarray  # (n_units,) bool
    solution: UnitSolution | None  # last pass
    samples: list[ShiftSample]  # last pass
    passes: int
    pixel_scale_arcsec: float = math.nan  # of the grid the solution is in


def dither_levels(images: Sequence[Resampled], min_pixels: int = 100) -> np.ndarray:
    """Background level of each image relative to the others, from median differences where they overlap.

    For the exposures of one visit, aligned to each other to far better
    than a pixel: their differences are noise plus a level.  Levels are
    solved together (:func:`~jwst_skymatch_plus.core.solve.solve_levels`);
    an image that overlaps none gets 0.
    """
    from astropy.stats import mad_std

    from .solve import solve_levels

    n = len(images)
    ii, jj, delta, sigma = [], [], [], []
    for i in range(n):
        for j in range(i + 1, n):
            box = overlap_bbox(images[i].bbox, images[j].bbox)
            if box.is_empty:
                continue
            a, wa = images[i].cutout(box)
            b, wb = images[j].cutout(box)
            diff = (a - b)[(wa > 0) & (wb > 0)]
            if diff.size < min_pixels:
                continue
            med = float(np.median(diff))
            mad = float(mad_std(diff))
            ii.append(i)
            jj.append(j)
            delta.append(med)
            sigma.append(max(mad, 1e-12) * math.sqrt(math.pi / 2.0 / diff.size))
    if not ii:
        return np.zeros(n)
    solution = solve_levels(n, np.array(ii), np.array(jj), np.array(delta), np.array(sigma))
    return np.nan_to_num(np.asarray(solution.levels, float).reshape(n, -1)[:, 0])


def coadd_on_grid(
    exposures: Sequence[tuple], grid: SkyGrid, kernel: str = "square", match_levels: bool = True
) -> Resampled:
    """``(data, good, wcs)`` exposures drizzled onto ``grid`` and averaged, inside their joint box.

    With ``match_levels`` the exposures' background levels are matched
    first (:func:`dither_levels`): a level step where one exposure's
    footprint ends would look like a shift wherever the emission is faint
    and smooth.
    """
    from .grid import footprint_of
    from .resample import resample_to_grid

    boxes = [grid.bbox_of(footprint_of(wcs, data.shape)) for data, _, wcs in exposures]
    box = boxes[0]
    for b in boxes[1:]:
        box = box.union(b)
    resampled = []
    for (data, good, wcs), b in zip(exposures, boxes, strict=True):
        r = resample_to_grid(data, good, wcs, grid, b, kernel=kernel)
        # Grid pixels an exposure only grazes (its edges, the rims of its
        # holes) carry one input pixel's value, cosmic rays included, at full
        # contrast: leave them out.
        weight = np.where(r.weight >= 0.5 * np.max(r.weight, initial=0.0), r.weight, 0.0)
        resampled.append(Resampled(b, r.image, weight.astype(np.float32)))
    levels = dither_levels(resampled) if match_levels and len(resampled) > 1 else np.zeros(len(resampled))
    return weighted_coadd(resampled, box, levels=levels)


def correlate_visits(
    data: Sequence[tuple[np.ndarray, np.ndarray]],
    wcs: Sequence,
    wcsinfo: Sequence[dict],
    unit_of: Sequence[int],
    *,
    grid_scale: float = 1.0,
    max_shift_arcsec: float = 3.0,
    fit_rotation: bool = True,
    min_pixels: int = 1000,
    min_correlation: float = 0.3,
    passes: int = 6,
    tolerance: float = 0.01,
    coarse: str = "difference",
    reference: tuple | None = None,
) -> CorrelationAlignment:
    """Align units (visits) to each other by cross-correlating their overlaps, iteratively.

    Each pass co-adds every unit on one grid with the current WCSs, measures
    block shifts in all overlaps, solves for every unit's shift (and
    rotation), and corrects the WCSs.  The first pass may find only the
    overlaps that hold enough common structure at a large shift; later
    passes, on nearly aligned images, measure every overlap precisely and
    search only near zero.

    Parameters
    ----------
    data : sequence of (data, good)
        Per exposure: the image and its usable-pixel mask.
    wcs, wcsinfo : sequences
        Per exposure: its gwcs and ``{'v2_ref', 'v3_ref', 'roll_ref'}``.
    unit_of : sequence of int
        Unit (visit) index of every exposure.
    grid_scale : float
        Grid pixel in native pixels.
    max_shift_arcsec : float
        Largest shift searched in the first pass.
    fit_rotation : bool
        Fit a rotation per unit as well as a shift.
    min_pixels, min_correlation : float
        Block selection (see :func:`measure_block_shifts`).
    passes : int
        Most passes.
    tolerance : float
        Stop when no unit moves by more than this (grid pixels).
    coarse : {'difference', 'phase'}
        Whole-pixel search of :func:`register_block`.
    reference : (data, good, wcs), optional
        A reference image (any WCS with ``pixel_to_world_values``, e.g. an
        earlier mosaic of the field) that stays fixed: units connected to it
        through overlaps are aligned to it, not only to each other.  Its
        values are scaled to the units' (a gain and a level) first.
    """
    from .alignment import apply_affine_to_wcs, fit_sky_affine

    unit_of = np.asarray(unit_of)
    n_units = int(unit_of.max()) + 1
    grid = SkyGrid.for_exposures(list(wcs), [d.shape for d, _ in data], grid_scale)
    scale = grid.pixel_scale * 3600.0
    current = list(wcs)
    max_shift = max(1, math.ceil(max_shift_arcsec / scale))
    fixed = None
    if reference is not None:
        fixed = _reference_on_grid(reference, grid, [d.shape for d, _ in data], list(wcs))
    solution, samples, done = None, [], 0
    # Shifts first; rotations once the units are close (a rotation needs
    # several blocks per unit, which the first, large-shift pass may lack).
    rotating = False
    for _ in range(passes):
        done += 1
        images = [
            coadd_on_grid([(*data[k], current[k]) for k in np.flatnonzero(unit_of == u)], grid)
            for u in range(n_units)
        ]
        if fixed is not None:
            images.append(_matched_reference(fixed, images))
        samples, tried = measure_block_shifts(
            images,
            max_shift=max_shift,
            min_pixels=min_pixels,
            min_correlation=min_correlation,
            coarse=coarse,
            gain_unit=n_units if fixed is not None else None,
        )
        centers = np.array(
            [[(im.bbox.x0 + im.bbox.x1 - 1) / 2, (im.bbox.y0 + im.bbox.y1 - 1) / 2] for im in images]
        )
        solution = solve_unit_shifts(len(images), samples, centers, fit_rotation=rotating)
        if fixed is not None:
            solution = _anchor_to(solution, n_units, done == 1)
        moved = 0.0
        for u in range(n_units):
            if solution.component[u] < 0:
                continue
            ra, dec, ra_new, dec_new = unit_correction_points(solution, u, images[u].bbox, grid)
            step, _ = fit_sky_affine(
                ra,
                dec,
                ra_new,
                dec_new,
                float(np.mean(ra)),
                float(np.mean(dec)),
                "rshift" if rotating else "shift",
            )
            for k in np.flatnonzero(unit_of == u):
                current[k] = apply_affine_to_wcs(current[k], wcsinfo[k], step)
            corners = np.array(
                [[images[u].bbox.x0, images[u].bbox.y0], [images[u].bbox.x1, images[u].bbox.y1]]
            )
            dx, dy = solution.displacement(u, corners[:, 0], corners[:, 1])
            moved = max(moved, float(np.max(np.hypot(dx, dy))))
        log.info(
            "Cross-correlation pass %d: %d of %d overlap block(s) used, largest correction %.3f pixel.",
            done,
            int(solution.used.sum()),
            tried,
            moved,
        )
        max_shift = max(2, min(max_shift, math.ceil(3 * moved) + 2))
        if moved < tolerance or (moved < 0.1 and not rotating and fit_rotation):
            if rotating or not fit_rotation:
                break
            rotating = True
    measured = solution.component[:n_units] >= 0 if solution is not None else np.zeros(n_units, bool)
    out = [current[k] if measured[unit_of[k]] else wcs[k] for k in range(len(wcs))]
    return CorrelationAlignment(out, measured, solution, samples, done, scale)


def _reference_on_grid(reference: tuple, grid: SkyGrid, shapes, wcs_list) -> Resampled:
    """The reference image drizzled onto the grid, inside the box of the units (plus a margin)."""
    from .grid import footprint_of
    from .resample import resample_to_grid

    data, good, ref_wcs = reference
    box = None
    for w, shape in zip(wcs_list, shapes, strict=True):
        b = grid.bbox_of(footprint_of(w, shape))
        box = b if box is None else box.union(b)
    margin = 20
    box = BBox(box.x0 - margin, box.x1 + margin, box.y0 - margin, box.y1 + margin)
    data = np.asarray(data, np.float64)
    good = np.asarray(good, bool) & np.isfinite(data)
    if hasattr(ref_wcs, "world_to_pixel_values") and hasattr(ref_wcs, "slice"):
        # Only the part under the visits is drizzled: a reference mosaic may
        # be far larger than the field being aligned.
        gx = np.linspace(box.x0 - 0.5, box.x1 - 0.5, 9)
        gy = np.linspace(box.y0 - 0.5, box.y1 - 0.5, 9)
        gx, gy = (a.ravel() for a in np.meshgrid(gx, gy))
        x, y = ref_wcs.world_to_pixel_values(*grid.pixel_to_world(gx, gy))
        ny, nx = data.shape
        x0, x1 = max(0, math.floor(np.nanmin(x)) - 8), min(nx, math.ceil(np.nanmax(x)) + 9)
        y0, y1 = max(0, math.floor(np.nanmin(y)) - 8), min(ny, math.ceil(np.nanmax(y)) + 9)
        if x1 <= x0 or y1 <= y0:
            raise ValueError("the reference image does not overlap the exposures")
        data, good = data[y0:y1, x0:x1], good[y0:y1, x0:x1]
        ref_wcs = ref_wcs.slice((slice(y0, y1), slice(x0, x1)))
    r = resample_to_grid(np.where(good, data, 0.0), good, ref_wcs, grid, box)
    if not r.valid.any():
        raise ValueError("the reference image does not overlap the exposures")
    return r


def _matched_reference(fixed: Resampled, images: Sequence[Resampled]) -> Resampled:
    """The reference scaled to the units' values: ``gain * reference + level``.

    A wrong gain leaves a copy of the emission in the difference, which the
    gradient fit partly reads as a shift.  The gain is the median over units
    of the ratio of robust spreads (10-90 percentile) of unit and reference
    where they overlap, both smoothed so that their different noise does not
    count; each unit has its own background, so spreads are not pooled.
    """
    from scipy import ndimage

    gains, levels = [], []
    for im in images:
        box = overlap_bbox(im.bbox, fixed.bbox)
        if box.is_empty:
            continue
        a, wa = fixed.cutout(box)
        b, wb = im.cutout(box)
        both = (wa > 0) & (wb > 0)
        if both.sum() < 1000:
            continue
        ref = ndimage.gaussian_filter(np.where(wa > 0, a, np.median(a[wa > 0])), 2.0)[both]
        unit = ndimage.gaussian_filter(np.where(wb > 0, b, np.median(b[wb > 0])), 2.0)[both]
        q_ref, q_unit = np.percentile(ref, [10, 90]), np.percentile(unit, [10, 90])
        if q_ref[1] > q_ref[0] and q_unit[1] > q_unit[0]:
            gains.append((q_unit[1] - q_unit[0]) / (q_ref[1] - q_ref[0]))
            levels.append((np.median(unit), np.median(ref)))
    if not gains:
        return fixed
    gain = float(np.median(gains))
    level = float(np.median([u - gain * r for u, r in levels]))
    log.debug("Reference image scaled by %.5g (per unit: %s), level %+.4g.", gain, np.round(gains, 4), level)
    return Resampled(fixed.bbox, (fixed.image * gain + level).astype(np.float32), fixed.weight)


def _anchor_to(solution: UnitSolution, ref: int, warn: bool) -> UnitSolution:
    """Displacements relative to unit ``ref`` (the fixed reference) in its connected set."""
    comp = solution.component
    shift = solution.shift.copy()
    rotation = solution.rotation.copy()
    if comp[ref] < 0:
        if warn:
            log.warning(
                "The reference image could not be registered with any visit: relative alignment only."
            )
        return solution
    members = np.flatnonzero(comp == comp[ref])
    for u in members:
        # D_u - D_ref is again a shift and a rotation about c_u.
        dx, dy = solution.displacement(ref, solution.center[u, 0], solution.center[u, 1])
        shift[u] -= (float(dx), float(dy))
        rotation[u] -= solution.rotation[ref]
    if warn and members.size < comp.size:
        log.warning(
            "%d visit(s) not connected to the reference image through overlaps: aligned to each other only.",
            int(comp.size - members.size),
        )
    return UnitSolution(
        shift,
        rotation,
        solution.center,
        comp,
        solution.n_samples,
        solution.rms,
        solution.uncertainty,
        solution.used,
    )
