"""calwebb_image3_plus: grouping control, background observations, per-exposure products."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import read_models
from stdatamodels.jwst import datamodels

from jwst_skymatch_plus import LevelMatchStep, PixelSkyMatchStep
from jwst_skymatch_plus.background import BackgroundRule, background_times
from jwst_skymatch_plus.core.grouping import instrument_family, parse_families, regrouped_id
from jwst_skymatch_plus.inputs import read_exposures
from jwst_skymatch_plus.pipeline import Image3PlusPipeline
from jwst_skymatch_plus.simulate import simulate_mosaic, write_association

ENV = {**os.environ, "STPIPE_DISABLE_CRDS_STEPPARS": "true"}
BIN = Path(sys.executable).parent
OFFLINE = {"tweakreg": {"skip": True}, "source_catalog": {"skip": True}}

# A bright compact source injected at a known sky position (pixels: sigma 1.5).
SOURCE_AMPLITUDE = 400.0
SOURCE_SIGMA = 1.5


def _hashes(directory: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _inject_source(models, ra: float, dec: float) -> None:
    for model in models:
        # Outside an exposure's bounding box gwcs returns NaN: evaluate without it.
        x0, y0 = model.meta.wcs.invert(ra, dec, with_bounding_box=False)
        ny, nx = model.data.shape
        y, x = np.mgrid[:ny, :nx]
        model.data += (
            SOURCE_AMPLITUDE * np.exp(-0.5 * ((x - x0) ** 2 + (y - y0) ** 2) / SOURCE_SIGMA**2)
        ).astype(model.data.dtype)


@pytest.fixture(scope="module")
def mosaic_dir(tmp_path_factory):
    """Six MIRI exposures (3 visits x 2 dithers), the last member a background observation."""
    sim = simulate_mosaic("miri", shape=(128, 128), tiles=(3, 1), dithers=2, visit_offset_sigma=1.0, seed=3)
    # The source sits at the centre of the first exposure's detector.
    ra, dec = sim.models[0].meta.wcs(63.5, 63.5)
    _inject_source(sim.models, ra, dec)
    path = tmp_path_factory.mktemp("image3plus")
    sim.write(path)
    names = list(sim.filenames)
    asn = write_association(names, path, exptypes=["science"] * (len(names) - 1) + ["background"])
    return sim, asn, (ra, dec)


@pytest.fixture(scope="module")
def products(mosaic_dir, tmp_path_factory):
    """One pipeline run with per-exposure drizzle and blot products."""
    sim, asn, _ = mosaic_dir
    before = _hashes(asn.parent)
    out = tmp_path_factory.mktemp("products")
    Image3PlusPipeline.call(
        str(asn), output_dir=str(out), save_results=True, do_drizzle=True, do_blot=True, steps=OFFLINE
    )
    assert _hashes(asn.parent) == before, "an input file changed"
    return sim, out


def _stem(name: str) -> str:
    return name.replace("_cal.fits", "")


def _centroid(image: np.ndarray, x0: float, y0: float, half: int = 7) -> tuple[float, float, float]:
    """Background-subtracted centroid and sum in a box around (x0, y0)."""
    xi, yi = round(x0), round(y0)
    box = image[yi - half : yi + half + 1, xi - half : xi + half + 1].astype(float)
    ring = np.concatenate([box[0], box[-1], box[1:-1, 0], box[1:-1, -1]])
    box = box - np.nanmedian(ring)
    y, x = np.mgrid[yi - half : yi + half + 1, xi - half : xi + half + 1]
    total = np.nansum(box)
    return float(np.nansum(x * box) / total), float(np.nansum(y * box) / total), float(total)


# ---------------------------------------------------------------- grouping


def test_instrument_families_and_regrouped_ids():
    base = {
        "meta.instrument.name": "NIRCAM",
        "meta.observation.program_number": "01234",
        "meta.observation.observation_number": "001",
        "meta.observation.visit_number": "001",
        "meta.observation.visit_group": "01",
        "meta.observation.sequence_id": "1",
        "meta.observation.activity_id": "01",
    }
    metas = [
        {
            **base,
            "meta.instrument.detector": det,
            "meta.instrument.module": det[3],
            "meta.observation.exposure_number": str(e),
        }
        for e in (1, 2)
        for det in ("NRCA1", "NRCA2", "NRCB1", "NRCALONG")
    ]
    assert [instrument_family(m) for m in metas[:4]] == ["nircam_short"] * 3 + ["nircam_long"]
    assert instrument_family({"meta.instrument.name": "MIRI"}) == "miri"

    def n_groups(**kw):
        return len({regrouped_id(m, **kw) for m in metas})

    assert n_groups() == 2  # jwst's grouping: one group per exposure, all detectors together
    assert n_groups(group_dithers=True) == 1
    assert n_groups(split_modules=True) == 4
    assert n_groups(split_short_chips=True) == 2 * 4  # A1, A2, B1 and the long chip per exposure
    assert n_groups(group_dithers=True, split_modules=True, split_short_chips=True) == 4
    with pytest.raises(ValueError, match="unknown instrument family"):
        parse_families("miri,nirspec", "tweakreg_group_dithers")
    assert parse_families(" MIRI , nircam_long", "x") == {"miri", "nircam_long"}


def test_tweakreg_sees_the_grouping_asked_for_then_jwst_grouping(mosaic_dir, tmp_path, monkeypatch):
    _, asn, _ = mosaic_dir
    seen = {}

    from jwst.tweakreg.tweakreg_step import TweakRegStep

    # A stand-in for tweakreg that records what it was given (the real one
    # needs source catalogs this offline test does not build).
    def record(self, library):
        seen["groups"] = sorted(library.group_names)
        seen["model_ids"] = read_models(library, lambda model: model.meta.group_id)
        return library

    monkeypatch.setattr(TweakRegStep, "process", record)
    for in_memory in (True, False):
        out = tmp_path / f"mem{in_memory}"
        Image3PlusPipeline.call(
            str(asn),
            output_dir=str(out),
            save_results=True,
            in_memory=in_memory,
            tweakreg_group_dithers="miri",
            steps={"source_catalog": {"skip": True}},
        )
        # 5 science exposures in 3 visits: tweakreg saw the visits ...
        assert len(seen["groups"]) == 3
        assert len(set(seen["model_ids"])) == 3
        # ... and outlier detection jwst's one group per exposure again.
        crf = sorted(out.glob("*_crf.fits"))
        assert len(crf) == 5
        ids = {datamodels.open(p).meta.group_id for p in crf}
        assert len(ids) == 5


def test_skymatch_grouping_switches(mosaic_dir, tmp_path):
    _, asn, _ = mosaic_dir
    from astropy.table import Table

    n_groups = {}
    for switch in ("skymatch_group_dithers", "skymatch_degroup_dithers"):
        out = tmp_path / switch
        pipe = Image3PlusPipeline(output_dir=str(out), save_results=True, steps=OFFLINE, **{switch: "miri"})
        pipe.skymatch.match_within_groups = False
        pipe.run(str(asn))
        table = Table.read(out / "sim_mosaic_skymatch_offsets.ecsv")
        n_groups[switch] = len(set(table["group"]))
    assert n_groups == {"skymatch_group_dithers": 3, "skymatch_degroup_dithers": 5}


def test_conflicting_grouping_switches_are_refused(mosaic_dir, tmp_path):
    _, asn, _ = mosaic_dir
    with pytest.raises(ValueError, match="listed in both"):
        Image3PlusPipeline.call(
            str(asn),
            output_dir=str(tmp_path),
            skymatch_group_dithers="miri",
            skymatch_degroup_dithers="miri,nircam_long",
            steps=OFFLINE,
        )


# ------------------------------------------------------ background observations


def test_background_rules(mosaic_dir):
    sim, asn, _ = mosaic_dir
    by_asn = read_exposures(asn)
    assert [e.background for e in by_asn] == [False] * (len(sim.models) - 1) + [True]
    times = background_times(by_asn)
    assert times == [pytest.approx(sim.models[-1].meta.exposure.mid_time)]
    # A name rule adds exposures the association calls science.
    first = Path(sim.filenames[0]).name
    by_name = read_exposures(asn, BackgroundRule("name", name=first[:20]))
    assert by_name[0].background and by_name[-1].background
    # The observatory's own keyword.
    model = sim.models[1].copy()
    model.meta.observation.bkgdtarg = True
    flagged = read_exposures([sim.models[0], model], BackgroundRule("keyword"))
    assert [e.background for e in flagged] == [False, True]
    with pytest.raises(ValueError, match="Unknown background rule"):
        BackgroundRule("nonsense")
    assert BackgroundRule("parallel_off").check_type == "parallel"  # PJPipe's name


def test_background_observation_left_out_then_processed_like_science(mosaic_dir, products, tmp_path):
    sim, asn, _ = mosaic_dir
    _, out = products
    background = _stem(Path(sim.filenames[-1]).name)
    crf = [p.name for p in out.glob("*_crf.fits")]
    assert len(crf) == len(sim.models) - 1
    assert not any(background in name for name in crf)
    assert len(list(out.glob("*_i2d_single.fits"))) == len(sim.models) - 1

    like = tmp_path / "like_science"
    Image3PlusPipeline.call(
        str(asn), output_dir=str(like), save_results=True, process_bgr_like_science=True, steps=OFFLINE
    )
    assert any(background in p.name for p in like.glob("*_crf.fits"))
    assert len(list(like.glob("*_crf.fits"))) == len(sim.models)


def test_background_times_become_the_sky_reference(mosaic_dir, tmp_path):
    sim, asn, _ = mosaic_dir
    pipe = Image3PlusPipeline(output_dir=str(tmp_path), save_results=True, steps=OFFLINE)
    pipe.skymatch.reference = "closest_to_background"
    pipe.run(str(asn))
    assert float(pipe.skymatch.background_times) == pytest.approx(sim.models[-1].meta.exposure.mid_time)
    # The exposure closest in time to the background observation (the one
    # taken just before it) is the zero point.
    crf = sorted(tmp_path.glob("*_crf.fits"), key=lambda p: datamodels.open(p).meta.exposure.mid_time)
    with datamodels.open(crf[-1]) as last:
        assert last.meta.background.level == pytest.approx(0.0, abs=1e-9)


def _spy(original, seen: dict):
    """A step's ``process`` that records the exposures it returned and its background times."""

    def process(self, input_models):
        result = original(self, input_models)
        with result:
            names = [result.read_metadata(i)["meta.filename"] for i in range(len(result))]
        seen[type(self).__name__] = (names, self.background_times)
        return result

    return process


