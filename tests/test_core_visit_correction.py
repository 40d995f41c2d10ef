"""One correction per visit from its exposures' measured moves, against known affine maps."""

import logging
import math

import numpy as np
import pytest

from jwst_skymatch_plus.core.alignment import SkyAffine, tangent_to_sky
from jwst_skymatch_plus.core.visit_correction import combine_visit, fit_shift_error

KEY = ("1234", "1", "2")
RA0, DEC0 = 80.5, -69.5


def exposures(n=3):
    """Sky positions of n exposures' 7 x 7 detector samples, 40 arcsec apart in a row."""
    out = []
    for k in range(n):
        xi, eta = np.meshgrid(np.linspace(-30, 30, 7) + 40.0 * (k - (n - 1) / 2), np.linspace(-30, 30, 7))
        out.append(tangent_to_sky(xi.ravel(), eta.ravel(), RA0, DEC0))
    return out


def centre(before):
    ra = np.concatenate([b[0] for b in before])
    dec = np.concatenate([b[1] for b in before])
    return float(np.mean(ra)), float(np.mean(dec))


def rotation(deg):
    a = math.radians(deg)
    return [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]


def combine(before, after, fits, geometry="rshift", key=KEY):
    return combine_visit(
        key, before, after, fits, method="tweakreg", filter_name="F770W", fitgeometry=geometry
    )


def test_fit_shift_error():
    assert fit_shift_error({"nmatches": 25, "rmse": 0.05, "status": "SUCCESS"}) == pytest.approx(0.01)
    # The reference of a relative alignment defines the frame.
    assert fit_shift_error({"status": "REFERENCE"}) == 0.0
    assert math.isnan(fit_shift_error({"nmatches": None, "rmse": 0.05, "status": "FAILED"}))
    assert math.isnan(fit_shift_error({}))


def test_known_correction_recovered():
    before = exposures()
    ra0, dec0 = centre(before)
    truth = SkyAffine(ra0, dec0, rotation(0.03), [0.45, -0.7])
    after = [truth.apply(*b) for b in before]
    fits = [{"status": "SUCCESS", "group_id": "g", "nmatches": 40, "shift_error": 0.002}] * 3
    row = combine(before, after, fits)
    assert row["measured"] and row["status"] == "" and (row["n_exposures"], row["n_aligned"]) == (3, 3)
    assert (row["ra_ref"], row["dec_ref"]) == (ra0, dec0)
    assert (row["shift_ra"], row["shift_dec"]) == pytest.approx((0.45, -0.7), abs=1e-9)
    assert row["rotation"] == pytest.approx(-0.03, abs=1e-9)  # counter-clockwise: position angles fall
    assert row["scale"] == pytest.approx(1.0, abs=1e-12) and row["fit_rms"] < 1e-9
    # One rigid group: its matches and error count once.
    assert row["n_matches"] == 40 and row["shift_error"] == pytest.approx(0.002, rel=1e-12)
    assert row["visit_id"] == "jw01234001002" and row["method"] == "tweakreg" and row["filter"] == "F770W"
    assert math.isnan(row["correlation"])


def test_shift_error_of_several_fits_and_their_scatter():
    before = exposures(2)
    ra0, dec0 = centre(before)
    # Two independent fits that agree: the error of their mean.
    after = [SkyAffine(ra0, dec0, shift=[0.2, 0.1]).apply(*b) for b in before]
    fits = [
        {"group_id": "0", "nmatches": 30, "shift_error": 0.01, "correlation": 0.5},
        {"group_id": "1", "nmatches": 50, "shift_error": 0.02, "correlation": 0.7},
    ]
    row = combine(before, after, fits, "shift")
    assert row["shift_error"] == pytest.approx(math.sqrt(0.01**2 + 0.02**2) / 2, rel=1e-9)
    assert row["n_matches"] == 80 and row["correlation"] == pytest.approx(0.6)
    # Two fits that disagree by +-0.1 arcsec East: the visit's shift is their
    # mean and its error no less than their scatter allows.
    after = [SkyAffine(ra0, dec0, shift=[0.2 + d, 0.1]).apply(*b) for b, d in zip(before, (0.1, -0.1))]
    fits = [{"group_id": str(k), "shift_error": 1e-4} for k in range(2)]
    row = combine(before, after, fits, "shift")
    assert (row["shift_ra"], row["shift_dec"]) == pytest.approx((0.2, 0.1), abs=1e-9)
    assert row["fit_rms"] == pytest.approx(0.1, rel=1e-6)
    assert row["shift_error"] == pytest.approx(0.1 / math.sqrt(2), rel=1e-6)


def test_exposures_not_aligned_are_left_out():
    before = exposures()
    ra0, dec0 = centre(before[:2])
    truth = SkyAffine(ra0, dec0, shift=[0.3, 0.0])
    after = [truth.apply(*before[0]), truth.apply(*before[1]), None]
    fits = [{"status": "SUCCESS", "group_id": "g", "shift_error": 0.01}] * 2 + [{"status": "FAILED"}]
    row = combine(before, after, fits)
    assert row["status"] == "1 exposure(s) not aligned, left out"
    assert (row["n_exposures"], row["n_aligned"]) == (3, 2)
    assert (row["ra_ref"], row["dec_ref"]) == (ra0, dec0)
    assert row["shift_ra"] == pytest.approx(0.3, abs=1e-9)


def test_reference_of_relative_alignment():
    before = exposures(2)
    fits = [{"status": "REFERENCE", "group_id": "g", "shift_error": 0.0}] * 2
    row = combine(before, list(before), fits, key=("1234", "1", "2", "A"))
    assert row["status"] == "reference of the relative alignment" and row["module"] == "A"
    assert (row["shift_ra"], row["shift_dec"], row["shift_error"]) == pytest.approx((0, 0, 0), abs=1e-9)


def test_nothing_aligned_is_unmeasured_and_logged(caplog):
    before = exposures(2)
    with caplog.at_level(logging.WARNING, logger="jwst_skymatch_plus"):
        row = combine(before, [None, None], [{"status": "FAILED"}] * 2, key=("1234", "1", "2", "B"))
    assert not row["measured"] and row["n_aligned"] == 0 and row["n_exposures"] == 2
    assert row["status"] == "tweakreg could not align any exposure of this visit"
    assert all(math.isnan(row[c]) for c in ("shift_ra", "shift_dec", "m11", "shift_error", "ra_ref"))
    assert "Visit jw01234001002 module B: tweakreg aligned none of its exposures" in caplog.text
