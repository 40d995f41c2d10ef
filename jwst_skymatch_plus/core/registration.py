"""Shifts between two images on one grid, by masked correlation.

:func:`measure_shift` gives the sub-pixel shift behind pixel matching's
alignment check of overlapping units
(:mod:`jwst_skymatch_plus.core.matching`); :func:`masked_difference` and
:func:`fill_invalid` serve the block-wise search of the per-visit WCS
corrections (:mod:`jwst_skymatch_plus.core.visit_shifts`).

Overlaps of mosaic tiles are irregular (slivers, L shapes, holes where
exposures are masked), which defeats plain phase correlation of rectangular
cut-outs: edges and tapers correlate with themselves.  The shift is therefore
found by *masked* normalised cross-correlation (Padfield 2012, IEEE TIP 21,
2706), which only ever compares pixels valid in both images, computed with
FFTs over the allowed range of shifts, and refined to sub-pixel precision by
re-sampling the moving image onto the current estimate and fitting a
paraboloid to the correlation around the peak until the correction vanishes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ImageShift",
    "fill_invalid",
    "masked_correlation",
    "masked_difference",
    "measure_shift",
]


@dataclass(frozen=True)
class ImageShift:
    """Where the features of image ``b`` sit relative to image ``a``.

    ``dx``/``dy`` are in grid pixels along x (columns) and y (rows): a feature
    at ``(x, y)`` in ``a`` is at ``(x + dx, y + dy)`` in ``b``.

    Attributes
    ----------
    dx, dy : float
        The shift.
    correlation : float
        Normalised cross-correlation at the shift, over the pixels valid in
        both images, after high-pass filtering: near 1 for a clean
        measurement on structured images, near 0 when there is nothing to
        correlate (flat or noise-dominated overlaps).
    significance : float
        How far the correlation peak stands above the rest of the searched
        correlation surface, in robust standard deviations of that surface.
        Noise alone gives about 3 to 4 (the largest of a few hundred
        samples); a real peak gives far more.
    n_pixels : int
        Pixels valid in both images at zero shift (after trimming edges).
    """

    dx: float
    dy: float
    correlation: float
    significance: float
    n_pixels: int

    @property
    def length(self) -> float:
        """Length of the shift in pixels."""
        return math.hypot(self.dx, self.dy)

    @property
    def error(self) -> float:
        """``1 - correlation``: 0 for a perfect match, about 1 for none."""
        return 1.0 - self.correlation


def _highpass(image: np.ndarray, valid: np.ndarray, smooth: float, clip: float = 4.0) -> np.ndarray:
    """Image minus its local background (valid pixels only), clipped, zero elsewhere."""
    from astropy.stats import mad_std
    from scipy import ndimage

    img = np.where(valid, image, 0.0).astype(np.float64)
    if smooth > 0:
        # Normalised convolution: the local mean of valid pixels only, so that
        # holes and edges do not leak into the background.
        w = ndimage.gaussian_filter(valid.astype(np.float64), smooth)
        bg = ndimage.gaussian_filter(img, smooth)
        with np.errstate(invalid="ignore", divide="ignore"):
            bg = np.where(w > 1e-3, bg / w, 0.0)
        img = img - bg
    vals = img[valid]
    if vals.size:
        # Cap values at a few noise sigma.  Cosmic-ray hits, which the
        # pipeline only removes after sky matching, sit in one image and not
        # the other; uncapped, a handful of them aligning by chance with
        # sources outweighs everything else.  Capped, a source still counts
        # through its extent and numbers, a lone hit barely at all.
        med = np.median(vals)
        noise = mad_std(vals)
        if noise > 0:
            img = np.clip(img, med - clip * noise, med + clip * noise)
    img[~valid] = 0.0
    return img


def _fill_invalid(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Copy of ``image`` with invalid pixels replaced by their nearest valid value."""
    from scipy import ndimage

    if valid.all():
        return image.astype(np.float64)
    if not valid.any():
        return np.zeros(image.shape)
    idx = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return image[tuple(idx)].astype(np.float64)