def test_steps_alone_treat_a_background_member_as_the_pipeline_does(mosaic_dir, tmp_path, monkeypatch):
    """One way in: a step given the association works on what it gets inside calwebb_image3_plus."""
    sim, asn, _ = mosaic_dir
    in_pipeline, alone = {}, {}
    for step in (LevelMatchStep, PixelSkyMatchStep):
        monkeypatch.setattr(step, "process", _spy(step.process, in_pipeline))
    steps = {**OFFLINE, "level_match": {"skip": False}}
    Image3PlusPipeline.call(str(asn), output_dir=str(tmp_path), steps=steps)
    monkeypatch.undo()
    for step in (LevelMatchStep, PixelSkyMatchStep):
        monkeypatch.setattr(step, "process", _spy(step.process, alone))
        step.call(str(asn))
    assert alone == in_pipeline
    seen = alone
    background = Path(sim.filenames[-1]).name
    for names, times in seen.values():
        assert sorted(names) == sorted(Path(f).name for f in sim.filenames[:-1])
        assert float(times) == pytest.approx(sim.models[-1].meta.exposure.mid_time)
    assert background not in str(seen)


# ------------------------------------------------------- per-exposure products


def test_drizzled_single_geometry_and_flux(mosaic_dir, products):
    sim, _, (ra, dec) = mosaic_dir
    _, out = products
    stem = _stem(Path(sim.filenames[0]).name)
    single_path = next(out.glob(f"{stem}*_i2d_single.fits"))
    with datamodels.open(single_path) as single, datamodels.open(out / "sim_mosaic_i2d.fits") as mosaic:
        assert single.data.shape == mosaic.data.shape
        xm, ym = mosaic.meta.wcs.invert(ra, dec)
        xs, ys, flux_single = _centroid(single.data, xm, ym)
        area_out = single.meta.photometry.pixelarea_steradians
    exposure = sim.models[0]
    xe, ye, flux_exposure = _centroid(exposure.data, *exposure.meta.wcs.invert(ra, dec))
    # The centroid of a drizzled, well-sampled source lands within a few
    # hundredths of a pixel of its sky position (noise: ~0.003 px here).
    assert np.hypot(xs - xm, ys - ym) < 0.05
    assert np.hypot(xe - 63.5, ye - 63.5) < 0.05
    # Surface brightness x pixel area (flux) is conserved by the square kernel;
    # the noise in the box is 0.1 x 15 px = 1.5 against a sum of ~5700.
    area_in = exposure.meta.photometry.pixelarea_steradians
    assert flux_single * area_out == pytest.approx(flux_exposure * area_in, rel=0.01)


