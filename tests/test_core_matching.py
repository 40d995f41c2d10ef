"""The matching core against the simulator's truth."""

import numpy as np
import pytest
from conftest import metas_of as metas
from conftest import sources_of as sources

from jwst_skymatch_plus.core.grouping import group_exposures, sky_units
from jwst_skymatch_plus.core.matching import MatchConfig, match_exposures
from jwst_skymatch_plus.simulate import offset_noise_floor, offset_rms_error, simulate_mosaic


def test_per_exposure_offsets_reach_the_noise_floor(miri_mosaic):
    units, fallback = sky_units(metas(miri_mosaic), "visit")
    result = match_exposures(sources(miri_mosaic), units, MatchConfig(), fallback=fallback)
    floor = offset_noise_floor(miri_mosaic)
    err = offset_rms_error(result.coefficients[:, 0], miri_mosaic.truth.level)
    # Target: within 3x the noise-limited floor (a clipped median costs 1.25x).
    assert err < 3 * floor, (err, floor)
    assert (result.component == 0).all()
    # Reported uncertainties describe the errors.
    resid = result.coefficients[:, 0] - miri_mosaic.truth.level
    resid -= resid.mean()
    assert np.all(np.abs(resid) < 5 * np.sqrt(result.sigma[:, 0] ** 2 + floor**2))


def test_without_matching_inside_visits_drifts_remain(miri_mosaic):
    groups = group_exposures(metas(miri_mosaic), "visit")
    result = match_exposures(sources(miri_mosaic), groups, MatchConfig())
    err = offset_rms_error(result.coefficients[:, 0], miri_mosaic.truth.level)
    drift = miri_mosaic.truth.exposure_drift
    # The exposures of a visit share one level: the drift inside visits is left.
    assert err > 0.3 * np.std(
        drift - np.array([drift[miri_mosaic.truth.visit == v].mean() for v in miri_mosaic.truth.visit])
    )
    visit_err = offset_rms_error(
        np.array([result.coefficients[miri_mosaic.truth.visit == v, 0].mean() for v in range(1, 7)]),
        np.array([miri_mosaic.truth.level[miri_mosaic.truth.visit == v].mean() for v in range(1, 7)]),
    )
    assert visit_err < 0.01


def test_exposure_grouping_solves_everything_at_once(miri_mosaic):
    groups = group_exposures(metas(miri_mosaic), "exposure")
    assert len(groups) == len(miri_mosaic.models)
    result = match_exposures(sources(miri_mosaic), groups, MatchConfig())
    err = offset_rms_error(result.coefficients[:, 0], miri_mosaic.truth.level)
    assert err < 3 * offset_noise_floor(miri_mosaic)


def test_coarser_grid_still_matches(miri_mosaic):
    units, fallback = sky_units(metas(miri_mosaic), "visit")
    result = match_exposures(sources(miri_mosaic), units, MatchConfig(grid_scale=2.0), fallback=fallback)
    err = offset_rms_error(result.coefficients[:, 0], miri_mosaic.truth.level)
    assert err < 3 * offset_noise_floor(miri_mosaic)
    assert result.grid.pixel_scale * 3600 == pytest.approx(0.22, rel=1e-3)


