"""pytest plugin: run jwst's own sky-matching tests offline, with our classes swapped in.

Loaded only by the conformance subprocess (``-p skymatch_plus_conformance``,
see ``tests/test_jwst_conformance.py``); nothing here touches the rest of our
test suite.  It provides:

- an offline stand-in for CRDS: ``stpipe.crds_client.get_multiple_reference_paths``
  (which ``stpipe.crds_client.get_reference_file`` and the pipeline's
  reference precaching both look up as a module attribute) answers
  ``distortion`` with a NIRCam distortion reference file made here from
  pysiaf's Sci->Tel transforms, and ``N/A`` for every other type;
  ``get_context_used`` answers a fixed context name instead of asking the
  server;
- the ``tmp_cwd`` and ``tmp_cwd_module`` fixtures jwst's tests use (jwst's
  ``conftest.py`` is not loaded: the run passes ``--noconftest``);
- the swap, chosen by environment variables:

  ``SKYMATCH_PLUS_CONFORMANCE_CLASS``
      ``plus`` (default): ``jwst_skymatch_plus.PixelSkyMatchStep`` replaces
      ``SkyMatchStep`` in the test module, in ``jwst.skymatch``, ``jwst.step``
      and in ``Image3Pipeline.step_defs``; the expected failures of
      ``expected_failures.py`` are marked strict xfail.
      ``stock``: nothing is swapped and no failure is expected.
  ``SKYMATCH_PLUS_CONFORMANCE_PIPELINE``
      ``image3`` (default): jwst's ``Image3Pipeline``.
      ``image3_plus``: our ``Image3PlusPipeline`` is run wherever the tests
      name ``Image3Pipeline`` or ``calwebb_image3``, under those names (a
      subclass that changes nothing but the class name and alias, so that
      assertions on log lines and ``cal_logs`` keys hold).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

# stpipe asks CRDS for step parameter references unless told not to.
os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "true")

import pytest

# This directory is on sys.path (that is how ``-p skymatch_plus_conformance`` found us).
from expected_failures import EXPECTED_FAILURES

CLASS_ENV = "SKYMATCH_PLUS_CONFORMANCE_CLASS"
PIPELINE_ENV = "SKYMATCH_PLUS_CONFORMANCE_PIPELINE"

#: Context name recorded in outputs instead of asking the CRDS server.
OFFLINE_CONTEXT = "jwst_offline_standin.pmap"

#: Modules whose ``SkyMatchStep`` attribute is replaced in ``plus`` mode.
SKYMATCH_MODULES = ("jwst.skymatch", "jwst.step", "jwst.skymatch.tests.test_skymatch")

#: Test modules whose ``Image3Pipeline`` attribute is replaced in ``image3_plus`` mode.
PIPELINE_TEST_MODULES = ("jwst.pipeline.tests.test_calwebb_image3", "jwst.stpipe.tests.test_cal_logs")

#: jwst tests that run Image3Pipeline (and so the skymatch step); the other
#: tests of these modules are deselected.
PIPELINE_TESTS = {
    "jwst.pipeline.tests.test_calwebb_image3": None,  # all of them
    "jwst.stpipe.tests.test_cal_logs": {"test_nircam_pipeline_cal_logs"},
}

#: NIRCam detectors the stand-in can serve: SIAF aperture and polynomial
#: degree.  NRCA1 gets an affine transform: jwst's image3 helper model puts its
#: reference point (v2_ref, v3_ref) about 600 arcsec away from NRCA1, where a
#: degree-5 inverse polynomial extrapolates to nonsense while an affine one
#: stays sensible.
DISTORTION_APERTURES = {
    "NRCALONG": ("NRCA5_FULL", 5),
    "NRCA1": ("NRCA1_FULL", 1),
}


def _mode(env: str, allowed: tuple[str, ...]) -> str:
    value = os.environ.get(env, allowed[0]).strip().lower() or allowed[0]
    if value not in allowed:
        raise pytest.UsageError(f"{env}={value!r}: expected one of {allowed}")
    return value


# --------------------------------------------------------------------------- CRDS stand-in


class OfflineReferences:
    """Reference files made on demand in one directory, one per NIRCam detector."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._paths: dict[str, str] = {}
        self._siaf = None

    def paths(self, parameters, reference_file_types, observatory):
        """Drop-in for ``stpipe.crds_client.get_multiple_reference_paths``."""
        if not isinstance(parameters, dict):
            raise TypeError("First argument must be a dict of parameters")
        return {
            reftype: self.distortion(parameters) if reftype == "distortion" else "N/A"
            for reftype in reference_file_types
        }

    def distortion(self, parameters: dict) -> str:
        instrument = str(parameters.get("meta.instrument.name", "")).upper()
        detector = str(parameters.get("meta.instrument.detector", "")).upper()
        if instrument != "NIRCAM" or detector not in DISTORTION_APERTURES:
            raise RuntimeError(
                f"offline CRDS stand-in: no distortion reference for {instrument} {detector}; "
                f"it serves NIRCam {sorted(DISTORTION_APERTURES)} "
                "(add the detector to DISTORTION_APERTURES)"
            )
        if detector not in self._paths:
            path = self.directory / f"standin_nircam_{detector.lower()}_distortion.asdf"
            aperture, degree = DISTORTION_APERTURES[detector]
            write_distortion_reference(path, detector, aperture, degree, self._nircam_siaf())
            self._paths[detector] = str(path)
        return self._paths[detector]

    def _nircam_siaf(self):
        if self._siaf is None:
            from jwst_skymatch_plus._offline import import_pysiaf

            pysiaf = import_pysiaf()

            self._siaf = pysiaf.Siaf("NIRCam")
        return self._siaf


