"""GetWCSAdjustStep and ApplyWCSAdjustStep against the simulator's true pointings."""

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
from jwst.datamodels import ImageModel, ModelLibrary

from jwst_skymatch_plus import PixelSkyMatchStep
from jwst_skymatch_plus.simulate import offset_rms_error, simulate_mosaic
from jwst_skymatch_plus.steps.wcs_adjust import (
    ApplyWCSAdjustStep,
    GetWCSAdjustStep,
    read_wcs_adjust_table,
    write_wcs_adjust_table,
)

# Per-visit pointing errors (arcsec along detector x, y; roll in deg): 4-8
# MIRI pixels and rotations moving the detector corners by up to ~0.5 pixel.
MISALIGNMENT = {1: (0.0, 0.0, 0.0), 2: (0.6, -0.4, 0.05), 3: (-0.45, 0.7, -0.04), 4: (0.5, 0.35, 0.03)}
LAYOUT = dict(shape=(256, 256), tiles=(2, 2), tile_overlap=0.5, dithers=2, misalignment=MISALIGNMENT)
# Well inside a pixel: what pixel matching needs, and the target.
TOLERANCE_PIX = 0.05


def _models(library):
    out = []
    with library:
        for i in range(len(library)):
            m = library.borrow(i)
            out.append(m)
            library.shelve(m, i, modify=False)
    return out


def pointing_errors(models, sim):
    """Per exposure, the mean and largest offset (pixels) of its WCS from the true one on a 5x5 grid."""
    mean, worst = [], []
    for m, true_wcs in zip(models, sim.true_wcs, strict=True):
        ny, nx = m.data.shape
        x, y = np.meshgrid(np.linspace(0, nx - 1, 5), np.linspace(0, ny - 1, 5))
        xt, yt = true_wcs.invert(*m.meta.wcs(x, y), with_bounding_box=False)
        mean.append((np.mean(xt - x), np.mean(yt - y)))
        worst.append(np.max(np.hypot(xt - x, yt - y)))
    return np.array(mean), np.array(worst)


def relative_errors(models, sim):
    """Errors after removing the common shift (a relative alignment has no absolute anchor)."""
    mean, worst = pointing_errors(models, sim)
    common = mean.mean(axis=0)
    return np.hypot(*(mean - common).T), worst


def sha(paths):
    return [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths]


@pytest.fixture(scope="module")
def rich(tmp_path_factory):
    """A source-rich reference band written to disk, and its measured table."""
    out = tmp_path_factory.mktemp("rich")
    sim = simulate_mosaic("miri", **LAYOUT, n_sources=3000, emission=1.0, scene_seed=21, seed=3, out_dir=out)
    files = [Path(p) for p in sim.models]
    hashes = sha(files)
    step = GetWCSAdjustStep(
        tweakreg_parameters="{'searchrad': 3.0}",
        table_path=str(out / "shifts.ecsv"),
        table_formats="ecsv,asdf,toml",
    )
    step.run([str(f) for f in files])
    sim.models = [ImageModel(str(f)) for f in files]  # in memory, for the tests that copy them
    return sim, files, hashes, step


def test_catalog_method_recovers_shifts_and_rotations(rich):
    sim, files, _, step = rich
    table = step.table
    assert list(table["measured"]) == [True] * 4
    before, _ = relative_errors(sim.models, sim)
    assert before.max() > 3  # several pixels: the test has something to find
    result = ApplyWCSAdjustStep.call([str(f) for f in files], table=str(step.table_paths[0]))
    assert isinstance(result, ModelLibrary)
    rel, worst = relative_errors(_models(result), sim)
    assert rel.max() < TOLERANCE_PIX
    # Rotations recovered too: even the detector corners are well inside a pixel.
    assert worst.max() < 2 * TOLERANCE_PIX
    # The simulator's roll errors, as position-angle changes (sign: both East of North).
    truth = np.array([MISALIGNMENT[v][2] for v in range(1, 5)])
    got = np.asarray(table["rotation"])
    assert np.allclose(got - got[0], truth - truth[0], atol=0.01)


def test_inputs_byte_identical(rich):
    _sim, files, hashes, step = rich
    ApplyWCSAdjustStep.call([str(f) for f in files], table=str(step.table_paths[0]))
    assert sha(files) == hashes


