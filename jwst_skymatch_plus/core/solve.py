"""Global least-squares solution of image levels from pairwise differences.

Each measured pair ``e = (i, j)`` says ``level[i] - level[j] = delta[e]`` with
uncertainty ``sigma[e]``.  The levels follow from weighted least squares over
the overlap graph, solved separately in each connected component (the graph
Laplacian is sparse; ``scipy.sparse`` does the work).  A difference graph fixes
levels only up to one constant per component (the *gauge*): the solution
returned has zero mean in every component, and callers shift it to the
convention they need (e.g. :func:`apply_match_down`).

Pairs whose residual is an outlier after the fit are rejected and the fit is
repeated (robust reweighting), as long as rejecting them does not split a
component.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import splu

__all__ = ["LevelSolution", "WEIGHTINGS", "apply_match_down", "pair_components", "solve_levels"]

WEIGHTINGS = ("ivar", "npix", "equal")


@dataclass
class LevelSolution:
    """Levels of ``n`` images solved from pair differences.

    Attributes
    ----------
    levels : numpy.ndarray, shape (n, ncoef)
        Solution with zero mean per component (NaN for images in no pair).
    sigma : numpy.ndarray, shape (n, ncoef)
        1-sigma uncertainty of each level relative to its component's mean.
    component : numpy.ndarray of int, shape (n,)
        Connected component of each image; -1 for images in no used pair.
    used : numpy.ndarray of bool, shape (m,)
        Pairs kept by the robust fit.
    residual : numpy.ndarray, shape (m, ncoef)
        ``delta - (level[i] - level[j])`` for every pair.
    chi2_dof : float
        Reduced chi-square of the level term over the used pairs.

    """

    levels: np.ndarray
    sigma: np.ndarray
    component: np.ndarray
    used: np.ndarray
    residual: np.ndarray
    chi2_dof: float

    @property
    def n_components(self) -> int:
        """Number of connected components with at least one pair."""
        c = self.component[self.component >= 0]
        return int(np.unique(c).size)


def pair_components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected component of each of ``n`` nodes of the graph with edges ``i[k] - j[k]``.

    Returns
    -------
    numpy.ndarray of int, shape (n,)
        Components numbered 0, 1, ... in order of their lowest node; -1 for
        a node in no edge.
    """
    labels = np.full(n, -1, dtype=int)
    if i.size == 0:
        return labels
    adj = sp.coo_matrix((np.ones(i.size), (i, j)), shape=(n, n))
    _, lab = connected_components(adj, directed=False)
    in_pair = np.zeros(n, dtype=bool)
    in_pair[i] = True
    in_pair[j] = True
    # Renumber components that contain pairs as 0, 1, 2, ...
    uniq = np.unique(lab[in_pair])
    remap = {u: k for k, u in enumerate(uniq)}
    labels[in_pair] = [remap[v] for v in lab[in_pair]]
    return labels


def _solve_component(nodes, i, j, delta, weight, sigma, offdiag=None):
    """Zero-mean weighted least squares on one connected component.

    Returns levels and their covariance (the sandwich form, so that it is right
    for any weights given the measurements' covariance: ``sigma**2`` on the
    diagonal plus ``offdiag``, a sparse matrix of the covariances between
    pairs, when given).
    """
    nc = nodes.size
    local = {g: k for k, g in enumerate(nodes)}
    li = np.array([local[v] for v in i])
    lj = np.array([local[v] for v in j])
    m = li.size
    a = sp.csr_matrix(
        (np.r_[np.ones(m), -np.ones(m)], (np.r_[np.arange(m), np.arange(m)], np.r_[li, lj])),
        shape=(m, nc),
    )
    if nc == 1:
        return np.zeros(1), np.zeros((1, 1))
    # Fix the first node to zero (removes the null space), solve, then move to
    # the zero-mean gauge.
    a_red = a[:, 1:]
    center = np.eye(nc) - 1.0 / nc
    w = sp.diags(weight)
    normal = (a_red.T @ w @ a_red).tocsc()
    lu = splu(normal)
    rhs = a_red.T @ (weight * delta)
    x = np.r_[0.0, lu.solve(rhs)]
    levels = center @ x
    # Covariance: N^-1 A^T W S W A N^-1 with S = diag(sigma^2).
    if nc <= 4000:
        ninv = lu.solve(np.eye(nc - 1))
        mid = (a_red.T @ sp.diags(weight**2 * sigma**2) @ a_red).toarray()
        if offdiag is not None and offdiag.nnz:
            wa = sp.diags(weight) @ a_red
            mid = mid + (wa.T @ offdiag @ wa).toarray()
        cov_red = ninv @ mid @ ninv
        cov = np.zeros((nc, nc))
        cov[1:, 1:] = cov_red
        cov = center @ cov @ center
    else:  # too large for a dense inverse: inverse-variance approximation
        cov = np.full((nc, nc), np.nan)
    return levels, cov


