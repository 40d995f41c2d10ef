"""The multi-stage driver (core.stages) on simulated mosaics with known offsets."""

import logging

import numpy as np
import pytest
from conftest import metas_of, nircam_module_mosaic, sources_of

from jwst_skymatch_plus.core.matching import MatchConfig
from jwst_skymatch_plus.core.planes import DetectorPlane
from jwst_skymatch_plus.core.regions import miri_lyot_region
from jwst_skymatch_plus.core.stages import (
    Correction,
    StageOutcome,
    check_solution,
    corrected_source,
    run_stages,
)
from jwst_skymatch_plus.simulate import offset_noise_floor, offset_rms_error, simulate_mosaic

#: What the final check says when the solution disagrees with an overlap.
INCONSISTENT = "after level matching"


@pytest.fixture(scope="module")
def mosaic():
    """MIRI, 2 x 2 tiles x 3 dithers, drifts inside visits and a Lyot offset per exposure."""
    drifts = dict(exposure_offset_sigma=0.05, lyot_offset_sigma=0.3)
    return simulate_mosaic("miri", shape=(160, 160), tiles=(2, 2), dithers=3, seed=7, **drifts)


def _run(sim, stages, **kwargs):
    shape = sim.models[0].data.shape
    return run_stages(
        sources_of(sim, exclude_lyot=False),
        metas_of(sim),
        stages,
        {},
        MatchConfig(),
        lyot_region=lambda k: miri_lyot_region(shape),
        **kwargs,
    )


def _levels(outcome) -> np.ndarray:
    return np.array([np.nan if c is None else c.plane.level for c in outcome.corrections])


@pytest.fixture(scope="module")
def dithers_and_tiles(mosaic):
    return _run(mosaic, ["tiles", "dithers"])  # run in STAGES order whatever the order asked


def test_dithers_then_tiles_reach_the_noise_floor(mosaic, dithers_and_tiles):
    dithers, tiles = dithers_and_tiles
    assert (dithers.stage, tiles.stage) == ("dithers", "tiles")
    assert not dithers.split and not tiles.skipped
    total = _levels(dithers) + _levels(tiles)
    assert np.isfinite(total).all()
    assert offset_rms_error(total, mosaic.truth.level) < 3 * offset_noise_floor(mosaic)


def test_dither_stage_finds_the_drifts_inside_each_tile(mosaic, dithers_and_tiles):
    dithers, _ = dithers_and_tiles
    levels = _levels(dithers)
    visit = mosaic.truth.visit
    # Zero mean per tile: the tile keeps its level for the tile stage.
    for v in np.unique(visit):
        assert abs(levels[visit == v].mean()) < 1e-9
    # What is left of the truth once each tile's mean is removed: the drifts.
    drift = mosaic.truth.level.copy()
    for v in np.unique(visit):
        drift[visit == v] -= drift[visit == v].mean()
    assert np.std(drift) > 5 * offset_noise_floor(mosaic)  # there was something to find
    assert offset_rms_error(levels, drift, labels=visit) < 3 * offset_noise_floor(mosaic)


@pytest.mark.parametrize("reference", ["3", ""])
def test_tile_stage_gauge(mosaic, reference):
    (tiles,) = _run(mosaic, ["tiles"], reference=reference)
    levels = _levels(tiles)
    visit = mosaic.truth.visit
    if reference:
        # The reference tile (all its exposures) is held at zero mean; the others are not.
        assert abs(levels[visit == 3].mean()) < 1e-9
        assert tiles.reference.startswith("tile 3")
        assert min(abs(levels[visit == v].mean()) for v in (1, 2, 4)) > 0.01
    else:
        assert tiles.reference is None
        assert levels.min() == 0.0  # match_down: the lowest sky at zero
    # Without the dither stage a tile is one unit: every exposure gets its tile's level,
    # the mean of its exposures' truth.
    for v in np.unique(visit):
        assert np.ptp(levels[visit == v]) == 0.0
    tile_truth = np.array([mosaic.truth.level[visit == v].mean() for v in visit])
    assert offset_rms_error(levels, tile_truth) < 3 * offset_noise_floor(mosaic)


