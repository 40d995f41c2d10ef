"""From a matching result to the backgrounds that are removed: gauge and detector planes.

:func:`~jwst_skymatch_plus.core.matching.match_exposures` leaves the levels of
every connected component in a zero-mean gauge, as coefficients on the common
grid.  :func:`finalize` turns them into what a step subtracts and records:

1. every exposure's grid-frame background re-expressed as a plane in its own
   detector pixels (:func:`detector_planes`);
2. the free constant of each component fixed: the mean *measured* level of a
   reference set of exposures (a group, a mosaic tile) held at zero in its
   component, every other component following ``match_down``;
3. optionally, disconnected components tied by their lowest residual sky
   (:func:`tie_components`) and the lowest residual sky of all exposures
   added to every level (:func:`global_sky`, ``skymethod='global+match'``).

Sky statistics of the data are not computed here: the caller passes a
function giving each exposure's sky after a trial level is removed.

:func:`review_alignment` judges the shifts measured between overlapping units
(which measurements are trusted, which pairs are misaligned).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .matching import ExposureSource, MatchResult
from .planes import DetectorPlane, detector_plane
from .reference import apply_reference, reference_for_result

__all__ = [
    "MIN_SHIFT_SIGNIFICANCE",
    "FinalBackgrounds",
    "Gauge",
    "detector_planes",
    "finalize",
    "global_sky",
    "residual_sky",
    "review_alignment",
    "tie_components",
]

log = logging.getLogger(__name__)

#: Correlation peaks below this many robust sigmas of the surface are not trusted.
MIN_SHIFT_SIGNIFICANCE = 6.0


@dataclass(frozen=True)
class Gauge:
    """How the free constants of the matched levels are fixed.

    Attributes
    ----------
    reference : str
        ``''``: no reference, every component follows ``match_down``.
        Otherwise a rule of :func:`~jwst_skymatch_plus.core.reference.choose_reference`
        (``'most_connected'``, ``'flattest'``, ``'closest_to_background'``),
        an exposure name or a 1-based number of a reference set: the mean
        measured level of that set is held at zero in its component.
    match_down : bool
        ``SkyMatchStep``'s convention for components without a reference:
        lowest level at zero (True) or highest (False).
    background_times : tuple of float
        MJDs of background observations (for ``'closest_to_background'``).
    tie_components : bool
        Shift disconnected components so that their lowest residual skies
        agree (otherwise each keeps its own gauge).
    add_global_sky : bool
        Add the lowest residual sky of all exposures to every level
        (``skymethod='global+match'``).
    """

    reference: str = ""
    match_down: bool = True
    background_times: tuple[float, ...] = ()
    tie_components: bool = False
    add_global_sky: bool = False


@dataclass
class FinalBackgrounds:
    """What :func:`finalize` returns.

    Attributes
    ----------
    levels : numpy.ndarray, shape (n,)
        Background level of every exposure at its detector centre (NaN: none).
    planes : list of DetectorPlane or None
        The background to remove from each exposure, in its detector pixels;
        None where its level is NaN.
    reference : int or None
        Index (into the reference sets) of the set held at zero; None when
        ``match_down`` fixed every component.
    global_sky : float or None
        The sky added to every level (``add_global_sky``), else None.
    """

    levels: np.ndarray
    planes: list[DetectorPlane | None]
    reference: int | None = None
    global_sky: float | None = None


def detector_planes(result: MatchResult, sources: Sequence[ExposureSource]) -> list[DetectorPlane | None]:
    """Every exposure's matched background as a plane in its detector pixels.

    Parameters
    ----------
    result : MatchResult
        Matching outcome (grid-frame coefficients).
    sources : sequence of ExposureSource
        The exposures matched, in the same order (their WCS and shape).

    Returns
    -------
    list of DetectorPlane or None
        None where the exposure has no finite coefficients or no known WCS.
    """
    planes: list[DetectorPlane | None] = []
    for k, src in enumerate(sources):
        coeffs = result.coefficients[k]
        if not np.all(np.isfinite(coeffs)) or src.wcs is None:
            planes.append(None)
        else:
            planes.append(detector_plane(coeffs, src.wcs, src.shape, result.grid, result.plane_scale))
    return planes


def residual_sky(values: np.ndarray, level: float, stats: Callable) -> float:
    """Sky statistic of one exposure's good pixels after removing ``level`` (NaN: none).

    Parameters
    ----------
    values : numpy.ndarray
        The exposure's good pixel values.
    level : float
        Level to remove first (not removed when NaN).
    stats : callable
        ``stats(values) -> (sky, npix)``, e.g. a ``stcal`` ``SkyStats``.
    """
    values = values - (level if np.isfinite(level) else 0.0)
    if not values.size:
        return np.nan
    sky, _ = stats(values)
    return float(sky) if sky is not None and np.isfinite(sky) else np.nan


def global_sky(skies: np.ndarray) -> float:
    """Lowest sky over all exposures (``SkyMatchStep``'s 'global' sky); 0 with a warning if none."""
    if not np.isfinite(skies).any():
        log.warning("Unable to compute a 'global' sky value; using 0.")
        return 0.0
    return float(np.nanmin(skies))


def tie_components(
    levels: np.ndarray, component: np.ndarray, residual_skies: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Shift disconnected components so that their lowest residual skies agree.

    Parameters
    ----------
    levels : numpy.ndarray, shape (n,)
        Levels, each component in its own gauge.
    component : numpy.ndarray of int, shape (n,)
        Connected component per exposure (-1: unmatched, left alone).
    residual_skies : callable
        ``residual_skies(levels)``: every exposure's sky statistic after its
        level is removed (called only when there are several components).

    Returns
    -------
    numpy.ndarray
        The levels, every component shifted so that its lowest residual sky
        equals the lowest of all components.
    """
    labels = np.unique(component[component >= 0])
    if labels.size < 2:
        return levels
    skies = residual_skies(levels)
    floors = {lab: np.nanmin(skies[component == lab]) for lab in labels}
    target = min(floors.values())
    out = levels.copy()
    for lab, floor in floors.items():
        if np.isfinite(floor):
            out[component == lab] += floor - target
            log.info("Component %d tied by its global sky: shifted by %.6g.", lab, floor - target)
    return out


def finalize(
    result: MatchResult,
    sources: Sequence[ExposureSource],
    metas: Sequence[Mapping],
    reference_sets: Sequence[Sequence[int]],
    gauge: Gauge | None = None,
    *,
    residual_skies: Callable[[np.ndarray], np.ndarray] | None = None,
    kind: str = "group",
    units_compete: bool = False,
) -> FinalBackgrounds:
    """Final per-exposure levels and detector planes of a matching result.

    Parameters
    ----------
    result : MatchResult
        Matching outcome, levels in the zero-mean gauge of each component.
    sources : sequence of ExposureSource
        The exposures matched, in the same order.
    metas : sequence of mapping
        Flat metadata per exposure (mid times, for ``'closest_to_background'``).
    reference_sets : sequence of sequence of int
        The sets of exposures a reference can name (groups of ``grouping``,
        mosaic tiles), each a union of the result's units; a rule compares
        these sets, and the chosen one is held at zero.
    gauge : Gauge, optional
        Reference, ``match_down`` and what is added after; default
        ``Gauge()`` (``match_down``, nothing added).
    residual_skies : callable, optional
        ``residual_skies(levels)``: every exposure's sky statistic after its
        level is removed (NaN where none); needed by ``gauge.tie_components``
        and ``gauge.add_global_sky``.
    kind : str
        What a reference set is called in messages (``'group'``, ``'tile'``).
    units_compete : bool
        A reference rule compares the result's units (not the reference
        sets) and the set holding the chosen unit is held at zero; a number
        still names a set.

    Returns
    -------
    FinalBackgrounds

    Raises
    ------
    ValueError
        If the reference rule names nothing, or sky statistics are needed
        but ``residual_skies`` is not given.
    """
    gauge = gauge or Gauge()
    if (gauge.tie_components or gauge.add_global_sky) and residual_skies is None:
        raise ValueError("tying components or adding the global sky needs residual_skies")
    n = len(sources)
    planes = detector_planes(result, sources)
    set_of = np.full(n, -1, dtype=int)
    for s, members in enumerate(reference_sets):
        set_of[list(members)] = s
    reference = _reference_set(result, sources, reference_sets, gauge, metas, kind, units_compete)
    centre = np.array([p.level if p is not None else np.nan for p in planes])
    measured = np.where(result.status == "measured", centre, np.nan)
    levels = apply_reference(centre, result.component, set_of, reference, gauge.match_down, measured)
    if gauge.tie_components:
        levels = tie_components(levels, result.component, residual_skies)
    sky = None
    if gauge.add_global_sky:
        sky = global_sky(residual_skies(levels))
        log.info("'Global' sky added to every exposure after matching: %.6g", sky)
        levels = np.where(np.isfinite(levels), levels + sky, sky)
    final = [_at_level(p, level, src.shape) for p, level, src in zip(planes, levels, sources, strict=True)]
    return FinalBackgrounds(levels, final, reference, sky)


def _at_level(plane: DetectorPlane | None, level: float, shape: tuple[int, int]) -> DetectorPlane | None:
    """``plane`` with its level replaced (a flat plane at the detector centre if none); None if NaN."""
    if not np.isfinite(level):
        return None
    if plane is None:
        return DetectorPlane(float(level), 0.0, 0.0, (shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)
    return DetectorPlane(float(level), plane.slope_x, plane.slope_y, plane.x_center, plane.y_center)


def _reference_set(
    result: MatchResult,
    sources: Sequence[ExposureSource],
    reference_sets: Sequence[Sequence[int]],
    gauge: Gauge,
    metas: Sequence[Mapping],
    kind: str,
    units_compete: bool,
) -> int | None:
    """The reference set held at zero, or None (no rule, or none of its exposures was measured)."""
    rule = (gauge.reference or "").strip()
    if not rule:
        return None
    names = [[sources[k].name for k in members] for members in reference_sets]
    if units_compete and not rule.isdigit():
        # A rule compares the result's units; the set holding the chosen one is held.
        unit_names = [[sources[k].name for k in members] for members in result.groups]
        u = reference_for_result(rule, result, metas, unit_names, gauge.background_times, kind=kind)
        s = next(i for i, members in enumerate(reference_sets) if result.groups[u][0] in members)
    else:
        s = reference_for_result(
            rule, result, metas, names, gauge.background_times, groups=reference_sets, kind=kind
        )
    if any(result.status[k] == "measured" for k in reference_sets[s]):
        log.info(
            "Reference %s (its mean level held at zero): %d (%s), chosen by %r.",
            kind,
            s + 1,
            names[s][0],
            rule,
        )
        return s
    why = "; ".join(sorted({result.reasons[k] for k in reference_sets[s] if result.reasons[k]}))
    log.warning(
        "Reference %r (%s %d, %s) was not measured (%s): its sky is not held at zero; "
        "match_down=%s sets the levels of its component instead.",
        rule,
        kind,
        s + 1,
        names[s][0],
        why or result.status[reference_sets[s][0]],
        gauge.match_down,
    )
    return None


def review_alignment(
    result: MatchResult,
    names: Sequence[str],
    *,
    max_misalignment: float,
    min_correlation: float,
    refuse: bool = False,
) -> None:
    """Report, or refuse, overlapping units whose images are shifted against each other.

    A shift is trusted when its correlation reaches ``min_correlation`` and
    its peak stands :data:`MIN_SHIFT_SIGNIFICANCE` robust sigmas above the
    correlation surface: a peak no higher than noise peaks are (3-4 sigma)
    is chance, however high its correlation (small overlaps give such peaks
    at large shifts).  Trusted shifts longer than ``max_misalignment`` are
    misaligned pairs.

    Parameters
    ----------
    result : MatchResult
        Matching outcome with its alignment measurements.
    names : sequence of str
        Exposure names (a unit is named by its first exposure).
    max_misalignment : float
        Largest tolerated shift, in grid pixels.
    min_correlation : float
        Weakest correlation of a trusted shift.
    refuse : bool
        Raise instead of warning when pairs are misaligned.

    Raises
    ------
    ValueError
        With ``refuse``, naming the misaligned pairs.
    """
    if not result.alignment:
        return
    trusted = [
        c
        for c in result.alignment
        if c.shift is not None
        and c.shift.correlation >= min_correlation
        and c.shift.significance >= MIN_SHIFT_SIGNIFICANCE
    ]
    untrusted = len(result.alignment) - len(trusted)
    bad = [c for c in trusted if c.shift.length > max_misalignment]
    if trusted:
        worst = max(trusted, key=lambda c: c.shift.length)
        log.info(
            "Alignment of overlapping groups: largest shift %.3f pixel (groups %d-%d) "
            "over %d measured pair(s)%s.",
            worst.shift.length,
            worst.i + 1,
            worst.j + 1,
            len(trusted),
            f"; {untrusted} pair(s) had too little structure to measure" if untrusted else "",
        )
    if untrusted and untrusted * 2 >= len(result.alignment):
        # Silence here would read as "aligned": say the check could not look.
        log.warning(
            "Alignment could not be verified on %d of %d overlapping group pair(s): too little "
            "small-scale structure to measure a shift (smooth emission?). Pixel matching still "
            "needs alignment well within a pixel.",
            untrusted,
            len(result.alignment),
        )
    if not bad:
        return
    first = {g: names[members[0]] for g, members in enumerate(result.groups)}
    lines = [
        f"  groups {c.i + 1} ({first[c.i]}) and {c.j + 1} ({first[c.j]}): "
        f"shift {c.shift.length:.2f} pixel (dx={c.shift.dx:+.2f}, dy={c.shift.dy:+.2f}, "
        f"correlation {c.shift.correlation:.2f}, significance {c.shift.significance:.0f})"
        for c in sorted(bad, key=lambda c: -c.shift.length)
    ]
    message = (
        f"{len(bad)} overlapping group pair(s) are misaligned by more than max_misalignment="
        f"{max_misalignment} pixel; pixel matching needs alignment well within a pixel "
        "(align first: tweakreg, or get_wcs_adjust on a source-rich band and apply_wcs_adjust):\n"
        + "\n".join(lines)
    )
    if refuse:
        raise ValueError(message)
    log.warning(message)