def _fitted_polynomial(u, w, values, degree: int, in_scale: float, out_scale: float, offset: float):
    """``offset + out_scale * P(u / in_scale, w / in_scale)``, P fitted to ``values``, as one polynomial.

    The fit runs on coordinates and values scaled to order one (well-conditioned
    normal equations); the scales and the offset are then folded into the
    coefficients, so the reference file holds plain polynomials.
    """
    from astropy.modeling import fitting, models

    fitted = fitting.LinearLSQFitter()(models.Polynomial2D(degree), u / in_scale, w / in_scale, values)
    plain = models.Polynomial2D(degree)
    for name in fitted.param_names:  # c{i}_{j}: coefficient of u**i * w**j
        i, j = (int(k) for k in name[1:].split("_"))
        setattr(plain, name, getattr(fitted, name).value * out_scale / in_scale ** (i + j))
    plain.c0_0 = plain.c0_0.value + offset
    return plain


def distortion_transform(aperture, degree: int):
    """detector (0-based science pixels) -> (V2, V3) in arcsec, with its inverse.

    Polynomials of ``degree`` in the pixel offsets from the reference pixel
    are fitted to ``aperture.sci_to_tel`` on a grid covering the detector,
    and polynomials in the V2/V3 offsets from the reference point for the
    inverse.
    """
    import numpy as np
    from astropy.modeling.models import Mapping, Shift

    nx, ny = int(aperture.XSciSize), int(aperture.YSciSize)
    x_ref, y_ref = float(aperture.XSciRef), float(aperture.YSciRef)
    v2_ref, v3_ref = float(aperture.V2Ref), float(aperture.V3Ref)
    pix_scale = max(nx, ny) / 2.0  # pixel offsets -> order one
    tel_scale = 100.0  # arcsec offsets -> order one

    # SIAF science pixels are 1-based; jwst's detector frame is 0-based.
    xs, ys = np.meshgrid(np.linspace(1.0, nx, 41), np.linspace(1.0, ny, 41))
    xs, ys = xs.ravel(), ys.ravel()
    v2, v3 = aperture.sci_to_tel(xs, ys)
    du, dw = xs - x_ref, ys - y_ref
    d2, d3 = v2 - v2_ref, v3 - v3_ref

    forward = (
        (Shift(1.0 - x_ref) & Shift(1.0 - y_ref))
        | Mapping((0, 1, 0, 1))
        | (
            _fitted_polynomial(du, dw, d2 / tel_scale, degree, pix_scale, tel_scale, v2_ref)
            & _fitted_polynomial(du, dw, d3 / tel_scale, degree, pix_scale, tel_scale, v3_ref)
        )
    )
    backward = (
        (Shift(-v2_ref) & Shift(-v3_ref))
        | Mapping((0, 1, 0, 1))
        | (
            _fitted_polynomial(d2, d3, du / pix_scale, degree, tel_scale, pix_scale, x_ref - 1.0)
            & _fitted_polynomial(d2, d3, dw / pix_scale, degree, tel_scale, pix_scale, y_ref - 1.0)
        )
    )
    forward.inverse = backward
    return forward


def write_distortion_reference(path: Path, detector: str, aperture_name: str, degree: int, siaf) -> None:
    """Save a jwst ``DistortionModel`` reference file for one NIRCam imaging detector."""
    from stdatamodels.jwst.datamodels import DistortionModel

    aperture = siaf[aperture_name]
    model = DistortionModel()
    model.model = distortion_transform(aperture, degree)
    meta = model.meta
    meta.instrument.name = "NIRCAM"
    meta.instrument.detector = detector
    meta.instrument.module = detector[3]  # NRCA1 -> A, NRCBLONG -> B
    meta.instrument.channel = "LONG" if detector.endswith("LONG") else "SHORT"
    meta.instrument.p_pupil = "ANY|"
    meta.exposure.type = "NRC_IMAGE"
    meta.exposure.p_exptype = "NRC_IMAGE|NRC_TSIMAGE|NRC_FLAT|NRC_LED|NRC_WFSS|NRC_TACQ|NRC_TACONFIRM|"
    meta.input_units = "pix"
    meta.output_units = "arcsec"
    meta.reftype = "distortion"
    meta.author = "jwst-skymatch-plus conformance tests"
    meta.pedigree = "DUMMY"
    meta.useafter = "2000-01-01T00:00:00"
    meta.description = f"Offline stand-in: degree-{degree} polynomial fit to pysiaf {aperture_name} Sci->Tel"
    model.save(path)
    model.close()


