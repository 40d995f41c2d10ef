"""Compact-source masks (core.masking) against images whose sources are known."""

import numpy as np
import pytest

from jwst_skymatch_plus.core.masking import source_mask

SHAPE = (200, 200)
NOISE = 1.0
PSF_SIGMA = 1.5


def _scene(seed=0, n_sources=12, amplitude=30.0, emission=3.0):
    """Noise, a tilted sky, smooth extended emission (40-pixel scale) and point sources."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]].astype(float)
    image = 5.0 + 0.01 * xx - 0.005 * yy + rng.normal(0.0, NOISE, SHAPE)
    image += emission * np.exp(-((xx - 120) ** 2 + (yy - 80) ** 2) / (2 * 40.0**2))
    # Sources on a jittered grid: apart from each other and from the edges.
    centres = [
        (x + rng.uniform(-6, 6), y + rng.uniform(-6, 6)) for y in (30, 80, 130, 175) for x in (30, 100, 170)
    ][:n_sources]
    for x, y in centres:
        image += amplitude * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * PSF_SIGMA**2))
    return image, centres


def _distance_to_sources(centres):
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]].astype(float)
    return np.min([np.hypot(xx - x, yy - y) for x, y in centres], axis=0)


def test_every_source_is_masked_and_little_else():
    image, centres = _scene()
    valid = np.ones(SHAPE, bool)
    mask = source_mask(image, valid)
    for x, y in centres:
        assert mask[round(y), round(x)], (x, y)
    # Far from the sources (their 4-sigma radius plus the 7-pixel growth) lie
    # noise, the sky's tilt and smooth emission: none of it is a source.
    far = _distance_to_sources(centres) > 4 * PSF_SIGMA + 7
    assert mask[far].mean() < 0.002
    # The growth covers at least the 7 x 7 element around every source.
    assert mask.sum() >= len(centres) * 49


@pytest.mark.xfail(
    strict=True,
    reason="source_mask's local background is the nearest 32-pixel block's median (not interpolated): "
    "on smooth emission much brighter than the noise its steps between blocks exceed 3 sigma and "
    "the emission is masked (7.6% of the far pixels at 30 sigma, 40-pixel scale), against the "
    "docstring's 'extended emission on larger scales is not masked'",
)
def test_bright_smooth_emission_is_not_masked():
    # Emission on a scale larger than the 32-pixel background box, 30x the noise.
    image, centres = _scene(seed=5, emission=30.0 * NOISE)
    mask = source_mask(image, np.ones(SHAPE, bool))
    far = _distance_to_sources(centres) > 4 * PSF_SIGMA + 7
    assert mask[far].mean() < 0.002


def test_growth_follows_dilate():
    image, centres = _scene(seed=1)
    valid = np.ones(SHAPE, bool)
    tight = source_mask(image, valid, dilate=1)
    grown = source_mask(image, valid, dilate=9)
    assert np.all(grown[tight])
    assert grown.sum() > 2 * tight.sum()
    # Undilated, the mask stays within the sources' own wings.
    assert tight[_distance_to_sources(centres) > 4 * PSF_SIGMA].sum() == 0


def test_sources_below_the_threshold_are_not_masked():
    # Peak at 2 sigma: below nsigma=3 everywhere.
    image, _ = _scene(seed=2, amplitude=2.0 * NOISE)
    assert source_mask(image, np.ones(SHAPE, bool)).mean() < 0.002


def test_invalid_pixels_take_no_part():
    image, centres = _scene(seed=3)
    valid = np.ones(SHAPE, bool)
    valid[:, :60] = False  # the first column of sources falls here
    image[~valid] = 1e6  # junk where not valid must not look like a source
    mask = source_mask(image, valid)
    for x, y in centres:
        assert mask[round(y), round(x)] == (x >= 60 + 4 * PSF_SIGMA), (x, y)
    assert not mask[:, :50].any()


@pytest.mark.parametrize("case", ["nothing valid", "pure noise", "constant"])
def test_nothing_to_find(case):
    rng = np.random.default_rng(4)
    image = rng.normal(0.0, NOISE, SHAPE)
    valid = np.ones(SHAPE, bool)
    if case == "nothing valid":
        valid[:] = False
    if case == "constant":
        image[:] = 3.0
    mask = source_mask(image, valid)
    assert mask.shape == SHAPE and mask.dtype == bool
    assert mask.mean() < (0.001 if case == "pure noise" else 1e-12)
