"""Masks of compact sources, to keep them out of difference statistics.

Differences of aligned images cancel sources, but slightly different PSFs,
sub-pixel misalignment or variability leave residuals around bright sources;
sigma clipping removes most of them and this mask removes the rest.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["source_mask"]


def source_mask(
    image: np.ndarray,
    valid: np.ndarray,
    nsigma: float = 3.0,
    npixels: int = 5,
    dilate: int = 7,
    background_box: int = 32,
) -> np.ndarray:
    """Pixels belonging to compact sources (dilated), as a boolean array.

    Sources are connected groups of at least ``npixels`` pixels above
    ``nsigma`` times the noise over a local background.  The background is
    a median over ``background_box``-pixel blocks, so extended emission on
    larger scales is *not* masked: it cancels in differences and is exactly
    what pixel matching exploits.

    Parameters
    ----------
    image : numpy.ndarray
        Image on the common grid.
    valid : numpy.ndarray of bool
        Usable pixels.
    nsigma : float
        Detection threshold in standard deviations.
    npixels : int
        Minimum connected pixels of a source.
    dilate : int
        Size of the square structuring element used to grow the mask.
    background_box : int
        Block size of the local background estimate.
    """
    from astropy.stats import mad_std
    from photutils.segmentation import detect_sources
    from scipy import ndimage

    if not valid.any():
        return np.zeros(image.shape, dtype=bool)
    data = np.where(valid, image, np.nan).astype(np.float64)
    ny, nx = data.shape
    b = max(4, min(background_box, ny, nx))
    # Block medians, then nearest-block upsampling: a cheap local background
    # that ignores compact sources.
    py, px = (-ny) % b, (-nx) % b
    padded = np.pad(data, ((0, py), (0, px)), constant_values=np.nan)
    blocks = padded.reshape(padded.shape[0] // b, b, padded.shape[1] // b, b)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks outside the data
        bkg = np.nanmedian(blocks, axis=(1, 3))
    bkg = np.where(np.isfinite(bkg), bkg, np.nanmedian(data))
    bkg_full = np.repeat(np.repeat(bkg, b, axis=0), b, axis=1)[:ny, :nx]
    resid = data - bkg_full
    finite = np.isfinite(resid)
    if finite.sum() < npixels:
        return np.zeros(image.shape, dtype=bool)
    noise = mad_std(resid[finite])
    if not noise > 0:
        noise = np.std(resid[finite])
    if not noise > 0:
        return np.zeros(image.shape, dtype=bool)
    with warnings.catch_warnings():
        # "no sources found" is an answer here, not a problem.
        warnings.simplefilter("ignore")
        seg = detect_sources(np.where(finite, resid, 0.0), nsigma * noise, npixels=npixels)
    if seg is None:
        return np.zeros(image.shape, dtype=bool)
    mask = seg.data > 0
    if dilate > 1:
        mask = ndimage.binary_dilation(mask, structure=np.ones((dilate, dilate), bool))
    return mask
