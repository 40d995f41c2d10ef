"""The gauge (core.reference): which group is held fixed, and how levels are shifted to it."""

from types import SimpleNamespace

import numpy as np
import pytest
from conftest import metas_of, sources_of

from jwst_skymatch_plus.core.grouping import group_exposures
from jwst_skymatch_plus.core.matching import MatchConfig, match_exposures
from jwst_skymatch_plus.core.reference import apply_reference, choose_reference, reference_for_result
from jwst_skymatch_plus.simulate import simulate_mosaic


def test_choose_reference_rules():
    names = [["a1", "a2"], ["b1"], ["c1", "c2"]]
    assert (
        choose_reference(
            "most_connected", group_names=names, used_pairs=[(0, 1), (1, 2)], pair_pixels=[10, 10]
        )
        == 1
    )
    assert choose_reference("flattest", group_names=names, flatness=[0.3, 0.5, 0.1]) == 2
    assert (
        choose_reference(
            "closest_to_background", group_names=names, group_times=[1.0, 2.0, 3.0], background_times=[2.9]
        )
        == 2
    )
    assert choose_reference("b1", group_names=names) == 1
    assert choose_reference("3", group_names=names) == 2
    with pytest.raises(ValueError, match="neither a rule"):
        choose_reference("nonsense", group_names=names)
    with pytest.raises(ValueError, match="background"):
        choose_reference("closest_to_background", group_names=names, group_times=[1, 2, 3])


def test_choose_reference_ties_and_bad_requests():
    names = [["a"], ["b"], ["c"]]
    # Equal numbers of pairs: the group with more overlapping pixels wins.
    pairs, pixels = [(0, 1), (1, 2), (0, 2)], [100, 10, 500]
    assert choose_reference("most_connected", group_names=names, used_pairs=pairs, pair_pixels=pixels) == 0
    # A name prefix selects its group (file names without their suffix).
    assert choose_reference("c", group_names=[["a_cal.fits"], ["c_cal.fits"]]) == 1
    with pytest.raises(ValueError, match="does not exist"):
        choose_reference("4", group_names=names)
    with pytest.raises(ValueError, match="flatness"):
        choose_reference("flattest", group_names=names, flatness=[0.1])


@pytest.fixture
def levels():
    # Levels in an arbitrary gauge: two connected parts and one exposure tied to nothing.
    values = np.random.default_rng(1).normal(5.0, 1.0, 9)
    component = np.array([0, 0, 0, 0, 1, 1, 1, 1, -1])
    group = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4])
    return values, component, group


def test_reference_group_is_held_at_zero_and_differences_are_kept(levels):
    values, component, group = levels
    out = apply_reference(values, component, group, reference_group=1, match_down=True)
    first = component == 0
    # The part holding the reference: its group's mean is zero, nothing else moves relative to it.
    assert out[group == 1].mean() == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(out[first] - values[first], -values[group == 1].mean())
    # The other part follows match_down (lowest level at zero); the unmatched one is untouched.
    second = component == 1
    assert out[second].min() == 0.0
    np.testing.assert_allclose(np.diff(out[second]), np.diff(values[second]))
    assert out[8] == values[8]
    # No reference: match_down everywhere; match up: the highest at zero.
    down = apply_reference(values, component, group, None, match_down=True)
    up = apply_reference(values, component, group, None, match_down=False)
    assert down[first].min() == 0.0 and up[first].max() == 0.0 and up[second].max() == 0.0


def test_reference_mean_uses_only_measured_levels(levels):
    values, component, group = levels
    measured = values.copy()
    measured[2] = np.nan  # one exposure of the reference group was not measured
    out = apply_reference(values, component, group, 1, reference_levels=measured)
    assert out[3] == pytest.approx(0.0, abs=1e-12)
    assert out[2] == pytest.approx(values[2] - values[3])


def test_reference_group_spanning_two_parts_is_held_at_zero_in_each():
    levels = np.array([1.0, 3.0, 10.0, 20.0])
    component = np.array([0, 0, 1, 1])
    group = np.array([0, 1, 0, 1])
    np.testing.assert_array_equal(apply_reference(levels, component, group, 0), [0.0, 2.0, 0.0, 10.0])