def _solve_component_joint(nodes, i, j, delta, covariance):
    """Generalised least squares of all coefficients of one component.

    Each pair contributes ``(x_i - x_j - d)^T C^-1 (x_i - x_j - d)``.  Returns
    zero-mean coefficients (per coefficient) and their variances.
    """
    nc, ncoef = nodes.size, delta.shape[1]
    if nc == 1:
        return np.zeros((1, ncoef)), np.zeros((1, ncoef))
    local = {g: k for k, g in enumerate(nodes)}
    li = np.array([local[v] for v in i])
    lj = np.array([local[v] for v in j])
    weights = np.linalg.inv(covariance)  # (m, ncoef, ncoef)
    size = nc * ncoef
    normal = np.zeros((size, size))
    rhs = np.zeros(size)
    for a, b, w, d in zip(li, lj, weights, delta, strict=True):
        sa = slice(a * ncoef, (a + 1) * ncoef)
        sb = slice(b * ncoef, (b + 1) * ncoef)
        normal[sa, sa] += w
        normal[sb, sb] += w
        normal[sa, sb] -= w
        normal[sb, sa] -= w
        wd = w @ d
        rhs[sa] += wd
        rhs[sb] -= wd
    # Fix the first node (removes the null space), solve, move to zero mean.
    red = normal[ncoef:, ncoef:]
    cov_red = np.linalg.inv(red)
    x = np.r_[np.zeros(ncoef), cov_red @ rhs[ncoef:]].reshape(nc, ncoef)
    cov = np.zeros((size, size))
    cov[ncoef:, ncoef:] = cov_red
    center = np.kron(np.eye(nc) - 1.0 / nc, np.eye(ncoef))
    cov = center @ cov @ center.T
    levels = x - x.mean(axis=0)
    return levels, np.diag(cov).reshape(nc, ncoef)


def _chi2_dof(i, j, delta, sigma, used, comp, levels) -> float:
    if not used.any():
        return math.nan
    resid = delta[used] - (levels[i[used]] - levels[j[used]])
    n_nodes = int((comp >= 0).sum())
    n_comp = int(np.unique(comp[comp >= 0]).size)
    dof = max(int(used.sum()) - n_nodes + n_comp, 1)
    return float(np.nansum((resid / sigma[used]) ** 2) / dof)


def _reject_worst(n, i, j, delta, sigma, used, comp, levels, fit, reject_sigma, n_candidates=3):
    """Index of the pair to reject next, or None.

    Candidates are the pairs with the largest normalised residuals.  Each is
    judged by its *deleted* residual: its measurement against the prediction
    of a fit made without it, in units of the combined uncertainty, scaled by
    the square root of that fit's reduced chi-square when above one.  Judging
    the deleted residual matters because one bad pair drags the levels of its
    two images and spreads its residual over their other pairs.  Pairs whose
    removal would split a component are never rejected.
    """
    z = np.abs(delta - (levels[i] - levels[j])) / sigma
    z[~used] = -np.inf
    for e in np.argsort(-z)[:n_candidates]:
        if not np.isfinite(z[e]) or z[e] <= reject_sigma:
            return None
        trial = used.copy()
        trial[e] = False
        comp_t, lev_t, sig_t = fit(trial)
        if comp_t.max() != comp.max() or not np.array_equal(comp_t >= 0, comp >= 0):
            continue  # a bridge: keep it
        pred = lev_t[i[e], 0] - lev_t[j[e], 0]
        var_pred = sig_t[i[e], 0] ** 2 + sig_t[j[e], 0] ** 2
        scale = math.sqrt(max(1.0, _chi2_dof(i, j, delta, sigma, trial, comp_t, lev_t[:, 0])))
        z_del = abs(delta[e] - pred) / math.sqrt(sigma[e] ** 2 + var_pred)
        if z_del > reject_sigma * scale:
            return int(e)
    return None


