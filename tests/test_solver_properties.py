"""Property-based tests of the global solver (hypothesis)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from jwst_skymatch_plus.core.solve import apply_match_down, solve_levels


@st.composite
def connected_graphs(draw, max_nodes=12):
    n = draw(st.integers(2, max_nodes))
    # A random spanning tree keeps the graph connected; extra edges add loops.
    parents = [draw(st.integers(0, k - 1)) for k in range(1, n)]
    edges = {(min(p, k), max(p, k)) for k, p in zip(range(1, n), parents, strict=True)}
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=2 * n))
    edges |= {(min(a, b), max(a, b)) for a, b in extra if a != b}
    edges = sorted(edges)
    seed = draw(st.integers(0, 2**31 - 1))
    return n, np.array([e[0] for e in edges]), np.array([e[1] for e in edges]), seed


@settings(max_examples=60, deadline=None)
@given(connected_graphs(), st.floats(1e-4, 1.0))
def test_random_graphs_recover_levels_to_the_noise(graph, noise):
    n, i, j, seed = graph
    rng = np.random.default_rng(seed)
    truth = rng.normal(0, 100 * noise, n)
    sigma = noise * rng.uniform(0.5, 2.0, i.size)
    delta = truth[i] - truth[j] + rng.normal(0, sigma)
    sol = solve_levels(n, i, j, delta, sigma, robust=False)
    err = sol.levels[:, 0] - (truth - truth.mean())
    assert sol.n_components == 1
    # Each level within 6 of its own standard errors (a loose bound for 60
    # random graphs, but still orders of magnitude below the offsets).
    assert np.all(np.abs(err) <= 6 * sol.sigma[:, 0] + 1e-12)


@settings(max_examples=40, deadline=None)
@given(connected_graphs(max_nodes=9))
def test_order_of_images_and_pairs_does_not_matter(graph):
    n, i, j, seed = graph
    rng = np.random.default_rng(seed)
    truth = rng.normal(0, 1, n)
    sigma = rng.uniform(0.01, 0.05, i.size)
    delta = truth[i] - truth[j] + rng.normal(0, sigma)
    base = solve_levels(n, i, j, delta, sigma, robust=False)
    perm = rng.permutation(n)  # relabel images
    inv = np.argsort(perm)
    order = rng.permutation(i.size)  # shuffle pairs
    moved = solve_levels(n, inv[i][order], inv[j][order], delta[order], sigma[order], robust=False)
    np.testing.assert_allclose(moved.levels[inv, 0], base.levels[:, 0], atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(connected_graphs(max_nodes=9), st.booleans())
def test_match_down_gauge(graph, down):
    n, i, j, seed = graph
    rng = np.random.default_rng(seed)
    truth = rng.normal(0, 1, n)
    delta = truth[i] - truth[j]
    sol = solve_levels(n, i, j, delta, np.full(i.size, 0.01), robust=False)
    levels = apply_match_down(sol.levels[:, 0], sol.component, down)
    expected = truth - (truth.min() if down else truth.max())
    np.testing.assert_allclose(levels, expected, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(connected_graphs(max_nodes=8))
def test_planes_recovered_on_random_graphs(graph):
    n, i, j, seed = graph
    rng = np.random.default_rng(seed)
    truth = rng.normal(0, 1, (n, 3))
    cov = np.tile(np.diag([1e-4, 4e-4, 4e-4]), (i.size, 1, 1))
    delta = truth[i] - truth[j]
    sol = solve_levels(n, i, j, delta, np.sqrt(cov.diagonal(axis1=1, axis2=2)), covariance=cov, robust=False)
    np.testing.assert_allclose(sol.levels, truth - truth.mean(axis=0), atol=1e-9)
