"""Bad files, bad metadata and bad parameters are refused with an error naming the exposure or parameter."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_models, levels_of
from stdatamodels.jwst import datamodels

from jwst_skymatch_plus import LevelMatchStep, PixelSkyMatchStep
from jwst_skymatch_plus.core.grouping import group_exposures
from jwst_skymatch_plus.pipeline import Image3PlusPipeline
from jwst_skymatch_plus.simulate import simulate_mosaic, write_association

ENV = {**os.environ, "STPIPE_DISABLE_CRDS_STEPPARS": "true"}
BIN = Path(sys.executable).parent
OFFLINE = {"tweakreg": {"skip": True}, "source_catalog": {"skip": True}}
SPOILED = 1  # index of the exposure spoiled (the pipeline reads the first member on its own too)


@pytest.fixture(scope="module")
def sim():
    """2 visits x 2 dithers of small MIRI detectors."""
    return simulate_mosaic("miri", shape=(64, 64), tiles=(2, 1), dithers=2, seed=5)


@pytest.fixture(scope="module")
def written(sim, tmp_path_factory):
    """The simulation on disk: its directory and association."""
    path = tmp_path_factory.mktemp("good")
    return path, sim.write(path)


def _nan_wcs(model):
    """The model's gwcs with NaN put into its first transform: every sky position is NaN."""
    from astropy.modeling.models import Shift

    wcs = model.meta.wcs
    frames = wcs.available_frames
    first = wcs.get_transform(frames[0], frames[1])
    wcs.set_transform(frames[0], frames[1], (Shift(np.nan) & Shift(np.nan)) | first)
    return wcs


def _cube_of(model):
    """A CubeModel (3 planes) carrying the model's metadata and WCS."""
    cube = datamodels.CubeModel(
        data=np.stack([model.data] * 3), err=np.stack([model.err] * 3), dq=np.stack([model.dq] * 3)
    )
    cube.update(model)
    cube.meta.wcs = model.meta.wcs
    cube.meta.wcsinfo = model.meta.wcsinfo
    cube.meta.filename = model.meta.filename
    return cube


def _spoil(path: Path, kind: str) -> None:
    if kind == "text":
        path.write_text("this is a text file, not an exposure\n" * 20)
    elif kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated_end":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 1000])  # the ASDF extension's data cut short
    elif kind == "cube":
        with datamodels.open(path) as model:
            cube = _cube_of(model)
        cube.save(path)
    elif kind == "nan_wcs":
        with datamodels.open(path) as model:
            model.meta.wcs = _nan_wcs(model)
            model.save(path)  # S_REGION in the header still says where it was


#: What the error must say about each kind of bad file (besides its name).
PROBLEM = {
    "text": "not a FITS file",
    "truncated": "truncated",
    "truncated_end": "truncated",
    "cube": "3-D",
    "nan_wcs": "NaN",
}


def _spoiled_copy(written, directory: Path, kind: str, index: int = SPOILED) -> tuple[Path, str]:
    """A copy of the simulation on disk with member ``index`` spoiled; the association and its name."""
    source, asn = written
    shutil.copytree(source, directory)
    name = json.loads(asn.read_text())["products"][0]["members"][index]["expname"]
    _spoil(directory / name, kind)
    return directory / asn.name, name


def _run(entry: str, asn: Path, out: Path) -> None:
    if entry == "pixel_skymatch":
        PixelSkyMatchStep.call(str(asn))
    elif entry == "level_match":
        LevelMatchStep.call(str(asn))
    else:
        Image3PlusPipeline.call(str(asn), output_dir=str(out), steps=OFFLINE)


@pytest.mark.parametrize(
    "entry, index", [("pixel_skymatch", SPOILED), ("level_match", SPOILED), ("calwebb_image3_plus", 0)]
)
@pytest.mark.parametrize("kind", list(PROBLEM))
def test_bad_member_file_is_named_with_its_problem(written, kind, entry, index, tmp_path):
    asn, name = _spoiled_copy(written, tmp_path / "in", kind, index)
    with pytest.raises((ValueError, OSError)) as info:
        _run(entry, asn, tmp_path / "out")
    message = str(info.value)
    assert name in message
    assert PROBLEM[kind] in message


def test_pipeline_names_an_unusable_wcs_before_tweakreg(written, tmp_path):
    asn, name = _spoiled_copy(written, tmp_path / "in", "nan_wcs")
    steps = {"source_catalog": {"skip": True}}  # tweakreg runs: it would fail in spherical geometry
    with pytest.raises(ValueError, match="NaN") as info:
        Image3PlusPipeline.call(str(asn), output_dir=str(tmp_path / "out"), steps=steps)
    assert name in str(info.value)


