"""Shared fixtures: simulated mosaics with known truth, offline stpipe."""

import os

# stpipe asks CRDS for step parameters unless told not to; it accepts only
# true/True/t/yes/y (not "1").  Tests never need a CRDS cache.
os.environ["STPIPE_DISABLE_CRDS_STEPPARS"] = "true"

import pytest

from jwst_skymatch_plus._offline import import_pysiaf
from jwst_skymatch_plus.simulate import recorded_levels, simulate_mosaic

# pysiaf asks GitHub for a newer PRD when imported: import it offline first.
import_pysiaf()


def copy_models(sim):
    """Fresh copies of a simulation's models (steps modify what they are given)."""
    return [m.copy() for m in sim.models]


def levels_of(library):
    """meta.background.level of every exposure of a ModelLibrary (NaN if unset)."""
    return recorded_levels(library)


@pytest.fixture(scope="session")
def miri_mosaic():
    """3 x 2 tiles x 4 dithers of small MIRI detectors with per-exposure drifts."""
    return simulate_mosaic(
        "miri",
        shape=(160, 160),
        tiles=(3, 2),
        dithers=4,
        exposure_offset_sigma=0.05,
        masked_region_probability=0.3,
        seed=11,
    )


@pytest.fixture(scope="session")
def small_mosaic():
    """2 x 1 tiles x 2 dithers, the smallest useful mosaic (fast end-to-end runs)."""
    return simulate_mosaic("miri", shape=(128, 128), tiles=(2, 1), dithers=2, seed=5)