def test_planes_recovered():
    sim = simulate_mosaic(
        "miri",
        shape=(192, 192),
        tiles=(3, 2),
        dithers=2,
        gradient_sigma=0.4,
        exposure_offset_sigma=0.0,
        seed=21,
    )
    groups, fallback = sky_units(metas(sim), "visit")
    result = match_exposures(sources(sim), groups, MatchConfig(fit_type="level+slope"), fallback=fallback)
    from jwst_skymatch_plus.core.planes import detector_plane

    # Compare recovered and true backgrounds on each detector after removing
    # the one plane (in sky coordinates) that matching cannot determine.
    pts, diffs, predicted = [], [], []
    yy, xx = np.mgrid[0:192:24, 0:192:24].astype(float)
    for k, m in enumerate(sim.models):
        plane = detector_plane(
            result.coefficients[k], m.meta.wcs, m.data.shape, result.grid, result.plane_scale
        )
        rec = plane.level + plane.slope_x * (xx - plane.x_center) + plane.slope_y * (yy - plane.y_center)
        tru = sim.truth.plane_at(k, xx, yy, m.data.shape)
        ra, dec = m.meta.wcs(xx.ravel(), yy.ravel())
        gx, gy = result.grid.world_to_pixel(ra, dec)
        pts.append(np.column_stack([np.ones(gx.size), gx, gy]))
        diffs.append((rec - tru).ravel())
        cx, cy = result.grid.center
        s0, s1, s2 = result.sigma[k]
        predicted.append(
            s0**2 + (s1 * (gx - cx) / result.plane_scale) ** 2 + (s2 * (gy - cy) / result.plane_scale) ** 2
        )
    design, d = np.vstack(pts), np.concatenate(diffs)
    gauge, *_ = np.linalg.lstsq(design, d, rcond=None)
    resid = d - design @ gauge
    injected = np.std(
        [sim.truth.plane_at(k, xx, yy, (192, 192)) - sim.truth.level[k] for k in range(len(sim.models))]
    )
    rms = np.sqrt(np.mean(resid**2))
    # Within 3x of what the solution's own uncertainties predict, and far
    # below the injected gradients.
    assert rms < 3 * np.sqrt(np.mean(np.concatenate(predicted))), (
        rms,
        np.sqrt(np.mean(np.concatenate(predicted))),
    )
    assert rms < 0.1 * injected
    # A level-only fit cannot do this.
    level_only = match_exposures(sources(sim), groups, MatchConfig(fit_type="level"))
    assert level_only.coefficients.shape[1] == 1


def test_uncertainties_are_honest_and_independent_of_a_pedestal():
    # Flat sky and noise only: every level's error should match its stated
    # sigma (scatter / sigma ~ 1), pairs sharing an exposure being correlated.
    z = []
    for seed in range(4):
        sim = simulate_mosaic(
            "miri",
            shape=(128, 128),
            tiles=(2, 2),
            dithers=3,
            emission=0.0,
            n_sources=0,
            cosmic_ray_fraction=0.0,
            seed=100 + seed,
        )
        units, fallback = sky_units(metas(sim), "visit")
        result = match_exposures(sources(sim), units, MatchConfig(check_alignment=False), fallback=fallback)
        err = result.coefficients[:, 0] - sim.truth.level
        z.append((err - err.mean()) / result.sigma[:, 0])
    z = np.concatenate(z)
    # 48 values: the rms of a unit normal is within ~0.2 of 1 (2 sigma).
    assert 0.75 < np.sqrt(np.mean(z**2)) < 1.3, np.sqrt(np.mean(z**2))


def test_progress_lines_every_tenth_on_long_stages(monkeypatch, caplog):
    """A long stage logs at each 10% with elapsed time and time left; a short one only its end."""
    from jwst_skymatch_plus.core import matching

    clock = iter(float(t) for t in range(0, 1000, 3))  # 3 s per call: a long stage
    monkeypatch.setattr(matching.time, "perf_counter", lambda: next(clock))
    with caplog.at_level("INFO", logger="jwst_skymatch_plus.core.matching"):
        progress = matching._Progress("Measuring pairs", 50)
        for done in range(1, 51):
            progress.update(done)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10
    assert lines[0].startswith("Measuring pairs: 5/50 (10%) done in") and "s left" in lines[0]
    assert lines[-1].startswith("Measuring pairs: 50/50 (100%)") and "left" not in lines[-1]

    caplog.clear()
    monkeypatch.setattr(matching.time, "perf_counter", lambda: 0.0)  # instantaneous
    with caplog.at_level("INFO", logger="jwst_skymatch_plus.core.matching"):
        progress = matching._Progress("Resampling exposures", 50)
        for done in range(1, 51):
            progress.update(done)
    assert [r.getMessage() for r in caplog.records] == ["Resampling exposures: 50/50 (100%) done in 0.0 s."]