def test_band_without_point_sources_aligned_through_reference(rich, tmp_path):
    _sim, _, _, step = rich
    other = simulate_mosaic(
        "miri", **LAYOUT, n_sources=0, emission=10.0, filter="F2100W", scene_seed=21, seed=8
    )
    # Its own catalogs find nothing: tweakreg cannot align this band.
    own = GetWCSAdjustStep(table_path=str(tmp_path / "own.ecsv"))
    own.run([m.copy() for m in other.models])
    assert not any(own.table["measured"])
    assert np.all(np.isnan(own.table["shift_ra"])) and all(s for s in own.table["status"])
    # The reference band's table aligns it.
    result = ApplyWCSAdjustStep.call([m.copy() for m in other.models], table=str(step.table_paths[0]))
    rel, worst = relative_errors(_models(result), other)
    assert rel.max() < TOLERANCE_PIX
    assert worst.max() < 2 * TOLERANCE_PIX


def test_unmeasured_and_absent_visits_left_unchanged(rich, tmp_path, caplog):
    sim, _files, _, step = rich
    table = step.table.copy()
    table["measured"][1] = False
    table["status"][1] = "too few sources"
    table.remove_row(3)
    path = write_wcs_adjust_table(table, tmp_path / "partial.ecsv")[0]
    with caplog.at_level(logging.WARNING, logger="jwst_skymatch_plus"):
        result = ApplyWCSAdjustStep.call([m.copy() for m in sim.models], table=str(path))
    models = _models(result)
    mean, _ = pointing_errors(models, sim)
    nominal, _ = pointing_errors(sim.models, sim)
    visits = sim.truth.visit
    assert np.array_equal(mean[visits == 2], nominal[visits == 2])
    assert np.array_equal(mean[visits == 4], nominal[visits == 4])
    assert "jw01234001002 was not measured" in caplog.text
    assert "jw01234001004 is not in the table" in caplog.text
    assert all(
        "wcs_adjust" not in m.meta.instance.get("skymatch_plus", {}) for m in np.array(models)[visits == 4]
    )


def test_fits_wcs_sregion_and_record_updated(rich):
    sim, files, _, step = rich
    k = int(np.nonzero(sim.truth.visit == 3)[0][0])
    original = ImageModel(str(files[k]))
    result = ApplyWCSAdjustStep.call([str(f) for f in files], table=str(step.table_paths[0]))
    model = _models(result)[k]
    wi = model.meta.wcsinfo
    # The FITS WCS keywords follow the corrected gwcs: CRVAL is the sky at CRPIX.
    ra, dec = model.meta.wcs(wi.crpix1 - 1, wi.crpix2 - 1)
    assert abs(ra - wi.crval1) * np.cos(np.radians(dec)) * 3600 < 1e-3 and abs(dec - wi.crval2) * 3600 < 1e-3
    assert (wi.crval1, wi.crval2) != (original.meta.wcsinfo.crval1, original.meta.wcsinfo.crval2)
    assert wi.s_region != original.meta.wcsinfo.s_region
    record = model.meta.instance["skymatch_plus"]["wcs_adjust"]
    assert record["visit_id"] == "jw01234001003" and record["method"] == "tweakreg"
    assert record["shift_ra"] == pytest.approx(float(step.table["shift_ra"][2]))


@pytest.mark.parametrize("fmt", ["ecsv", "asdf", "toml"])
def test_table_round_trip(rich, fmt):
    _, _, _, step = rich
    table = step.table.copy()
    table["measured"][3] = False
    table["shift_ra"][3] = np.nan
    path = write_wcs_adjust_table(table, step.table_paths[0].with_name(f"rt.{fmt}"), [fmt])[0]
    back = read_wcs_adjust_table(path)
    for name in table.colnames:
        a, b = np.asarray(table[name]), np.asarray(back[name])
        if a.dtype.kind == "f":
            assert np.allclose(a, b, rtol=0, atol=0, equal_nan=True), name
        else:
            assert [str(v) for v in a] == [str(v) for v in b], name
    # Every format the step wrote reads back the same.
    for p in step.table_paths:
        assert np.allclose(read_wcs_adjust_table(p)["shift_dec"], step.table["shift_dec"], equal_nan=True)


