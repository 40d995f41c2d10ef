"""core.reference: the reference set of a matching result, and holding it at zero."""

from types import SimpleNamespace

import numpy as np
import pytest
from test_core_matching import metas, sources

from jwst_skymatch_plus.core.grouping import group_exposures
from jwst_skymatch_plus.core.matching import MatchConfig, match_exposures
from jwst_skymatch_plus.core.reference import apply_reference, choose_reference, reference_for_result
from jwst_skymatch_plus.simulate import simulate_mosaic


@pytest.fixture(scope="module")
def grid3x3():
    """3 x 3 tiles of 2 dithers each, every exposure matched as its own unit."""
    sim = simulate_mosaic("miri", shape=(96, 96), tiles=(3, 3), dithers=2, seed=2, n_sources=5)
    meta = [
        {**m, "meta.filename": model.meta.filename, "meta.exposure.mid_time": model.meta.exposure.mid_time}
        for m, model in zip(metas(sim), sim.models, strict=True)
    ]
    units = [[k] for k in range(len(sim.models))]
    result = match_exposures(sources(sim), units, MatchConfig(check_alignment=False))
    visits = group_exposures(meta, "visit")
    names = [[sim.models[k].meta.filename for k in v] for v in visits]
    return sim, meta, result, visits, names


def test_most_connected_visit_is_the_centre_tile(grid3x3):
    sim, meta, result, visits, names = grid3x3
    v = reference_for_result("most_connected", result, meta, names, groups=visits)
    assert set(sim.truth.tile[visits[v]]) == {4}


def test_pairs_inside_a_set_do_not_count():
    # Set A = units 0 and 1, tied to each other by five pairs and to set B
    # by one; B (unit 2) is tied to A and to C (unit 3): B is the most
    # connected set, A the most connected unit.
    pair = [(0, 1)] * 5 + [(1, 2), (2, 3)]
    result = SimpleNamespace(
        group_pairs=[SimpleNamespace(i=i, j=j, npix=100) for i, j in pair],
        group_solution=SimpleNamespace(used=np.ones(len(pair), dtype=bool)),
        group_flatness=np.zeros(4),
        groups=[[0], [1], [2], [3]],
        group_index=np.arange(4),
    )
    sets = [[0, 1], [2], [3]]
    meta = [{}] * 4
    names = [["a0", "a1"], ["b"], ["c"]]
    assert reference_for_result("most_connected", result, meta, names, groups=sets) == 1
    unit_names = [["a0"], ["a1"], ["b"], ["c"]]
    assert reference_for_result("most_connected", result, meta, unit_names) == 1  # unit a1


def test_closest_to_background_and_names(grid3x3):
    _, meta, result, visits, names = grid3x3
    t = meta[visits[6][-1]]["meta.exposure.mid_time"] + 0.0005
    assert reference_for_result("closest_to_background", result, meta, names, [t], groups=visits) == 6
    assert reference_for_result(names[2][1], result, meta, names, groups=visits) == 2
    assert reference_for_result("8", result, meta, names, groups=visits) == 7


def test_flattest_set_averages_its_units(grid3x3):
    _, meta, result, visits, names = grid3x3
    v = reference_for_result("flattest", result, meta, names, groups=visits)
    flat = [np.mean(result.group_flatness[members]) for members in visits]
    assert v == int(np.argmin(flat))


def test_unknown_number_names_the_kind():
    with pytest.raises(ValueError, match=r"reference tile 4 does not exist \(there are 3 tiles\)"):
        choose_reference("4", group_names=[["a"], ["b"], ["c"]], kind="tile")


def test_apply_reference_holds_the_reference_mean_at_zero_in_its_component():
    levels = np.array([1.0, 2.0, 3.0, 10.0, 12.0, 5.0])
    component = np.array([0, 0, 0, 1, 1, -1])
    group = np.array([0, 1, 1, 2, 2, 3])
    out = apply_reference(levels, component, group, reference_group=1)
    np.testing.assert_array_equal(out, [-1.5, -0.5, 0.5, 0.0, 2.0, 5.0])
    up = apply_reference(levels, component, group, reference_group=1, match_down=False)
    np.testing.assert_array_equal(up, [-1.5, -0.5, 0.5, -2.0, 0.0, 5.0])


def test_apply_reference_mean_of_given_reference_levels():
    levels = np.array([1.0, 2.0, 4.0])
    component = np.zeros(3, dtype=int)
    group = np.array([0, 0, 0])
    # The third level was not measured: only the first two define the zero.
    measured = np.array([1.0, 2.0, np.nan])
    out = apply_reference(levels, component, group, 0, reference_levels=measured)
    np.testing.assert_array_equal(out, [-0.5, 0.5, 2.5])


def test_apply_reference_of_a_group_spanning_two_components():
    levels = np.array([1.0, 3.0, 10.0, 20.0])
    component = np.array([0, 0, 1, 1])
    group = np.array([0, 1, 0, 1])
    # Each component holds its own share of the reference group at zero.
    np.testing.assert_array_equal(apply_reference(levels, component, group, 0), [0.0, 2.0, 0.0, 10.0])


def test_apply_reference_without_reference_is_match_down():
    levels = np.array([3.0, 1.0, np.nan, 7.0])
    component = np.array([0, 0, 0, -1])
    np.testing.assert_array_equal(
        apply_reference(levels, component, np.zeros(4, dtype=int), None), [2.0, 0.0, np.nan, 7.0]
    )
