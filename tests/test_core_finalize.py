"""core.finalize (gauge, global sky, ties, planes, alignment verdict) against the simulator's truth."""

import logging
from dataclasses import replace

import numpy as np
import pytest
from conftest import metas_of, sources_of

from jwst_skymatch_plus.core.finalize import (
    FinalBackgrounds,
    Gauge,
    finalize,
    global_sky,
    residual_sky,
    review_alignment,
    tie_components,
)
from jwst_skymatch_plus.core.grouping import group_exposures, sky_units
from jwst_skymatch_plus.core.matching import MatchConfig, PairCheck, match_exposures
from jwst_skymatch_plus.core.registration import ImageShift
from jwst_skymatch_plus.simulate import (
    background_noise_floor,
    background_rms_error,
    offset_noise_floor,
    offset_rms_error,
    simulate_mosaic,
)


def median_skies(sim):
    """``residual_skies`` for a simulation: median of every exposure's good pixels minus its level."""

    def skies(levels):
        out = []
        for m, level in zip(sim.models, levels, strict=True):
            good = np.isfinite(m.data) & ((m.dq & 1) == 0)
            out.append(residual_sky(m.data[good], level, lambda v: (float(np.median(v)), v.size)))
        return np.array(out)

    return skies


def median_error(sim):
    """Standard error of one exposure's median sky: sqrt(pi/2) sigma / sqrt(npix)."""
    return np.sqrt(np.pi / 2) * sim.truth.noise.max() / np.sqrt(sim.models[0].data.size)


@pytest.fixture(scope="module")
def matched(miri_mosaic):
    """The MIRI mosaic matched as the step does by default (group_id units, visits as fallback)."""
    meta = metas_of(miri_mosaic)
    srcs = sources_of(miri_mosaic)
    units, fallback = sky_units(meta, "visit")
    result = match_exposures(srcs, units, MatchConfig(), fallback=fallback)
    return miri_mosaic, srcs, meta, group_exposures(meta, "visit"), result


@pytest.fixture(scope="module")
def flat():
    """No emission, no sources: every exposure's median is its true absolute background."""
    sim = simulate_mosaic(
        "miri", shape=(128, 128), tiles=(2, 2), dithers=2, emission=0.0, n_sources=0, seed=7
    )
    units, fallback = sky_units(metas_of(sim), "visit")
    result = match_exposures(sources_of(sim), units, MatchConfig(check_alignment=False), fallback=fallback)
    return sim, result


def test_reference_tile_is_held_at_zero_and_the_rest_follows_the_truth(matched):
    sim, srcs, meta, visits, result = matched
    final = finalize(result, srcs, meta, visits, Gauge(reference="3"))
    assert isinstance(final, FinalBackgrounds) and final.reference == 2
    in_ref = sim.truth.visit == 3
    assert abs(final.levels[in_ref].mean()) < 1e-12
    # No free constant left: each level is its truth minus the reference
    # visit's mean truth.  The error of one level and of a mean of four are
    # both within the per-exposure floor; allow 3x as the matching tests do.
    expected = sim.truth.level - sim.truth.level[in_ref].mean()
    err = float(np.sqrt(np.mean((final.levels - expected) ** 2)))
    assert err < 3 * offset_noise_floor(sim), err


def test_match_down_puts_the_lowest_or_highest_level_at_zero(matched):
    sim, srcs, meta, visits, result = matched
    down = finalize(result, srcs, meta, visits, Gauge())
    up = finalize(result, srcs, meta, visits, Gauge(match_down=False))
    assert down.reference is None and down.global_sky is None
    assert np.nanmin(down.levels) == 0.0 and np.nanmax(up.levels) == 0.0
    # The gauge moves every level by the same constant.
    np.testing.assert_allclose(down.levels - up.levels, np.ptp(down.levels), rtol=0, atol=1e-12)
    assert offset_rms_error(down.levels, sim.truth.level) < 3 * offset_noise_floor(sim)


def test_level_fits_give_flat_planes_at_the_final_levels(matched):
    _, srcs, meta, visits, result = matched
    final = finalize(result, srcs, meta, visits)
    for plane, level, src in zip(final.planes, final.levels, srcs, strict=True):
        assert plane.level == level and plane.is_flat
        assert (plane.x_center, plane.y_center) == ((src.shape[1] - 1) / 2.0, (src.shape[0] - 1) / 2.0)


