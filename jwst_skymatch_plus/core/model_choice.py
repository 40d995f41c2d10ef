"""Choosing between levels and planes from the data (``fit_type='auto'``).

A constant per exposure is the better model whenever it describes the data:
it has a third of the unknowns of a plane, and planes are poorly constrained
by overlaps that are thin in one direction, few, or at the edges of a
mosaic.  When the exposures carry background gradients of their own,
however, the level a pair measures is the gradients' value at the overlap's
centre, not at the exposures' centres, and the pairs disagree with any set
of levels by more than their noise.  ``fit_type='auto'`` takes planes only
when three tests, in this order, all say so (``alpha`` is the significance
of both statistical ones):

1. **Levels do not fit.**  The chi-square of the level solution's pair
   residuals is improbable for its degrees of freedom (used pairs minus free
   levels): ``p < alpha``.  Otherwise levels are kept and nothing more is
   computed; this is the usual case, and it costs nothing.
2. **Planes are constrained.**  The pairs are measured again with planes on
   the same grid.  The pairs' uncertainties are propagated to the units'
   levels at their centres under both models, a sky plane removed
   (:func:`noise_ratio`); planes are refused when they make those levels
   more than ``MAX_NOISE_RATIO`` times as noisy (in variance) as levels do.
   This depends on the overlap geometry alone: mosaics tied together by
   thin strips or single small overlaps fail it.
3. **Planes fit significantly better.**  The reduced chi-square of the
   pairs' constant terms drops from the level to the plane solution by an
   F ratio that is improbable if planes fitted no better: ``p < alpha``
   (:func:`chi2_ratio_test`).

The choice is one for the whole mosaic: planes for every unit or for none.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

from .execution import ExecutionSettings
from .grid import SkyGrid
from .matching import ExposureSource, MatchConfig, MatchResult, match_exposures
from .pairs import PairMeasurement
from .solve import LevelSolution

__all__ = [
    "DEFAULT_ALPHA",
    "MAX_NOISE_RATIO",
    "FitChoice",
    "chi2_ratio_test",
    "level_consistency",
    "match_auto",
    "noise_ratio",
]

log = logging.getLogger(__name__)

#: Significance of the statistical tests of ``fit_type='auto'``: the chance
#: that levels which do describe the data are judged not to.
DEFAULT_ALPHA = 1e-3

#: Largest tolerated ratio of the levels' variances at the units' centres,
#: planes over levels (see :func:`noise_ratio`): planes may double the
#: noise of the levels (in RMS), no more.
MAX_NOISE_RATIO = 4.0


@dataclass
class FitChoice:
    """What ``fit_type='auto'`` chose and why.

    Attributes
    ----------
    fit_type : {'level', 'level+slope'}
        The model kept.
    level_chi2_dof : float
        Reduced chi-square of the level solution.
    level_dof : int
        Its degrees of freedom.
    level_p : float
        Probability of a chi-square at least that large if levels were right.
    noise_ratio : float
        :func:`noise_ratio` (NaN when planes were not measured).
    f_ratio, f_p : float
        :func:`chi2_ratio_test` (NaN when planes were not measured).
    reason : str
        One sentence for the log and the records.
    """

    fit_type: str
    level_chi2_dof: float
    level_dof: int
    level_p: float
    noise_ratio: float = math.nan
    f_ratio: float = math.nan
    f_p: float = math.nan
    reason: str = ""


def _free_levels(solution: LevelSolution) -> int:
    nodes = int((solution.component >= 0).sum())
    return nodes - solution.n_components


def level_consistency(solution: LevelSolution) -> tuple[float, int, float]:
    """Chi-square test of a level solution against its pairs' noise.

    Parameters
    ----------
    solution : LevelSolution
        A level solution (its ``chi2_dof`` over the used pairs).

    Returns
    -------
    chi2_dof : float
        Reduced chi-square.
    dof : int
        Used pairs minus free levels.
    p : float
        Probability of a chi-square at least as large when the levels
        describe the data (1.0 when there are no degrees of freedom).
    """
    dof = int(solution.used.sum()) - _free_levels(solution)
    chi2 = float(solution.chi2_dof)
    if dof <= 0 or not math.isfinite(chi2):
        return chi2, max(dof, 0), 1.0
    return chi2, dof, float(stats.chi2.sf(chi2 * dof, dof))


def _normal_matrix(n: int, pairs: Sequence[PairMeasurement], ncoef: int):
    """Normal matrix (sparse) of unit coefficients from pairs, each weighted by its inverse covariance."""
    import scipy.sparse as sp

    rows, cols, vals = [], [], []
    block = np.arange(ncoef)
    for p in pairs:
        cov = p.covariance if p.covariance is not None else np.diag(np.square(p.sigma))
        w = np.linalg.inv(np.asarray(cov, dtype=float).reshape(ncoef, ncoef))
        for a, b, sign in ((p.i, p.i, 1.0), (p.j, p.j, 1.0), (p.i, p.j, -1.0), (p.j, p.i, -1.0)):
            r, c = np.meshgrid(a * ncoef + block, b * ncoef + block, indexing="ij")
            rows.append(r.ravel())
            cols.append(c.ravel())
            vals.append(sign * w.ravel())
    if not rows:
        return sp.csc_matrix((n * ncoef, n * ncoef))
    return sp.csc_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n * ncoef, n * ncoef)
    )


#: Up to this many units the projected trace is exact; above, it is estimated
#: from random probes (Hutchinson's estimator, a few per cent off).
_EXACT_TRACE_UNITS = 400
_TRACE_PROBES = 64


def _projected_trace(
    solution: LevelSolution,
    pairs: Sequence[PairMeasurement],
    ncoef: int,
    jac,
    q: np.ndarray,
    rng: np.random.Generator,
) -> float:
    """``tr(P J G J^T P)``: the summed variance of the units' centre levels, gauge removed.

    ``G`` inverts the normal matrix with one unit per connected component
    held at zero (any generalized inverse gives the same result once the
    constant and sky plane of each component, ``P = I - q q^T``, are
    removed); ``J`` (``jac``) maps unit coefficients to centre levels.
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    used = [p for p, ok in zip(pairs, solution.used, strict=True) if ok]
    n = solution.component.size
    normal = _normal_matrix(n, used, ncoef)
    fixed = set(np.flatnonzero(solution.component < 0).tolist())
    for label in np.unique(solution.component[solution.component >= 0]):
        fixed.add(int(np.flatnonzero(solution.component == label)[0]))
    keep_units = np.array(sorted(set(range(n)) - fixed), dtype=int)
    keep = (keep_units[:, None] * ncoef + np.arange(ncoef)).ravel()
    if keep.size == 0:
        return 0.0
    lu = splu(sp.csc_matrix(normal[keep][:, keep]))
    jac = sp.csr_matrix(jac)[:, keep]

    def quadratic(w: np.ndarray) -> np.ndarray:
        r = np.asarray(jac.T @ w)
        return np.sum(r * lu.solve(r), axis=0)

    m = q.shape[0]
    if m <= _EXACT_TRACE_UNITS:
        return float(np.sum(quadratic(np.eye(m) - q @ q.T)))
    z = rng.choice([-1.0, 1.0], size=(m, _TRACE_PROBES))
    return float(np.mean(quadratic(z - q @ (q.T @ z))))


