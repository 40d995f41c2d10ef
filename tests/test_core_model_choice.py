"""fit_type='auto' (core.model_choice): levels unless planes are needed, constrained and better."""

import math

import numpy as np
import pytest
from conftest import PEER_BASE, PEER_COMBINED, copy_models, levels_of, sources_of

from jwst_skymatch_plus import PixelSkyMatchStep
from jwst_skymatch_plus.core import model_choice
from jwst_skymatch_plus.core.matching import MatchConfig, match_exposures
from jwst_skymatch_plus.core.model_choice import (
    MAX_NOISE_RATIO,
    level_consistency,
    match_auto,
    noise_ratio,
)
from jwst_skymatch_plus.core.solve import solve_levels
from jwst_skymatch_plus.simulate import (
    offset_noise_floor,
    offset_plane_free_error,
    offset_rms_error,
    simulate_mosaic,
)

BASE = PEER_BASE
# bench_peers' 'combined' layout; seed 3 draws visit planes strong enough to bias levels.
COMBINED = PEER_COMBINED
# Tiles tied by strips a few pixels wide, with visit planes three times stronger.
THIN_STRIPS = dict(BASE, tiles=(3, 2), tile_overlap=0.03, gradient_sigma=0.03)


def _ring(n, rng, sigma, bias=None):
    """Pairs of a ring of ``n`` images with two chords, measured with Gaussian noise (and a bias per pair)."""
    truth = rng.normal(0.0, 1.0, n)
    i = np.r_[np.arange(n), 0, 1]
    j = np.r_[(np.arange(n) + 1) % n, n // 2, n // 2 + 1]
    delta = truth[i] - truth[j] + rng.normal(0.0, sigma, i.size)
    if bias is not None:
        delta += bias
    return solve_levels(n, i, j, delta, np.full(i.size, sigma), robust=False)


def test_level_consistency_is_a_calibrated_chi_square_test():
    rng = np.random.default_rng(5)
    # Right levels and right uncertainties: p is uniform, so about alpha of
    # the runs fall below alpha.
    ps = [level_consistency(_ring(12, rng, 0.01))[2] for _ in range(400)]
    chi2, dof, _ = level_consistency(_ring(12, rng, 0.01))
    assert dof == 14 - 11  # 14 pairs, 12 levels less the free constant
    assert 0.03 < np.mean(np.array(ps) < 0.1) < 0.17
    # Pairs that disagree by five times their noise (what unmodelled planes do).
    _, _, p = level_consistency(_ring(12, rng, 0.01, bias=rng.normal(0.0, 0.05, 14)))
    assert p < 1e-3
    assert chi2 > 0


def test_auto_keeps_levels_where_they_fit():
    sim = simulate_mosaic("miri", seed=1, **BASE, exposure_offset_sigma=0.1)
    sources = sources_of(sim)
    result, choice = match_auto(sources, [[k] for k in range(len(sources))])
    assert choice.fit_type == "level" and result.fit_type == "level"
    assert choice.level_p > 1e-3 and math.isnan(choice.noise_ratio)  # planes never measured
    assert result.coefficients.shape == (len(sources), 1)
    assert "levels fit the pairs" in choice.reason


def test_auto_fits_planes_where_visit_planes_bias_levels():
    # Before fit_type='auto' the default (levels) was 4.3 noise floors off
    # here, Montage's plane fit 1.9 and our level+slope 1.2.
    sim = simulate_mosaic("miri", seed=3, **COMBINED)
    floor = offset_noise_floor(sim, sky_plane=True)
    library = PixelSkyMatchStep.call(copy_models(sim))
    assert offset_plane_free_error(sim, levels_of(library)) < 1.5 * floor
    level_only = PixelSkyMatchStep.call(copy_models(sim), fit_type="level")
    assert offset_plane_free_error(sim, levels_of(level_only)) > 3 * floor
    with library:
        model = library.borrow(0)
        record = model.meta.instance["skymatch_plus"]["pixel_skymatch"]
        library.shelve(model, 0, modify=False)
    assert record["fit_type"] == "level+slope"
    assert "planes fit them significantly better" in record["fit_type_choice"]


def test_auto_refuses_planes_that_thin_overlaps_leave_loose():
    sim = simulate_mosaic("miri", seed=2, **THIN_STRIPS)
    sources = sources_of(sim)
    result, choice = match_auto(sources, [[k] for k in range(len(sources))])
    # The visit planes make levels misfit the pairs ...
    assert choice.level_p < 1e-3
    # ... but strips a few pixels wide hardly constrain planes.
    assert choice.noise_ratio > MAX_NOISE_RATIO
    assert choice.fit_type == "level" and result.fit_type == "level"
    assert "leave planes loose" in choice.reason
    # Here, with strong planes, refusing them costs little against the truth.
    auto = levels_of(PixelSkyMatchStep.call(copy_models(sim)))
    planes = levels_of(PixelSkyMatchStep.call(copy_models(sim), fit_type="level+slope", grid_scale=1.0))
    assert offset_plane_free_error(sim, auto) < 1.25 * offset_plane_free_error(sim, planes)


def test_noise_ratio_predicts_where_planes_lose_to_levels(monkeypatch):
    # Thin strips without planes of their own: planes add only noise, and
    # the geometry says how much before any truth is known.
    sim = simulate_mosaic("miri", seed=1, **{**THIN_STRIPS, "gradient_sigma": 0.0})
    sources = sources_of(sim)
    groups = [[k] for k in range(len(sources))]
    levels = match_exposures(sources, groups, MatchConfig(fit_type="level"))
    planes = match_exposures(sources, groups, MatchConfig(fit_type="level+slope"), grid=levels.grid)
    ratio = noise_ratio(planes, levels)
    assert ratio > 10 * MAX_NOISE_RATIO
    # Large mosaics estimate the traces from random probes: the same to a few per cent.
    monkeypatch.setattr(model_choice, "_EXACT_TRACE_UNITS", 0)
    assert noise_ratio(planes, levels) == pytest.approx(ratio, rel=0.15)
    by_levels = levels_of(PixelSkyMatchStep.call(copy_models(sim), fit_type="level"))
    by_planes = levels_of(PixelSkyMatchStep.call(copy_models(sim), fit_type="level+slope", grid_scale=1.0))
    floor = offset_noise_floor(sim)
    assert offset_rms_error(by_levels, sim.truth.level) < 1.5 * floor
    assert offset_rms_error(by_planes, sim.truth.level) > 3 * offset_rms_error(by_levels, sim.truth.level)
