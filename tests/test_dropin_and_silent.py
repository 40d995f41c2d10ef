"""Drop-in behaviour (jwst's SkyMatchStep conventions) and no silent answers, for DEFAULT parameters."""

import logging

import numpy as np
import pytest
from conftest import copy_models, levels_of, read_models
from jwst.datamodels import ModelLibrary
from stdatamodels.jwst.datamodels import ImageModel

from jwst_skymatch_plus import PixelSkyMatchStep
from jwst_skymatch_plus.inputs import borrowed
from jwst_skymatch_plus.simulate import offset_noise_floor, offset_rms_error, simulate_mosaic


@pytest.fixture(scope="module")
def mosaic():
    # 2 x 2 tiles, 2 dithers per visit, offsets drifting inside each visit.
    return simulate_mosaic(
        "miri", shape=(128, 128), tiles=(2, 2), dithers=2, exposure_offset_sigma=0.05, seed=31
    )


def records(library):
    return read_models(
        library,
        lambda m: (
            m.meta.cal_step.skymatch,
            m.meta.background.method,
            dict(m.meta.instance.get("skymatch_plus", {}).get("pixel_skymatch", {})),
        ),
    )


def test_default_skystat_is_the_stock_default():
    from jwst.skymatch import SkyMatchStep

    assert PixelSkyMatchStep().skystat == SkyMatchStep().skystat == "mode"


@pytest.mark.parametrize("spoil", ["nan", "flagged", "inf"])
def test_unmeasurable_exposure_takes_its_visit_level_and_is_named(mosaic, spoil, caplog):
    models = copy_models(mosaic)
    bad = 3
    if spoil == "nan":
        models[bad].data[:] = np.nan
    elif spoil == "inf":
        models[bad].data[:] = np.inf
    else:
        models[bad].dq[:] |= 1
    with caplog.at_level(logging.WARNING):
        result = PixelSkyMatchStep.call(models)  # default grouping='visit'
    rec = records(result)
    assert rec[bad][0] == "COMPLETE"
    assert rec[bad][2]["status"] == "group"
    assert rec[bad][2]["level_source"] == "from its group, not measured"
    assert "no usable pixels" in rec[bad][2]["reason"]
    assert all(r[2]["status"] == "measured" for k, r in enumerate(rec) if k != bad)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(models[bad].meta.filename in w and "not measured" in w for w in warned)
    levels = levels_of(result)
    mate = [k for k in range(len(models)) if k != bad and mosaic.truth.visit[k] == mosaic.truth.visit[bad]]
    assert levels[bad] == pytest.approx(np.mean(levels[mate]))
    keep = np.arange(len(models)) != bad
    assert offset_rms_error(levels[keep], mosaic.truth.level[keep]) < 2 * offset_noise_floor(mosaic)


def test_blank_exposure_is_left_out_and_named(mosaic, caplog):
    models = copy_models(mosaic)
    bad = 2
    models[bad].data[:] = 0.0  # a dropped readout
    with caplog.at_level(logging.WARNING):
        result = PixelSkyMatchStep.call(models)
    rec = records(result)
    assert rec[bad][0] == "SKIPPED" and rec[bad][2]["status"] == "excluded"
    assert "constant data" in caplog.text and models[bad].meta.filename in caplog.text
    levels = levels_of(result)
    keep = np.arange(len(models)) != bad
    # Its visit-mate and everyone else are matched as if it were absent.
    assert offset_rms_error(levels[keep], mosaic.truth.level[keep]) < 2 * offset_noise_floor(mosaic)


def test_answer_does_not_depend_on_a_pedestal(mosaic):
    base = levels_of(PixelSkyMatchStep.call(copy_models(mosaic)))
    floor = offset_noise_floor(mosaic)
    for pedestal in (1e5, 1e6):
        models = copy_models(mosaic)
        for m in models:
            # Add in double precision, store in float32 as a real file would.
            m.data = (m.data.astype(np.float64) + pedestal).astype(np.float32)
        levels = levels_of(PixelSkyMatchStep.call(models))
        # float32 storage itself quantises the data by pedestal * 6e-8
        # (0.06 at 1e6): its effect on a mean over ~1e4 pixels is below 1e-3
        # of that; the rest must be what it was without the pedestal.
        quantum = pedestal * np.finfo(np.float32).eps
        err = offset_rms_error(levels, mosaic.truth.level)
        assert err < offset_rms_error(base, mosaic.truth.level) + 0.5 * floor + 0.02 * quantum, (
            pedestal,
            err,
        )


