"""Shifts between overlapping groups (core.registration, through match_exposures' alignment check).

Measured against the simulator's known pointing errors.
"""

import numpy as np
from conftest import metas_of, sources_of

from jwst_skymatch_plus.core.grouping import group_exposures
from jwst_skymatch_plus.core.matching import MatchConfig, match_exposures
from jwst_skymatch_plus.simulate import simulate_mosaic


def _visit_alignment(sim):
    """match_exposures with one group per visit: its alignment check measures each overlap's shift."""
    groups = group_exposures(metas_of(sim), "meta.observation.visit_number")
    return match_exposures(sources_of(sim, exclude_lyot=False), groups, MatchConfig())


def test_shift_of_a_whole_overlap_is_measured_to_a_few_hundredths():
    # Two visits of one tile, the second off by (0.2", -0.1") along the
    # detector axes: 2.03 MIRI pixels.
    sim = simulate_mosaic(
        "miri",
        shape=(160, 160),
        tiles=(1, 1),
        visits_per_tile=2,
        dithers=2,
        n_sources=600,
        misalignment={2: (0.2, -0.1, 0.0)},
        seed=3,
    )
    result = _visit_alignment(sim)
    (check,) = result.alignment
    expected = np.hypot(0.2, -0.1) / (result.grid.pixel_scale * 3600)
    assert check.shift.correlation > 0.9
    assert abs(check.shift.length - expected) < 0.05


def test_shifts_in_tile_overlaps_follow_the_truth(misaligned):
    result = _visit_alignment(misaligned)
    scale = result.grid.pixel_scale * 3600
    measured = [c for c in result.alignment if c.shift is not None and c.shift.correlation >= 0.5]
    assert len(measured) >= 4
    for check in measured:
        da = np.array(misaligned.truth.misalignment[check.i + 1][:2])
        db = np.array(misaligned.truth.misalignment[check.j + 1][:2])
        # Misalignments are along detector axes; the length of the relative
        # shift is the same on the grid.  Sliver overlaps of a few thousand
        # pixels measure it to a few tenths of a pixel.
        expected = np.hypot(*(db - da)) / scale
        assert abs(check.shift.length - expected) < 0.3, (check, expected)