@pytest.mark.parametrize("kind", ["text", "truncated"])
def test_bad_file_in_a_list_of_files_is_named(written, kind, tmp_path):
    asn, name = _spoiled_copy(written, tmp_path / "in", kind)
    files = [str(asn.parent / m["expname"]) for m in json.loads(asn.read_text())["products"][0]["members"]]
    with pytest.raises(OSError, match=PROBLEM[kind]) as info:
        PixelSkyMatchStep.call(files)
    assert name in str(info.value)


@pytest.mark.parametrize("kind", ["cube", "nan_wcs"])
@pytest.mark.parametrize("step", [PixelSkyMatchStep, LevelMatchStep])
def test_bad_model_in_memory_is_named(sim, step, kind):
    models = copy_models(sim)
    if kind == "cube":
        models[SPOILED] = _cube_of(models[SPOILED])
    else:
        models[SPOILED].meta.wcs = _nan_wcs(models[SPOILED])
    with pytest.raises(ValueError, match=PROBLEM[kind]) as info:
        step.call(models)
    assert sim.models[SPOILED].meta.filename in str(info.value)


# ------------------------------------------------------------------- grouping


@pytest.mark.parametrize("key", ["meta.observation.nonexistent", "meta.observation.visit_numbr"])
def test_grouping_key_no_exposure_has_is_refused(sim, key):
    metas = [dict(m.get_crds_parameters()) for m in sim.models]
    with pytest.raises(ValueError, match=key):
        group_exposures(metas, key)
    with pytest.raises(ValueError, match=key):
        PixelSkyMatchStep.call(copy_models(sim), grouping=f"visit+{key}")


def test_grouping_key_some_exposures_lack_is_warned(sim, caplog):
    metas = [dict(m.get_crds_parameters()) for m in sim.models]
    metas[2]["meta.observation.visit_group"] = None
    groups = group_exposures(metas, "meta.observation.visit_group")
    assert groups == [[0, 1, 3], [2]]
    assert "meta.observation.visit_group" in caplog.text and sim.models[2].meta.filename in caplog.text


# ---------------------------------------------------------------------- units


@pytest.mark.parametrize("step", [PixelSkyMatchStep, LevelMatchStep])
def test_exposures_not_in_surface_brightness_are_refused(sim, step):
    models = copy_models(sim)
    for model in models:
        model.meta.bunit_data = "DN/s"
    with pytest.raises(ValueError, match="DN/s") as info:
        step.call(models)
    assert "surface brightness" in str(info.value)
    assert all(m.meta.filename in str(info.value) for m in sim.models)


def test_other_surface_brightness_units_are_accepted(sim):
    models = copy_models(sim)
    for model in models:
        model.meta.bunit_data = "MJy sr-1"
    assert np.isfinite(levels_of(PixelSkyMatchStep.call(models))).all()


# ----------------------------------------------------------------- parameters


@pytest.mark.parametrize("step", [PixelSkyMatchStep, LevelMatchStep])
@pytest.mark.parametrize(
    "name, value",
    [("dqbits", "NOT_A_FLAG"), ("background_times", "abc"), ("background_times", "60000.1,nan")],
)
def test_bad_parameter_is_named(sim, step, name, value):
    with pytest.raises(ValueError, match=name):
        step.call(copy_models(sim), **{name: value})


def test_pipeline_refuses_a_bad_step_parameter_before_running(written, tmp_path, monkeypatch):
    _, asn = written
    tweakreg_ran = []
    monkeypatch.setattr(
        Image3PlusPipeline, "_regroup_for_tweakreg", lambda *args: tweakreg_ran.append(1) or None
    )
    steps = {**OFFLINE, "skymatch": {"dqbits": "NOT_A_FLAG"}}
    with pytest.raises(ValueError, match="dqbits"):
        Image3PlusPipeline.call(str(asn), output_dir=str(tmp_path), steps=steps)
    assert not tweakreg_ran


@pytest.mark.parametrize("pixfrac", [0.0, -0.5])
def test_pixfrac_must_be_positive(sim, pixfrac):
    with pytest.raises(ValueError, match="pixfrac"):
        PixelSkyMatchStep.call(copy_models(sim), pixfrac=pixfrac)


