"""Offsets between two images on the same grid, from their per-pixel difference.

Differencing two resampled images of the same sky cancels the sky itself
(extended emission, sources): what remains is the difference of their
backgrounds plus noise.  A robust statistic of that difference is the pair
offset; for ``fit_type='level+slope'`` a plane is fitted to it instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "FIT_TYPES",
    "DifferenceStatistic",
    "PairMeasurement",
    "difference_in_overlap",
    "fit_plane",
    "structure_weights",
    "measure_difference",
    "n_coefficients",
    "robust_sigma",
]

FIT_TYPES = ("level", "level+slope")
SKYSTATS = ("median", "mean", "mode", "midpt")

#: Width of the Gaussian kernel whose density peak is the 'mode' of a set of
#: differences, in robust standard deviations.  At 2 the estimate keeps 94% of
#: the mean's efficiency for Gaussian noise (asymptotic relative efficiency of
#: this redescending M-estimator: (c^2 (c^2 + 2))^1.5 / (c^2 + 1)^3) while
#: values beyond ~6 sigma get no weight at all.
MODE_KERNEL_SIGMA = 2.0

# Standard error of a statistic over that of the mean for Gaussian data: the
# median's (and 'midpt', the median of the clipped values) is sqrt(pi/2); the
# kernel mode's follows from MODE_KERNEL_SIGMA.
_EFFICIENCY = {
    "mean": 1.0,
    "median": math.sqrt(math.pi / 2.0),
    "mode": math.sqrt(
        (MODE_KERNEL_SIGMA**2 + 1.0) ** 3 / (MODE_KERNEL_SIGMA**2 * (MODE_KERNEL_SIGMA**2 + 2.0)) ** 1.5
    ),
    "midpt": math.sqrt(math.pi / 2.0),
}


def robust_sigma(values: np.ndarray, max_values: int | None = None) -> float:
    """Standard deviation estimated from the median absolute deviation.

    With ``max_values``, from at most about that many evenly spaced values
    (a scale for weights or clipping needs no more).
    """
    from astropy.stats import mad_std

    values = np.asarray(values).ravel()
    if values.size == 0:
        return math.nan
    if max_values and values.size > max_values:
        values = values[:: values.size // max_values]
    return float(mad_std(values))


def _rough_median(values: np.ndarray, size: int = 20000) -> float:
    """Median of at most about ``size`` evenly spaced values (for clipping centres and widths)."""
    step = max(1, values.size // size)
    return float(np.median(values[::step]))


def _rough_sigma(values: np.ndarray, centre: float) -> float:
    """Robust standard deviation (1.4826 MAD) from at most ~20000 evenly spaced values."""
    return 1.482602218505602 * _rough_median(np.abs(values - centre))


def _kernel_mode(
    values: np.ndarray, width: float, start: float, tol: float, weights: np.ndarray | None = None
) -> float:
    """Peak of the Gaussian-kernel density of ``values`` (mean-shift iteration).

    The iteration runs on a fine histogram (bin sums of the values, so only
    the kernel weights are approximated) and is finished with two exact
    steps over the values themselves.  ``weights`` weight the values.
    """
    lo, hi = start - 8.0 * width, start + 8.0 * width
    sel = (values >= lo) & (values <= hi)
    inside = values[sel]
    w_in = None if weights is None else weights[sel]
    if inside.size == 0:
        return start
    nbins = 640
    counts, edges = np.histogram(inside, bins=nbins, range=(lo, hi), weights=w_in)
    weighted = inside if w_in is None else w_in * inside
    sums, _ = np.histogram(inside, bins=nbins, range=(lo, hi), weights=weighted)
    centres = 0.5 * (edges[1:] + edges[:-1])
    mode = start
    for _ in range(100):
        k = np.exp(-0.5 * ((centres - mode) / width) ** 2)
        total = np.sum(k * counts)
        if not total > 0:
            return start
        new = float(np.sum(k * sums) / total)
        if abs(new - mode) < tol:
            mode = new
            break
        mode = new
    for _ in range(2):
        k = np.exp(-0.5 * ((inside - mode) / width) ** 2)
        if w_in is not None:
            k = k * w_in
        mode = float(np.sum(k * inside) / k.sum())
    return mode


def n_coefficients(fit_type: str) -> int:
    """Number of coefficients per image for a fit type (1 or 3)."""
    if fit_type not in FIT_TYPES:
        raise ValueError(f"fit_type must be one of {FIT_TYPES}, got {fit_type!r}")
    return 1 if fit_type == "level" else 3


@dataclass(frozen=True)
class DifferenceStatistic:
    """Sigma-clipped statistic of difference values.

    The parameters mean what they mean for jwst's ``SkyMatchStep``, applied
    here to the per-pixel differences of two images instead of to each
    image's pixels (see :meth:`__call__` for how each statistic is found).

    Parameters
    ----------
    skystat : {'median', 'mean', 'mode', 'midpt'}
        Statistic of the clipped differences.
    nclip : int
        Clipping iterations.
    lsigma, usigma : float
        Lower and upper clipping limits in standard deviations.
    binwidth : float
        Histogram bin width (in sigma) for 'mode' and 'midpt'.

    """

    skystat: str = "mode"
    nclip: int = 5
    lsigma: float = 4.0
    usigma: float = 4.0
    binwidth: float = 0.1

    def __post_init__(self) -> None:
        if self.skystat not in SKYSTATS:
            raise ValueError(f"skystat must be one of {SKYSTATS}, got {self.skystat!r}")

    @property
    def efficiency(self) -> float:
        """Standard-error factor of the statistic relative to the mean."""
        return _EFFICIENCY[self.skystat]

    def __call__(self, values: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, int, float]:
        """Return ``(statistic, n_used, clipped_std)`` of ``values``.

        Values are clipped ``nclip`` times at ``lsigma``/``usigma`` standard
        deviations around their median.  'mean' and 'median' are those of
        the kept values; 'midpt' is their exact median (what the histogram
        midpoint of ``SkyMatchStep`` approximates); 'mode' is the peak of
        their density smoothed by a Gaussian of :data:`MODE_KERNEL_SIGMA`
        robust standard deviations, found by mean shift from the median.
        On differences, whose distribution is the noise around the offset,
        that peak is nearly as precise as the mean and as robust as the
        median (``binwidth`` is not needed).
        """
        values = np.asarray(values, dtype=np.float64).ravel()
        finite = np.isfinite(values)
        values = values[finite]
        if values.size == 0:
            return math.nan, 0, math.nan
        if weights is not None:
            return self._weighted(values, np.asarray(weights, dtype=np.float64).ravel()[finite])
        kept = values
        for _ in range(self.nclip):
            centre = _rough_median(kept)
            std = float(kept.std())
            if not std > 0:
                break
            keep = (kept >= centre - self.lsigma * std) & (kept <= centre + self.usigma * std)
            if keep.all():
                break
            kept = kept[keep]
            if kept.size == 0:
                return math.nan, 0, math.nan
        std = float(kept.std())
        if self.skystat == "mean":
            value = float(kept.mean())
        elif self.skystat in ("median", "midpt"):
            value = float(np.median(kept))
        else:
            value = _rough_median(kept)
            width = MODE_KERNEL_SIGMA * _rough_sigma(kept, value)
            if width > 0:
                value = _kernel_mode(kept, width, value, tol=1e-4 * width)
        return value, int(kept.size), std

    def _weighted(self, values: np.ndarray, weights: np.ndarray) -> tuple[float, int, float]:
        """Weighted form: clipping as unweighted, then a weighted statistic.

        Returns the statistic, the effective number of values
        ``(sum w)^2 / sum w^2`` and the weighted standard deviation.
        """
        kept = np.ones(values.size, dtype=bool)
        for _ in range(self.nclip):
            # Clipping needs its centre to a fraction of sigma only.
            centre = _rough_median(values[kept])
            std = float(values[kept].std())
            if not std > 0:
                break
            keep = (values >= centre - self.lsigma * std) & (values <= centre + self.usigma * std)
            if np.array_equal(keep, kept):
                break
            kept = keep
            if not kept.any():
                return math.nan, 0, math.nan
        v, w = values[kept], weights[kept]
        if not w.sum() > 0:
            return math.nan, 0, math.nan
        mean = float(np.sum(w * v) / w.sum())
        if self.skystat == "mean":
            value = mean
        elif self.skystat in ("median", "midpt"):
            order = np.argsort(v)
            cum = np.cumsum(w[order])
            value = float(v[order][np.searchsorted(cum, 0.5 * cum[-1])])
        else:
            start = _rough_median(v)
            width = MODE_KERNEL_SIGMA * _rough_sigma(v, start)
            value = start
            if width > 0:
                value = _kernel_mode(v, width, start, tol=1e-4 * width, weights=w)
        std = float(np.sqrt(np.sum(w * (v - mean) ** 2) / w.sum()))
        n_eff = float(w.sum() ** 2 / np.sum(w**2))
        return value, max(round(n_eff), 1), std


@dataclass
class PairMeasurement:
    """Background difference ``image_i - image_j`` measured in their overlap.

    ``coeffs`` holds the level (and for planes the x and y slopes, per
    ``plane_scale`` grid pixels, around the grid centre); ``sigma`` their
    1-sigma uncertainties.
    """

    i: int
    j: int
    coeffs: np.ndarray
    sigma: np.ndarray
    npix: int  # pixels used after clipping
    noverlap: int  # valid pixels in the overlap
    extent: tuple[int, int]  # (width, height) of the valid overlap, grid pixels
    scatter: float  # clipped standard deviation of the differences
    flags: list[str] = field(default_factory=list)
    covariance: np.ndarray | None = None  # (ncoef, ncoef); diag(sigma**2) when not known better

    @property
    def level(self) -> float:
        """The constant term of the difference."""
        return float(self.coeffs[0])


def difference_in_overlap(img_a, wht_a, img_b, wht_b, min_weight_fraction: float = 0.0):
    """Per-pixel difference of two same-shape cut-outs where both have data.

    Pixels whose drizzle weight is below ``min_weight_fraction`` of the image's
    typical (median) weight are dropped too: such pixels sit at the edge of
    the data where only a sliver of an input pixel contributed.

    Returns
    -------
    diff : numpy.ndarray
        ``img_a - img_b`` (float32), meaningful where ``valid``.
    valid : numpy.ndarray of bool

    """
    valid = (wht_a > 0) & (wht_b > 0)
    if min_weight_fraction > 0 and valid.any():
        valid &= wht_a >= min_weight_fraction * np.median(wht_a[valid])
        valid &= wht_b >= min_weight_fraction * np.median(wht_b[valid])
    diff = np.subtract(img_a, img_b, dtype=np.float32)
    valid &= np.isfinite(diff)
    return diff, valid


def structure_weights(img_a: np.ndarray, img_b: np.ndarray, valid: np.ndarray, noise: float) -> np.ndarray:
    """Relative weights that discount pixels where resampling errors are large.

    Two images resampled from different pixel phases differ where the sky
    curves: drizzling with a square kernel at the native scale interpolates
    bilinearly, with an error of about 1/8 of the second derivative (per
    pixel squared).  Over bright, sharp structure that error is coherent over
    many pixels and outweighs the noise, which matters for plane fits (least
    squares) far more than for medians.  Different phases also act like
    shifts of a fraction of a pixel, with errors that follow the gradient.
    Each pixel is weighted by
    ``noise**2 / (noise**2 + (|laplacian| / 8)**2 + (0.1 |gradient|)**2)``.

    Parameters
    ----------
    img_a, img_b : numpy.ndarray
        The two images (cut-outs of the overlap).
    valid : numpy.ndarray of bool
        Pixels valid in both.
    noise : float
        Noise of the difference image (robust standard deviation).
    """
    from scipy import ndimage

    # float32 throughout: weights need no more, and these full-overlap
    # temporaries are a large part of a pair's cost (half the time of float64).
    mean = np.add(img_a, img_b, dtype=np.float32)
    mean *= 0.5
    mean[~valid] = _rough_median(mean[valid]) if valid.any() else 0.0
    smooth = ndimage.gaussian_filter(mean, 0.7)
    curvature = ndimage.laplace(smooth)
    curvature /= 8.0
    # Different pixel phases also act like small shifts (~0.1 pixel) of sharp
    # features, whose error follows the gradient.
    gy, gx = np.gradient(smooth)
    shift_error = np.hypot(gx, gy)
    shift_error *= 0.1
    if not noise > 0:
        return np.ones(mean.shape)
    variance = np.float32(noise**2)
    return variance / (variance + curvature * curvature + shift_error * shift_error)


def fit_plane(
    values: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    statistic: DifferenceStatistic,
    huber_c: float = 1.345,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Sigma-clipped, Huber-weighted least-squares plane ``c0 + c1 * x + c2 * y``.

    The clipping limits and iteration count are those of ``statistic``.  The
    iteration starts from a median/MAD cut so that bright residuals (unmatched
    sources, cosmic rays) cannot tilt the first fit.

    Parameters
    ----------
    values, x, y : numpy.ndarray
        Data and coordinates of the pixels.
    statistic : DifferenceStatistic
        Clipping settings.
    huber_c : float
        Huber threshold in robust standard deviations.
    weights : numpy.ndarray, optional
        Relative prior weights of the pixels (e.g. from
        :func:`structure_weights`).

    Returns
    -------
    coeffs : numpy.ndarray, shape (3,)
    cov : numpy.ndarray, shape (3, 3)
        Covariance for independent pixels (scale it for correlated noise).
    n_used : int
    std : float
        Standard deviation of the kept residuals.

    """
    from astropy.stats import mad_std

    values = np.asarray(values, dtype=np.float64)
    med = np.median(values)
    mad = mad_std(values)
    keep = np.abs(values - med) <= 5.0 * mad if mad > 0 else np.ones(values.size, bool)
    design = np.column_stack([np.ones_like(values), x, y])
    coeffs = np.array([med, 0.0, 0.0])
    for _ in range(max(statistic.nclip, 0) + 1):
        if keep.sum() < 3:
            break
        coeffs, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
        resid = values - design @ coeffs
        std = resid[keep].std()
        new_keep = (resid >= -statistic.lsigma * std) & (resid <= statistic.usigma * std)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    n_used = int(keep.sum())
    if n_used < 3:
        return coeffs, np.full((3, 3), np.inf), n_used, math.nan
    # Huber re-weighting of the kept pixels: residuals of imperfectly
    # cancelled structure (sharp sources and filaments resampled at different
    # pixel phases) are heavy-tailed, and least squares would follow them.
    a, v = design[keep], values[keep]
    prior = np.ones(v.size) if weights is None else np.asarray(weights, dtype=np.float64)[keep]
    resid = v - a @ coeffs
    scale = mad_std(resid)
    w = prior
    if scale > 0:
        for _ in range(10):
            # Huber weights on residuals scaled by each pixel's prior noise.
            u = np.abs(resid) * np.sqrt(prior) / (huber_c * scale)
            w = prior * np.where(u <= 1.0, 1.0, 1.0 / np.maximum(u, 1e-12))
            new, *_ = np.linalg.lstsq(a * np.sqrt(w)[:, None], v * np.sqrt(w), rcond=None)
            converged = np.allclose(new, coeffs, rtol=0, atol=1e-6 * scale)
            coeffs = new
            resid = v - a @ coeffs
            if converged:
                break
    # Weighted residual variance (per unit weight) and the sandwich-free GLS
    # covariance for those weights.
    std = float(np.sqrt(np.sum(w * resid**2) / max(v.size - 3, 1)))
    aw = a * w[:, None]
    normal = aw.T @ a
    if not np.linalg.cond(normal) < 1e10:
        # Pixels on a line (a strip one pixel wide): no plane is determined.
        return coeffs, np.full((3, 3), np.inf), 0, math.nan
    cov = np.linalg.inv(normal) * std**2
    return coeffs, cov, n_used, std


