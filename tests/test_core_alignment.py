"""Tangent-plane corrections: projection, fits, and their application to a JWST gwcs."""

import math

import numpy as np
import pytest

from jwst_skymatch_plus.core.alignment import (
    SkyAffine,
    apply_affine_to_wcs,
    detector_samples,
    fit_sky_affine,
    sky_to_tangent,
    tangent_to_sky,
)
from jwst_skymatch_plus.simulate import simulate_mosaic

RA0, DEC0 = 80.0, -69.5


def _rotation(deg, scale=1.0):
    t = math.radians(deg)
    return scale * np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


def _field(n=200, radius=60.0, seed=0):
    rng = np.random.default_rng(seed)
    return tangent_to_sky(*rng.uniform(-radius, radius, (2, n)), RA0, DEC0)


def test_tangent_round_trip_and_axes():
    ra, dec = _field()
    xi, eta = sky_to_tangent(ra, dec, RA0, DEC0)
    ra2, dec2 = tangent_to_sky(xi, eta, RA0, DEC0)
    assert np.allclose(ra2, ra, atol=1e-11) and np.allclose(dec2, dec, atol=1e-11)
    # East is +xi, North is +eta, in arcsec.
    assert sky_to_tangent(RA0 + 1 / 3600 / math.cos(math.radians(DEC0)), DEC0, RA0, DEC0)[0] == pytest.approx(
        1.0
    )
    assert sky_to_tangent(RA0, DEC0 + 1 / 3600, RA0, DEC0)[1] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("geometry", "matrix"),
    [
        ("shift", np.eye(2)),
        ("rshift", _rotation(0.05)),
        ("rscale", _rotation(-0.03, 1.0002)),
        ("general", np.array([[1.0001, 0.0002], [-0.0003, 0.9998]])),
    ],
)
def test_fit_recovers_known_affine(geometry, matrix):
    ra, dec = _field()
    truth = SkyAffine(RA0, DEC0, matrix, [0.7, -0.4])
    fitted, rms = fit_sky_affine(ra, dec, *truth.apply(ra, dec), RA0, DEC0, geometry)
    assert np.allclose(fitted.matrix, matrix, atol=1e-9)
    assert np.allclose(fitted.shift, [0.7, -0.4], atol=1e-7)
    assert rms < 1e-6


def test_shift_fit_of_a_rotation_leaves_residuals():
    ra, dec = _field()
    truth = SkyAffine(RA0, DEC0, _rotation(0.05), [0.0, 0.0])
    _, rms = fit_sky_affine(ra, dec, *truth.apply(ra, dec), RA0, DEC0, "shift")
    # 0.05 deg over a 60-arcsec field moves points by tens of mas.
    assert rms > 0.02


def test_rotation_sign_is_position_angle_change():
    # A counter-clockwise turn of (East, North) axes carries North towards
    # West: position angles (East of North) decrease.
    assert SkyAffine(RA0, DEC0, _rotation(0.1)).rotation == pytest.approx(-0.1)


def test_apply_to_jwst_gwcs_moves_sky_as_asked():
    sim = simulate_mosaic("miri", shape=(64, 64), tiles=(1, 1), dithers=1, n_sources=0, seed=1)
    model = sim.models[0]
    x, y = detector_samples(model.data.shape, 5)
    ra, dec = model.meta.wcs(x, y)
    wi = model.meta.wcsinfo
    info = {"v2_ref": wi.v2_ref, "v3_ref": wi.v3_ref, "roll_ref": wi.roll_ref}
    ra0, dec0 = float(np.mean(ra)), float(np.mean(dec))
    affine = SkyAffine(ra0, dec0, _rotation(0.04), [0.5, -0.3])
    corrected = apply_affine_to_wcs(model.meta.wcs, info, affine)
    want = affine.apply(ra, dec)
    got = corrected(x, y)
    err = np.hypot((got[0] - want[0]) * math.cos(math.radians(dec0)), got[1] - want[1]) * 3600
    assert err.max() < 1e-4  # arcsec: a thousandth of a MIRI pixel
    # The input WCS is untouched.
    assert np.allclose(model.meta.wcs(x, y), (ra, dec), rtol=0, atol=1e-12)