def fill_invalid(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Copy of ``image`` (float64) with invalid pixels set to their nearest valid value.

    Lets an image with holes be interpolated (shifted, warped) without the
    holes bleeding into valid pixels.
    """
    return _fill_invalid(image, np.asarray(valid, bool))


def _masked_moments(
    a: np.ndarray, valid_a: np.ndarray, b: np.ndarray, valid_b: np.ndarray, max_shift: int
) -> dict[str, np.ndarray]:
    """Sums over the common valid pixels of ``a`` at ``p`` and ``b`` at ``p + u``, for every ``u``.

    Keys: ``n`` (pixel count), ``a``, ``b``, ``aa``, ``bb``, ``ab``; each an
    array of shape ``(2 * max_shift + 1,) * 2`` indexed ``[max_shift + uy,
    max_shift + ux]``.  FFT-based, so the cost does not grow with ``max_shift``.
    """
    from scipy import fft

    ma = valid_a.astype(np.float64)
    mb = valid_b.astype(np.float64)
    a = np.where(valid_a, a, 0.0)
    b = np.where(valid_b, b, 0.0)
    shape = (a.shape[0] + max_shift + 1, a.shape[1] + max_shift + 1)
    shape = tuple(fft.next_fast_len(s, real=True) for s in shape)
    iy = np.arange(-max_shift, max_shift + 1) % shape[0]
    ix = np.arange(-max_shift, max_shift + 1) % shape[1]

    def spectrum(x):
        return fft.rfft2(x, shape)

    def corr(fx, fy):
        # sum_p x[p] * y[p + u] for the allowed u.
        return fft.irfft2(np.conj(fx) * fy, shape)[np.ix_(iy, ix)]

    fa, fb, fma, fmb = spectrum(a), spectrum(b), spectrum(ma), spectrum(mb)
    return {
        "n": np.round(corr(fma, fmb)),
        "ab": corr(fa, fb),
        "a": corr(fa, fmb),
        "b": corr(fma, fb),
        "aa": corr(spectrum(a * a), fmb),
        "bb": corr(fma, spectrum(b * b)),
    }


def masked_correlation(
    a: np.ndarray, valid_a: np.ndarray, b: np.ndarray, valid_b: np.ndarray, max_shift: int
) -> tuple[np.ndarray, np.ndarray]:
    """Masked normalised cross-correlation for integer shifts up to ``max_shift``.

    Parameters
    ----------
    a, b : numpy.ndarray
        Same-shape images (values outside the masks are ignored).
    valid_a, valid_b : numpy.ndarray of bool
        Their valid pixels.
    max_shift : int
        Largest shift (pixels) along each axis.

    Returns
    -------
    ncc : numpy.ndarray, shape (2 * max_shift + 1, 2 * max_shift + 1)
        ``ncc[max_shift + dy, max_shift + dx]`` compares ``a`` at ``p`` with
        ``b`` at ``p + (dx, dy)``.
    overlap : numpy.ndarray
        Number of pixels valid in both at each shift.
    """
    s = _masked_moments(a, valid_a, b, valid_b, max_shift)
    n = s["n"]
    with np.errstate(invalid="ignore", divide="ignore"):
        num = s["ab"] - s["a"] * s["b"] / n
        den = np.sqrt(
            np.clip(s["aa"] - s["a"] ** 2 / n, 0, None) * np.clip(s["bb"] - s["b"] ** 2 / n, 0, None)
        )
        ncc = np.where((n > 0) & (den > 0), num / den, np.nan)
    return ncc, n


def masked_difference(
    a: np.ndarray, valid_a: np.ndarray, b: np.ndarray, valid_b: np.ndarray, max_shift: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean squared difference ``b(p + u) - a(p) - c`` for integer shifts up to ``max_shift``.

    ``c``, the mean difference at each shift, is removed: two exposures of
    the same sky differ by a background level.  Unlike the normalised
    correlation this is the likelihood of a shift under white noise, so it
    stays unbiased on smooth emission, where normalising by each shift's
    local variance favours whichever overlap happens to be most linear.

    Parameters
    ----------
    a, valid_a, b, valid_b, max_shift
        As for :func:`masked_correlation`.

    Returns
    -------
    msd : numpy.ndarray, shape (2 * max_shift + 1, 2 * max_shift + 1)
        Indexed as the correlation of :func:`masked_correlation`; NaN where
        no pixel is common.
    overlap : numpy.ndarray
        As for :func:`masked_correlation`.
    """
    # Centring keeps the sums of squares small: less cancellation.
    a = a - np.mean(a[valid_a]) if valid_a.any() else a
    b = b - np.mean(b[valid_b]) if valid_b.any() else b
    s = _masked_moments(a, valid_a, b, valid_b, max_shift)
    n = s["n"]
    with np.errstate(invalid="ignore", divide="ignore"):
        ssd = s["aa"] + s["bb"] - 2.0 * s["ab"] - (s["b"] - s["a"]) ** 2 / n
        msd = np.where(n > 0, np.clip(ssd, 0, None) / n, np.nan)
    return msd, n


def _central_crop(valid: np.ndarray, max_side: int) -> tuple[slice, slice]:
    """Slices of at most ``max_side`` pixels per axis centred on the valid region."""
    rows = np.flatnonzero(valid.any(axis=1))
    cols = np.flatnonzero(valid.any(axis=0))
    if rows.size == 0:
        return slice(0, 0), slice(0, 0)
    out = []
    for idx, n in ((rows, valid.shape[0]), (cols, valid.shape[1])):
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        if hi - lo > max_side:
            mid = (lo + hi) // 2
            lo = max(0, min(mid - max_side // 2, n - max_side))
            hi = lo + max_side
        out.append(slice(lo, hi))
    return out[0], out[1]


def _parabola_peak(c: np.ndarray) -> tuple[float, float]:
    """Offset of the maximum of a 3x3 patch from its centre (separable parabolas)."""
    dy = dx = 0.0
    den_x = c[1, 0] - 2 * c[1, 1] + c[1, 2]
    den_y = c[0, 1] - 2 * c[1, 1] + c[2, 1]
    if den_x < 0:
        dx = 0.5 * (c[1, 0] - c[1, 2]) / den_x
    if den_y < 0:
        dy = 0.5 * (c[0, 1] - c[2, 1]) / den_y
    return float(np.clip(dy, -1, 1)), float(np.clip(dx, -1, 1))


def measure_shift(
    image_a: np.ndarray,
    valid_a: np.ndarray,
    image_b: np.ndarray,
    valid_b: np.ndarray,
    *,
    max_shift: int = 8,
    smooth: float = 3.0,
    edge: int | None = None,
    min_pixels: int = 400,
    min_overlap: float = 0.5,
    clip: float = 4.0,
    iterations: int = 3,
    max_side: int | None = 512,
    upsample: int | None = None,
) -> ImageShift | None:
    """Measure the shift of ``image_b`` relative to ``image_a``.

    Parameters
    ----------
    image_a, image_b : numpy.ndarray
        Same-shape images on one grid (e.g. two groups' cut-outs of their
        overlap, or a visit and a reference mosaic).
    valid_a, valid_b : numpy.ndarray of bool
        Usable pixels of each image.
    max_shift : int
        Largest shift searched along each axis (pixels).
    smooth : float
        Sigma (pixels) of the local background removed before correlating,
        so that offsets and broad emission do not drive the correlation; 0
        disables it.
    edge : int, optional
        Pixels trimmed from the edges of each image's valid region, where
        drizzle weights taper and the background estimate is one-sided
        (default: ``max(2, 2 * smooth)``).
    min_pixels : int
        Fewer common valid pixels than this give ``None``.
    min_overlap : float
        Shifts at which fewer than this fraction of the zero-shift common
        pixels remain are not considered.
    clip : float
        Filtered values are capped at this many noise sigma.
    iterations : int
        Sub-pixel refinement passes.
    max_side : int, optional
        Larger images are cropped to this many pixels per side around the
        centre of their common valid region (the cost grows with the area).
        ``None`` uses everything.
    upsample : int, optional
        Ignored; accepted for compatibility with earlier callers.

    Returns
    -------
    ImageShift or None
        ``None`` when there are too few common pixels.
    """
    from astropy.stats import mad_std
    from scipy import ndimage

    del upsample
    if image_a.shape != image_b.shape:
        raise ValueError(f"images differ in shape: {image_a.shape} vs {image_b.shape}")
    va = np.asarray(valid_a, bool) & np.isfinite(image_a)
    vb = np.asarray(valid_b, bool) & np.isfinite(image_b)
    if max_side is not None and max(image_a.shape) > max_side:
        crop = _central_crop(va & vb, max_side)
        image_a, image_b, va, vb = image_a[crop], image_b[crop], va[crop], vb[crop]
        valid_b = vb
    a = _highpass(image_a, va, smooth, clip)
    b = _highpass(image_b, vb, smooth, clip)
    trim = max(2, math.ceil(2 * smooth)) if edge is None else edge
    if trim > 0:
        # Square erosion in one separable pass (cheaper than repeated
        # binary erosion on large images).
        size = 2 * trim + 1
        va = ndimage.minimum_filter(va.view(np.uint8), size=size, mode="constant", cval=0).astype(bool)
        vb = ndimage.minimum_filter(vb.view(np.uint8), size=size, mode="constant", cval=0).astype(bool)
    n0 = int((va & vb).sum())
    if n0 < min_pixels:
        return None
    ncc, n = masked_correlation(a, va, b, vb, max_shift)
    ncc[n < min_overlap * n0] = np.nan
    if not np.isfinite(ncc).any():
        return None
    # Chance correlations scale as 1/sqrt(overlap): compare shifts on that
    # footing, or the small overlaps of large shifts win by noise alone.
    z = ncc * np.sqrt(n)
    iy, ix = np.unravel_index(np.nanargmax(z), z.shape)
    dy, dx = float(iy - max_shift), float(ix - max_shift)
    peak = float(ncc[iy, ix])
    rest = z.copy()
    rest[max(iy - 2, 0) : iy + 3, max(ix - 2, 0) : ix + 3] = np.nan
    rest = rest[np.isfinite(rest)]
    if rest.size >= 8:
        spread = mad_std(rest)
        significance = float((z[iy, ix] - np.median(rest)) / spread) if spread > 0 else math.inf
    else:
        significance = 0.0
    patch = ncc[iy - 1 : iy + 2, ix - 1 : ix + 2]
    if patch.shape == (3, 3) and np.isfinite(patch).all():
        ddy, ddx = _parabola_peak(patch)
        dy, dx = dy + ddy, dx + ddx
    # Refine: resample the raw image b onto the current estimate and measure
    # what is left, which removes the bias of interpolating a peak sampled at
    # whole pixels.  The raw image is shifted (not the filtered, capped one,
    # whose plateaus would ring), with its holes filled smoothly first.
    b_filled = _fill_invalid(image_b, np.asarray(valid_b, bool) & np.isfinite(image_b))
    for _ in range(max(iterations, 0)):
        b_back = ndimage.shift(b_filled, (-dy, -dx), order=3, mode="nearest")
        vb_back = ndimage.shift(vb.astype(np.float64), (-dy, -dx), order=1, mode="constant", cval=0.0) > 0.999
        local, _ = masked_correlation(a, va, _highpass(b_back, vb_back, smooth, clip), vb_back, 1)
        if not np.isfinite(local).all():
            break
        ddy, ddx = _parabola_peak(local)
        dy, dx = dy + ddy, dx + ddx
        peak = float(local[1, 1])
        if abs(ddy) < 1e-3 and abs(ddx) < 1e-3:
            break
    return ImageShift(dx=dx, dy=dy, correlation=peak, significance=significance, n_pixels=n0)
