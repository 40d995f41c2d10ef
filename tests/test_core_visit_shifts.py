"""Block registration and the joint shift solution of cross-correlation alignment, against known shifts."""

import math

import numpy as np
import pytest

from jwst_skymatch_plus.core.registration import masked_difference
from jwst_skymatch_plus.core.visit_shifts import ShiftSample, register_block, solve_unit_shifts

NOISE = 0.05


def emission(shape, dx=0.0, dy=0.0, seed=0):
    """Smooth blobby emission evaluated analytically at pixel centres moved by ``(dx, dy)``."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx].astype(float)
    image = np.zeros(shape)
    for _ in range(25):
        cx, cy = rng.uniform(-10, nx + 10), rng.uniform(-10, ny + 10)
        width = rng.uniform(4.0, 12.0)
        image += rng.uniform(0.5, 2.0) * np.exp(-((x - dx - cx) ** 2 + (y - dy - cy) ** 2) / (2 * width**2))
    return image


def test_masked_difference_minimum_at_integer_shift_despite_level_and_masks():
    rng = np.random.default_rng(1)
    a = emission((96, 96))
    b = emission((96, 96), dx=3, dy=-2) + 7.0  # a different background level
    va = rng.uniform(size=a.shape) > 0.1
    vb = rng.uniform(size=b.shape) > 0.1
    msd, n = masked_difference(a, va, b, vb, max_shift=5)
    iy, ix = np.unravel_index(np.nanargmin(msd), msd.shape)
    assert (ix - 5, iy - 5) == (3, -2)
    assert msd[iy, ix] < 1e-20 and n[iy, ix] > 0.7 * a.size


@pytest.mark.parametrize("coarse", ["difference", "phase"])
@pytest.mark.parametrize("shift", [(2.3, -1.6), (-0.5, 0.5), (0.0, 0.0)])
def test_register_block_recovers_shift_with_honest_errors(shift, coarse):
    """Over noise realisations the estimates scatter like their formal errors, around the truth."""
    shape = (128, 128)
    clean_a = emission(shape, seed=4)
    clean_b = emission(shape, *shift, seed=4) + 3.0
    valid = np.ones(shape, bool)
    got, sig = [], []
    for seed in range(8):
        rng = np.random.default_rng(100 + seed)
        a = clean_a + rng.normal(0, NOISE, shape)
        b = clean_b + rng.normal(0, NOISE, shape)
        hits = rng.choice(a.size, 20, replace=False)
        b.flat[hits] += 50 * NOISE  # unflagged cosmic rays
        r = register_block(a, valid, b, valid, max_shift=4, coarse=coarse)
        assert r is not None
        got.append((r.dx, r.dy))
        sig.append((r.sigma_x, r.sigma_y))
    got, sig = np.array(got), np.array(sig)
    err = got - np.array(shift)
    # No bias beyond the noise of the mean of 8 (4 sigma), and the formal
    # errors describe the scatter to within a factor of two.
    assert np.all(np.abs(err.mean(axis=0)) < 4 * sig.mean(axis=0) / math.sqrt(len(got)) + 1e-3)
    ratio = err.std(axis=0) / sig.mean(axis=0)
    assert np.all(ratio < 2.0), ratio
    assert np.all(np.abs(err) < 0.05)


def test_register_block_refuses_noise_only():
    rng = np.random.default_rng(5)
    shape = (128, 128)
    valid = np.ones(shape, bool)
    a, b = rng.normal(0, NOISE, shape), rng.normal(0, NOISE, shape)
    assert register_block(a, valid, b, valid, max_shift=4) is None


def test_solve_unit_shifts_recovers_shifts_and_drops_outlier():
    """Three units in a chain; relative shifts only (the solution has zero mean)."""
    rng = np.random.default_rng(2)
    truth = np.array([[0.0, 0.0], [0.4, -0.3], [-0.2, 0.5]])
    truth -= truth.mean(axis=0)
    centers = np.array([[50.0, 50.0], [150.0, 50.0], [100.0, 130.0]])
    samples = []
    for a, b in ((0, 1), (1, 2), (0, 2)):
        for k in range(6):
            sx = 0.01 * (1 + k % 3)
            d = truth[b] - truth[a] + rng.normal(0, sx, 2)
            samples.append(ShiftSample(a, b, 100.0 + k, 80.0, d[0], d[1], 0.9, 5000, sx, sx))
    samples.append(ShiftSample(0, 1, 90.0, 60.0, 3.0, 2.0, 0.9, 5000, 0.01, 0.01))  # wrong minimum
    sol = solve_unit_shifts(3, samples, centers, fit_rotation=False)
    assert not sol.used[-1] and sol.used[:-1].all()
    assert np.all(np.hypot(*(sol.shift - truth).T) < 4 * sol.uncertainty)
    assert np.all(sol.uncertainty < 0.02)


def test_dither_levels_recovered_from_overlaps():
    from jwst_skymatch_plus.core.grid import BBox
    from jwst_skymatch_plus.core.resample import Resampled
    from jwst_skymatch_plus.core.visit_shifts import dither_levels

    rng = np.random.default_rng(7)
    sky = emission((120, 160), seed=9)
    truth = np.array([0.0, 0.3, -0.2, 0.05])
    images = []
    for k, (x0, y0) in enumerate([(0, 0), (20, 10), (40, 0), (30, 20)]):
        box = BBox(x0, x0 + 100, y0, y0 + 90)
        cut = sky[y0 : y0 + 90, x0 : x0 + 100] + truth[k] + rng.normal(0, NOISE, (90, 100))
        images.append(Resampled(box, cut.astype(np.float32), np.ones((90, 100), np.float32)))
    got = dither_levels(images)
    expected = truth - truth.mean()
    # Each pair's median difference over ~5000 pixels: error ~ 1.25 * noise * sqrt(2 / 5000).
    assert np.allclose(got - got.mean(), expected, atol=5 * 1.25 * NOISE * math.sqrt(2 / 5000))


def test_register_block_with_gain_between_bands():
    """A reference in other units (gain 2.5, offset level): the fitted gain keeps the shift unbiased."""
    shape = (128, 128)
    shift = (1.4, -0.7)
    rng = np.random.default_rng(11)
    a = 2.5 * emission(shape, seed=4) + 10.0 + rng.normal(0, 2.5 * NOISE, shape)
    # Pre-scaled by a gain estimate 2 % off, as the reference's would be.
    a = a / 2.5 * 1.02
    b = emission(shape, *shift, seed=4) + rng.normal(0, NOISE, shape)
    valid = np.ones(shape, bool)
    r = register_block(a, valid, b, valid, max_shift=4, fit_gain=True)
    assert r is not None
    err = np.hypot(r.dx - shift[0], r.dy - shift[1])
    assert err < 4 * np.hypot(r.sigma_x, r.sigma_y) + 1e-3
