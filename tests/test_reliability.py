"""Bad input gives a clear answer: SKIPPED with a reason, an error naming the problem, or a right result."""

import logging

import numpy as np
import pytest
from conftest import copy_models, levels_of, read_models
from jwst.datamodels import ModelLibrary

from jwst_skymatch_plus import PixelSkyMatchStep
from jwst_skymatch_plus.inputs import borrowed
from jwst_skymatch_plus.simulate import offset_noise_floor, offset_rms_error, simulate_mosaic


@pytest.fixture(scope="module")
def mosaic():
    return simulate_mosaic("miri", shape=(128, 128), tiles=(2, 2), dithers=2, seed=31)


def statuses(library):
    return read_models(library, lambda m: m.meta.cal_step.skymatch)


def test_empty_input_is_skipped(caplog):
    result = PixelSkyMatchStep.call(ModelLibrary([]))
    assert len(result) == 0
    assert "nothing to match" in caplog.text


def test_no_overlap_at_all(caplog):
    sim = simulate_mosaic("miri", shape=(96, 96), tiles=(2, 1), dithers=1, tile_overlap=-0.5, seed=2)
    with caplog.at_level(logging.WARNING):
        result = PixelSkyMatchStep.call(copy_models(sim))
    assert statuses(result) == ["SKIPPED", "SKIPPED"]
    assert np.isnan(levels_of(result)).all()
    assert "tied to no other exposure" in caplog.text


@pytest.mark.parametrize("spoil", ["nan", "flagged"])
def test_unusable_exposure_is_skipped_and_named(mosaic, spoil, caplog):
    models = copy_models(mosaic)
    if spoil == "nan":
        models[3].data[:] = np.nan
    else:
        models[3].dq[:] |= 1
    with caplog.at_level(logging.WARNING):
        result = PixelSkyMatchStep.call(models, grouping="exposure")
    status = statuses(result)
    assert status[3] == "SKIPPED" and status.count("COMPLETE") == len(models) - 1
    assert models[3].meta.filename in caplog.text
    levels = levels_of(result)
    keep = np.arange(len(models)) != 3
    assert offset_rms_error(levels[keep], mosaic.truth.level[keep]) < 3 * offset_noise_floor(mosaic)


def test_missing_wcs_is_an_error_naming_the_exposure(mosaic):
    models = copy_models(mosaic)
    models[2].meta.wcs = None
    with pytest.raises(ValueError, match=models[2].meta.filename):
        PixelSkyMatchStep.call(models)


def test_exposure_elsewhere_on_the_sky(mosaic):
    from jwst.tweakreg.utils import adjust_wcs

    models = copy_models(mosaic)
    # Move one exposure 0.5 degree away: it overlaps nothing.
    models[5].meta.wcs = adjust_wcs(models[5].meta.wcs, delta_dec=0.5)
    from jwst.assign_wcs.util import update_s_region_imaging

    update_s_region_imaging(models[5])
    result = PixelSkyMatchStep.call(models, grouping="exposure")
    status = statuses(result)
    assert status[5] == "SKIPPED" and status.count("COMPLETE") == len(models) - 1


def test_mixed_instruments_are_refused(mosaic):
    nircam = simulate_mosaic("nircam_long", shape=(64, 64), tiles=(1, 1), dithers=1, detectors=["NRCALONG"])
    with pytest.raises(ValueError, match=r"MIRI.*\n.*NIRCAM|NIRCAM.*\n.*MIRI"):
        PixelSkyMatchStep.call(copy_models(mosaic) + copy_models(nircam))


def test_mixed_units_are_refused(mosaic):
    models = copy_models(mosaic)
    models[0].meta.bunit_data = "DN/s"
    with pytest.raises(ValueError, match="units"):
        PixelSkyMatchStep.call(models)


def test_extreme_offsets():
    sim = simulate_mosaic(
        "miri", shape=(128, 128), tiles=(2, 2), dithers=2, visit_offset_sigma=1000.0, seed=9
    )
    levels = levels_of(PixelSkyMatchStep.call(copy_models(sim)))
    assert offset_rms_error(levels, sim.truth.level) < 3 * offset_noise_floor(sim)


def test_heavy_cosmic_ray_contamination():
    sim = simulate_mosaic(
        "miri", shape=(128, 128), tiles=(2, 2), dithers=2, cosmic_ray_fraction=0.05, seed=10
    )
    levels = levels_of(PixelSkyMatchStep.call(copy_models(sim)))
    # 5% of pixels hit: clipping removes them, at a small cost in precision.
    assert offset_rms_error(levels, sim.truth.level) < 3 * offset_noise_floor(sim)