@pytest.mark.parametrize("units_compete", [False, True])
def test_closest_to_background_picks_the_visit_observed_then(matched, units_compete):
    sim, srcs, meta, visits, result = matched
    t5 = max(m["meta.exposure.mid_time"] for m, v in zip(meta, sim.truth.visit, strict=True) if v == 5)
    gauge = Gauge(reference="closest_to_background", background_times=(t5 + 0.001,))
    final = finalize(result, srcs, meta, visits, gauge, units_compete=units_compete)
    assert final.reference == 4
    assert abs(final.levels[sim.truth.visit == 5].mean()) < 1e-12


def test_only_measured_levels_define_the_reference_mean(matched):
    sim, srcs, meta, visits, result = matched
    # One exposure of visit 3 holds a level it did not measure (e.g. its
    # group's), here off by a whole unit: the reference mean ignores it.
    k = int(np.flatnonzero(sim.truth.visit == 3)[0])
    status = result.status.copy()
    status[k] = "group"
    coefficients = result.coefficients.copy()
    coefficients[k] += 1.0
    spoilt = replace(result, status=status, coefficients=coefficients)
    final = finalize(spoilt, srcs, meta, visits, Gauge(reference="3"))
    others = (sim.truth.visit == 3) & (np.arange(len(srcs)) != k)
    assert abs(final.levels[others].mean()) < 1e-12
    assert final.levels[k] - final.levels[others].mean() > 0.5


def test_unmeasured_reference_falls_back_to_match_down(matched, caplog):
    sim, srcs, meta, visits, result = matched
    status = result.status.copy()
    status[sim.truth.visit == 2] = "group"
    with caplog.at_level(logging.WARNING):
        final = finalize(replace(result, status=status), srcs, meta, visits, Gauge(reference="2"))
    assert final.reference is None
    assert "was not measured" in caplog.text and "group 2" in caplog.text
    np.testing.assert_array_equal(final.levels, finalize(result, srcs, meta, visits).levels)


def test_unknown_reference_number_names_the_kind(matched):
    _, srcs, meta, visits, result = matched
    with pytest.raises(ValueError, match="reference tile 9 does not exist"):
        finalize(result, srcs, meta, visits, Gauge(reference="9"), kind="tile")


def test_global_sky_makes_levels_absolute(flat):
    sim, result = flat
    meta = metas_of(sim)
    final = finalize(
        result,
        sources_of(sim),
        meta,
        group_exposures(meta, "visit"),
        Gauge(add_global_sky=True),
        residual_skies=median_skies(sim),
    )
    # The lowest exposure's median after matching is its absolute sky, so the
    # levels are the true absolute backgrounds, up to the matching error and
    # the error of one median (sqrt(pi/2) sigma / sqrt(npix); the lowest of
    # eight is biased low by about 1.5 of those): 3 floors + 5 medians.
    tolerance = 3 * offset_noise_floor(sim) + 5 * median_error(sim)
    err = float(np.sqrt(np.mean((final.levels - sim.truth.level) ** 2)))
    assert err < tolerance, (err, tolerance)
    assert abs(final.global_sky - sim.truth.level.min()) < tolerance


def test_ties_recover_the_offsets_between_disconnected_parts():
    # Three tiles in a row with gaps between them: three components, each in its own gauge.
    sim = simulate_mosaic(
        "miri", shape=(96, 96), tiles=(3, 1), dithers=2, tile_overlap=-0.3, emission=0.0, n_sources=0, seed=6
    )
    srcs, meta = sources_of(sim), metas_of(sim)
    visits = group_exposures(meta, "visit")
    result = match_exposures(srcs, group_exposures(meta, "exposure"), MatchConfig(check_alignment=False))
    assert sorted(np.unique(result.component)) == [0, 1, 2]
    apart = finalize(result, srcs, meta, visits)
    tied = finalize(result, srcs, meta, visits, Gauge(tie_components=True), residual_skies=median_skies(sim))
    # Each part tied by its lowest median: the matching error plus that of
    # two medians (3 floors + 5 medians, as for the global sky).
    tolerance = 3 * offset_noise_floor(sim) + 5 * median_error(sim)
    assert offset_rms_error(tied.levels, sim.truth.level) < tolerance
    # Each part at zero instead: the true offsets between the tiles are lost.
    assert offset_rms_error(apart.levels, sim.truth.level) > 10 * tolerance