def measure_difference(
    diff: np.ndarray,
    valid: np.ndarray,
    x0: int,
    y0: int,
    *,
    i: int,
    j: int,
    fit_type: str,
    statistic: DifferenceStatistic,
    noise_ratio: float = 1.0,
    center: tuple[float, float] = (0.0, 0.0),
    plane_scale: float = 1000.0,
    min_pixels: int = 25,
    weights: np.ndarray | None = None,
) -> PairMeasurement | None:
    """Measure the background difference from a difference cut-out.

    Parameters
    ----------
    diff, valid : numpy.ndarray
        Difference image and its valid-pixel mask (from
        :func:`difference_in_overlap`).
    x0, y0 : int
        Grid position of the cut-out's lower-left pixel.
    i, j : int
        Labels of the two images (recorded in the result).
    fit_type : {'level', 'level+slope'}
        Constant offset or plane.
    statistic : DifferenceStatistic
        Clipping and statistic.
    noise_ratio : float
        Ratio of true to apparent noise for averages of resampled pixels
        (:func:`~jwst_skymatch_plus.core.resample.drizzle_noise_ratio`): the
        uncertainty is scaled by it to account for correlated pixels.
    center : (float, float)
        Grid position the plane is expanded around.
    plane_scale : float
        Length (grid pixels) over which a slope coefficient is measured.
    min_pixels : int
        Fewer valid pixels than this give ``None``.
    weights : numpy.ndarray, optional
        Relative pixel weights for plane fits (see :func:`structure_weights`).

    Returns
    -------
    PairMeasurement or None

    """
    ncoef = n_coefficients(fit_type)
    noverlap = int(valid.sum())
    if noverlap < max(min_pixels, ncoef + 2):
        return None
    rows = np.flatnonzero(valid.any(axis=1))
    cols = np.flatnonzero(valid.any(axis=0))
    extent = (int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))
    values = diff[valid]
    if fit_type == "level":
        level, n_used, std = statistic(values, None if weights is None else weights[valid])
        if not np.isfinite(level) or n_used == 0:
            return None
        # Standard error of the statistic over n_used correlated pixels.
        sig = statistic.efficiency * std * noise_ratio / math.sqrt(n_used)
        coeffs = np.array([level])
        sigma = np.array([sig])
        cov = np.array([[sig**2]])
    else:
        yy, xx = np.nonzero(valid)
        xs = (xx + x0 - center[0]) / plane_scale
        ys = (yy + y0 - center[1]) / plane_scale
        coeffs, cov, n_used, std = fit_plane(
            values, xs, ys, statistic, weights=None if weights is None else weights[valid]
        )
        if n_used < 3 or not np.all(np.isfinite(coeffs)):
            return None
        cov = cov * noise_ratio**2
        sigma = np.sqrt(np.clip(np.diag(cov), 0, None))
    return PairMeasurement(
        i=i,
        j=j,
        coeffs=np.asarray(coeffs, dtype=float),
        sigma=np.asarray(sigma, dtype=float),
        npix=int(n_used),
        noverlap=noverlap,
        extent=extent,
        scatter=float(std),
        covariance=np.asarray(cov, dtype=float),
    )