def solve_levels(
    n: int,
    i: np.ndarray,
    j: np.ndarray,
    delta: np.ndarray,
    sigma: np.ndarray,
    *,
    weighting: str = "ivar",
    npix: np.ndarray | None = None,
    robust: bool = True,
    reject_sigma: float = 5.0,
    max_iter: int = 10,
    covariance: np.ndarray | None = None,
    pair_covariance=None,
) -> LevelSolution:
    """Solve image levels from pairwise differences.

    Parameters
    ----------
    n : int
        Number of images.
    i, j : array of int, shape (m,)
        Image indices of each pair.
    delta : array, shape (m,) or (m, ncoef)
        Measured ``level[i] - level[j]`` (plane coefficients are solved one
        column at a time).
    sigma : array, same shape as ``delta``
        1-sigma uncertainties of ``delta``.
    weighting : {'ivar', 'npix', 'equal'}
        Pair weights: inverse variance (default), number of overlapping
        pixels, or equal.
    npix : array of int, optional
        Pixels per pair (needed for ``weighting='npix'``).
    robust : bool
        Reject outlying pairs one at a time, refitting after each, without
        splitting a component: a pair goes when its residual against a fit
        made without it exceeds ``reject_sigma`` combined standard deviations
        (scaled up by that fit's reduced chi-square when above one).
    reject_sigma : float
        Rejection threshold.
    max_iter : int
        Maximum number of rejections.
    covariance : array, shape (m, ncoef, ncoef), optional
        Full covariance of each pair's coefficients.  With ``weighting='ivar'``
        and more than one coefficient the coefficients are then solved
        jointly, weighting every pair by its inverse covariance: a plane
        measured on a small overlap far from the plane's origin has strongly
        correlated level and slopes, and solving them column by column would
        waste most of its information.
    pair_covariance : scipy.sparse matrix, shape (m, m), optional
        Covariances *between* pairs of their constant terms (zero diagonal):
        pairs that share an image share that image's noise where their
        overlaps intersect.  Used only for the levels' uncertainties (the
        sandwich covariance), which would otherwise come out too small.

    Returns
    -------
    LevelSolution

    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    i = np.asarray(i, dtype=int)
    j = np.asarray(j, dtype=int)
    delta = np.asarray(delta, dtype=float)
    sigma = np.asarray(sigma, dtype=float)
    if delta.ndim == 1:
        delta = delta[:, None]
        sigma = sigma[:, None]
    m, ncoef = delta.shape if delta.size else (0, delta.shape[1] if delta.ndim == 2 else 1)
    if np.any(i == j):
        raise ValueError("A pair cannot join an image to itself.")
    sigma = np.where(np.isfinite(sigma) & (sigma > 0), sigma, np.nan)
    used = np.isfinite(delta).all(axis=1) & np.isfinite(sigma).all(axis=1)

    def weights(col: int) -> np.ndarray:
        if weighting == "ivar":
            return 1.0 / sigma[:, col] ** 2
        if weighting == "npix":
            if npix is None:
                raise ValueError("weighting='npix' needs npix")
            w = np.asarray(npix, dtype=float)
            return w / np.nanmean(w[used]) if used.any() else w
        return np.ones(m)

    joint = covariance is not None and weighting == "ivar" and ncoef > 1
    if joint:
        covariance = np.asarray(covariance, dtype=float).reshape(m, ncoef, ncoef)
        used &= np.isfinite(covariance).all(axis=(1, 2))

    def fit(mask):
        comp = pair_components(n, i[mask], j[mask])
        levels = np.full((n, ncoef), np.nan)
        lsig = np.full((n, ncoef), np.nan)
        for label in np.unique(comp[comp >= 0]):
            nodes = np.flatnonzero(comp == label)
            emask = mask & np.isin(i, nodes)
            if joint:
                lev, var = _solve_component_joint(nodes, i[emask], j[emask], delta[emask], covariance[emask])
                levels[nodes] = lev
                lsig[nodes] = np.sqrt(np.clip(var, 0, None))
                continue
            sub = None
            if pair_covariance is not None:
                idx = np.flatnonzero(emask)
                sub = sp.csr_matrix(pair_covariance)[idx][:, idx]
            for c in range(ncoef):
                w = weights(c)[emask]
                lev, cov = _solve_component(
                    nodes,
                    i[emask],
                    j[emask],
                    delta[emask, c],
                    w,
                    sigma[emask, c],
                    sub if c == 0 else None,
                )
                levels[nodes, c] = lev
                lsig[nodes, c] = np.sqrt(np.clip(np.diag(cov), 0, None))
        return comp, levels, lsig

    comp, levels, lsig = fit(used)
    if robust and m > 0:
        for _ in range(max_iter):
            rejected = _reject_worst(
                n, i, j, delta[:, 0], sigma[:, 0], used, comp, levels[:, 0], fit, reject_sigma
            )
            if rejected is None:
                break
            used[rejected] = False
            comp, levels, lsig = fit(used)

    resid = delta - (levels[i] - levels[j]) if m else np.zeros((0, ncoef))
    chi2 = _chi2_dof(i, j, delta[:, 0], sigma[:, 0], used, comp, levels[:, 0])
    return LevelSolution(levels=levels, sigma=lsig, component=comp, used=used, residual=resid, chi2_dof=chi2)


def apply_match_down(levels: np.ndarray, component: np.ndarray, match_down: bool = True) -> np.ndarray:
    """Shift levels in every component so the lowest (or highest) is zero.

    This is ``SkyMatchStep``'s convention for the free constant: with
    ``match_down`` the images with higher sky are brought down to the lowest
    one, otherwise the lower ones are raised to the highest.

    Parameters
    ----------
    levels : numpy.ndarray, shape (n,)
        Levels in any gauge.
    component : numpy.ndarray of int, shape (n,)
        Component label per image; images labelled -1 are left as they are.
    match_down : bool
        Bring everything down to the lowest level (True) or up to the highest.

    """
    out = np.array(levels, dtype=float, copy=True)
    for label in np.unique(component[component >= 0]):
        sel = (component == label) & np.isfinite(out)
        if sel.any():
            out[sel] -= out[sel].min() if match_down else out[sel].max()
    return out
