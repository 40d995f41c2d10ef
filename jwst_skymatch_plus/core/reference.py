"""Fixing the free constant of each connected component (the gauge).

Differences determine levels only up to one constant per connected set of
exposures.  By default the constant follows ``SkyMatchStep``'s ``match_down``
convention; a reference group can be held fixed instead, chosen by name or by
a rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .keys import mid_time
from .solve import apply_match_down

__all__ = ["REFERENCE_RULES", "apply_reference", "choose_reference", "reference_for_result"]

REFERENCE_RULES = ("most_connected", "flattest", "closest_to_background")


def choose_reference(
    rule: str,
    *,
    group_names: Sequence[Sequence[str]],
    used_pairs: Sequence[tuple[int, int]] = (),
    pair_pixels: Sequence[int] = (),
    flatness: Sequence[float] = (),
    group_times: Sequence[float] = (),
    background_times: Sequence[float] = (),
    kind: str = "group",
) -> int:
    """Index of the reference group selected by ``rule``.

    Parameters
    ----------
    rule : str
        ``'most_connected'`` (most used pairs; ties broken by overlapping
        pixels), ``'flattest'`` (least large-scale structure),
        ``'closest_to_background'`` (mid-time nearest to a background
        observation), or the name of an exposure (its group is the reference)
        or a 1-based group number.
    group_names : sequence of sequence of str
        Exposure names of each group.
    used_pairs, pair_pixels : sequences
        Group pairs kept by the solution and their overlap sizes.
    flatness : sequence of float
        Per-group structure measure (lower is flatter).
    group_times : sequence of float
        Per-group mid times (MJD).
    background_times : sequence of float
        Times of the background observations (MJD).
    kind : str
        What a group is called in error messages (e.g. ``'tile'``).

    Raises
    ------
    ValueError
        If the rule is unknown, a name matches nothing, or the information a
        rule needs is missing.
    """
    n = len(group_names)
    if rule == "most_connected":
        degree = np.zeros(n)
        pixels = np.zeros(n)
        for (a, b), npix in zip(used_pairs, pair_pixels, strict=True):
            degree[[a, b]] += 1
            pixels[[a, b]] += npix
        return int(np.lexsort((-pixels, -degree))[0])
    if rule == "flattest":
        if len(flatness) != n:
            raise ValueError("reference='flattest' needs a flatness measure per group")
        return int(np.nanargmin(np.asarray(flatness, dtype=float)))
    if rule == "closest_to_background":
        if len(background_times) == 0:
            raise ValueError(
                "reference='closest_to_background' needs the times of background observations; "
                "none were given"
            )
        t = np.asarray(group_times, dtype=float)
        bg = np.asarray(background_times, dtype=float)
        return int(np.nanargmin(np.min(np.abs(t[:, None] - bg[None, :]), axis=1)))
    if rule.isdigit():
        g = int(rule) - 1
        if not 0 <= g < n:
            raise ValueError(f"reference {kind} {rule} does not exist (there are {n} {kind}s)")
        return g
    for g, names in enumerate(group_names):
        if rule in names or any(str(name).startswith(rule) for name in names):
            return g
    raise ValueError(
        f"reference {rule!r} is neither a rule ({', '.join(REFERENCE_RULES)}) nor an exposure or group"
    )


def apply_reference(
    levels: np.ndarray,
    component: np.ndarray,
    group_index: np.ndarray,
    reference_group: int | None,
    match_down: bool = True,
    reference_levels: np.ndarray | None = None,
) -> np.ndarray:
    """Shift levels per component: reference group at zero, or match_down.

    In the component that contains ``reference_group`` the mean level of that
    group's exposures becomes zero; every other component (and all of them
    when no reference is given) follows ``match_down``.

    Parameters
    ----------
    levels : numpy.ndarray, shape (n,)
        Per-exposure levels in any gauge.
    component : numpy.ndarray of int, shape (n,)
        Component per exposure (-1: unmatched, left alone).
    group_index : numpy.ndarray of int, shape (n,)
        Group per exposure.
    reference_group : int or None
        Group held at zero.
    match_down : bool
        Convention for the other components.
    reference_levels : numpy.ndarray, optional
        The levels whose mean is held at zero (e.g. ``levels`` with NaN where
        a level was not measured); default ``levels``.
    """
    out = apply_match_down(levels, component, match_down)
    if reference_group is None:
        return out
    in_ref = group_index == reference_group
    labels = np.unique(component[in_ref & (component >= 0)])
    for label in labels:
        sel = component == label
        ref = levels if reference_levels is None else reference_levels
        if np.isfinite(ref[in_ref & sel]).any():
            out[sel] = levels[sel] - np.nanmean(ref[in_ref & sel])
    return out


def reference_for_result(
    rule: str,
    result,
    metas: Sequence,
    group_names: Sequence[Sequence[str]],
    background_times: Sequence[float] = (),
    groups: Sequence[Sequence[int]] | None = None,
    kind: str = "group",
) -> int:
    """:func:`choose_reference` fed from a :class:`~jwst_skymatch_plus.core.matching.MatchResult`.

    Parameters
    ----------
    rule : str
        See :func:`choose_reference`.
    result : MatchResult
        The matching outcome (groups, used pairs, flatness).
    metas : sequence of mapping
        Flat metadata per exposure (for the groups' mid times).
    group_names : sequence of sequence of str
        Exposure names of each group.
    background_times : sequence of float
        MJDs of background observations.
    groups : sequence of sequence of int, optional
        The sets of exposures to choose from (e.g. visits), each a union of
        the result's units; default: the units themselves.  Pairs and
        flatness are carried over from the units.
    kind : str
        What a group is called in error messages.
    """
    kept = [p for p, ok in zip(result.group_pairs, result.group_solution.used, strict=True) if ok]
    flatness = np.asarray(result.group_flatness, dtype=float)
    if groups is not None:
        group_of = np.empty(len(result.group_index), dtype=int)
        for g, members in enumerate(groups):
            group_of[list(members)] = g
        unit_group = np.array([group_of[members[0]] for members in result.groups])
        kept = [p for p in kept if unit_group[p.i] != unit_group[p.j]]
        used_pairs = [(int(unit_group[p.i]), int(unit_group[p.j])) for p in kept]
        flat = np.full(len(groups), np.nan)
        for g in range(len(groups)):
            mine = flatness[unit_group == g] if flatness.size else np.zeros(0)
            mine = mine[np.isfinite(mine)]
            flat[g] = mine.mean() if mine.size else np.nan
        flatness = flat
    else:
        groups = result.groups
        used_pairs = [(p.i, p.j) for p in kept]
    times = []
    for members in groups:
        t = [v for v in (mid_time(metas[k]) for k in members) if v is not None]
        times.append(float(np.mean(t)) if t else np.nan)
    return choose_reference(
        rule,
        group_names=group_names,
        used_pairs=used_pairs,
        pair_pixels=[p.npix for p in kept],
        flatness=flatness,
        group_times=times,
        background_times=list(background_times),
        kind=kind,
    )
