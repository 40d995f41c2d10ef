"""PixelSkyMatchStep as a drop-in SkyMatchStep, against the simulator's truth."""

import hashlib

import numpy as np
import pytest
from conftest import copy_models, levels_of, read_models
from jwst.datamodels import ModelLibrary
from jwst.skymatch import SkyMatchStep

from jwst_skymatch_plus import PixelSkyMatchStep
from jwst_skymatch_plus.inputs import borrowed, each_model
from jwst_skymatch_plus.simulate import offset_noise_floor, offset_rms_error, simulate_mosaic


def test_returns_library_with_truthful_levels(miri_mosaic):
    result = PixelSkyMatchStep.call(copy_models(miri_mosaic))
    assert isinstance(result, ModelLibrary)
    levels = levels_of(result)
    floor = offset_noise_floor(miri_mosaic)
    assert offset_rms_error(levels, miri_mosaic.truth.level) < 3 * floor
    assert np.nanmin(levels) == 0.0  # match_down: the lowest sky is the reference
    for _, m in each_model(result):
        assert m.meta.cal_step.skymatch == "COMPLETE"
        assert m.meta.background.subtracted is False
        # The stock step's value (downstream code compares it); ours is in our record.
        assert m.meta.background.method == "match"
        rec = m.meta.instance["skymatch_plus"]["pixel_skymatch"]
        assert rec["method"] == "pixel-match" and rec["status"] == "measured"
        assert rec["fit_type"] == "level" and rec["group"] >= 1
        assert rec["level_uncertainty"] > 0


def test_far_better_than_the_stock_step(miri_mosaic):
    ours = levels_of(PixelSkyMatchStep.call(copy_models(miri_mosaic)))
    stock = levels_of(SkyMatchStep.call(copy_models(miri_mosaic), skymethod="match"))
    truth = miri_mosaic.truth.level
    assert offset_rms_error(ours, truth) < 0.1 * offset_rms_error(stock, truth)


def test_subtract_and_match_up(miri_mosaic):
    models = copy_models(miri_mosaic)
    before = [m.data.copy() for m in models]
    result = PixelSkyMatchStep.call(models, subtract=True, match_down=False)
    levels = levels_of(result)
    assert np.nanmax(levels) == 0.0
    for i, m in each_model(result):
        assert m.meta.background.subtracted is True
        ok = np.isfinite(before[i])
        removed = before[i][ok] - m.data[ok]
        # float32 data: allow its rounding on large (junk) values.
        assert np.all(np.abs(removed - levels[i]) <= 1e-5 + 1e-6 * np.abs(before[i][ok]))


def test_level_plus_slope_subtracts_planes():
    sim = simulate_mosaic("miri", shape=(128, 128), tiles=(2, 2), dithers=2, gradient_sigma=0.5, seed=8)
    models = copy_models(sim)
    before = [m.data.copy() for m in models]
    result = PixelSkyMatchStep.call(models, fit_type="level+slope")
    for i, m in each_model(result):
        rec = m.meta.instance["skymatch_plus"]["pixel_skymatch"]
        assert m.meta.background.subtracted is True
        yy, xx = np.mgrid[0:128, 0:128]
        plane = (
            rec["plane_level"]
            + rec["plane_slope_x"] * (xx - rec["plane_x_center"])
            + rec["plane_slope_y"] * (yy - rec["plane_y_center"])
        )
        ok = np.isfinite(before[i])
        # The record says exactly what was removed (to float32 rounding).
        removed = (before[i] - m.data)[ok]
        assert np.all(np.abs(removed - plane[ok]) <= 1e-5 + 1e-6 * np.abs(before[i][ok]))
        assert m.meta.background.level == pytest.approx(rec["plane_level"])


def test_association_on_disk_leaves_inputs_untouched(small_mosaic, tmp_path):
    asn = small_mosaic.write(tmp_path)
    files = sorted(tmp_path.glob("*_cal.fits"))
    digest = {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    result = PixelSkyMatchStep.call(str(asn), in_memory=False, subtract=True)
    assert isinstance(result, ModelLibrary) and result.on_disk
    levels = levels_of(result)
    assert np.isfinite(levels).all()
    assert offset_rms_error(levels, small_mosaic.truth.level) < 3 * offset_noise_floor(small_mosaic)
    for f in files:
        assert hashlib.sha256(f.read_bytes()).hexdigest() == digest[f]


def test_library_input_is_used_as_is(small_mosaic):
    library = ModelLibrary(copy_models(small_mosaic))
    assert PixelSkyMatchStep.call(library) is library


def test_single_exposure_is_skipped(small_mosaic, caplog):
    result = PixelSkyMatchStep.call(copy_models(small_mosaic)[:1])
    with borrowed(result, 0) as m:
        assert m.meta.cal_step.skymatch == "SKIPPED"
        assert m.meta.background.level is None
    assert "nothing to match" in caplog.text


def test_mixed_filters_are_refused(small_mosaic):
    models = copy_models(small_mosaic)
    models[1].meta.instrument.filter = "F2100W"
    with pytest.raises(ValueError, match="instrument/filter"):
        PixelSkyMatchStep.call(models)


def test_rerun_with_inconsistent_subtract_is_refused(small_mosaic):
    result = PixelSkyMatchStep.call(copy_models(small_mosaic), subtract=True)
    models = read_models(result, lambda m: m.copy())
    with pytest.raises(ValueError, match="inconsistent"):
        PixelSkyMatchStep.call(models, subtract=False)


@pytest.mark.parametrize("skymethod", ["local", "global"])
@pytest.mark.parametrize("subtract", [False, True])
def test_local_and_global_are_the_stock_computation(small_mosaic, skymethod, subtract):
    kw = {"skymethod": skymethod, "subtract": subtract, "skystat": "mode"}
    ours = levels_of(PixelSkyMatchStep.call(copy_models(small_mosaic), **kw))
    stock = levels_of(SkyMatchStep.call(copy_models(small_mosaic), **kw))
    np.testing.assert_array_equal(ours, stock)


def test_user_sky_list(small_mosaic, tmp_path):
    values = np.arange(len(small_mosaic.models)) * 0.5
    skylist = tmp_path / "sky.txt"
    skylist.write_text("".join(f"{m.meta.filename} {v}\n" for m, v in zip(small_mosaic.models, values)))
    ours = levels_of(
        PixelSkyMatchStep.call(copy_models(small_mosaic), skymethod="user", skylist=str(skylist))
    )
    np.testing.assert_allclose(ours, values)


def test_global_plus_match_adds_the_global_sky(miri_mosaic):
    match = levels_of(PixelSkyMatchStep.call(copy_models(miri_mosaic)))
    both = levels_of(PixelSkyMatchStep.call(copy_models(miri_mosaic), skymethod="global+match"))
    shift = both - match
    np.testing.assert_allclose(shift, shift[0], atol=1e-9)
    # The global part is the faintest matched sky: the common sky level plus
    # the faintest emission, never more than the sky level plus the brightest.
    assert miri_mosaic.truth.sky_level - 1.0 < np.min(both) < miri_mosaic.truth.sky_level + 10.0


def test_disconnected_mosaic_matches_each_part(caplog):
    sim = simulate_mosaic("miri", shape=(128, 128), tiles=(2, 1), dithers=2, tile_overlap=-0.3, seed=4)
    result = PixelSkyMatchStep.call(copy_models(sim), match_within_groups=True)
    levels = levels_of(result)
    labels = sim.truth.visit
    assert offset_rms_error(levels, sim.truth.level, labels) < 3 * offset_noise_floor(sim)
    assert "matched on its own" in caplog.text
