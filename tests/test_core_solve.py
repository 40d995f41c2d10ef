"""Global least-squares solution of levels from pair differences."""

import numpy as np
import pytest

from jwst_skymatch_plus.core.solve import apply_match_down, pair_components, solve_levels


def _chain_and_ring(n):
    i = np.r_[np.arange(n - 1), 0]
    j = np.r_[np.arange(1, n), n - 1]
    return i, j


def test_recovers_levels_on_ring_within_noise():
    rng = np.random.default_rng(1)
    n = 12
    truth = rng.normal(0, 1, n)
    i, j = _chain_and_ring(n)
    sigma = np.full(i.size, 0.01)
    delta = truth[i] - truth[j] + rng.normal(0, sigma)
    sol = solve_levels(n, i, j, delta, sigma, robust=False)
    err = sol.levels[:, 0] - (truth - truth.mean())
    # Each level is known to about sigma; allow 5 sigma of its own uncertainty.
    assert np.all(np.abs(err) < 5 * sol.sigma[:, 0])
    assert sol.n_components == 1
    assert abs(sol.levels[:, 0].mean()) < 1e-12


def test_uncertainties_are_calibrated():
    """Pulls (error / reported sigma) over many noise draws have unit scatter."""
    rng = np.random.default_rng(2)
    n = 8
    i, j = np.triu_indices(n, 1)
    sigma = rng.uniform(0.5, 2.0, i.size)
    pulls = []
    for _ in range(300):
        truth = rng.normal(0, 3, n)
        delta = truth[i] - truth[j] + rng.normal(0, sigma)
        sol = solve_levels(n, i, j, delta, sigma, robust=False)
        pulls.append((sol.levels[:, 0] - (truth - truth.mean())) / sol.sigma[:, 0])
    scatter = np.std(np.concatenate(pulls))
    # 2400 pulls: the scatter of a unit Gaussian is known to ~1.5 %.
    assert 0.93 < scatter < 1.07


@pytest.mark.parametrize("weighting", ["ivar", "npix", "equal"])
def test_weightings_are_unbiased(weighting):
    rng = np.random.default_rng(3)
    n = 6
    i, j = np.triu_indices(n, 1)
    truth = rng.normal(0, 1, n)
    sigma = np.full(i.size, 1e-3)
    delta = truth[i] - truth[j] + rng.normal(0, sigma)
    sol = solve_levels(n, i, j, delta, sigma, weighting=weighting, npix=rng.integers(100, 1000, i.size))
    np.testing.assert_allclose(sol.levels[:, 0], truth - truth.mean(), atol=5e-3)


def test_disconnected_components_are_solved_separately():
    n = 6
    i = np.array([0, 1, 3, 4])
    j = np.array([1, 2, 4, 5])
    truth = np.array([1.0, 2.0, 4.0, 10.0, 11.0, 13.0])
    delta = truth[i] - truth[j]
    sol = solve_levels(n, i, j, delta, np.full(4, 0.1))
    assert sol.n_components == 2
    assert set(sol.component[:3]) == {sol.component[0]} and sol.component[0] != sol.component[3]
    np.testing.assert_allclose(sol.levels[:3, 0], truth[:3] - truth[:3].mean(), atol=1e-10)
    np.testing.assert_allclose(sol.levels[3:, 0], truth[3:] - truth[3:].mean(), atol=1e-10)


def test_isolated_image_is_flagged():
    sol = solve_levels(3, np.array([0]), np.array([1]), np.array([1.0]), np.array([0.1]))
    assert sol.component[2] == -1
    assert np.isnan(sol.levels[2, 0])


def test_robust_fit_rejects_a_bad_pair_but_keeps_the_graph_connected():
    rng = np.random.default_rng(4)
    n = 7
    i, j = np.triu_indices(n, 1)
    truth = rng.normal(0, 1, n)
    sigma = np.full(i.size, 0.01)
    delta = truth[i] - truth[j] + rng.normal(0, sigma)
    delta[5] += 3.0  # a pair spoiled by e.g. a misaligned bright source
    sol = solve_levels(n, i, j, delta, sigma, robust=True)
    assert not sol.used[5]
    assert sol.used.sum() == i.size - 1
    np.testing.assert_allclose(sol.levels[:, 0], truth - truth.mean(), atol=0.05)
    non_robust = solve_levels(n, i, j, delta, sigma, robust=False)
    assert np.abs(non_robust.levels[:, 0] - (truth - truth.mean())).max() > 0.3


def test_robust_fit_never_cuts_a_bridge():
    # A chain: every pair is a bridge, so none may be rejected.
    n = 4
    i = np.array([0, 1, 2])
    j = np.array([1, 2, 3])
    delta = np.array([0.0, 100.0, 0.0])
    sol = solve_levels(n, i, j, delta, np.full(3, 0.01), robust=True)
    assert sol.used.all()
    assert sol.n_components == 1


def test_plane_coefficients_solved_column_by_column():
    rng = np.random.default_rng(5)
    n = 5
    i, j = np.triu_indices(n, 1)
    truth = rng.normal(0, 1, (n, 3))
    delta = truth[i] - truth[j]
    sol = solve_levels(n, i, j, delta, np.full((i.size, 3), 0.01))
    np.testing.assert_allclose(sol.levels, truth - truth.mean(axis=0), atol=1e-9)


def test_match_down_and_up():
    levels = np.array([0.5, -1.0, 2.0, np.nan])
    comp = np.array([0, 0, 0, -1])
    down = apply_match_down(levels, comp, match_down=True)
    up = apply_match_down(levels, comp, match_down=False)
    np.testing.assert_allclose(down[:3], [1.5, 0.0, 3.0])
    np.testing.assert_allclose(up[:3], [-1.5, -3.0, 0.0])
    assert np.isnan(down[3])


def test_rejects_self_pairs_and_bad_weighting():
    with pytest.raises(ValueError, match="itself"):
        solve_levels(2, [0], [0], [1.0], [1.0])
    with pytest.raises(ValueError, match="weighting"):
        solve_levels(2, [0], [1], [1.0], [1.0], weighting="magic")


def test_pair_components_numbers_connected_sets_in_node_order():
    labels = pair_components(7, np.array([5, 1, 3]), np.array([6, 0, 1]))
    assert labels.tolist() == [0, 0, -1, 0, -1, 1, 1]
    assert pair_components(3, np.array([], int), np.array([], int)).tolist() == [-1, -1, -1]
