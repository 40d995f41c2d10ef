"""GetWCSAdjustStep and ApplyWCSAdjustStep against the simulator's true pointings."""

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from conftest import levels_of, read_models
from jwst.datamodels import ImageModel, ModelLibrary

from jwst_skymatch_plus import PixelSkyMatchStep
from jwst_skymatch_plus.simulate import alignment_errors, offset_rms_error, simulate_mosaic
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
    return read_models(library, lambda m: m)


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
    """Mean and worst errors (pixels) after removing the mosaic's common shift and rotation.

    A relative alignment has no absolute anchor: the whole mosaic may keep
    the pointing error of whichever visit tweakreg took as reference.
    """
    return alignment_errors(models, sim.true_wcs, sim.layout.pixel_scale)


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
    levels = levels_of(PixelSkyMatchStep.call(adjusted, alignment_check="error"))
    aligned = simulate_mosaic(
        "miri", **{**LAYOUT, "misalignment": None}, n_sources=3000, emission=1.0, scene_seed=21, seed=3
    )
    reference = levels_of(PixelSkyMatchStep.call([m.copy() for m in aligned.models], alignment_check="error"))
    err = offset_rms_error(levels, sim.truth.level)
    err_aligned = offset_rms_error(reference, aligned.truth.level)
    assert err < 1.5 * err_aligned + 0.002


@pytest.fixture(scope="module")
def emission_only():
    """The same misaligned visits with extended emission and no point sources at all."""
    return simulate_mosaic("miri", **LAYOUT, n_sources=0, emission=30.0, n_blobs=200, seed=3)


def test_cross_correlation_aligns_emission_without_point_sources(emission_only, tmp_path):
    sim = emission_only
    # The method chosen by instrument, as in a configuration for several bands.
    step = GetWCSAdjustStep(
        method="{'nircam': 'tweakreg', 'miri': 'cross_corr'}", table_path=str(tmp_path / "cc.ecsv")
    )
    step.run([m.copy() for m in sim.models])
    assert list(step.table["measured"]) == [True] * 4
    assert step.table.meta["method"] == "cross_corr"
    assert set(step.table["method"]) == {"cross_corr"}
    before, _ = relative_errors(sim.models, sim)
    assert before.max() > 3  # several pixels to find
    result = ApplyWCSAdjustStep.call([m.copy() for m in sim.models], table=str(step.table_paths[0]))
    after, worst = relative_errors(_models(result), sim)
    assert after.max() < TOLERANCE_PIX
    assert worst.max() < 2 * TOLERANCE_PIX  # corners: rotations recovered too
    PixelSkyMatchStep.call(result, alignment_check="error")  # the alignment check passes


def test_cross_correlation_exposure_by_exposure(emission_only, tmp_path):
    """group_dithers=False: every exposure registered on its own, the visit's correction their average."""
    sim = emission_only
    step = GetWCSAdjustStep(method="cross_corr", group_dithers=False, table_path=str(tmp_path / "e.ecsv"))
    step.run([m.copy() for m in sim.models])
    assert list(step.table["n_aligned"]) == [2] * 4
    result = ApplyWCSAdjustStep.call([m.copy() for m in sim.models], table=str(step.table_paths[0]))
    after, worst = relative_errors(_models(result), sim)
    assert after.max() < TOLERANCE_PIX and worst.max() < 2 * TOLERANCE_PIX


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


# --------------------------------------------------------------------------
# Catalogs: user-supplied sources, absolute reference, NIRCam modules
# --------------------------------------------------------------------------
CATALOG_FUNCTION = """
from pathlib import Path

from astropy.table import Table
from conftest import levels_of, read_models


def truth_catalog(model, directory):
    return Table.read(Path(directory) / (Path(model.meta.filename).stem + ".ecsv"))
"""


def write_true_detector_catalogs(sim, directory, n_brightest=200):
    """Per exposure, true detector positions of its brightest point sources: a perfect finder."""
    stars = sim.source_catalog()
    stars.sort("peak", reverse=True)
    for model, true_wcs in zip(sim.models, sim.true_wcs, strict=True):
        ny, nx = model.data.shape
        x, y = true_wcs.invert(stars["RA"], stars["DEC"], with_bounding_box=False)
        inside = (x > 5) & (x < nx - 6) & (y > 5) & (y < ny - 6)
        cat = Table({"x": x[inside][:n_brightest], "y": y[inside][:n_brightest]})
        cat.write(Path(directory) / (Path(model.meta.filename).stem + ".ecsv"), format="ascii.ecsv")