def test_unknown_number_names_the_kind():
    with pytest.raises(ValueError, match=r"reference tile 4 does not exist \(there are 3 tiles\)"):
        choose_reference("4", group_names=[["a"], ["b"], ["c"]], kind="tile")


def test_pairs_inside_a_set_do_not_count():
    # Set A = units 0 and 1, tied to each other by five pairs and to set B
    # by one; B (unit 2) is tied to A and to C (unit 3): B is the most
    # connected set, A's unit 1 the most connected unit.
    pair = [(0, 1)] * 5 + [(1, 2), (2, 3)]
    result = SimpleNamespace(
        group_pairs=[SimpleNamespace(i=i, j=j, npix=100) for i, j in pair],
        group_solution=SimpleNamespace(used=np.ones(len(pair), dtype=bool)),
        group_flatness=np.zeros(4),
        groups=[[0], [1], [2], [3]],
        group_index=np.arange(4),
    )
    metas = [{}] * 4
    sets = [[0, 1], [2], [3]]
    assert (
        reference_for_result("most_connected", result, metas, [["a0", "a1"], ["b"], ["c"]], groups=sets) == 1
    )
    assert reference_for_result("most_connected", result, metas, [["a0"], ["a1"], ["b"], ["c"]]) == 1


def test_reference_outside_every_part_falls_back_to_match_down(levels):
    values, component, group = levels
    out = apply_reference(values, component, group, 4)  # the unmatched exposure
    np.testing.assert_array_equal(out, apply_reference(values, component, group, None))


# --------------------------------------------------------------------------
# Rules fed from a real match of simulated mosaics (truth: the layout)
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def grid3x3():
    """3 x 3 tiles x 2 dithers: the centre tile overlaps all eight others."""
    sim = simulate_mosaic("miri", shape=(96, 96), tiles=(3, 3), dithers=2, seed=2, n_sources=5)
    metas = metas_of(sim)
    units = group_exposures(metas, "exposure")
    result = match_exposures(sources_of(sim), units, MatchConfig(check_alignment=False))
    return sim, metas, result


def _names(metas, groups):
    return [[metas[k]["meta.filename"] for k in members] for members in groups]


def test_most_connected_tile_is_the_centre(grid3x3):
    sim, metas, result = grid3x3
    visits = group_exposures(metas, "visit")
    v = reference_for_result("most_connected", result, metas, _names(metas, visits), groups=visits)
    assert set(sim.truth.tile[visits[v]]) == {4}


def test_closest_to_background_and_by_name(grid3x3):
    _, metas, result = grid3x3
    names = _names(metas, result.groups)
    last = int(np.argmax([m["meta.exposure.mid_time"] for m in metas]))
    t = metas[last]["meta.exposure.mid_time"] + 0.01
    g = reference_for_result("closest_to_background", result, metas, names, background_times=[t])
    assert result.groups[g] == [last]
    k = 7
    g = reference_for_result(metas[k]["meta.filename"], result, metas, names)
    assert k in result.groups[g]


def test_flattest_visit_is_the_one_with_least_gradient(tilted_tiles):
    # The injected gradients are the truth.
    sim = tilted_tiles
    metas = metas_of(sim)
    visits = group_exposures(metas, "visit")
    steepness = [np.hypot(*sim.truth.gradient[members[0]]) for members in visits]
    assert sorted(steepness)[1] > 2 * min(steepness)  # the choice is not a coin toss
    result = match_exposures(sources_of(sim), visits, MatchConfig(check_alignment=False))
    g = reference_for_result("flattest", result, metas, _names(metas, visits))
    assert g == int(np.argmin(steepness))


def test_flattest_set_averages_its_units(grid3x3):
    _, metas, result = grid3x3
    visits = group_exposures(metas, "visit")
    v = reference_for_result("flattest", result, metas, _names(metas, visits), groups=visits)
    assert v == int(np.argmin([np.mean(result.group_flatness[members]) for members in visits]))
