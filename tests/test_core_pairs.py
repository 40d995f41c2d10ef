"""Offsets and planes from difference images."""

import math

import numpy as np
import pytest

from jwst_skymatch_plus.core.pairs import (
    DifferenceStatistic,
    difference_in_overlap,
    fit_plane,
    measure_difference,
)


def _noise_image(rng, shape, offset, sigma, outliers=0.0):
    img = rng.normal(offset, sigma, shape).astype(np.float32)
    if outliers:
        n = int(outliers * img.size)
        idx = rng.choice(img.size, n, replace=False)
        img.flat[idx] += rng.uniform(50, 500, n) * sigma  # sources / cosmic rays
    return img


@pytest.mark.parametrize("skystat", ["median", "mean", "mode", "midpt"])
def test_level_recovered_with_outliers(skystat):
    rng = np.random.default_rng(1)
    sigma, offset = 0.2, 0.37
    diff = _noise_image(rng, (200, 200), offset, sigma, outliers=0.02)
    valid = np.ones(diff.shape, bool)
    stat = DifferenceStatistic(skystat)
    pair = measure_difference(diff, valid, 0, 0, i=0, j=1, fit_type="level", statistic=stat)
    # Histogram statistics (mode, midpt) are quantised at binwidth (0.1
    # sigma); median and mean are limited by the noise.
    tol = 5 * pair.sigma[0] + (0.1 * sigma if skystat in ("mode", "midpt") else 0.0)
    assert abs(pair.level - offset) < tol
    assert pair.npix < valid.sum()  # outliers clipped
    expected_sigma = stat.efficiency * sigma / math.sqrt(valid.sum())
    assert pair.sigma[0] == pytest.approx(expected_sigma, rel=0.1)


def test_uncertainty_calibrated_for_the_median():
    rng = np.random.default_rng(2)
    sigma = 1.0
    pulls = []
    stat = DifferenceStatistic("median")
    for _ in range(200):
        diff = rng.normal(0.0, sigma, (60, 60)).astype(np.float32)
        pair = measure_difference(
            diff, np.ones(diff.shape, bool), 0, 0, i=0, j=1, fit_type="level", statistic=stat
        )
        pulls.append(pair.level / pair.sigma[0])
    assert 0.8 < np.std(pulls) < 1.2


def test_plane_recovered_without_swapping_axes():
    rng = np.random.default_rng(3)
    ny, nx = 150, 300
    yy, xx = np.mgrid[0:ny, 0:nx]
    x0, y0 = 40, 70
    center, scale = (100.0, 50.0), 1000.0
    c = np.array([0.5, 0.8, -0.3])
    gx, gy = xx + x0, yy + y0
    plane = c[0] + c[1] * (gx - center[0]) / scale + c[2] * (gy - center[1]) / scale
    diff = (plane + rng.normal(0, 0.05, plane.shape)).astype(np.float32)
    diff[::37, ::11] += 100.0
    pair = measure_difference(
        diff,
        np.ones(diff.shape, bool),
        x0,
        y0,
        i=0,
        j=1,
        fit_type="level+slope",
        statistic=DifferenceStatistic(),
        center=center,
        plane_scale=scale,
    )
    assert np.all(np.abs(pair.coeffs - c) < 5 * pair.sigma)
    # A swapped fit would put the x slope (0.8) on y: the test above would fail.
    assert pair.extent == (nx, ny)


def test_fit_plane_clips_outliers():
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, 5000)
    y = rng.uniform(-1, 1, 5000)
    v = 1.0 + 2.0 * x - 3.0 * y + rng.normal(0, 0.01, x.size)
    v[:100] += 50
    coeffs, cov, n_used, _std = fit_plane(v, x, y, DifferenceStatistic())
    np.testing.assert_allclose(coeffs, [1, 2, -3], atol=5 * np.sqrt(np.diag(cov)).max() + 1e-4)
    assert n_used <= 4900


def test_difference_masks_invalid_pixels():
    a = np.array([[1.0, 2.0], [3.0, np.nan]], np.float32)
    b = np.array([[0.5, 1.0], [1.0, 1.0]], np.float32)
    wa = np.array([[1, 0], [1, 1]], np.float32)
    wb = np.array([[1, 1], [0, 1]], np.float32)
    diff, valid = difference_in_overlap(a, wa, b, wb)
    assert valid.tolist() == [[True, False], [False, False]]
    assert diff[0, 0] == pytest.approx(0.5)


def test_too_few_pixels_gives_none():
    diff = np.zeros((3, 3), np.float32)
    assert (
        measure_difference(
            diff,
            np.ones((3, 3), bool),
            0,
            0,
            i=0,
            j=1,
            fit_type="level",
            statistic=DifferenceStatistic(),
            min_pixels=25,
        )
        is None
    )


def test_statistic_validates_name():
    with pytest.raises(ValueError, match="skystat"):
        DifferenceStatistic("average")


def test_plane_on_a_one_pixel_strip_is_refused_not_a_crash():
    # Overlaps one pixel wide (thin mosaic strips) cannot determine a plane.
    from jwst_skymatch_plus.core.pairs import DifferenceStatistic, measure_difference

    diff = np.random.default_rng(1).normal(0.3, 0.1, (50, 40)).astype(np.float32)
    valid = np.zeros(diff.shape, bool)
    valid[10, :] = True  # one row
    pair = measure_difference(
        diff, valid, 0, 0, i=0, j=1, fit_type="level+slope", statistic=DifferenceStatistic(), min_pixels=1
    )
    assert pair is None