def test_reference_that_was_not_measured_is_reported(mosaic, caplog):
    models = copy_models(mosaic)
    models[0].data[:] = np.nan
    with caplog.at_level(logging.WARNING):
        PixelSkyMatchStep.call(models, reference=models[0].meta.filename, grouping="exposure")
    assert "was not measured" in caplog.text and "match_down" in caplog.text


def _group_models(n=3, levels=(9.12, 8.28, 2.56), shared=True, noise=0.1, seed=1):
    sim = simulate_mosaic(
        "miri", shape=(64, 64), tiles=(1, 1), dithers=n, emission=0.0, n_sources=0, seed=seed
    )
    rng = np.random.default_rng(seed)
    models = []
    for k, m in enumerate(sim.models[:n]):
        m = m.copy()
        m.data = (
            (levels[k] + rng.normal(0, noise, m.data.shape)).astype(np.float32)
            if noise
            else np.full(m.data.shape, levels[k], np.float32)
        )
        m.dq[:] = 0
        if shared:
            m.meta.group_id = "jw01234001001_01101_00001"
        models.append(m)
    return models


def test_one_group_id_is_one_sky_and_is_skipped_in_match(caplog):
    models = _group_models(shared=True)
    result = PixelSkyMatchStep.call(models)
    for status, method, _ in records(result):
        assert status == "SKIPPED" and method is None
    assert "share one sky group" in caplog.text


def test_one_group_id_gets_the_global_sky_in_global_match():
    levels = (9.12, 8.28, 2.56)
    result = PixelSkyMatchStep.call(_group_models(levels=levels, shared=True), skymethod="global+match")
    for status, method, _ in records(result):
        assert status == "COMPLETE" and method == "global+match"
    # The 'global' sky: the lowest sky statistic over all exposures (noise 0.1).
    assert np.allclose(levels_of(result), min(levels), atol=0.01)


def test_identical_noiseless_images_are_a_perfect_match():
    result = PixelSkyMatchStep.call(_group_models(levels=(0.0, 0.0, 0.0), shared=False, noise=0.0))
    assert [r[0] for r in records(result)] == ["COMPLETE"] * 3
    assert np.allclose(levels_of(result), 0.0)


def test_missing_program_number_gives_each_exposure_its_own_group():
    models = _group_models(shared=False)
    for m in models:
        m.meta.observation.program_number = None
        del m.meta.observation.program_number
    result = PixelSkyMatchStep.call(models, skystat="mean")
    levels = levels_of(result)
    assert np.allclose(levels, np.subtract((9.12, 8.28, 2.56), 2.56), atol=0.01)


def test_skipped_inside_a_pipeline_is_recorded_under_the_stock_key():
    from jwst.pipeline import Image3Pipeline

    pipe = Image3Pipeline()
    pipe.skymatch = PixelSkyMatchStep(name="skymatch", parent=pipe, skip=True)
    library = ModelLibrary([ImageModel((4, 4))])
    pipe.skymatch.run(library)
    with borrowed(library, 0) as model:
        assert model.meta.cal_step.skymatch == "SKIPPED"
        assert "pixel_skymatch" not in model.meta.cal_step.instance


def test_standalone_products_carry_the_stock_suffix():
    assert PixelSkyMatchStep().default_suffix() == "skymatchstep"
    assert PixelSkyMatchStep(name="skymatch").default_suffix() == "skymatch"


@pytest.mark.parametrize("update_s_region", [True, False])
def test_exposure_far_from_the_rest_takes_its_visit_level_named(mosaic, update_s_region, caplog):
    from jwst.assign_wcs.util import update_s_region_imaging
    from jwst.tweakreg.utils import adjust_wcs

    models = copy_models(mosaic)
    bad = 5
    models[bad].meta.wcs = adjust_wcs(models[bad].meta.wcs, delta_ra=0.5, delta_dec=0.0)
    if update_s_region:
        update_s_region_imaging(models[bad])
    with caplog.at_level(logging.WARNING):
        result = PixelSkyMatchStep.call(models)
    rec = records(result)
    assert rec[bad][0] == "COMPLETE" and rec[bad][2]["status"] == "group"
    assert any(
        models[bad].meta.filename in r.getMessage() and "not measured" in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING
    )
    keep = np.arange(len(models)) != bad
    levels = levels_of(result)
    assert offset_rms_error(levels[keep], mosaic.truth.level[keep]) < 2 * offset_noise_floor(mosaic)


