"""The common grid, boxes and resampling onto it."""

import numpy as np
import pytest

from jwst_skymatch_plus.core.grid import BBox, SkyGrid, footprint_of, native_pixel_scale, overlap_bbox
from jwst_skymatch_plus.core.resample import (
    Resampled,
    drizzle_noise_ratio,
    grid_pixmap,
    resample_to_grid,
    weighted_coadd,
)


def test_bbox_overlap_and_union():
    a, b = BBox(0, 10, 0, 5), BBox(5, 20, 3, 9)
    assert overlap_bbox(a, b) == BBox(5, 10, 3, 5)
    assert overlap_bbox(a, BBox(10, 12, 0, 5)).is_empty
    assert a.union(b) == BBox(0, 20, 0, 9)
    assert overlap_bbox(a, b).slices_in(b) == (slice(0, 2), slice(0, 5))


def test_grid_covers_exposures_at_native_scale(small_mosaic):
    models = small_mosaic.models
    grid = SkyGrid.for_exposures([m.meta.wcs for m in models], [m.data.shape for m in models])
    assert grid.pixel_scale * 3600 == pytest.approx(0.11, rel=1e-3)
    for m in models:
        fp = footprint_of(m.meta.wcs, m.data.shape)
        x, y = grid.world_to_pixel(fp[:, 0], fp[:, 1])
        assert x.min() >= 0 and y.min() >= 0
        assert x.max() <= grid.shape[1] - 1 and y.max() <= grid.shape[0] - 1
        box = grid.bbox_of(fp)
        # Aligned with the detector axes: the box is barely larger than the detector.
        assert box.shape[0] < m.data.shape[0] + 8 and box.shape[1] < m.data.shape[1] + 8


def test_coarser_grid(small_mosaic):
    m = small_mosaic.models[0]
    g1 = SkyGrid.for_exposures([m.meta.wcs], [m.data.shape], 1.0)
    g2 = SkyGrid.for_exposures([m.meta.wcs], [m.data.shape], 2.0)
    assert g2.pixel_scale == pytest.approx(2 * g1.pixel_scale)
    assert native_pixel_scale(m.meta.wcs, m.data.shape) == pytest.approx(g1.pixel_scale)


def test_sparse_pixmap_error_is_tiny():
    """The sparse-grid pixel map matches the exact one to < 0.01 pixel, with real distortion."""
    from jwst_skymatch_plus.simulate import simulate_mosaic

    sim = simulate_mosaic(
        "nircam_short",
        shape=(512, 512),
        tiles=(1, 1),
        dithers=1,
        detectors=["NRCA1"],
        distortion=True,
        n_sources=0,
        n_blobs=2,
        seed=1,
    )
    m = sim.models[0]
    grid = SkyGrid.for_exposures([m.meta.wcs], [m.data.shape])
    exact = grid_pixmap(m.meta.wcs, m.data.shape, grid, stepsize=1)
    sparse = grid_pixmap(m.meta.wcs, m.data.shape, grid, stepsize=16)
    assert np.nanmax(np.abs(exact - sparse)) < 0.01


def test_resampling_preserves_levels_and_masks(small_mosaic):
    m = small_mosaic.models[0]
    grid = SkyGrid.for_exposures([m.meta.wcs], [m.data.shape])
    box = grid.bbox_of(footprint_of(m.meta.wcs, m.data.shape))
    data = np.full(m.data.shape, 7.5, np.float32)
    good = np.ones(m.data.shape, bool)
    good[:, :40] = False
    data[:, :40] = 1e6  # masked junk must not leak
    r = resample_to_grid(data, good, m.meta.wcs, grid, box)
    assert r.image.shape == box.shape
    np.testing.assert_allclose(r.image[r.valid], 7.5, rtol=1e-5)
    # Roughly the good area survives (drizzle edges add or lose a pixel row).
    assert abs(r.valid.sum() - good.sum()) < 0.05 * good.sum()


def test_point_source_lands_where_the_wcs_says(small_mosaic):
    m = small_mosaic.models[0]
    grid = SkyGrid.for_exposures([m.meta.wcs], [m.data.shape])
    box = grid.bbox_of(footprint_of(m.meta.wcs, m.data.shape))
    data = np.zeros(m.data.shape, np.float32)
    yy, xx = np.mgrid[0:128, 0:128]
    x0, y0 = 70.3, 50.6
    data += np.exp(-0.5 * ((xx - x0) ** 2 + (yy - y0) ** 2) / 2.0**2).astype(np.float32)
    r = resample_to_grid(data, np.ones(data.shape, bool), m.meta.wcs, grid, box)
    ra, dec = m.meta.wcs(x0, y0)
    gx, gy = grid.world_to_pixel(ra, dec)
    ys, xs = np.mgrid[box.y0 : box.y1, box.x0 : box.x1]
    w = r.image * r.valid
    cx, cy = (w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()
    assert abs(cx - gx) < 0.05 and abs(cy - gy) < 0.05


def test_noise_ratio_formula():
    assert drizzle_noise_ratio(1.0, 1.0) == pytest.approx(1.5)
    assert drizzle_noise_ratio(0.5, 1.0) == pytest.approx(1.0 / (1 - 0.5 / 3))
    assert drizzle_noise_ratio(1.0, 2.0) < 1.5


def test_weighted_coadd_known_means():
    # Two constant images overlapping in columns 3-4; weights 1 and 3 there.
    a = Resampled(BBox(0, 5, 0, 2), np.full((2, 5), 2.0, np.float32), np.ones((2, 5), np.float32))
    b = Resampled(BBox(3, 8, 0, 2), np.full((2, 5), 6.0, np.float32), np.full((2, 5), 3.0, np.float32))
    b.weight[:, -1] = 0.0  # column 7 received nothing
    out = weighted_coadd([a, b])
    assert out.bbox == BBox(0, 8, 0, 2) and out.image.dtype == np.float32
    np.testing.assert_array_equal(out.image[0], [2, 2, 2, 5, 5, 6, 6, 0])
    np.testing.assert_array_equal(out.weight[0], [1, 1, 1, 4, 4, 3, 3, 0])
    # Levels removed first; a larger box, filled where nothing fell; any iterable.
    out = weighted_coadd(iter([a, b]), BBox(-1, 8, 0, 3), levels=[1.0, 2.0], fill=np.nan, dtype=np.float64)
    assert out.image.dtype == np.float64 and out.image.shape == (3, 9)
    np.testing.assert_array_equal(out.image[0], [np.nan, 1, 1, 1, 3.25, 3.25, 4, 4, np.nan])
    assert np.isnan(out.image[2]).all() and not out.valid[2].any()
    # Sums in float32 when asked (as a full-mosaic baseline would hold them).
    assert weighted_coadd([a, b], accumulate=np.float32).image[0, 3] == np.float32(5.0)
