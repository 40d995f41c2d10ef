"""Resample one exposure onto the common grid, only inside a box.

The drizzle engine jwst uses by default does the resampling; the pixel map
(detector pixel -> grid pixel) is evaluated on a sparse grid and interpolated
(``stcal.resample.utils.calc_pixmap`` with ``stepsize``), because evaluating a
distorted gwcs at every pixel dominates the cost of resampling.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .grid import BBox, SkyGrid

__all__ = ["Resampled", "drizzle_noise_ratio", "grid_pixmap", "resample_to_grid", "weighted_coadd"]


@dataclass
class Resampled:
    """An image on the common grid restricted to ``bbox``.

    ``weight`` is zero where no valid input pixel contributed.
    """

    bbox: BBox
    image: np.ndarray  # float32, shape bbox.shape
    weight: np.ndarray  # float32, shape bbox.shape

    @property
    def valid(self) -> np.ndarray:
        """Pixels that received data."""
        return self.weight > 0

    def cutout(self, box: BBox) -> tuple[np.ndarray, np.ndarray]:
        """Image and weight inside ``box`` (which must lie inside ``self.bbox``)."""
        sl = box.slices_in(self.bbox)
        return self.image[sl], self.weight[sl]


def grid_pixmap(wcs, shape: tuple[int, int], grid: SkyGrid, stepsize: int = 16) -> np.ndarray:
    """Grid pixel coordinates of every detector pixel centre.

    Parameters
    ----------
    wcs : gwcs.WCS
        Detector-to-sky transform of the exposure.
    shape : tuple of int
        Detector array shape ``(ny, nx)``.
    grid : SkyGrid
        The common grid.
    stepsize : int
        Evaluate the WCS every ``stepsize`` pixels and interpolate between
        (1 evaluates every pixel).

    Returns
    -------
    numpy.ndarray
        Array of shape ``(ny, nx, 2)`` holding grid ``x`` and ``y``.

    """
    from stcal.resample.utils import calc_pixmap

    return calc_pixmap(wcs, grid.wcs, shape=shape, stepsize=stepsize, order=3 if stepsize > 1 else 1)


def drizzle_noise_ratio(pixfrac: float, scale_ratio: float) -> float:
    """Ratio of true to apparent noise of drizzled, averaged pixels.

    Drizzling spreads each input pixel over neighbouring output pixels, so the
    per-pixel scatter of a resampled image under-states the noise of an
    average over many pixels.  Fruchter & Hook (2002, PASP 114, 144), eq. 6:
    with ``r = pixfrac / s`` (``s`` the output-to-input pixel size ratio),
    ``R = r / (1 - 1 / (3 r))`` for ``r >= 1`` and ``R = 1 / (1 - r / 3)``
    otherwise.

    Parameters
    ----------
    pixfrac : float
        Drizzle pixel fraction.
    scale_ratio : float
        Output pixel size over input pixel size.

    """
    r = pixfrac / scale_ratio
    if r >= 1.0:
        return r / (1.0 - 1.0 / (3.0 * r))
    return 1.0 / (1.0 - r / 3.0)


def resample_to_grid(
    data: np.ndarray,
    good: np.ndarray,
    wcs,
    grid: SkyGrid,
    bbox: BBox,
    *,
    kernel: str = "square",
    pixfrac: float = 1.0,
    weight: np.ndarray | None = None,
    pixmap: np.ndarray | None = None,
    pixmap_stepsize: int = 16,
) -> Resampled:
    """Drizzle one exposure onto ``grid`` inside ``bbox``.

    Parameters
    ----------
    data : numpy.ndarray
        Exposure data (surface brightness; no flux rescaling is applied).
    good : numpy.ndarray of bool
        Pixels to use; NaNs in ``data`` are dropped as well.
    wcs : gwcs.WCS
        Detector-to-sky transform.
    grid : SkyGrid
        Common grid.
    bbox : BBox
        Part of the grid to produce (normally the exposure's or group's box).
    kernel : str
        Drizzle kernel ('square', 'point', 'turbo', 'gaussian', 'lanczos2',
        'lanczos3').
    pixfrac : float
        Drizzle pixel fraction.
    weight : numpy.ndarray, optional
        Per-pixel weights (e.g. inverse variance); default 1 for good pixels.
    pixmap : numpy.ndarray, optional
        Precomputed output of :func:`grid_pixmap`.
    pixmap_stepsize : int
        Sparse-evaluation step when ``pixmap`` is not given.

    Returns
    -------
    Resampled

    """
    from drizzle.resample import Drizzle

    if bbox.is_empty:
        return Resampled(bbox, np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32))
    ok = np.asarray(good, dtype=bool) & np.isfinite(data)
    if pixmap is None:
        pixmap = grid_pixmap(wcs, data.shape, grid, stepsize=pixmap_stepsize)
    else:
        pixmap = pixmap.copy()  # the caller's map stays in grid coordinates
    pixmap[..., 0] -= bbox.x0
    pixmap[..., 1] -= bbox.y0
    w = ok.astype(np.float32) if weight is None else np.where(ok, weight, 0.0).astype(np.float32)
    clean = np.where(ok, data, 0.0).astype(np.float32)
    driz = Drizzle(kernel=kernel, out_shape=bbox.shape, fillval=0.0, disable_ctx=True)
    driz.add_image(clean, exptime=1.0, pixmap=pixmap, weight_map=w, pixfrac=pixfrac, in_units="cps")
    return Resampled(bbox, driz.out_img, driz.out_wht)


def weighted_coadd(
    images: Iterable[Resampled],
    box: BBox | None = None,
    *,
    levels: Sequence[float] | None = None,
    fill: float = 0.0,
    dtype: type = np.float32,
    accumulate: type = np.float64,
) -> Resampled:
    """Weighted mean of images on the grid, pixel by pixel.

    Parameters
    ----------
    images : iterable of Resampled
        The images, each inside ``box``; read once, in order (a generator
        keeps one image in memory at a time).
    box : BBox, optional
        Box of the result; by default the union of the images' boxes.
    levels : sequence of float, optional
        A level subtracted from each image first.
    fill : float
        Value where no image has weight.
    dtype : numpy dtype
        Of the returned image and weight.
    accumulate : numpy dtype
        Of the weighted sums (and of the images before weighting).

    Returns
    -------
    Resampled
        ``sum(w * (image - level)) / sum(w)`` on ``box``, and ``sum(w)``.
    """
    if box is None:
        images = list(images)
        box = images[0].bbox
        for im in images[1:]:
            box = box.union(im.bbox)
    acc = np.zeros(box.shape, accumulate)
    wsum = np.zeros(box.shape, accumulate)
    for k, im in enumerate(images):
        sl = im.bbox.slices_in(box)
        values = im.image.astype(accumulate, copy=False)
        if levels is not None:
            values = values - levels[k]
        acc[sl] += im.weight * values
        wsum[sl] += im.weight
    with np.errstate(invalid="ignore", divide="ignore"):
        image = np.where(wsum > 0, acc / wsum, fill).astype(dtype, copy=False)
    return Resampled(box, image, wsum.astype(dtype, copy=False))