def test_lyot_stage_moves_only_the_lyot_region(mosaic):
    (lyot,) = _run(mosaic, ["lyot"])
    shape = mosaic.models[0].data.shape
    region = miri_lyot_region(shape)
    assert all(c is not None and c.region == region for c in lyot.corrections)
    # Tied to main fields through the dithers' overlaps: each correction is
    # good to the noise over the region's pixels (twice: region and main field).
    npix = (region[0].stop - region[0].start) * (region[1].stop - region[1].start)
    sigma = np.mean(mosaic.truth.noise) * np.sqrt(2 / npix)
    assert mosaic.truth.lyot_offset.std() > 0.1  # the offsets were there to be found
    assert np.sqrt(np.mean((_levels(lyot) - mosaic.truth.lyot_offset) ** 2)) < 5 * sigma
    # Outside its region a Lyot correction is zero.
    values = lyot.corrections[0].evaluate(shape)
    outside = np.ones(shape, bool)
    outside[region] = False
    assert not values[outside].any() and values[region].any()


def test_stages_that_do_not_apply_are_skipped(mosaic):
    one_tile = simulate_mosaic("miri", shape=(96, 96), tiles=(1, 1), dithers=2, seed=3)
    dithers, nircam, tiles = _run(one_tile, ["dithers", "nircam_short", "tiles"])
    assert dithers.skipped is None
    assert nircam.skipped == "fewer than two NIRCam short-wavelength images"
    assert tiles.skipped == "a single mosaic tile"
    assert all(c is None for c in nircam.corrections + tiles.corrections)


def test_corrected_source_subtracts_every_correction(mosaic):
    source = sources_of(mosaic)[0]
    shape = source.shape
    plane = DetectorPlane(0.5, 0.01, -0.02, (shape[1] - 1) / 2, (shape[0] - 1) / 2)
    region = (slice(0, 40), slice(100, 160))
    corrections = [Correction("dithers", plane), Correction("lyot", plane, region)]
    data, good = source.load()[:2]
    corrected, good_after = corrected_source(source, corrections).load()[:2]
    expected = data - plane.evaluate(shape) - corrections[1].evaluate(shape)
    np.testing.assert_array_equal(corrected, expected)
    np.testing.assert_array_equal(good_after, good)
    assert corrected_source(source, []) is source


def test_stage_driver_rejects_unknown_stage():
    with pytest.raises(ValueError, match="unknown stage"):
        run_stages([], [], ["dithers", "background"], {}, None)


def test_check_names_the_exposure_whose_correction_is_wrong(caplog):
    sim = simulate_mosaic("miri", shape=(128, 128), tiles=(2, 2), dithers=2, seed=3)
    sources = sources_of(sim)
    ny, nx = sim.models[0].data.shape

    def outcome(levels):
        planes = [DetectorPlane(float(v), 0.0, 0.0, (nx - 1) / 2, (ny - 1) / 2) for v in levels]
        return [StageOutcome("tiles", [Correction("tiles", p) for p in planes])]

    config = MatchConfig(check_alignment=False)
    # The true backgrounds: every overlap agrees within its noise.
    clean = check_solution(sources, outcome(sim.truth.level), config, nsigma=5.0)
    assert len(clean.pairs) >= 10
    assert not clean.inconsistent()
    # One correction off by 0.05 (~10-20 sigma of a pair here).
    culprit = 5
    wrong = sim.truth.level.copy()
    wrong[culprit] += 0.05
    with caplog.at_level(logging.WARNING):
        check = check_solution(sources, outcome(wrong), config, nsigma=5.0)
    flagged = check.by_exposure()
    k, bad, checked = flagged[0]
    assert k == culprit
    assert len(bad) == checked  # every overlap of the culprit disagrees
    # Its partners disagree with it alone.
    assert all(len(b) == 1 and culprit in (b[0].i, b[0].j) for _, b, _ in flagged[1:])
    # The warning names it first, with the sign of its error.
    text = caplog.text
    assert INCONSISTENT in text
    first = text.index(sim.models[culprit].meta.filename)
    assert all(
        first < text.index(sim.models[j].meta.filename)
        for j, _, _ in flagged[1:]
        if sim.models[j].meta.filename in text
    )
    assert bad[0].residual * (1 if bad[0].i == culprit else -1) < 0  # over-corrected: too low


