"""Pixel-based sky matching of grouped exposures on one common grid.

The algorithm, shared by :class:`~jwst_skymatch_plus.PixelSkyMatchStep` and
:class:`~jwst_skymatch_plus.LevelMatchStep`:

1. Every exposure is drizzled once onto the common grid, inside its own
   bounding box.
2. Inside each group (by default a visit) the exposures' backgrounds are
   matched to each other from their per-pixel differences (optional:
   ``match_within_groups``), and the corrected exposures are co-added into one
   group image in the group's bounding box.
3. Every pair of overlapping group images is differenced pixel by pixel and a
   robust offset (or plane) of the difference is measured.
4. All group offsets are solved together by weighted least squares over the
   overlap graph, separately per connected component.

An exposure's correction is its group's level plus its own level inside the
group.  Nothing larger than one group's bounding box is ever allocated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .grid import BBox, SkyGrid, footprint_of, overlap_bbox
from .pairs import (
    DifferenceStatistic,
    PairMeasurement,
    difference_in_overlap,
    measure_difference,
    n_coefficients,
)
from .resample import Resampled, drizzle_noise_ratio, resample_to_grid
from .solve import LevelSolution, solve_levels

__all__ = [
    "ExposureSource",
    "MatchConfig",
    "MatchResult",
    "candidate_pairs",
    "evaluate_plane",
    "match_exposures",
]

log = logging.getLogger(__name__)


@dataclass
class MatchConfig:
    """Settings of the matching algorithm.

    Parameters
    ----------
    fit_type : {'level', 'level+slope'}
        Constant offsets or planes.
    statistic : DifferenceStatistic
        Clipped statistic of the difference images.
    grid_scale : float
        Grid pixel size in units of the exposures' native pixel size.
    kernel, pixfrac : str, float
        Drizzle kernel and pixel fraction used to resample for matching.
    pixmap_stepsize : int
        WCS evaluated every this many pixels (interpolated between).
    match_within_groups : bool
        Match the exposures inside each group before matching groups.
    weighting : {'ivar', 'npix', 'equal'}
        Pair weights in the global solution.
    min_overlap_pixels : int
        Pairs with fewer valid overlapping pixels are not used.
    min_overlap_fraction : float
        Pairs whose overlap is a smaller fraction of the smaller image's valid
        area are not used.
    min_linear_fraction : float
        Pairs whose overlap spans less than this fraction of the smaller
        image's extent along both axes are not used.
    robust : bool
        Reject pairs with outlying residuals after the global fit.
    reject_sigma : float
        Rejection threshold for ``robust``.
    plane_scale : float
        Plane slopes are per this many grid pixels, around the grid centre.

    """

    fit_type: str = "level"
    statistic: DifferenceStatistic = field(default_factory=DifferenceStatistic)
    grid_scale: float = 1.0
    kernel: str = "square"
    pixfrac: float = 1.0
    pixmap_stepsize: int = 16
    match_within_groups: bool = True
    weighting: str = "ivar"
    min_overlap_pixels: int = 100
    min_overlap_fraction: float = 0.0
    min_linear_fraction: float = 0.0
    robust: bool = True
    reject_sigma: float = 5.0
    plane_scale: float = 1000.0

    def __post_init__(self) -> None:
        n_coefficients(self.fit_type)  # validates
        if self.grid_scale <= 0:
            raise ValueError(f"grid_scale must be positive, got {self.grid_scale}")

    @property
    def ncoef(self) -> int:
        """Coefficients per image."""
        return n_coefficients(self.fit_type)

    @property
    def noise_ratio(self) -> float:
        """Correlated-noise factor of averages over resampled pixels."""
        return drizzle_noise_ratio(self.pixfrac, self.grid_scale)


@dataclass
class ExposureSource:
    """An exposure as the matcher sees it.

    ``load`` returns ``(data, good)``: the data array and a boolean mask of
    pixels to use.  It is called once per exposure, so exposures can stay on
    disk until needed.
    """

    name: str
    wcs: object
    shape: tuple[int, int]
    load: Callable[[], tuple[np.ndarray, np.ndarray]]


@dataclass
class MatchResult:
    """Outcome of :func:`match_exposures`.

    Levels are in the zero-mean gauge of each connected component; see
    :func:`~jwst_skymatch_plus.core.solve.apply_match_down`.

    Attributes
    ----------
    coefficients : numpy.ndarray, shape (n, ncoef)
        Per-exposure background (level, or plane around the grid centre) to
        subtract; NaN for exposures that could not be matched.
    sigma : numpy.ndarray, shape (n, ncoef)
        1-sigma uncertainties.
    component : numpy.ndarray of int, shape (n,)
        Connected component (of the group overlap graph) of each exposure; -1
        where its group overlaps no other group.
    group_index : numpy.ndarray of int, shape (n,)
        Group of each exposure.
    member_offsets : numpy.ndarray, shape (n, ncoef)
        Part of ``coefficients`` found inside the exposure's group.
    group_solution : LevelSolution
        Global solution over groups.
    group_pairs, member_pairs : list of PairMeasurement
        Measured pairs (group indices, resp. exposure indices).
    rejected_pairs : list of PairMeasurement
        Pairs dropped by the overlap thresholds.

    """

    grid: SkyGrid
    fit_type: str
    plane_scale: float
    groups: list[list[int]]
    coefficients: np.ndarray
    sigma: np.ndarray
    component: np.ndarray
    group_index: np.ndarray
    member_offsets: np.ndarray
    group_solution: LevelSolution
    group_pairs: list[PairMeasurement]
    member_pairs: list[PairMeasurement]
    rejected_pairs: list[PairMeasurement]
    timings: dict[str, float] = field(default_factory=dict)

    def correction_at(self, k: int, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
        """Background of exposure ``k`` at grid pixel positions."""
        return evaluate_plane(self.coefficients[k], gx, gy, self.grid.center, self.plane_scale)


def evaluate_plane(coeffs: np.ndarray, gx, gy, center: tuple[float, float], plane_scale: float):
    """Value of ``c0 + c1 * (x - xc) / s + c2 * (y - yc) / s`` at grid positions."""
    coeffs = np.asarray(coeffs, dtype=float)
    if coeffs.size == 1:
        return np.full(np.broadcast(gx, gy).shape, coeffs[0])
    return coeffs[0] + coeffs[1] * (gx - center[0]) / plane_scale + coeffs[2] * (gy - center[1]) / plane_scale


def candidate_pairs(boxes: Sequence[BBox]) -> list[tuple[int, int]]:
    """Pairs ``(a, b)``, ``a < b``, whose boxes intersect (vectorised test)."""
    if len(boxes) < 2:
        return []
    b = np.array([[x.x0, x.x1, x.y0, x.y1] for x in boxes])
    ox = np.minimum(b[:, None, 1], b[None, :, 1]) > np.maximum(b[:, None, 0], b[None, :, 0])
    oy = np.minimum(b[:, None, 3], b[None, :, 3]) > np.maximum(b[:, None, 2], b[None, :, 2])
    ia, ib = np.nonzero(np.triu(ox & oy, k=1))
    return list(zip(ia.tolist(), ib.tolist(), strict=True))


def _plane_on_box(coeffs, box: BBox, center, plane_scale):
    if np.size(coeffs) == 1:
        return np.float32(coeffs[0])
    gx = np.arange(box.x0, box.x1, dtype=np.float64)[None, :]
    gy = np.arange(box.y0, box.y1, dtype=np.float64)[:, None]
    return evaluate_plane(coeffs, gx, gy, center, plane_scale).astype(np.float32)


def _measure_pairs(
    images: Sequence[Resampled],
    config: MatchConfig,
    grid: SkyGrid,
    valid_area: Sequence[int],
) -> tuple[list[PairMeasurement], list[PairMeasurement]]:
    """Measure every overlapping pair of images; split into kept and rejected."""
    kept, rejected = [], []
    for a, b in candidate_pairs([im.bbox for im in images]):
        box = overlap_bbox(images[a].bbox, images[b].bbox)
        img_a, wht_a = images[a].cutout(box)
        img_b, wht_b = images[b].cutout(box)
        diff, valid = difference_in_overlap(img_a, wht_a, img_b, wht_b)
        pair = measure_difference(
            diff,
            valid,
            box.x0,
            box.y0,
            i=a,
            j=b,
            fit_type=config.fit_type,
            statistic=config.statistic,
            noise_ratio=config.noise_ratio,
            center=grid.center,
            plane_scale=config.plane_scale,
            min_pixels=1,
        )
        if pair is None:
            continue
        reasons = _overlap_problems(pair, images[a], images[b], valid_area[a], valid_area[b], config)
        if reasons:
            pair.flags.extend(reasons)
            rejected.append(pair)
        else:
            kept.append(pair)
    return kept, rejected


def _overlap_problems(pair, im_a, im_b, area_a, area_b, config) -> list[str]:
    problems = []
    if pair.noverlap < config.min_overlap_pixels:
        problems.append(f"overlap of {pair.noverlap} pixels < min_overlap_pixels={config.min_overlap_pixels}")
    smaller = max(min(area_a, area_b), 1)
    if pair.noverlap / smaller < config.min_overlap_fraction:
        problems.append(
            f"overlap fraction {pair.noverlap / smaller:.3g} "
            f"< min_overlap_fraction={config.min_overlap_fraction}"
        )
    if config.min_linear_fraction > 0:
        wx = min(im_a.bbox.shape[1], im_b.bbox.shape[1])
        wy = min(im_a.bbox.shape[0], im_b.bbox.shape[0])
        lin = max(pair.extent[0] / wx, pair.extent[1] / wy)
        if lin < config.min_linear_fraction:
            problems.append(f"linear overlap {lin:.3g} < min_linear_fraction={config.min_linear_fraction}")
    return problems


def _solve(n: int, pairs: Sequence[PairMeasurement], config: MatchConfig) -> LevelSolution:
    ncoef = config.ncoef
    if pairs:
        i = np.array([p.i for p in pairs])
        j = np.array([p.j for p in pairs])
        delta = np.array([p.coeffs for p in pairs]).reshape(-1, ncoef)
        sigma = np.array([p.sigma for p in pairs]).reshape(-1, ncoef)
        npix = np.array([p.npix for p in pairs])
    else:
        i = j = np.zeros(0, dtype=int)
        delta = sigma = np.zeros((0, ncoef))
        npix = np.zeros(0)
    return solve_levels(
        n,
        i,
        j,
        delta,
        sigma,
        weighting=config.weighting,
        npix=npix,
        robust=config.robust,
        reject_sigma=config.reject_sigma,
    )


def _build_group(
    members: Sequence[int],
    exposures: Sequence[ExposureSource],
    boxes: Sequence[BBox],
    grid: SkyGrid,
    config: MatchConfig,
) -> tuple[Resampled, np.ndarray, np.ndarray, np.ndarray, list[PairMeasurement], int]:
    """Resample a group's exposures, match them, and co-add the group image.

    Returns the group image, per-member offsets and uncertainties (relative,
    zero mean inside each internally connected set), the member components
    (-1 for a member that overlaps no other member), the member pairs (with
    exposure indices) and the number of valid group pixels.
    """
    ncoef = config.ncoef
    images = []
    for k in members:
        data, good = exposures[k].load()
        images.append(
            resample_to_grid(
                data,
                good,
                exposures[k].wcs,
                grid,
                boxes[k],
                kernel=config.kernel,
                pixfrac=config.pixfrac,
                pixmap_stepsize=config.pixmap_stepsize,
            )
        )
        del data, good
    offsets = np.zeros((len(members), ncoef))
    sig = np.zeros((len(members), ncoef))
    comp = np.zeros(len(members), dtype=int) if len(members) == 1 else np.full(len(members), -1)
    member_pairs: list[PairMeasurement] = []
    if config.match_within_groups and len(members) > 1:
        areas = [int(im.valid.sum()) for im in images]
        kept, _ = _measure_pairs(images, config, grid, areas)
        sol = _solve(len(members), kept, config)
        matched = sol.component >= 0
        offsets[matched] = sol.levels[matched]
        sig[matched] = sol.sigma[matched]
        comp = sol.component
        for p in kept:
            member_pairs.append(
                PairMeasurement(
                    members[p.i],
                    members[p.j],
                    p.coeffs,
                    p.sigma,
                    p.npix,
                    p.noverlap,
                    p.extent,
                    p.scatter,
                    p.flags,
                )
            )
    gbox = boxes[members[0]]
    for k in members[1:]:
        gbox = gbox.union(boxes[k])
    acc = np.zeros(gbox.shape, dtype=np.float64)
    wsum = np.zeros(gbox.shape, dtype=np.float64)
    for im, off in zip(images, offsets, strict=True):
        if im.bbox.is_empty:
            continue
        sl = im.bbox.slices_in(gbox)
        corrected = im.image - _plane_on_box(off, im.bbox, grid.center, config.plane_scale)
        acc[sl] += im.weight * corrected
        wsum[sl] += im.weight
    with np.errstate(invalid="ignore", divide="ignore"):
        image = np.where(wsum > 0, acc / wsum, 0.0).astype(np.float32)
    group = Resampled(gbox, image, wsum.astype(np.float32))
    return group, offsets, sig, comp, member_pairs, int((wsum > 0).sum())


def _combine_levels(groups, solution: LevelSolution, member_offsets, member_sigma, member_component):
    """Exposure levels = group level + level inside the group.

    A group in no used pair still forms its own component(s) when its members
    were matched to each other (one component per internally connected set);
    exposures that nothing ties to anything are left unmatched (NaN, -1).
    """
    n, ncoef = member_offsets.shape
    coefficients = np.full((n, ncoef), np.nan)
    sigma = np.full((n, ncoef), np.nan)
    component = np.full(n, -1)
    next_label = int(solution.component.max()) + 1 if solution.component.size else 0
    for g, members in enumerate(groups):
        members = np.asarray(members)
        if solution.component[g] >= 0:
            coefficients[members] = solution.levels[g] + member_offsets[members]
            sigma[members] = np.hypot(solution.sigma[g], member_sigma[members])
            component[members] = solution.component[g]
            continue
        for label in np.unique(member_component[members]):
            if label < 0:
                continue
            sel = members[member_component[members] == label]
            coefficients[sel] = member_offsets[sel]
            sigma[sel] = member_sigma[sel]
            component[sel] = next_label
            next_label += 1
    return coefficients, sigma, component


def match_exposures(
    exposures: Sequence[ExposureSource],
    groups: Sequence[Sequence[int]],
    config: MatchConfig | None = None,
    grid: SkyGrid | None = None,
) -> MatchResult:
    """Match the background of grouped exposures from per-pixel differences.

    Parameters
    ----------
    exposures : sequence of ExposureSource
        The exposures.
    groups : sequence of sequence of int
        Partition of the exposure indices into groups that are matched as
        units (see :mod:`~jwst_skymatch_plus.core.grouping`).
    config : MatchConfig, optional
        Algorithm settings.
    grid : SkyGrid, optional
        Common grid; by default one covering all exposures at
        ``config.grid_scale`` times their native pixel size.

    Returns
    -------
    MatchResult

    """
    config = config or MatchConfig()
    n = len(exposures)
    if n == 0:
        raise ValueError("No exposures to match.")
    covered = sorted(k for g in groups for k in g)
    if covered != list(range(n)):
        raise ValueError("groups must partition the exposure indices 0..n-1 exactly once")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if grid is None:
        grid = SkyGrid.for_exposures(
            [e.wcs for e in exposures], [e.shape for e in exposures], config.grid_scale
        )
    boxes = [grid.bbox_of(footprint_of(e.wcs, e.shape)) for e in exposures]
    log.info(
        "Common grid: %d x %d pixels of %.4f arcsec; %d exposures in %d groups.",
        grid.shape[1],
        grid.shape[0],
        grid.pixel_scale * 3600.0,
        n,
        len(groups),
    )
    timings["grid"] = time.perf_counter() - t0

    ncoef = config.ncoef
    group_index = np.empty(n, dtype=int)
    member_offsets = np.zeros((n, ncoef))
    member_sigma = np.zeros((n, ncoef))
    member_component = np.full(n, -1)
    group_images: list[Resampled] = []
    group_areas: list[int] = []
    member_pairs: list[PairMeasurement] = []
    t0 = time.perf_counter()
    for g, members in enumerate(groups):
        tg = time.perf_counter()
        image, offs, sig, mcomp, mpairs, area = _build_group(members, exposures, boxes, grid, config)
        group_images.append(image)
        group_areas.append(area)
        member_pairs.extend(mpairs)
        for pos, k in enumerate(members):
            group_index[k] = g
            member_offsets[k] = offs[pos]
            member_sigma[k] = sig[pos]
            member_component[k] = mcomp[pos]
        log.info(
            "Group %d/%d: %d exposure(s) resampled%s in %.1f s.",
            g + 1,
            len(groups),
            len(members),
            f", {len(mpairs)} internal pair(s) matched" if mpairs else "",
            time.perf_counter() - tg,
        )
    timings["resample"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    group_pairs, rejected = _measure_pairs(group_images, config, grid, group_areas)
    timings["pairs"] = time.perf_counter() - t0
    for p in rejected:
        log.info("Pair of groups %d-%d not used: %s.", p.i + 1, p.j + 1, "; ".join(p.flags))

    t0 = time.perf_counter()
    solution = _solve(len(groups), group_pairs, config)
    timings["solve"] = time.perf_counter() - t0

    coefficients, sigma, component = _combine_levels(
        groups, solution, member_offsets, member_sigma, member_component
    )
    isolated = sorted({int(group_index[k]) for k in np.flatnonzero(component < 0)})
    if isolated:
        log.warning(
            "%d group(s) overlap no other group and are not matched: %s.",
            len(isolated),
            ", ".join(f"{g + 1} ({exposures[groups[g][0]].name})" for g in isolated),
        )
    return MatchResult(
        grid=grid,
        fit_type=config.fit_type,
        plane_scale=config.plane_scale,
        groups=[list(g) for g in groups],
        coefficients=coefficients,
        sigma=sigma,
        component=component,
        group_index=group_index,
        member_offsets=member_offsets,
        group_solution=solution,
        group_pairs=group_pairs,
        member_pairs=member_pairs,
        rejected_pairs=rejected,
        timings=timings,
    )
