"""Wiring into the JWST ecosystem: entry points, strun, the pipeline, parameter files."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_models
from stdatamodels.jwst import datamodels

from jwst_skymatch_plus import Image3PlusPipeline, PixelSkyMatchStep
from jwst_skymatch_plus.cli import collect_cfgs
from jwst_skymatch_plus.integration import get_steps
from jwst_skymatch_plus.simulate import simulate_mosaic

ENV = {**os.environ, "STPIPE_DISABLE_CRDS_STEPPARS": "true"}
BIN = Path(sys.executable).parent


def strun(*args, cwd):
    proc = subprocess.run(
        [str(BIN / "strun"), *map(str, args)], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_entry_points_resolve():
    from stpipe.entry_points import get_steps as stpipe_steps
    from stpipe.utilities import import_class

    ours = {(s.class_name, s.class_alias) for s in stpipe_steps() if s.package_name == "jwst-skymatch-plus"}
    assert {(c, a) for c, a, _ in get_steps()} <= ours
    for class_path, alias, is_pipeline in get_steps():
        cls = import_class(class_path)
        # PixelSkyMatchStep records itself under the stock step's key
        # (meta.cal_step.skymatch); strun finds it by the entry point's alias.
        expected = "skymatch" if alias == "pixel_skymatch" else alias
        assert cls.class_alias == expected
        assert hasattr(cls, "step_defs") == is_pipeline


@pytest.fixture(scope="module")
def association(tmp_path_factory):
    sim = simulate_mosaic("miri", shape=(128, 128), tiles=(2, 2), dithers=2, visit_offset_sigma=1.0, seed=7)
    path = tmp_path_factory.mktemp("asn")
    return sim, sim.write(path)


def test_strun_by_alias_and_class(association, tmp_path):
    _, asn = association
    out = strun("pixel_skymatch", asn, "--fit_type=level+slope", f"--output_dir={tmp_path}", cwd=tmp_path)
    assert "Sky matching" in out
    out = strun("jwst_skymatch_plus.PixelSkyMatchStep", asn, f"--output_dir={tmp_path}", cwd=tmp_path)
    assert "PixelSkyMatchStep done" in out


def test_exported_parameter_file_runs_with_strun(association, tmp_path):
    _, asn = association
    pars = tmp_path / "my_params.asdf"
    PixelSkyMatchStep(fit_type="level+slope", grid_scale=2.0).export_config(str(pars))
    out = strun(pars, asn, f"--output_dir={tmp_path}", cwd=tmp_path)
    assert "fit_type: level+slope" in out and "grid_scale: 2.0" in out


def test_collected_parameter_files(tmp_path):
    files = collect_cfgs(tmp_path)
    names = {f.name for f in files}
    for _, alias, _ in get_steps():
        assert f"{alias}.asdf" in names and f"{alias}.cfg" in names
    cfg = (tmp_path / "pixel_skymatch.cfg").read_text()
    assert 'class = "jwst_skymatch_plus.PixelSkyMatchStep"' in cfg


def _seam_scatter(sim, i2d_path):
    """Scatter of the mosaic's background: block medians of (mosaic - true scene)."""
    with datamodels.open(i2d_path) as i2d:
        resid = i2d.data - sim.true_sky(i2d.meta.wcs, i2d.data.shape)
        resid[(i2d.wht <= 0) | ~np.isfinite(resid)] = np.nan
    b = 16
    ny, nx = (s // b * b for s in resid.shape)
    blocks = (
        resid[:ny, :nx].reshape(ny // b, b, nx // b, b).transpose(0, 2, 1, 3).reshape(ny // b, nx // b, -1)
    )
    full = np.isfinite(blocks).mean(axis=-1) > 0.9
    return np.nanstd(np.nanmedian(blocks[full], axis=-1))


@pytest.mark.slow
def test_calwebb_image3_plus_removes_seams(association, tmp_path):
    sim, asn = association
    common = ["--steps.tweakreg.skip=true", "--steps.source_catalog.skip=true"]
    strun(
        "calwebb_image3",
        asn,
        *common,
        "--steps.skymatch.skip=true",
        f"--output_dir={tmp_path / 'raw'}",
        cwd=tmp_path,
    )
    strun("calwebb_image3_plus", asn, *common, f"--output_dir={tmp_path / 'plus'}", cwd=tmp_path)
    before = _seam_scatter(sim, tmp_path / "raw" / "sim_mosaic_i2d.fits")
    after = _seam_scatter(sim, tmp_path / "plus" / "sim_mosaic_i2d.fits")
    # Before: the visit offsets (sigma 1) show up between blocks.  After: only
    # noise remains, 0.1 per pixel averaged over 256-pixel blocks (< 0.01).
    assert before > 0.3
    assert after < 0.02
    crf = sorted((tmp_path / "plus").glob("*_crf.fits"))
    assert crf
    with datamodels.open(crf[0]) as m:
        assert m.meta.background.method == "match"
        assert m.meta.cal_step.skymatch == "COMPLETE"


@pytest.mark.slow
def test_python_override_of_image3pipeline(association, tmp_path):
    from jwst.pipeline import Image3Pipeline

    sim, asn = association
    pipe = Image3Pipeline()
    pipe.skymatch = PixelSkyMatchStep(name="skymatch", parent=pipe)
    pipe.tweakreg.skip = True
    pipe.source_catalog.skip = True
    pipe.output_dir = str(tmp_path)
    pipe.save_results = True
    pipe.run(str(asn))
    crf = sorted(tmp_path.glob("*_crf.fits"))
    assert len(crf) == len(sim.models)
    with datamodels.open(crf[0]) as m:
        assert m.meta.background.method == "match"
    assert _seam_scatter(sim, tmp_path / "sim_mosaic_i2d.fits") < 0.02


def test_pipeline_class_swaps_only_skymatch():
    from jwst.pipeline import Image3Pipeline

    assert Image3PlusPipeline.step_defs["skymatch"] is PixelSkyMatchStep
    for name, cls in Image3Pipeline.step_defs.items():
        if name != "skymatch":
            assert Image3PlusPipeline.step_defs[name] is cls


def test_in_memory_models_via_python_api(small_mosaic):
    result = PixelSkyMatchStep.call(copy_models(small_mosaic), grouping="exposure")
    assert len(result) == len(small_mosaic.models)
