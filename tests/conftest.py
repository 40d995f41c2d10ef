"""Shared fixtures: simulated mosaics with known truth, offline stpipe."""

import os

# stpipe asks CRDS for step parameters unless told not to; it accepts only
# true/True/t/yes/y (not "1").  Tests never need a CRDS cache.
os.environ["STPIPE_DISABLE_CRDS_STEPPARS"] = "true"

import numpy as np
import pytest

from jwst_skymatch_plus._offline import import_pysiaf
from jwst_skymatch_plus.core.matching import ExposureSource
from jwst_skymatch_plus.core.regions import miri_lyot_region
from jwst_skymatch_plus.inputs import each_model
from jwst_skymatch_plus.simulate import recorded_levels, simulate_mosaic

# pysiaf asks GitHub for a newer PRD when imported: import it offline first.
import_pysiaf()


def nircam_module_mosaic(pattern: str, seed: int, n_sources: int):
    """NIRCam LW on the SIAF geometry: two visits of one tile, an offset per module and visit, no drifts."""
    return simulate_mosaic(
        "nircam_long",
        geometry="siaf",
        binning=8,
        tiles=(1, 1),
        visits_per_tile=2,
        dithers=4,
        dither_pattern=pattern,
        module_offset_sigma=0.5,
        exposure_offset_sigma=0.0,
        n_sources=n_sources,
        seed=seed,
    )


#: benchmarks/bench_peers.py's layouts: 256 x 256 MIRI, 2 x 2 tiles of 4 dithers.
PEER_BASE = {"shape": (256, 256), "tiles": (2, 2), "dithers": 4, "tile_overlap": 0.1}
#: Its 'combined' layout: bright emission, masks, gradients and per-visit planes.
PEER_COMBINED = dict(
    PEER_BASE,
    emission=50.0,
    masked_region_probability=0.5,
    masked_region_radius=0.2,
    sky_gradient=3.0,
    gradient_sigma=0.01,
)


def copy_models(sim):
    """Fresh copies of a simulation's models (steps modify what they are given)."""
    return [m.copy() for m in sim.models]


def levels_of(library):
    """meta.background.level of every exposure of a ModelLibrary (NaN if unset)."""
    return recorded_levels(library)


def read_models(library, read):
    """``[read(model) for each model]`` of a ModelLibrary, borrowed and shelved unmodified."""
    return [read(model) for _, model in each_model(library)]


def sources_of(sim, exclude_lyot=True):
    """A simulation's exposures as the core sees them: finite, DQ-good pixels (Lyot region left out)."""
    out = []
    for m in sim.models:

        def load(m=m):
            good = np.isfinite(m.data) & ((m.dq & 1) == 0)
            if exclude_lyot:
                good[miri_lyot_region(m.data.shape)] = False
            return m.data, good

        out.append(ExposureSource(m.meta.filename, m.meta.wcs, m.data.shape, load))
    return out


def metas_of(sim):
    """Flat metadata of a simulation's exposures, as the steps read it (``meta.*`` keys)."""
    return [m.to_flat_dict(include_arrays=False) for m in sim.models]


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


@pytest.fixture(scope="session")
def misaligned():
    """2 x 2 tiles x 2 dithers, every visit off by 0.25" (over 2 MIRI pixels), many point sources."""
    # Plenty of point sources so that every overlap has structure to measure.
    return simulate_mosaic(
        "miri", shape=(160, 160), tiles=(2, 2), dithers=2, misalign_arcsec=0.25, n_sources=600, seed=13
    )


@pytest.fixture(scope="session")
def tilted_tiles():
    """3 x 1 tiles x 2 dithers of a flat scene (no emission, few sources), strong per-visit gradients."""
    return simulate_mosaic(
        "miri",
        shape=(128, 128),
        tiles=(3, 1),
        dithers=2,
        gradient_sigma=3.0,
        exposure_offset_sigma=0.0,
        emission=0.0,
        n_sources=5,
        seed=4,
    )