def test_blotted_mosaic_geometry_and_values(mosaic_dir, products):
    sim, _, _ = mosaic_dir
    _, out = products
    stem = _stem(Path(sim.filenames[0]).name)
    with datamodels.open(next(out.glob(f"{stem}*_i2d_blot.fits"))) as blot:
        assert blot.data.shape == sim.models[0].data.shape
        xb, yb, flux_blot = _centroid(blot.data, 63.5, 63.5)
        blotted = blot.data
    with datamodels.open(next(out.glob(f"{stem}*_crf.fits"))) as crf:
        exposure = crf.data - crf.meta.background.level
        good = (crf.dq & 1) == 0
    assert np.hypot(xb - 63.5, yb - 63.5) < 0.05
    _, _, flux_exposure = _centroid(sim.models[0].data, 63.5, 63.5)
    # Blotting a drizzled image smooths it; the sum over the box is kept to ~1%.
    assert flux_blot == pytest.approx(flux_exposure, rel=0.02)
    # Away from the source the blotted mosaic is the exposure's own sky-matched
    # data: the median difference is the sky-matching error plus the median's
    # noise (0.1 per pixel over ~16000 pixels: ~0.001).
    diff = (blotted - exposure)[good & np.isfinite(blotted)]
    assert abs(np.median(diff)) < 0.01