@pytest.fixture(scope="session", autouse=True)
def _offline_crds(tmp_path_factory):
    """Replace CRDS look-ups by the stand-in for the whole session."""
    from stpipe import crds_client

    references = OfflineReferences(tmp_path_factory.mktemp("crds_standin"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(crds_client, "get_multiple_reference_paths", references.paths)
        mp.setattr(crds_client, "get_context_used", lambda observatory: OFFLINE_CONTEXT)
        yield references


# --------------------------------------------------------------------------- jwst's fixtures


@pytest.fixture
def tmp_cwd(tmp_path):
    """Run the test inside its own empty temporary directory."""
    previous = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(previous)


@pytest.fixture(scope="module")
def tmp_cwd_module(request, tmp_path_factory):
    """One empty temporary working directory shared by the tests of a module."""
    previous = Path.cwd()
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(previous)


# --------------------------------------------------------------------------- the swap


def _image3_under_jwst_names():
    """Our Image3PlusPipeline with jwst's class name and alias, nothing else changed."""
    from jwst_skymatch_plus import Image3PlusPipeline

    return type(
        "Image3Pipeline",
        (Image3PlusPipeline,),
        {
            "__module__": __name__,
            "__doc__": "calwebb_image3_plus renamed calwebb_image3 for jwst's tests.",
            "class_alias": "calwebb_image3",
        },
    )


#: Set by pytest_configure in image3_plus mode; ``calwebb_image3`` on a
#: command line resolves to it.
Image3Pipeline = None


def _swap(mp: pytest.MonkeyPatch, step_class: str, pipeline: str) -> None:
    if step_class == "plus":
        from jwst.pipeline import Image3Pipeline as JwstImage3Pipeline

        from jwst_skymatch_plus import PixelSkyMatchStep

        for name in SKYMATCH_MODULES:
            if name in sys.modules or ".tests." not in name:
                mp.setattr(importlib.import_module(name), "SkyMatchStep", PixelSkyMatchStep)
        mp.setitem(JwstImage3Pipeline.step_defs, "skymatch", PixelSkyMatchStep)

    if pipeline == "image3_plus":
        from stpipe import utilities

        renamed = _image3_under_jwst_names()
        mp.setattr(sys.modules[__name__], "Image3Pipeline", renamed)
        for name in PIPELINE_TEST_MODULES:
            if name in sys.modules:
                mp.setattr(sys.modules[name], "Image3Pipeline", renamed)
        resolve = utilities.resolve_step_class_alias

        def resolve_renamed(name):
            if name == "calwebb_image3":
                return f"{__name__}.Image3Pipeline"
            return resolve(name)

        mp.setattr(utilities, "resolve_step_class_alias", resolve_renamed)


def pytest_configure(config):
    step_class = _mode(CLASS_ENV, ("plus", "stock"))
    pipeline = _mode(PIPELINE_ENV, ("image3", "image3_plus"))
    if step_class == "stock" and pipeline == "image3_plus":
        raise pytest.UsageError("image3_plus always runs PixelSkyMatchStep: it has no stock variant")
    config._skymatch_plus_mode = (step_class, pipeline)


def pytest_report_header(config):
    step_class, pipeline = config._skymatch_plus_mode
    return (
        f"skymatch-plus conformance: step={step_class} pipeline={pipeline} "
        f"(CRDS stand-in: distortion for {sorted(DISTORTION_APERTURES)}, N/A otherwise)"
    )


def expected_failure_key(item) -> str:
    """``module::test[params]`` of a collected jwst test."""
    return f"{item.module.__name__}::{item.name}"


def pytest_collection_modifyitems(session, config, items):
    keep, drop = [], []
    for item in items:
        wanted = PIPELINE_TESTS.get(item.module.__name__, None)
        if wanted is not None and item.originalname not in wanted:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep

    for item in items:
        # Node ids of tests outside the rootdir carry no module name: record it.
        item.user_properties.append(("jwst_test", expected_failure_key(item)))

    step_class, pipeline = config._skymatch_plus_mode
    # Swapped once the test modules are imported (collected), before any test runs.
    mp = pytest.MonkeyPatch()
    config.add_cleanup(mp.undo)
    _swap(mp, step_class, pipeline)
    if step_class != "plus":
        return
    expected = EXPECTED_FAILURES.get(pipeline, {})
    for item in items:
        entry = expected.get(expected_failure_key(item))
        if entry is not None:
            exception, reason = entry
            item.add_marker(pytest.mark.xfail(reason=reason, raises=exception, strict=True))