def noise_ratio(planes: MatchResult, levels: MatchResult) -> float:
    """How much noisier planes make the units' levels at their centres than levels do.

    The pairs' uncertainties are propagated through both solutions to every
    unit's level at the centre of its box, a constant and a sky plane per
    connected component are removed (what no matching can measure), and the
    ratio of the summed variances is returned.  It depends on the overlap
    geometry, not on the data: about 1.5 where every unit has broad
    overlaps, and tens to hundreds where units are tied to the mosaic only
    by thin strips or a few small overlaps, whose slopes are loose.

    Parameters
    ----------
    planes, levels : MatchResult
        Plane and level results of the same units on the same grid.

    Returns
    -------
    float
        NaN when fewer than four units are measured in both.
    """
    import scipy.sparse as sp

    sol_p, sol_l = planes.group_solution, levels.group_solution
    units = np.flatnonzero((sol_p.component >= 0) & (sol_l.component >= 0))
    if units.size < 4:
        return math.nan
    n = sol_p.component.size
    boxes = [planes.group_boxes[g] for g in units]
    centres = np.array([((b.x0 + b.x1 - 1) / 2.0, (b.y0 + b.y1 - 1) / 2.0) for b in boxes])
    cx, cy = planes.grid.center
    dx, dy = (centres[:, 0] - cx) / planes.plane_scale, (centres[:, 1] - cy) / planes.plane_scale
    rows = np.arange(units.size)
    jac_p = sp.csr_matrix(
        (
            np.column_stack([np.ones(units.size), dx, dy]).ravel(),
            (np.repeat(rows, 3), (units[:, None] * 3 + np.arange(3)).ravel()),
        ),
        shape=(units.size, 3 * n),
    )
    jac_l = sp.csr_matrix((np.ones(units.size), (rows, units)), shape=(units.size, n))
    columns = []
    for label in np.unique(sol_p.component[units]):
        sel = (sol_p.component[units] == label).astype(float)
        columns += [sel, sel * dx, sel * dy]
    u, sv, _ = np.linalg.svd(np.column_stack(columns), full_matrices=False)
    q = u[:, sv > sv.max() * 1e-10]  # orthonormal basis of what is removed
    rng = np.random.default_rng(0)
    var_p = _projected_trace(sol_p, planes.group_pairs, 3, jac_p, q, rng)
    var_l = _projected_trace(sol_l, levels.group_pairs, 1, jac_l, q, rng)
    return var_p / var_l if var_l > 0 else math.inf