def test_bad_blot_fill_value_is_refused(mosaic_dir, tmp_path):
    _, asn, _ = mosaic_dir
    with pytest.raises(ValueError, match="blot_fillval"):
        Image3PlusPipeline.call(
            str(asn),
            output_dir=str(tmp_path),
            save_results=True,
            do_blot=True,
            blot_fillval="none",
            steps=OFFLINE,
        )


# ------------------------------------------------------------------ strun


def test_strun_with_options_is_rerun_safe(mosaic_dir, tmp_path):
    _, asn, _ = mosaic_dir
    args = [
        str(BIN / "strun"),
        "calwebb_image3_plus",
        str(asn),
        "--steps.tweakreg.skip=true",
        "--steps.source_catalog.skip=true",
        "--do_drizzle=true",
        "--skymatch_degroup_dithers=miri",
        f"--output_dir={tmp_path}",
    ]
    results = []
    for _ in range(2):
        proc = subprocess.run(args, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        with datamodels.open(tmp_path / "sim_mosaic_i2d.fits") as m:
            results.append(m.data.copy())
        assert len(list(tmp_path.glob("*_i2d_single.fits"))) == 5
    np.testing.assert_array_equal(results[0], results[1])
    assert not list(tmp_path.glob(".*")), "temporary files left behind"


# ------------------------------------------------------------------ bad input


def test_association_of_background_observations_only_is_refused(mosaic_dir, tmp_path):
    sim, asn, _ = mosaic_dir
    only_background = write_association(
        list(sim.filenames), asn.parent, product_name="bgr_only", exptypes=["background"] * len(sim.filenames)
    )
    with pytest.raises(ValueError, match="No science exposures"):
        Image3PlusPipeline.call(str(only_background), output_dir=str(tmp_path), steps=OFFLINE)


def test_single_exposure_still_makes_a_mosaic(mosaic_dir, tmp_path, caplog):
    sim, asn, _ = mosaic_dir
    single = write_association([sim.filenames[0]], asn.parent, product_name="one_exposure")
    Image3PlusPipeline.call(str(single), output_dir=str(tmp_path), save_results=True, steps=OFFLINE)
    assert (tmp_path / "one_exposure_i2d.fits").exists()
    assert "nothing to match" in caplog.text


def test_background_only_association_processed_like_science(mosaic_dir, tmp_path):
    sim, asn, _ = mosaic_dir
    only_background = write_association(
        list(sim.filenames[:2]), asn.parent, product_name="bgr_pair", exptypes=["background"] * 2
    )
    Image3PlusPipeline.call(
        str(only_background),
        output_dir=str(tmp_path),
        save_results=True,
        process_bgr_like_science=True,
        steps=OFFLINE,
    )
    assert (tmp_path / "bgr_pair_i2d.fits").exists()


def test_optional_level_match_stage(mosaic_dir, tmp_path):
    from jwst_skymatch_plus.pipeline import Image3PlusPipeline as Pipe

    assert Pipe().level_match.skip  # off unless asked for
    _, asn, _ = mosaic_dir
    Pipe.call(
        str(asn),
        output_dir=str(tmp_path),
        save_results=True,
        steps={**OFFLINE, "level_match": {"skip": False}},
    )
    crf = sorted(tmp_path.glob("*_crf.fits"))
    with datamodels.open(crf[0]) as model:
        record = model.meta.instance["skymatch_plus"]
        assert set(record) == {"level_match", "pixel_skymatch"}
        assert model.meta.cal_step.skymatch == "COMPLETE"
    assert (tmp_path / "sim_mosaic_level_match.ecsv").exists()


def test_optional_wcs_adjust_stages_align_misaligned_visits(tmp_path):
    """get_wcs_adjust measures this band (cross_corr), apply_wcs_adjust applies it, then sky matching."""
    from jwst_skymatch_plus.pipeline import Image3PlusPipeline as Pipe
    from jwst_skymatch_plus.simulate import alignment_errors

    assert Pipe().get_wcs_adjust.skip and Pipe().apply_wcs_adjust.skip  # off unless asked for
    misalignment = {1: (0.0, 0.0, 0.0), 2: (0.6, -0.4, 0.0), 3: (-0.5, 0.5, 0.0)}
    sim = simulate_mosaic(
        "miri",
        shape=(160, 160),
        tiles=(3, 1),
        tile_overlap=0.5,
        dithers=2,
        misalignment=misalignment,
        n_sources=0,
        emission=30.0,
        n_blobs=120,
        seed=6,
    )
    asn = sim.write(tmp_path / "in")
    out = tmp_path / "out"
    steps = {
        **OFFLINE,
        "get_wcs_adjust": {"skip": False, "method": "cross_corr", "fitgeometry": "shift"},
        "apply_wcs_adjust": {"skip": False},
        "skymatch": {"alignment_check": "error"},  # misaligned visits would stop the run here
    }
    Pipe.call(str(asn), output_dir=str(out), save_results=True, steps=steps)
    assert (out / "sim_mosaic_wcs_adjust.ecsv").exists()
    crf = [datamodels.open(p) for p in sorted(out.glob("*_crf.fits"))]
    assert len(crf) == len(sim.models)
    assert all("wcs_adjust" in m.meta.instance["skymatch_plus"] for m in crf)
    rel, _ = alignment_errors(crf, sim.true_wcs, sim.layout.pixel_scale)
    assert rel.max() < 0.05


def test_unmeasurable_exposure_is_named_with_its_level_source(tmp_path, caplog):
    # As in PixelSkyMatchStep alone: an all-NaN exposure takes its visit's
    # level, named in a WARNING, and its product records where that came from.
    import logging

    sim = simulate_mosaic("miri", shape=(128, 128), tiles=(2, 1), dithers=2, seed=5)
    sim.models[1].data[:] = np.nan
    sim.write(tmp_path / "in")
    asn = write_association(list(sim.filenames), tmp_path / "in", product_name="nan_member")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        Image3PlusPipeline.call(str(asn), output_dir=str(out), save_results=True, steps=OFFLINE)
    bad = sim.filenames[1]
    assert any(bad in r.getMessage() and "not measured" in r.getMessage() for r in caplog.records)
    (crf,) = out.glob(bad.replace("_cal.fits", "") + "*_crf.fits")
    with datamodels.open(crf) as model:
        record = model.meta.instance["skymatch_plus"]["pixel_skymatch"]
        assert record["status"] == "group" and "no usable pixels" in record["reason"]
        assert model.meta.cal_step.skymatch == "COMPLETE"