def test_custom_catalog_function_is_used(rich, tmp_path, caplog):
    sim, files, _, _ = rich
    catdir = tmp_path / "cats"
    catdir.mkdir()
    write_true_detector_catalogs(sim, catdir)
    (tmp_path / "mycatalogs.py").write_text(CATALOG_FUNCTION)
    step = GetWCSAdjustStep(
        custom_catalog_function=f"{tmp_path / 'mycatalogs.py'}:truth_catalog",
        custom_catalog_function_kwargs=repr({"directory": str(catdir)}),
        table_path=str(tmp_path / "custom.ecsv"),
    )
    with caplog.at_level(logging.INFO, logger="jwst_skymatch_plus"):
        step.run([str(f) for f in files])
    assert "source(s) from" in caplog.text
    assert list(step.table["measured"]) == [True] * 4
    result = ApplyWCSAdjustStep.call([str(f) for f in files], table=str(step.table_paths[0]))
    rel, worst = relative_errors(_models(result), sim)
    # Noise-free positions: only the fit's own approximations remain.
    assert rel.max() < 0.2 * TOLERANCE_PIX and worst.max() < 0.4 * TOLERANCE_PIX
    # Perfect catalogs: tiny but finite uncertainties, zero for tweakreg's reference.
    err = np.asarray(step.table["shift_error"])
    assert np.all(np.isfinite(err)) and err.max() < 0.005


def test_custom_catalog_function_errors_are_clear(rich, tmp_path):
    _, files, _, _ = rich
    (tmp_path / "bad.py").write_text("def nothing(model):\n    return {'ra': [1.0]}\n")
    cases = [
        ("no_such_module_xyz:f", ValueError, "cannot import"),
        (f"{tmp_path / 'bad.py'}:missing", ValueError, "no function"),
        ("just_a_name", ValueError, "package.module:function"),
        (f"{tmp_path / 'bad.py'}:nothing", ValueError, "needs x and y"),
    ]
    for spec, kind, text in cases:
        with pytest.raises(kind, match=text):
            GetWCSAdjustStep.call(
                [str(f) for f in files], custom_catalog_function=spec, table_path=str(tmp_path / "x.ecsv")
            )


@pytest.fixture(scope="module")
def offset_everywhere():
    """The rich field with every visit (the first too) 0.5 arcsec further off: unseen by relative fits."""
    shifted = {v: (dx + 0.5, dy - 0.3, droll) for v, (dx, dy, droll) in MISALIGNMENT.items()}
    # Uncrowded: in a crowded field the detected centroids of blends are off
    # the true positions of the catalog (relative fits do not see it: the
    # same blend is in every exposure).
    return simulate_mosaic(
        "miri", **{**LAYOUT, "misalignment": shifted}, n_sources=600, emission=1.0, scene_seed=21, seed=3
    )


def test_alignment_catalog_gives_absolute_positions(offset_everywhere, tmp_path):
    sim = offset_everywhere
    path = tmp_path / "gaia_like.ecsv"
    sim.source_catalog().write(path, format="ascii.ecsv")
    results = {}
    for label, extra in (("relative", {}), ("absolute", {"alignment_catalog": str(path)})):
        step = GetWCSAdjustStep(
            tweakreg_parameters="{'searchrad': 3.0}", table_path=str(tmp_path / f"{label}.ecsv"), **extra
        )
        step.run([m.copy() for m in sim.models])
        result = ApplyWCSAdjustStep.call([m.copy() for m in sim.models], table=str(step.table_paths[0]))
        mean, worst = alignment_errors(_models(result), sim.true_wcs, sim.layout.pixel_scale, relative=False)
        results[label] = (mean, worst, step.table)
    # Relative alignment keeps the common pointing error (about 9 MIRI pixels).
    assert results["relative"][0].min() > 3
    absolute, worst, table = results["absolute"]
    assert table.meta["absolute"] and all(table["measured"])
    assert absolute.max() < TOLERANCE_PIX and worst.max() < 2 * TOLERANCE_PIX


def test_nircam_modules_degrouped(tmp_path):
    """Module B's WCS ~2 pixels off A's: one correction per visit cannot fix both, one per module can."""
    module_offset = (0.12, -0.09)  # arcsec, ~1.9 and 1.4 NIRCam long-wave pixels
    sim = simulate_mosaic(
        "nircam_long",
        shape=(256, 256),
        tiles=(2, 1),
        tile_overlap=0.5,
        dithers=2,
        misalignment={1: (0.2, -0.1, 0.0), 2: (-0.15, 0.25, 0.0)},
        module_misalignment={"B": module_offset},
        n_sources=15000,
        emission=1.0,
        seed=4,
    )
    path = tmp_path / "ref.ecsv"
    sim.source_catalog().write(path, format="ascii.ecsv")
    modules = np.array([m.meta.instrument.module for m in sim.models])
    assert set(modules) == {"A", "B"}
    errors = {}
    for degroup in (False, True):
        step = GetWCSAdjustStep(
            alignment_catalog=str(path),
            # Pointing errors below 0.4 arcsec: a tight search keeps matches unambiguous.
            tweakreg_parameters="{'abs_searchrad': 1.0, 'abs_tolerance': 0.2}",
            degroup_nircam_modules=degroup,
            fitgeometry="shift",
            table_path=str(tmp_path / f"nrc_{degroup}.ecsv"),
        )
        step.run([m.copy() for m in sim.models])
        assert all(step.table["measured"])
        result = ApplyWCSAdjustStep.call([m.copy() for m in sim.models], table=str(step.table_paths[0]))
        mean, _ = alignment_errors(_models(result), sim.true_wcs, sim.layout.pixel_scale, relative=False)
        errors[degroup] = (mean, step.table)
    together, table = errors[False]
    assert set(table["module"]) == {""} and len(table) == 2
    assert together.max() > 0.5  # the modules' disagreement is left in one of them
    apart, table = errors[True]
    assert sorted(zip(table["visit"], table["module"], strict=True)) == [
        ("1", "A"),
        ("1", "B"),
        ("2", "A"),
        ("2", "B"),
    ]
    assert apart.max() < TOLERANCE_PIX