def test_end_to_end_pixel_skymatch(rich):
    """Misaligned visits: the alignment check fires; after get + apply, offsets as good as aligned."""
    sim, _files, _, step = rich
    with pytest.raises(ValueError, match="misaligned"):
        PixelSkyMatchStep.call([m.copy() for m in sim.models], alignment_check="error")
    adjusted = ApplyWCSAdjustStep.call([m.copy() for m in sim.models], table=str(step.table_paths[0]))
    levels = _levels(PixelSkyMatchStep.call(adjusted, alignment_check="error"))
    aligned = simulate_mosaic(
        "miri", **{**LAYOUT, "misalignment": None}, n_sources=3000, emission=1.0, scene_seed=21, seed=3
    )
    reference = _levels(PixelSkyMatchStep.call([m.copy() for m in aligned.models], alignment_check="error"))
    err = offset_rms_error(levels, sim.truth.level)
    err_aligned = offset_rms_error(reference, aligned.truth.level)
    assert err < 1.5 * err_aligned + 0.002


def _levels(library):
    return np.array([float(m.meta.background.level) for m in _models(library)])


def rigid_residuals(models, sim) -> np.ndarray:
    """Pixel errors on a 5x5 grid per exposure after removing one rigid transform of the whole mosaic.

    A relative alignment (no absolute catalog) is defined up to such a
    transform; everything else is error.
    """
    from jwst_skymatch_plus.core.alignment import fit_sky_affine

    got, true = [], []
    for m, true_wcs in zip(models, sim.true_wcs, strict=True):
        ny, nx = m.data.shape
        x, y = (a.ravel() for a in np.meshgrid(np.linspace(0, nx - 1, 5), np.linspace(0, ny - 1, 5)))
        got.append(m.meta.wcs(x, y))
        true.append(true_wcs(x, y))
    ra, dec = (np.concatenate([g[i] for g in got]) for i in (0, 1))
    ra_t, dec_t = (np.concatenate([t[i] for t in true]) for i in (0, 1))
    common, _ = fit_sky_affine(ra, dec, ra_t, dec_t, float(ra.mean()), float(dec.mean()), "rshift")
    ra2, dec2 = common.apply(ra, dec)
    err = np.hypot((ra2 - ra_t) * np.cos(np.radians(dec_t)), dec2 - dec_t) * 3600 / sim.layout.pixel_scale
    return err.reshape(len(models), 25)


@pytest.fixture(scope="module")
def emission_only():
    """The same misaligned visits with extended emission and no point sources at all."""
    return simulate_mosaic("miri", **LAYOUT, n_sources=0, emission=30.0, n_blobs=200, seed=3)


def test_cross_correlation_aligns_emission_without_point_sources(emission_only, tmp_path):
    sim = emission_only
    step = GetWCSAdjustStep(method="cross_corr", table_path=str(tmp_path / "cc.ecsv"))
    step.run([m.copy() for m in sim.models])
    assert list(step.table["measured"]) == [True] * 4
    assert set(step.table["method"]) == {"cross_corr"}
    before = rigid_residuals(sim.models, sim)
    assert before.max() > 3  # several pixels to find
    result = ApplyWCSAdjustStep.call([m.copy() for m in sim.models], table=str(step.table_paths[0]))
    after = rigid_residuals(_models(result), sim)
    # What pixel matching needs: well inside its 0.3-pixel alignment check.
    # (The catalog method reaches the 0.05-pixel goal; on extended emission
    # alone cross-correlation reaches 0.02-0.08 pixel on these scenes.)
    assert after[:, 12].max() < 2 * TOLERANCE_PIX  # detector centres
    assert after.max() < 4 * TOLERANCE_PIX  # corners: rotations recovered too
    PixelSkyMatchStep.call(result, alignment_check="error")  # the alignment check passes


def test_cross_correlation_of_flat_fields_is_unmeasured(tmp_path, caplog):
    flat = simulate_mosaic(
        "miri", **{**LAYOUT, "tiles": (2, 1)}, n_sources=0, emission=0.0, n_blobs=0, seed=5
    )
    step = GetWCSAdjustStep(method="cross_corr", table_path=str(tmp_path / "flat.ecsv"))
    with caplog.at_level(logging.WARNING, logger="jwst_skymatch_plus"):
        step.run([m.copy() for m in flat.models])
    assert not any(step.table["measured"])
    assert np.all(np.isnan(step.table["shift_ra"]))
    assert "recorded as unmeasured" in caplog.text