def chi2_ratio_test(planes: MatchResult, levels: MatchResult) -> tuple[float, int, int, float]:
    """Whether planes leave significantly less residual scatter in the pairs than levels.

    Compares the reduced chi-square of the pairs' constant terms in the
    level solution with that in the plane solution (each in units of its own
    pairs' uncertainties) as an F ratio.

    Parameters
    ----------
    planes, levels : MatchResult
        Plane and level results of the same units.

    Returns
    -------
    f : float
        Ratio of the reduced chi-squares (levels over planes).
    dof_levels, dof_planes : int
        Their degrees of freedom.
    p : float
        Probability of a ratio at least that large if planes fitted no
        better (NaN without degrees of freedom).
    """
    chi2_l, dof_l, _ = level_consistency(levels.group_solution)
    chi2_p, dof_p, _ = level_consistency(planes.group_solution)
    if dof_l <= 0 or dof_p <= 0 or not (chi2_p > 0 and math.isfinite(chi2_l)):
        return math.nan, dof_l, dof_p, math.nan
    f = chi2_l / chi2_p
    return float(f), dof_l, dof_p, float(stats.f.sf(f, dof_l, dof_p))


def match_auto(
    exposures: Sequence[ExposureSource],
    groups: Sequence[Sequence[int]],
    config: MatchConfig | None = None,
    grid: SkyGrid | None = None,
    fallback: Sequence[int] | None = None,
    execution: ExecutionSettings | None = None,
    alpha: float = DEFAULT_ALPHA,
) -> tuple[MatchResult, FitChoice]:
    """Match with levels, or with planes where the data ask for them (``fit_type='auto'``).

    See the module description for the three tests.  Planes are measured on
    the grid of the levels (``config.grid_scale``, native pixels by
    default), so a switch costs a second pass over the exposures.

    Parameters
    ----------
    exposures, groups, config, grid, fallback, execution
        As for :func:`~jwst_skymatch_plus.core.matching.match_exposures`
        (``config.fit_type`` is ignored).
    alpha : float
        Significance of the statistical tests.

    Returns
    -------
    MatchResult
        The result of the chosen model.
    FitChoice
        The choice and the test statistics.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    config = config or MatchConfig()
    levels = match_exposures(exposures, groups, replace(config, fit_type="level"), grid, fallback, execution)
    chi2, dof, p = level_consistency(levels.group_solution)
    choice = FitChoice("level", chi2, dof, p)
    fit = f"reduced chi-square {chi2:.3g} over {dof} degrees of freedom, p = {p:.2g}"
    if not p < alpha:
        choice.reason = f"levels fit the pairs ({fit}): constant offsets"
        log.info("fit_type='auto': %s.", choice.reason)
        return levels, choice
    log.info("fit_type='auto': levels do not fit the pairs (%s < %g): measuring planes.", fit, alpha)
    plane_config = replace(config, fit_type="level+slope", check_alignment=False)
    planes = match_exposures(exposures, groups, plane_config, levels.grid, fallback, execution)
    planes.alignment = levels.alignment  # measured once, by the level pass
    choice.noise_ratio = noise_ratio(planes, levels)
    choice.f_ratio, _, _, choice.f_p = chi2_ratio_test(planes, levels)
    if not choice.noise_ratio <= MAX_NOISE_RATIO:
        choice.reason = (
            f"levels do not fit the pairs ({fit}), but the overlaps leave planes loose (they would make the "
            f"levels {choice.noise_ratio:.3g} times as noisy in variance, more than {MAX_NOISE_RATIO:g}): "
            "constant offsets"
        )
    elif not choice.f_p < alpha:
        choice.reason = (
            f"levels do not fit the pairs ({fit}), but planes fit them no better (chi-square ratio "
            f"{choice.f_ratio:.3g}, p = {choice.f_p:.2g}): constant offsets"
        )
    else:
        choice.fit_type = "level+slope"
        choice.reason = (
            f"levels do not fit the pairs ({fit}); planes fit them significantly better (chi-square ratio "
            f"{choice.f_ratio:.3g}, p = {choice.f_p:.2g}) and are constrained (noise ratio "
            f"{choice.noise_ratio:.3g}): planes"
        )
    log.info("fit_type='auto': %s.", choice.reason)
    return (planes if choice.fit_type == "level+slope" else levels), choice