@pytest.mark.parametrize("step", [PixelSkyMatchStep, LevelMatchStep])
def test_grid_too_large_for_memory_is_refused_before_allocating(sim, step):
    import tracemalloc

    # 1e-3 native pixels: about 4e9 grid pixels per 64 x 64 exposure (OOM today).
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"grid_scale=0\.001.*pixels") as info:
            step.call(copy_models(sim), grid_scale=1e-3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "e+09" in str(info.value) or "GB" in str(info.value)
    assert peak < 200e6


@pytest.mark.parametrize(
    "region, problem",
    [("40:20,:", "reversed"), (":,50:10", "reversed"), ("735:,:290", "outside"), (":,100:", "outside")],
)
def test_bad_excluded_regions_are_refused(sim, region, problem):
    with pytest.raises(ValueError, match=f"excluded_regions.*{problem}") as info:
        PixelSkyMatchStep.call(copy_models(sim), excluded_regions=region)
    if problem == "outside":
        assert sim.models[0].meta.filename in str(info.value)


def test_excluded_regions_as_a_python_list(sim):
    region = "40:,:20"
    expected = levels_of(PixelSkyMatchStep.call(copy_models(sim), excluded_regions=region))
    pieces = levels_of(PixelSkyMatchStep.call(copy_models(sim), excluded_regions=["40:", ":20"]))
    whole = levels_of(
        PixelSkyMatchStep.call(copy_models(sim), excluded_regions=[region, "0:5,0:5"]),
    )
    both = levels_of(PixelSkyMatchStep.call(copy_models(sim), excluded_regions=f"{region};0:5,0:5"))
    np.testing.assert_array_equal(pieces, expected)
    np.testing.assert_array_equal(whole, both)
    # The region matters (else the comparisons above prove nothing).
    assert not np.array_equal(expected, levels_of(PixelSkyMatchStep.call(copy_models(sim))))


def _saved_levels(directory: Path) -> np.ndarray:
    levels = []
    for path in sorted(directory.glob("*.fits")):
        with datamodels.open(path) as model:
            levels.append(model.meta.background.level)
    return np.array(levels, dtype=float)


def test_comma_separated_parameters_from_strun_and_parameter_files(sim, written, tmp_path):
    """The documented comma forms of excluded_regions and background_times work everywhere."""
    _, asn = written
    t_last = max(m.meta.exposure.mid_time for m in sim.models)
    times = f"{t_last - 5:.6f},{t_last + 0.01:.6f}"
    params = {
        "excluded_regions": "40:,:20",
        "background_times": times,
        "reference": "closest_to_background",
    }
    expected = np.sort(levels_of(PixelSkyMatchStep.call(copy_models(sim), **params)))

    out = tmp_path / "strun"
    proc = subprocess.run(
        [
            str(BIN / "strun"),
            "pixel_skymatch",
            str(asn),
            "--excluded_regions=40:,:20",
            f"--background_times={times}",
            "--reference=closest_to_background",
            f"--output_dir={out}",
            "--save_results=true",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(np.sort(_saved_levels(out)), expected, rtol=1e-6, atol=1e-9)

    # The documented example itself reaches the step whole (it lies outside these small detectors).
    proc = subprocess.run(
        [str(BIN / "strun"), "pixel_skymatch", str(asn), "--excluded_regions=735:,:290"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "region '735:,:290' lies outside" in proc.stdout + proc.stderr

    # Parameter files: the string as written, and the list configobj makes of it.
    for form, value in (("string", params), ("list", {**params, "excluded_regions": ["40:", ":20"]})):
        path = tmp_path / f"params_{form}.asdf"
        step = PixelSkyMatchStep(**value)
        step.export_config(path)
        result = PixelSkyMatchStep.call(copy_models(sim), config_file=str(path))
        np.testing.assert_allclose(np.sort(levels_of(result)), expected, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------- pipeline


def test_empty_association_is_called_empty(tmp_path):
    asn = write_association([], tmp_path)
    with pytest.raises(ValueError, match="empty") as info:
        Image3PlusPipeline.call(str(asn), output_dir=str(tmp_path), steps=OFFLINE)
    assert "background observations" not in str(info.value)


def test_pipeline_family_lists_from_strun(tmp_path):
    """Comma-separated instrument families reach the pipeline from the command line."""
    asn = write_association([], tmp_path)
    proc = subprocess.run(
        [
            str(BIN / "strun"),
            "calwebb_image3_plus",
            str(asn),
            "--tweakreg_group_dithers=miri,nircam_long",
            "--skymatch_degroup_dithers=miri,nircam_short",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    output = proc.stdout + proc.stderr
    assert "wrong type" not in output
    assert "empty" in output