def test_tie_components_leaves_a_single_component_alone():
    levels = np.array([0.0, 1.0, np.nan])

    def never(levels):
        raise AssertionError("no sky statistics are needed for one component")

    assert tie_components(levels, np.array([0, 0, -1]), never) is levels


def test_global_sky_without_any_sky_is_zero(caplog):
    with caplog.at_level(logging.WARNING):
        assert global_sky(np.array([np.nan, np.nan])) == 0.0
    assert "Unable to compute a 'global' sky" in caplog.text


def test_sky_statistics_are_needed_for_ties_and_global_sky(matched):
    _, srcs, meta, visits, result = matched
    with pytest.raises(ValueError, match="residual_skies"):
        finalize(result, srcs, meta, visits, Gauge(add_global_sky=True))


def test_plane_fit_recovers_detector_planes():
    sim = simulate_mosaic(
        "miri",
        shape=(128, 128),
        tiles=(2, 2),
        dithers=2,
        gradient_sigma=0.4,
        exposure_offset_sigma=0.0,
        seed=21,
    )
    srcs, meta = sources_of(sim), metas_of(sim)
    visits = group_exposures(meta, "visit")
    result = match_exposures(srcs, visits, MatchConfig(fit_type="level+slope", grid_scale=2.0))
    final = finalize(result, srcs, meta, visits, Gauge(reference="1"))
    planes = [(p.level, p.slope_x, p.slope_y) for p in final.planes]
    assert not all(p.is_flat for p in final.planes)
    err = background_rms_error(sim, planes, "level+slope")
    assert err < 3 * background_noise_floor(sim, "level+slope"), err


# -- alignment verdict --------------------------------------------------------
def _with_shifts(result, *shifts):
    return replace(result, alignment=[PairCheck(0, 1, s) for s in shifts])


def test_misaligned_visits_are_refused_or_named(misaligned, caplog):
    # Visits 0.25" (over 2 MIRI pixels) apart; plenty of sources give every overlap structure.
    srcs = sources_of(misaligned)
    result = match_exposures(srcs, group_exposures(metas_of(misaligned), "visit"), MatchConfig())
    names = [s.name for s in srcs]
    with pytest.raises(ValueError, match=r"misaligned by more than max_misalignment=0\.3") as err:
        review_alignment(result, names, max_misalignment=0.3, min_correlation=0.5, refuse=True)
    assert names[0] in str(err.value) or names[-1] in str(err.value)
    with caplog.at_level(logging.WARNING):
        review_alignment(result, names, max_misalignment=0.3, min_correlation=0.5)
    assert "misaligned" in caplog.text


def test_aligned_mosaic_passes_the_review(matched, caplog):
    _, srcs, _, _, result = matched
    assert result.alignment
    with caplog.at_level(logging.WARNING):
        review_alignment(
            result, [s.name for s in srcs], max_misalignment=0.3, min_correlation=0.5, refuse=True
        )
    assert "misaligned" not in caplog.text


def test_shifts_measured_without_structure_are_not_trusted(matched, caplog):
    _, srcs, _, _, result = matched
    names = [s.name for s in srcs]
    # Large shifts, but one peak no higher than noise peaks and one weak correlation.
    chance = _with_shifts(result, ImageShift(3.0, 0.0, 0.9, 4.0, 1000), ImageShift(0.0, 3.0, 0.2, 50.0, 1000))
    with caplog.at_level(logging.WARNING):
        review_alignment(chance, names, max_misalignment=0.3, min_correlation=0.5, refuse=True)
    assert "could not be verified on 2 of 2" in caplog.text
    # The same shift, significant and well correlated, is a misalignment.
    real = _with_shifts(result, ImageShift(3.0, 0.0, 0.9, 50.0, 1000))
    with pytest.raises(ValueError, match="1 overlapping group pair"):
        review_alignment(real, names, max_misalignment=0.3, min_correlation=0.5, refuse=True)
