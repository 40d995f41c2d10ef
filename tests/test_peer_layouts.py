"""The layouts where peers used to look better (``benchmarks/bench_peers.py``), against the truth.

Two of the benchmark's layouts measured something other than what the
methods got right:

- ``combined`` gives every visit a background plane.  The mean slope of those
  planes cannot be told from a slope of the sky, so every method finds the
  offsets at the detector centres only up to a constant and that plane; the
  constant-only error measured mostly the slope the simulation drew.
- ``sparse dithers``: the MIRI Lyot box has the same sky as the rest of the
  detector in the simulation.  Our steps leave it out (real data have a
  background of their own there), as the noise floor does; peers reading it
  had some 20 % more overlap.
"""

import numpy as np
import pytest
from conftest import PEER_BASE, PEER_COMBINED, copy_models, levels_of

from jwst_skymatch_plus import PixelSkyMatchStep
from jwst_skymatch_plus.simulate import (
    _gauge_basis,
    offset_noise_floor,
    offset_plane_free_error,
    offset_rms_error,
    simulate_mosaic,
)

# The benchmark's layouts (its seed 1).
BASE = PEER_BASE
COMBINED = PEER_COMBINED
SPARSE_DITHERS = dict(BASE, dither_size=1.05)


@pytest.fixture(scope="module")
def combined():
    return simulate_mosaic("miri", seed=1, **COMBINED)


def test_plane_free_error_removes_a_sky_plane_only(combined):
    sim = combined
    basis, _ = _gauge_basis(sim, "level", sky_plane=True)
    tilted = sim.truth.level + basis @ np.array([0.3, 0.05, -0.03])  # slopes per 100 arcsec
    # A sky plane across the mosaic is no error ...
    assert offset_plane_free_error(sim, tilted) < 1e-9
    # ... but to the constant-only measure it is.
    assert offset_rms_error(tilted, sim.truth.level) > 1e-3
    # Anything else still counts (NaN offsets are left out).
    noisy = sim.truth.level + np.random.default_rng(0).normal(0.0, 0.01, sim.truth.level.size)
    noisy[0] = np.nan
    assert 0.005 < offset_plane_free_error(sim, noisy) < 0.013
    # Removing three parameters instead of one can only lower the floor.
    assert offset_noise_floor(sim, sky_plane=True) < offset_noise_floor(sim)


def test_combined_layout_error_is_the_sky_plane_of_the_backgrounds(combined):
    sim = combined
    levels = levels_of(PixelSkyMatchStep.call(copy_models(sim)))
    raw = offset_rms_error(levels, sim.truth.level)
    free = offset_plane_free_error(sim, levels)
    # The mean slope of the four visits' planes (0.01 across a detector,
    # random) tilts every method's offsets by some 4 noise floors; what
    # matching can determine is at the floor of that measure.
    assert free < 1.5 * offset_noise_floor(sim, sky_plane=True)
    assert raw > 3 * free
    # The planes are the whole story: the same simulation without them (same
    # noise, sky and masks) is matched to the floor by the constant-only measure.
    flat = simulate_mosaic("miri", seed=1, **{**COMBINED, "gradient_sigma": 0.0})
    flat_levels = levels_of(PixelSkyMatchStep.call(copy_models(flat)))
    assert offset_rms_error(flat_levels, flat.truth.level) < 1.5 * offset_noise_floor(flat)


def test_sparse_dithers_lyot_box_is_the_peers_extra_overlap():
    sim = simulate_mosaic("miri", seed=1, **SPARSE_DITHERS)
    without, with_lyot = offset_noise_floor(sim), offset_noise_floor(sim, exclude_lyot=False)
    # The Lyot box holds a sixth of the information of these overlaps ...
    assert with_lyot < 0.9 * without
    # ... and our step is near the floor either way.  (The ratio of an error
    # to the floor over 16 exposures scatters by some 20 %; over six seeds
    # this layout gave 1.26 on average, Montage level-only 1.31, with the
    # Lyot box left out by both.)
    for exclude_lyot, floor in ((True, without), (False, with_lyot)):
        levels = levels_of(PixelSkyMatchStep.call(copy_models(sim), exclude_lyot=exclude_lyot))
        assert offset_rms_error(levels, sim.truth.level) < 2 * floor