def test_association_of_files_without_program_number(tmp_path):
    from jwst.associations.asn_from_list import asn_from_list
    from jwst.associations.lib.rules_level3_base import DMS_Level3_Base

    names = []
    for k, m in enumerate(_group_models(shared=False)):
        del m.meta.observation.program_number
        m.meta.group_id = None
        name = str(tmp_path / f"nopid{k}_cal.fits")
        m.save(name)
        names.append(name)
    asn = asn_from_list(names, rule=DMS_Level3_Base, product_name="nopid")
    path = tmp_path / "nopid_asn.json"
    path.write_text(asn.dump(format="json")[1])
    levels = levels_of(PixelSkyMatchStep.call(str(path), skystat="mean"))
    assert np.allclose(levels, np.subtract((9.12, 8.28, 2.56), 2.56), atol=0.01)


@pytest.mark.parametrize("seed", [1, 3])
def test_defaults_reach_the_noise_floor_with_offsets_inside_visits(seed):
    # Bright 256x256 MIRI mosaics, 2x2 tiles x 4 dithers, exposures of one
    # visit differing by 0.1 (1000x the floor): the default (visit grouping)
    # must solve every exposure from all its pairs, as well as
    # grouping='exposure', and within 1.5x of the Cramer-Rao floor.
    sim = simulate_mosaic(
        "miri", shape=(256, 256), tiles=(2, 2), dithers=4, exposure_offset_sigma=0.1, seed=seed
    )
    floor = offset_noise_floor(sim)
    default = offset_rms_error(levels_of(PixelSkyMatchStep.call(copy_models(sim))), sim.truth.level)
    exposure = offset_rms_error(
        levels_of(PixelSkyMatchStep.call(copy_models(sim), grouping="exposure")), sim.truth.level
    )
    assert default < 1.5 * floor, (default, floor)
    assert default < 1.3 * exposure


@pytest.mark.parametrize("skystat", ["mode", "midpt", "median", "mean"])
def test_at_least_as_close_to_the_truth_as_the_stock_step(skystat):
    # jwst's own test scenario: three co-pointed flat images at 9.12, 8.28 and
    # 2.56 with noise 0.1, binwidth 0.2, no clipping.  Over three noise
    # realisations our largest error is no larger than the stock step's.
    from jwst.skymatch import SkyMatchStep

    levels = np.array([9.12, 8.28, 2.56])
    truth = levels - levels.min()
    ours, stock = [], []
    for seed in range(3):
        sim = simulate_mosaic(
            "miri",
            shape=(96, 96),
            tiles=(1, 1),
            dithers=3,
            dither_size=0.0,
            emission=0.0,
            n_sources=0,
            seed=seed,
        )
        rng = np.random.default_rng(seed)
        models = []
        for k, m in enumerate(sim.models):
            m = m.copy()
            m.data = (levels[k] + rng.normal(0, 0.1, m.data.shape)).astype(np.float32)
            m.dq[:] = 0
            models.append(m)
        kw = {"skystat": skystat, "binwidth": 0.2, "nclip": 0}
        stock.append(np.abs(levels_of(SkyMatchStep.call([m.copy() for m in models], **kw)) - truth).max())
        ours.append(np.abs(levels_of(PixelSkyMatchStep.call([m.copy() for m in models], **kw)) - truth).max())
    assert np.mean(ours) <= np.mean(stock), (ours, stock)
    # And within jwst's own test tolerance.
    assert max(ours) < 0.01


def test_exposure_whose_pairs_disagree_is_left_out_and_named(caplog):
    # A strong gradient across one exposure: its overlaps at opposite ends
    # give contradictory offsets, so no level fits it.  It must not bend the
    # others' solution, and it is named (its visit's level, not measured).
    sim = simulate_mosaic("miri", shape=(128, 128), tiles=(3, 1), dithers=2, tile_overlap=0.3, seed=8)
    models = copy_models(sim)
    bad = 2  # first exposure of the middle tile: overlaps on both sides
    ny, nx = models[bad].data.shape
    models[bad].data += (np.linspace(-1.0, 1.0, nx)[None, :] * np.ones((ny, 1))).astype(np.float32)
    with caplog.at_level(logging.WARNING):
        result = PixelSkyMatchStep.call(models)
    rec = records(result)
    assert rec[bad][2]["status"] == "group"
    assert "disagree" in rec[bad][2]["reason"]
    assert models[bad].meta.filename in caplog.text
    levels = levels_of(result)
    keep = np.arange(len(models)) != bad
    # As good as matching without that exposure at all.
    without = levels_of(PixelSkyMatchStep.call([m for k, m in enumerate(copy_models(sim)) if k != bad]))
    assert offset_rms_error(levels[keep], sim.truth.level[keep]) < 1.2 * offset_rms_error(
        without, sim.truth.level[keep]
    ) + 0.5 * offset_noise_floor(sim)