# --------------------------------------------------------------------------
# NIRCam modules in the tile stage
# --------------------------------------------------------------------------
def _nircam(pattern: str, seed: int):
    return nircam_module_mosaic(pattern, seed, n_sources=100)


@pytest.fixture(scope="module")
def crossing_modules():
    """FULLBOX: modules A and B cross each other's fields, so overlaps tie them."""
    return _nircam("FULLBOX", 8)


def _tiles(sim, **kwargs):
    (tiles,) = run_stages(
        sources_of(sim, exclude_lyot=False), metas_of(sim), ["tiles"], {}, MatchConfig(), **kwargs
    )
    return tiles


def test_tile_stage_gives_each_nircam_module_its_level(crossing_modules):
    sim = crossing_modules
    truth, visit, module = sim.truth.level, sim.truth.visit, np.array([d[3] for d in sim.truth.detector])
    floor = offset_noise_floor(sim)
    assert np.std(truth - np.array([truth[visit == v].mean() for v in visit])) > 10 * floor  # modules differ
    tiles = _tiles(sim)
    assert "NIRCam modules apart" in tiles.note
    levels = _levels(tiles)
    assert offset_rms_error(levels, truth) < 3 * floor
    # Within one module of one visit the level is shared (a unit).
    for v in np.unique(visit):
        for m in "AB":
            assert np.ptp(levels[(visit == v) & (module == m)]) == 0.0


def test_tile_stage_can_keep_nircam_modules_together(crossing_modules):
    sim = crossing_modules
    levels = _levels(_tiles(sim, split_modules=False))
    for v in np.unique(sim.truth.visit):
        assert np.ptp(levels[sim.truth.visit == v]) == 0.0


def test_untied_nircam_modules_are_matched_whole(caplog):
    # INTRAMODULEBOX never crosses the module gap: A only ever meets A, B only
    # B, so two modules of a visit would each float in a gauge of their own.
    sim = _nircam("INTRAMODULEBOX", 9)
    with caplog.at_level(logging.INFO, logger="jwst_skymatch_plus.core.stages"):
        tiles = _tiles(sim)
    levels = _levels(tiles)
    assert np.isfinite(levels).all()
    for v in np.unique(sim.truth.visit):
        assert np.ptp(levels[sim.truth.visit == v]) == 0.0
    (told,) = [r for r in caplog.records if "matched with both modules as one unit" in r.getMessage()]
    assert told.levelname == "WARNING" and "stays uncorrected" in told.getMessage()


def test_auto_chooses_in_the_dither_stage_and_the_tile_stage_follows(mosaic):
    sources, metas = sources_of(mosaic), metas_of(mosaic)
    fit_types = {"dithers": "auto", "tiles": "auto"}
    dithers, tiles = run_stages(sources, metas, ["dithers", "tiles"], fit_types, MatchConfig())
    # Offsets without planes: the exposure pairs fit levels, nothing else is measured.
    assert dithers.choice.fit_type == "level" and dithers.choice.level_dof > 10
    assert np.isnan(dithers.choice.noise_ratio)
    assert tiles.choice is None  # it followed the dither stage: levels
    assert all(c.plane.slope_x == 0 and c.plane.slope_y == 0 for o in (dithers, tiles) for c in o.corrections)
    total = _levels(dithers) + _levels(tiles)
    assert offset_rms_error(total, mosaic.truth.level) < 3 * offset_noise_floor(mosaic)
    # A tile stage alone chooses on its own units' pairs.
    (alone,) = run_stages(sources, metas, ["tiles"], fit_types, MatchConfig())
    assert alone.choice is not None and alone.choice.fit_type == "level"