def test_identical_duplicate_exposures(mosaic):
    models = copy_models(mosaic)
    twin = models[0].copy()
    twin.meta.filename = "twin_of_" + models[0].meta.filename
    result = PixelSkyMatchStep.call([*models, twin], grouping="exposure")
    levels = levels_of(result)
    assert np.isfinite(levels).all()
    assert levels[-1] == pytest.approx(levels[0], abs=1e-6)


def test_tiny_overlaps_are_rejected_and_reported(caplog):
    sim = simulate_mosaic("miri", shape=(128, 128), tiles=(2, 1), dithers=1, tile_overlap=0.01, seed=12)
    with caplog.at_level(logging.INFO):
        result = PixelSkyMatchStep.call(copy_models(sim), min_overlap_pixels=2000)
    assert "min_overlap_pixels" in caplog.text
    assert statuses(result) == ["SKIPPED", "SKIPPED"]


def test_reruns_give_identical_results(mosaic):
    first = levels_of(PixelSkyMatchStep.call(copy_models(mosaic)))
    second = levels_of(PixelSkyMatchStep.call(copy_models(mosaic)))
    np.testing.assert_array_equal(first, second)


def test_outputs_are_written_through_a_rename(small_mosaic, tmp_path, monkeypatch):
    """A crash while writing leaves no truncated product under the final name."""
    import os

    asn = small_mosaic.write(tmp_path / "in")
    out = tmp_path / "out"
    PixelSkyMatchStep.call(str(asn), save_results=True, output_dir=str(out))
    products = sorted(out.glob("*.fits"))
    assert len(products) == len(small_mosaic.models)
    before = {p: p.read_bytes() for p in products}

    real_replace = os.replace

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        PixelSkyMatchStep.call(str(asn), save_results=True, output_dir=str(out), subtract=True)
    monkeypatch.setattr(os, "replace", real_replace)
    # The earlier products are intact and no temporary files are left behind.
    assert sorted(out.glob("*.fits")) == products
    assert all(p.read_bytes() == before[p] for p in products)
    assert not [p for p in out.iterdir() if p.name.startswith(".saving_")]
    with ModelLibrary(str(asn)) as lib:  # inputs open as before
        assert len(lib) == len(small_mosaic.models)


# ------------------------------------------------ LevelMatchStep and WCS steps


def test_level_match_bad_inputs(mosaic, caplog):
    from jwst_skymatch_plus import LevelMatchStep

    # One exposure: nothing to match, returned unchanged with a warning.
    single = copy_models(mosaic)[:1]
    before = single[0].data.copy()
    with caplog.at_level(logging.WARNING):
        result = LevelMatchStep.call(single)
    assert "Level matching skipped" in caplog.text
    with borrowed(result, 0) as m:
        np.testing.assert_array_equal(m.data, before)
    # Missing WCS: an error naming the exposure.
    models = copy_models(mosaic)
    models[2].meta.wcs = None
    with pytest.raises(ValueError, match=models[2].meta.filename):
        LevelMatchStep.call(models)
    # Mixed instruments: refused.
    nircam = simulate_mosaic("nircam_long", shape=(64, 64), tiles=(1, 1), dithers=1, detectors=["NRCALONG"])
    with pytest.raises(ValueError, match=r"MIRI.*\n.*NIRCAM|NIRCAM.*\n.*MIRI"):
        LevelMatchStep.call(copy_models(mosaic) + copy_models(nircam))


def test_apply_wcs_adjust_needs_a_table(mosaic):
    from jwst_skymatch_plus.steps.wcs_adjust import ApplyWCSAdjustStep

    with pytest.raises((ValueError, OSError)):
        ApplyWCSAdjustStep.call(copy_models(mosaic))


def test_alignment_that_cannot_be_checked_is_reported(caplog):
    # Smooth emission only: no small-scale structure to measure shifts with.
    sim = simulate_mosaic(
        "miri",
        shape=(128, 128),
        tiles=(2, 2),
        dithers=1,
        n_sources=0,
        emission=30.0,
        n_blobs=10,
        misalignment={2: (0.5, -0.4, 0.0)},
        seed=13,
    )
    with caplog.at_level(logging.WARNING):
        PixelSkyMatchStep.call(copy_models(sim))
    assert "could not be verified on 6 of 6" in caplog.text