def test_method_by_instrument_and_bad_method(rich, tmp_path):
    _, files, _, _ = rich
    with pytest.raises(ValueError, match="no entry for instrument 'miri'"):
        GetWCSAdjustStep.call(
            [str(f) for f in files], method="{'nircam': 'tweakreg'}", table_path=str(tmp_path / "a.ecsv")
        )
    with pytest.raises(ValueError, match="use one of"):
        GetWCSAdjustStep.call([str(f) for f in files], method="phase", table_path=str(tmp_path / "b.ecsv"))


def test_existing_table_kept_without_overwrite(rich, tmp_path, caplog):
    _, files, _, step = rich
    again = GetWCSAdjustStep(overwrite=False, table_path=str(step.table_paths[0]))
    with caplog.at_level(logging.INFO, logger="jwst_skymatch_plus"):
        again.run([str(f) for f in files])
    assert "overwrite=False" in caplog.text
    assert np.array_equal(again.table["shift_ra"], step.table["shift_ra"])


def test_table_from_earlier_version_reads(rich, tmp_path):
    _, _, _, step = rich
    old = step.table.copy()
    old.remove_columns(["module", "shift_error", "correlation"])
    path = tmp_path / "old.ecsv"
    old.write(path, format="ascii.ecsv")
    back = read_wcs_adjust_table(path)
    assert list(back["module"]) == [""] * len(old) and np.all(np.isnan(back["shift_error"]))
    with pytest.raises(ValueError, match="not a WCS adjustment table"):
        Table({"a": [1]}).write(tmp_path / "junk.ecsv", format="ascii.ecsv")
        read_wcs_adjust_table(tmp_path / "junk.ecsv")


def test_cross_correlation_against_reference_image_is_absolute(tmp_path):
    shifted = {v: (dx + 0.5, dy - 0.3, droll) for v, (dx, dy, droll) in MISALIGNMENT.items()}
    sim = simulate_mosaic(
        "miri", **{**LAYOUT, "misalignment": shifted}, n_sources=0, emission=30.0, n_blobs=200, seed=3
    )
    # An earlier mosaic of the field, in other units and with another zero point.
    sim.write_reference_image(tmp_path / "ref.fits", gain=2.5, level=4.0)
    step = GetWCSAdjustStep(
        method="cross_corr", reference_image=str(tmp_path / "ref.fits"), table_path=str(tmp_path / "t.ecsv")
    )
    step.run([m.copy() for m in sim.models])
    assert step.table.meta["absolute"] and all(step.table["measured"])
    result = ApplyWCSAdjustStep.call([m.copy() for m in sim.models], table=str(step.table_paths[0]))
    before, _ = alignment_errors(sim.models, sim.true_wcs, sim.layout.pixel_scale, relative=False)
    mean, worst = alignment_errors(_models(result), sim.true_wcs, sim.layout.pixel_scale, relative=False)
    assert before.min() > 3  # every visit off, the first too
    assert mean.max() < TOLERANCE_PIX and worst.max() < 2 * TOLERANCE_PIX


def test_bad_reference_images_are_refused(tmp_path):
    from astropy.io import fits

    sim = simulate_mosaic("miri", shape=(128, 128), tiles=(2, 1), dithers=1, n_sources=0, seed=2)
    fits.PrimaryHDU(np.zeros((50, 50), np.float32)).writeto(tmp_path / "nowcs.fits")
    far = simulate_mosaic("miri", shape=(128, 128), tiles=(1, 1), dithers=1, center=(150.0, 2.0), seed=2)
    far.write_reference_image(tmp_path / "far.fits")
    for name, message in (
        ("nowcs.fits", "no 2-D image with a celestial WCS"),
        ("far.fits", "does not overlap"),
    ):
        with pytest.raises(ValueError, match=message):
            GetWCSAdjustStep.call(
                [m.copy() for m in sim.models],
                method="cross_corr",
                reference_image=str(tmp_path / name),
                table_path=str(tmp_path / "t.ecsv"),
            )


def test_steps_configure_the_package_loggers():
    """tweakwcs does the work of both steps: its messages must reach the user as the others' do."""
    for step in (GetWCSAdjustStep, ApplyWCSAdjustStep):
        loggers = step.get_stpipe_loggers()
        assert tuple(loggers) == tuple(PixelSkyMatchStep.get_stpipe_loggers())
        assert "tweakwcs" in loggers
