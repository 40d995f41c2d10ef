"""Pixel-based sky matching of exposures on one common grid.

The algorithm, shared by :class:`~jwst_skymatch_plus.PixelSkyMatchStep` and
:class:`~jwst_skymatch_plus.LevelMatchStep`:

1. Exposures are partitioned into *units*: sets of exposures that share one
   sky level by definition (jwst's ``group_id``, e.g. the detectors read out
   together in one NIRCam exposure; or larger sets the caller asks for).
2. Every exposure is drizzled once onto the common grid, inside its own
   bounding box, relative to its own pedestal (its median, removed in double
   precision, so that the result does not depend on the absolute level).
   The overlapping exposures of one unit are co-added into one *patch*;
   exposures far apart stay separate patches.
3. Every pair of overlapping patches of different units is differenced pixel
   by pixel and a robust offset (or plane) of the difference is measured;
   optionally the pair's relative shift is measured too, to check alignment.
4. All unit levels are solved together by weighted least squares over the
   overlap graph, separately per connected component.  A unit that no pair
   ties to anything can take the level of its *fallback* set (e.g. its visit),
   which is recorded as such.

Nothing larger than one patch's bounding box is ever allocated, patches can
wait on disk between steps 2 and 3, and steps 2-3 can run in local worker
processes or on a Dask cluster with identical results.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .execution import ExecutionSettings, chunk_size
from .grid import BBox, SkyGrid, footprint_of, overlap_bbox
from .pairs import (
    DifferenceStatistic,
    PairMeasurement,
    difference_in_overlap,
    measure_difference,
    n_coefficients,
    robust_sigma,
    structure_weights,
)
from .registration import ImageShift, measure_shift
from .resample import Resampled, drizzle_noise_ratio, resample_to_grid, weighted_coadd
from .solve import LevelSolution, solve_levels
from .store import StoredImages, make_store

__all__ = [
    "EXPOSURE_STATUSES",
    "ExposureSource",
    "MatchConfig",
    "MatchResult",
    "PairOutcome",
    "PairTask",
    "Patch",
    "UnitProduct",
    "build_unit",
    "candidate_pairs",
    "default_grid_scale",
    "evaluate_plane",
    "match_exposures",
    "measure_pair",
    "pair_level_covariance",
]

log = logging.getLogger(__name__)

#: What an exposure's level rests on (``MatchResult.status``).
EXPOSURE_STATUSES = {
    "measured": "measured from its own overlaps",
    "group": "from its group, not measured",
    "excluded": "left out of matching",
    "unmatched": "tied to no other exposure",
}

#: Pixels whose drizzle weight is below this fraction of the image's typical
#: weight (partly covered edge pixels) are left out of pair differences.
EDGE_WEIGHT_FRACTION = 0.5

#: Sub-pixel factor of the alignment measurement.
_ALIGNMENT_UPSAMPLE = 20


@dataclass
class MatchConfig:
    """Settings of the matching algorithm (what is computed).

    Where and how it runs (workers, Dask, disk store) is
    :class:`~jwst_skymatch_plus.core.execution.ExecutionSettings`.

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
        ``'auto'`` is ``'turbo'`` on a grid of native pixels and
        ``'square'`` on coarser grids.
    pixmap_stepsize : int
        WCS evaluated every this many pixels (interpolated between).
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
    mask_sources : bool
        Mask compact sources (segmentation, then dilation) in both images of
        a pair before differencing.
    source_nsigma, source_npixels, source_dilate : float, int, int
        Detection threshold, minimum size and mask growth for
        ``mask_sources``.
    check_alignment : bool
        Measure each group pair's relative shift by phase correlation.
    thumbnail_size : int
        Longest side (pixels) of the mosaic thumbnails kept for diagnostics;
        0 keeps none.
    structure_weights : bool
        Weight the pixels of level fits too by
        :func:`~jwst_skymatch_plus.core.pairs.structure_weights` (planes
        always are): resampling errors where the sky curves are coherent and
        bias levels measured across bright structure.
    exclude_discordant : bool
        Leave out of the solution the units whose pairs contradict each
        other (no level fits them), when ``robust``; see
        :func:`match_exposures`.
    """

    fit_type: str = "level"
    statistic: DifferenceStatistic = field(default_factory=DifferenceStatistic)
    grid_scale: float = 1.0
    kernel: str = "auto"
    pixfrac: float = 1.0
    pixmap_stepsize: int = 16
    weighting: str = "ivar"
    min_overlap_pixels: int = 100
    min_overlap_fraction: float = 0.0
    min_linear_fraction: float = 0.0
    robust: bool = True
    reject_sigma: float = 5.0
    plane_scale: float = 1000.0
    mask_sources: bool = False
    source_nsigma: float = 3.0
    source_npixels: int = 5
    source_dilate: int = 7
    check_alignment: bool = True
    thumbnail_size: int = 0
    structure_weights: bool = True
    exclude_discordant: bool = True

    def __post_init__(self) -> None:
        n_coefficients(self.fit_type)  # validates
        if not self.grid_scale > 0:
            raise ValueError(f"grid_scale must be positive, got {self.grid_scale}")

    @property
    def drizzle_kernel(self) -> str:
        """The drizzle kernel ``kernel`` stands for (``'auto'`` resolved)."""
        if self.kernel != "auto":
            return self.kernel
        return "turbo" if self.grid_scale <= 1.0 else "square"

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

    ``load`` returns ``(data, good)`` or ``(data, good, wcs)``: the data
    array, a boolean mask of pixels to use and, when ``wcs`` was not known
    up front, the detector-to-sky transform.  It is called once per exposure,
    in the calling process, so exposures can stay on disk until needed.

    ``portable_load``, when given, must return the same as ``load``; parallel
    runs call it in the worker that resamples the exposure.

    The grid only needs each exposure's footprint and pixel scale; give them
    (e.g. from ``S_REGION`` and the FITS WCS keywords) to avoid opening every
    file twice, or give ``wcs`` and they are computed from it.
    """

    name: str
    wcs: object | None
    shape: tuple[int, int]
    load: Callable[[], tuple]
    footprint: np.ndarray | None = None  # (N, 2) RA, Dec polygon in degrees
    pixel_scale: float | None = None  # degrees per pixel
    position_angle: float | None = None  # degrees East of North of the detector +y axis
    footprint_margin: int = 10  # extra grid pixels around a given (corner-only) footprint
    #: A ``load`` that also works in another process (picklable, e.g. it reads
    #: the file by path): worker processes and Dask workers then read the
    #: exposure themselves instead of receiving its arrays.
    portable_load: Callable[[], tuple] | None = None

    def sky_footprint(self) -> np.ndarray:
        """Footprint polygon, given or computed from the WCS."""
        if self.footprint is not None:
            return np.asarray(self.footprint, dtype=float)
        if self.wcs is None:
            raise ValueError(f"{self.name}: neither a footprint nor a WCS is known")
        return footprint_of(self.wcs, self.shape)


@dataclass
class Thumbnail:
    """A group image block-averaged by ``factor`` on a coarse version of the grid."""

    x0: int  # coarse-grid position of the lower-left pixel
    y0: int
    image: np.ndarray
    weight: np.ndarray
    factor: int


@dataclass
class Patch:
    """Overlapping exposures of one unit co-added on the grid.

    The patch image (kept in a store) is relative to ``pedestal``: the data
    minus the pedestal, so that float32 keeps the precision of differences.
    """

    unit: int
    members: list[int]  # exposure indices
    bbox: BBox
    area: int  # valid pixels
    pedestal: float
    key: str = ""  # name of its image in the store


@dataclass
class UnitProduct:
    """What building one unit yields (see :func:`build_unit`)."""

    patches: list[tuple[list[int], Resampled, float]]  # (member positions, image, pedestal)
    problems: list[str | None]  # per member: why it has no usable pixels, else None
    constant: list[bool]  # per member: all its usable pixels have one value
    area: int  # valid pixels of the largest patch
    flatness: float  # robust scatter of the (coarsened) largest patch
    thumbnail: Thumbnail | None = None


@dataclass
class PairCheck:
    """Alignment measured on one pair of groups."""

    i: int
    j: int
    shift: ImageShift | None


@dataclass
class MatchResult:
    """Outcome of :func:`match_exposures`.

    Levels are in the zero-mean gauge of each connected component; see
    :func:`~jwst_skymatch_plus.core.solve.apply_match_down` and
    :mod:`~jwst_skymatch_plus.core.reference`.  "Groups" here are the units
    that share one level.

    Attributes
    ----------
    coefficients : numpy.ndarray, shape (n, ncoef)
        Per-exposure background (level, or plane around the grid centre) to
        subtract; NaN for exposures that could not be matched.
    sigma : numpy.ndarray, shape (n, ncoef)
        1-sigma uncertainties.
    component : numpy.ndarray of int, shape (n,)
        Connected component of each exposure; -1 where nothing ties it to any
        other exposure.
    group_index : numpy.ndarray of int, shape (n,)
        Unit of each exposure.
    status : numpy.ndarray of str, shape (n,)
        What each exposure's level rests on (:data:`EXPOSURE_STATUSES`).
    reasons : list of str
        Per exposure, why it is not ``'measured'`` ('' when it is).
    group_solution : LevelSolution
        Global solution over units (pairs indexed like ``group_pairs``).
    group_pairs : list of PairMeasurement
        Measured patch pairs, labelled with their units (several pairs can
        tie the same two units).
    rejected_pairs : list of PairMeasurement
        Pairs dropped by the overlap thresholds.
    alignment : list of PairCheck
        Shift measured on one pair per pair of overlapping units (when
        ``check_alignment``).
    group_boxes : list of BBox
        Box of each unit's largest patch on the grid.
    group_flatness : numpy.ndarray
        Robust scatter of each unit's largest patch (structure, not noise).
    thumbnails : list of Thumbnail or None
        Coarse unit images (before correction) for diagnostics.
    """

    grid: SkyGrid
    fit_type: str
    plane_scale: float
    groups: list[list[int]]
    coefficients: np.ndarray
    sigma: np.ndarray
    component: np.ndarray
    group_index: np.ndarray
    status: np.ndarray
    reasons: list[str]
    group_solution: LevelSolution
    group_pairs: list[PairMeasurement]
    rejected_pairs: list[PairMeasurement]
    alignment: list[PairCheck] = field(default_factory=list)
    group_boxes: list[BBox] = field(default_factory=list)
    group_flatness: np.ndarray = field(default_factory=lambda: np.zeros(0))
    thumbnails: list = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def pairs_of_group(self, g: int) -> tuple[int, int]:
        """Numbers of used and rejected pairs that involve unit ``g``."""
        used = rejected = 0
        for pair, ok in zip(self.group_pairs, self.group_solution.used, strict=True):
            if g in (pair.i, pair.j):
                used += bool(ok)
                rejected += not ok
        rejected += sum(g in (p.i, p.j) for p in self.rejected_pairs)
        return used, rejected


def default_grid_scale(fit_type: str) -> float:
    """Grid pixel size (in native pixels) used when none is given.

    Native pixels for constant offsets: medians of differences are most
    precise there.  Twice native for planes: least-squares planes pick up the
    pixel-phase interpolation errors of resampling sharp structure, which a
    coarser grid averages away.
    """
    return 2.0 if fit_type == "level+slope" else 1.0


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


# --------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------
def _overlap_problems(pair, box_a, box_b, area_a, area_b, config) -> list[str]:
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
        wx = min(box_a.shape[1], box_b.shape[1])
        wy = min(box_a.shape[0], box_b.shape[0])
        lin = max(pair.extent[0] / wx, pair.extent[1] / wy)
        if lin < config.min_linear_fraction:
            problems.append(f"linear overlap {lin:.3g} < min_linear_fraction={config.min_linear_fraction}")
    return problems


@dataclass(frozen=True)
class PairTask:
    """One pair of patches to measure (see :func:`measure_pair`).

    Attributes
    ----------
    a, b : int
        Labels of the two images (patch indices).
    box : BBox
        Their common box on the grid, where they are differenced.
    boxes : (BBox, BBox)
        Full boxes of both images (for the linear-overlap test).
    areas : (int, int)
        Valid pixels of both images (for the overlap-fraction test).
    check_alignment : bool
        Also measure the relative shift.
    """

    a: int
    b: int
    box: BBox
    boxes: tuple[BBox, BBox]
    areas: tuple[int, int]
    check_alignment: bool = False


@dataclass
class PairOutcome:
    """What :func:`measure_pair` found.

    Attributes
    ----------
    pair : PairMeasurement or None
        None when the images share no valid pixel.
    usable : bool
        False when the overlap fails the overlap thresholds (reasons in
        ``pair.flags``).
    shift : ImageShift or None
        Relative shift, when the task asked for it.
    """

    pair: PairMeasurement | None
    usable: bool
    shift: ImageShift | None = None


def measure_pair(
    task: PairTask,
    cut_a: tuple[np.ndarray, np.ndarray],
    cut_b: tuple[np.ndarray, np.ndarray],
    config: MatchConfig,
    center: tuple[float, float],
) -> PairOutcome:
    """Measure the background difference (and shift) of two images in ``task.box``.

    Parameters
    ----------
    task : PairTask
        Which images, where.
    cut_a, cut_b : (image, weight)
        Cut-outs of both images inside ``task.box``.
    config : MatchConfig
        Settings.
    center : (float, float)
        Grid centre (plane origin).

    Returns
    -------
    PairOutcome
    """
    img_a, wht_a = cut_a
    img_b, wht_b = cut_b
    # Pixels only partly covered by an exposure's edge (drizzle weight below
    # half the typical one) carry resampling errors that do not cancel; on
    # overlaps a few pixels wide they dominated (thin mosaic strips: errors
    # fell from 1.3-2.7 to 0.6-1.4 times the noise floor without them).
    diff, valid = difference_in_overlap(img_a, wht_a, img_b, wht_b, min_weight_fraction=EDGE_WEIGHT_FRACTION)
    shift = None
    if task.check_alignment:
        # A 256-pixel crop measures shifts to ~0.01 pixel, far inside the
        # 0.3-pixel tolerance, at a fifth of the cost of 512.
        shift = measure_shift(img_a, wht_a > 0, img_b, wht_b > 0, upsample=_ALIGNMENT_UPSAMPLE, max_side=256)
    if config.mask_sources and valid.any():
        from .masking import source_mask

        for img, wht in ((img_a, wht_a), (img_b, wht_b)):
            valid &= ~source_mask(
                img, wht > 0, config.source_nsigma, config.source_npixels, config.source_dilate
            )
    weights = None
    if (config.fit_type != "level" or config.structure_weights) and valid.sum() > 10:
        noise = robust_sigma(diff[valid], max_values=20000)
        weights = structure_weights(img_a, img_b, valid, noise)
    pair = measure_difference(
        diff,
        valid,
        task.box.x0,
        task.box.y0,
        i=task.a,
        j=task.b,
        fit_type=config.fit_type,
        statistic=config.statistic,
        noise_ratio=config.noise_ratio,
        center=center,
        plane_scale=config.plane_scale,
        min_pixels=1,
        weights=weights,
    )
    if pair is None:
        return PairOutcome(None, False, shift)
    problems = _overlap_problems(pair, *task.boxes, *task.areas, config)
    pair.flags.extend(problems)
    return PairOutcome(pair, not problems, shift)


def _solve(
    n: int, pairs: Sequence[PairMeasurement], config: MatchConfig, pair_covariance=None
) -> LevelSolution:
    ncoef = config.ncoef
    if pairs:
        i = np.array([p.i for p in pairs])
        j = np.array([p.j for p in pairs])
        delta = np.array([p.coeffs for p in pairs]).reshape(-1, ncoef)
        sigma = np.array([p.sigma for p in pairs]).reshape(-1, ncoef)
        npix = np.array([p.npix for p in pairs])
        cov = np.array(
            [p.covariance if p.covariance is not None else np.diag(np.asarray(p.sigma) ** 2) for p in pairs]
        ).reshape(-1, ncoef, ncoef)
    else:
        i = j = np.zeros(0, dtype=int)
        delta = sigma = np.zeros((0, ncoef))
        npix = np.zeros(0)
        cov = np.zeros((0, ncoef, ncoef))
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
        covariance=cov,
        pair_covariance=pair_covariance,
    )


def pair_level_covariance(pairs: Sequence[PairMeasurement], geometry: Sequence[tuple[int, int, BBox]]):
    """Covariances between the constant terms of pairs that share an image.

    Pair ``e`` of images ``(a, b)`` measures the noise ``mean_a - mean_b``
    over its overlap ``O_e``; pairs sharing image ``a`` share ``a``'s noise
    over ``O_e & O_f``: ``cov = +-v_a |O_e & O_f| / (n_e n_f)`` times the
    statistic's and the resampling's factors, where ``v_a`` is ``a``'s
    per-pixel variance (half the median squared scatter of its pairs) and the
    common pixels are estimated from the overlap boxes and their fill.
    Without these terms the levels' uncertainties come out several times
    too small, since an image's noise does not average out over its pairs.

    Parameters
    ----------
    pairs : sequence of PairMeasurement
        The measured pairs (their ``sigma``, ``npix`` and ``scatter``).
    geometry : sequence of (int, int, BBox)
        Per pair, its two images (any labels) and the overlap box.

    Returns
    -------
    scipy.sparse.csr_matrix, shape (m, m)
        Zero on the diagonal.
    """
    import scipy.sparse as sp

    m = len(pairs)
    by_image: dict[int, list[tuple[int, float]]] = {}
    for e, (a, b, _) in enumerate(geometry):
        by_image.setdefault(a, []).append((e, 1.0))
        by_image.setdefault(b, []).append((e, -1.0))
    rows, cols, vals = [], [], []
    for members in by_image.values():
        if len(members) < 2:
            continue
        var = 0.5 * float(np.median([pairs[e].scatter ** 2 for e, _ in members]))
        for x in range(len(members)):
            e, se = members[x]
            pe, be = pairs[e], geometry[e][2]
            # Standard error per unit of per-pixel std, as the pair's sigma has it.
            ke = pe.sigma[0] / pe.scatter * math.sqrt(pe.npix) if pe.scatter > 0 else 0.0
            for y in range(x + 1, len(members)):
                f, sf = members[y]
                pf, bf = pairs[f], geometry[f][2]
                common = overlap_bbox(be, bf).size
                if common == 0 or not (pe.scatter > 0 and pf.scatter > 0):
                    continue
                fill = min(pe.noverlap / max(be.size, 1), pf.noverlap / max(bf.size, 1))
                kf = pf.sigma[0] / pf.scatter * math.sqrt(pf.npix)
                n_common = min(common * fill, pe.npix, pf.npix)
                cov = se * sf * ke * kf * var * n_common / (pe.npix * pf.npix)
                limit = 0.95 * pe.sigma[0] * pf.sigma[0]
                cov = float(np.clip(cov, -limit, limit))
                rows += [e, f]
                cols += [f, e]
                vals += [cov, cov]
    return sp.csr_matrix((vals, (rows, cols)), shape=(m, m))


# --------------------------------------------------------------------------
# Groups
# --------------------------------------------------------------------------
def _thumbnail(image: Resampled, factor: int) -> Thumbnail:
    """Block-average a group image onto the grid coarsened by ``factor``."""
    box = image.bbox
    cx0, cy0 = box.x0 // factor, box.y0 // factor
    pad_x0, pad_y0 = box.x0 - cx0 * factor, box.y0 - cy0 * factor
    ny, nx = box.shape
    ty = -(-(ny + pad_y0) // factor)
    tx = -(-(nx + pad_x0) // factor)
    w = np.zeros((ty * factor, tx * factor), np.float64)
    v = np.zeros_like(w)
    w[pad_y0 : pad_y0 + ny, pad_x0 : pad_x0 + nx] = image.weight
    v[pad_y0 : pad_y0 + ny, pad_x0 : pad_x0 + nx] = image.image * image.weight
    wsum = w.reshape(ty, factor, tx, factor).sum(axis=(1, 3))
    vsum = v.reshape(ty, factor, tx, factor).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        img = np.where(wsum > 0, vsum / wsum, np.nan).astype(np.float32)
    return Thumbnail(cx0, cy0, img, wsum.astype(np.float32), factor)


def _flatness(image: Resampled) -> float:
    """Robust scatter of an 8x-coarsened group image: structure, not pixel noise."""
    thumb = _thumbnail(image, 8)
    vals = thumb.image[np.isfinite(thumb.image)]
    if vals.size < 4:
        return math.inf
    return robust_sigma(vals)


def _member_patches(boxes: Sequence[BBox], usable: Sequence[bool], alone: Sequence[bool]) -> list[list[int]]:
    """Members that are co-added into one patch (positions), greedily in order.

    A member joins a patch whose box it intersects when the joint box is no
    larger than the boxes' summed areas: dithers of one pointing share a
    patch, exposures far apart (or NIRCam modules) do not, so a patch never
    costs more memory than its members would.  Members marked ``alone`` get
    a patch of their own (they may be dropped later).
    """
    patches: list[tuple[list[int], BBox, int]] = []
    for pos, box in enumerate(boxes):
        if not usable[pos]:
            continue
        if not alone[pos]:
            for k, (members, pbox, area) in enumerate(patches):
                if alone[members[0]] or overlap_bbox(pbox, box).is_empty:
                    continue
                joint = pbox.union(box)
                if joint.size <= area + box.size:
                    patches[k] = ([*members, pos], joint, area + box.size)
                    break
            else:
                patches.append(([pos], box, box.size))
            continue
        patches.append(([pos], box, box.size))
    return [members for members, _, _ in patches]


def build_unit(
    payloads: Sequence[tuple[np.ndarray, np.ndarray, object]],
    boxes: Sequence[BBox],
    grid: SkyGrid,
    config: MatchConfig,
    thumbnail_factor: int = 0,
) -> UnitProduct:
    """Resample the exposures of one unit and co-add the overlapping ones.

    This is the unit of parallel work: it depends only on its arguments.
    Each exposure is resampled relative to its own pedestal (the median of
    its usable pixels, removed in double precision); a patch is relative to
    the mean pedestal of its members.

    Parameters
    ----------
    payloads : sequence of (data, good, wcs)
        The unit's exposures.
    boxes : sequence of BBox
        Each exposure's box on the grid.
    grid : SkyGrid
        The common grid.
    config : MatchConfig
        Settings.
    thumbnail_factor : int
        Keep a block-averaged copy of the largest patch (0: none).

    Returns
    -------
    UnitProduct
    """
    m = len(payloads)
    problems: list[str | None] = [None] * m
    constant = [False] * m
    pedestals = np.zeros(m)
    for pos, (data, good, _) in enumerate(payloads):
        values = np.asarray(data)[np.asarray(good, dtype=bool) & np.isfinite(data)]
        if values.size == 0:
            problems[pos] = "no usable pixels (all NaN, infinite or DQ-flagged)"
            continue
        pedestals[pos] = float(np.median(values.astype(np.float64)))
        constant[pos] = bool(values.min() == values.max())
    groups = _member_patches(boxes, [p is None for p in problems], constant)
    patches = []
    for members in groups:
        pedestal = float(np.mean(pedestals[members]))
        images = []
        for pos in members:
            data, good, wcs = payloads[pos]
            relative = (np.asarray(data, dtype=np.float64) - pedestal).astype(np.float32)
            image = resample_to_grid(
                relative,
                good,
                wcs,
                grid,
                boxes[pos],
                kernel=config.drizzle_kernel,
                pixfrac=config.pixfrac,
                pixmap_stepsize=config.pixmap_stepsize,
            )
            if not image.valid.any():
                problems[pos] = "no pixel lands on the common grid (WCS or footprint wrong?)"
                continue
            images.append(image)
        if images:
            patches.append(([p for p in members if problems[p] is None], _coadd(images), pedestal))
    largest = max(patches, key=lambda p: int(p[1].valid.sum()), default=None)
    thumbnail = None
    if largest is not None and thumbnail_factor:
        thumbnail = _thumbnail(largest[1], thumbnail_factor)
        thumbnail.image += np.float32(largest[2])
    return UnitProduct(
        patches=patches,
        problems=problems,
        constant=constant,
        area=0 if largest is None else int(largest[1].valid.sum()),
        flatness=math.inf if largest is None else _flatness(largest[1]),
        thumbnail=thumbnail,
    )


def _coadd(images: Sequence[Resampled]) -> Resampled:
    """Weighted mean of resampled images on the union of their boxes."""
    if len(images) == 1:
        return images[0]
    return weighted_coadd(images)


class _Progress:
    """Log progress at every ``step`` fraction of the work once a stage runs long, and at its end.

    Each line gives what is done, the elapsed time and an estimate of what
    is left; stages shorter than ``quiet`` seconds log only their last line.
    """

    def __init__(self, what: str, total: int, step: float = 0.1, quiet: float = 5.0) -> None:
        self.what, self.total, self.step, self.quiet = what, total, step, quiet
        self.t0 = time.perf_counter()
        self.next_mark = step

    def update(self, done: int) -> None:
        now = time.perf_counter()
        fraction = done / max(self.total, 1)
        if done < self.total and (fraction < self.next_mark or now - self.t0 < self.quiet):
            return
        while self.next_mark <= fraction:
            self.next_mark += self.step
        elapsed = now - self.t0
        left = elapsed / max(done, 1) * (self.total - done)
        log.info(
            "%s: %d/%d (%.0f%%) done in %.1f s%s.",
            self.what,
            done,
            self.total,
            100.0 * fraction,
            elapsed,
            f", about {left:.0f} s left" if done < self.total else "",
        )


def _alignment_pairs(
    pair_list, patches: Sequence[Patch], boxes: Sequence[BBox], label: np.ndarray
) -> set[tuple[int, int]]:
    """The patch pair with the largest common box for each pair of labels.

    Labels are the units' fallback groups (visits) when known: exposures of
    one visit share their guide star, so alignment is checked between
    visits, once per pair of them.
    """
    best: dict[tuple[int, int], tuple[int, tuple[int, int]]] = {}
    for a, b in pair_list:
        key = tuple(sorted((int(label[patches[a].unit]), int(label[patches[b].unit]))))
        if key[0] == key[1]:
            continue
        size = overlap_bbox(boxes[a], boxes[b]).size
        if key not in best or size > best[key][0]:
            best[key] = (size, (a, b))
    return {ab for _, ab in best.values()}


def _pair_sigma_floor(pair: PairMeasurement, pedestals: tuple[float, float]) -> None:
    """Give a noiseless pair a tiny, finite uncertainty (float32 resolution).

    Identical noiseless images differ by exactly their offset: a perfect
    measurement, which a zero uncertainty would turn into an infinite weight.
    The floor is the float32 resolution of the data averaged over the pixels.
    """
    resolution = float(np.finfo(np.float32).eps) * max(1.0, abs(pedestals[0]), abs(pedestals[1]))
    floor = resolution / math.sqrt(max(pair.npix, 1))
    if np.any(pair.sigma < floor):
        pair.sigma = np.maximum(pair.sigma, floor)
        if pair.covariance is not None:
            cov = pair.covariance.copy()
            idx = np.diag_indices_from(cov)
            cov[idx] = np.maximum(cov[idx], floor**2)
            pair.covariance = cov


def _unit_disagreement(
    u: int, n_units: int, pairs: Sequence[PairMeasurement], config: MatchConfig
) -> tuple[float, int, float]:
    """How badly unit ``u``'s pairs disagree, and how well the rest agree without it.

    Each pair of ``u`` predicts ``u``'s level from its partner's level in a
    solution made without ``u``'s pairs.  Returns the reduced chi-square of
    those predictions, their number, and the reduced chi-square of that
    solution (of everything else).
    """
    mine = [e for e, p in enumerate(pairs) if u in (p.i, p.j)]
    others = [p for e, p in enumerate(pairs) if e not in mine]
    if len(mine) < 2 or not others:
        return 0.0, len(mine), math.inf
    without = _solve(n_units, others, replace(config, robust=False))
    rest = without.chi2_dof if np.isfinite(without.chi2_dof) else 0.0
    pred, var, comps = [], [], set()
    for e in mine:
        p = pairs[e]
        partner, sign = (p.j, 1.0) if p.i == u else (p.i, -1.0)
        if without.component[partner] < 0:
            continue
        comps.add(int(without.component[partner]))
        pred.append(without.levels[partner, 0] + sign * p.coeffs[0])
        var.append(p.sigma[0] ** 2 + without.sigma[partner, 0] ** 2)
    if len(pred) < 2 or len(comps) > 1:  # partners in different components: unrelated gauges
        return 0.0, len(pred), rest
    pred, w = np.array(pred), 1.0 / np.array(var)
    mean = np.sum(w * pred) / w.sum()
    return float(np.sum(w * (pred - mean) ** 2) / (len(pred) - 1)), len(pred), rest


def _discordant_units(
    n_units: int, pairs: Sequence[PairMeasurement], solution: LevelSolution, config: MatchConfig
) -> dict[int, str]:
    """Units whose pairs contradict each other, with the reason.

    When the levels a unit's pairs predict for it (see
    :func:`_unit_disagreement`) disagree by far more than their noise
    (reduced chi-square above ``reject_sigma`` squared), its background is
    not a level (a blank half, a gradient, a bad readout) and no level fits
    it.  One such unit makes its neighbours look bad too, so units are taken
    one at a time: the one whose removal leaves the rest most consistent
    (lowest reduced chi-square) is judged first, and the next judgements are
    made without it.
    Only units with at least half of their pairs rejected by the robust fit
    or far off the solution are examined.
    """
    if len(pairs) < 3:
        return {}
    limit = config.reject_sigma**2
    z = np.abs(solution.residual[:, 0]) / np.array([p.sigma[0] for p in pairs])
    # A unit whose pairs contradict each other has most of them off after
    # the fit: only such units are examined (each examination is a solve).
    off = ~solution.used | (z > config.reject_sigma)
    n_pairs = np.zeros(n_units, dtype=int)
    n_off = np.zeros(n_units, dtype=int)
    for e, p in enumerate(pairs):
        n_pairs[[p.i, p.j]] += 1
        n_off[[p.i, p.j]] += int(off[e])
    candidates = set(np.flatnonzero((n_pairs >= 2) & (2 * n_off >= n_pairs)).tolist())
    out: dict[int, str] = {}
    remaining = list(pairs)
    for _ in range(min(len(candidates), 20)):
        scores = {u: _unit_disagreement(u, n_units, remaining, config) for u in sorted(candidates - set(out))}
        if not scores:
            break
        worst = min(scores, key=lambda u: (scores[u][2], -scores[u][0]))
        chi2, npairs, _ = scores[worst]
        if chi2 <= limit:
            break
        out[worst] = (
            f"its {npairs} pairs disagree with each other (reduced chi-square {chi2:.3g}): no level fits "
            "its background; left out of the solution"
        )
        remaining = [p for p in remaining if worst not in (p.i, p.j)]
    return out


def _fallback_levels(
    solution: LevelSolution, fallback: np.ndarray | None, n_units: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unit levels, uncertainties, components and 'from fallback' flags.

    A unit in no used pair takes the mean level of the measured units of its
    fallback set (in the component holding most of them); its uncertainty
    adds the scatter of those levels.
    """
    levels = solution.levels.copy()
    sigma = solution.sigma.copy()
    component = solution.component.copy()
    borrowed = np.zeros(n_units, dtype=bool)
    if fallback is None:
        return levels, sigma, component, borrowed
    for u in np.flatnonzero(component < 0):
        mates = np.flatnonzero((fallback == fallback[u]) & (solution.component >= 0))
        if mates.size == 0:
            continue
        labels, counts = np.unique(solution.component[mates], return_counts=True)
        mates = mates[solution.component[mates] == labels[np.argmax(counts)]]
        levels[u] = solution.levels[mates].mean(axis=0)
        spread = solution.levels[mates].std(axis=0, ddof=1) if mates.size > 1 else 0.0
        sigma[u] = np.sqrt(np.mean(solution.sigma[mates] ** 2, axis=0) + spread**2)
        component[u] = solution.component[mates[0]]
        borrowed[u] = True
    return levels, sigma, component, borrowed


@dataclass
class _Layout:
    """The units on the common grid: what every later stage works from."""

    grid: SkyGrid
    groups: list[list[int]]
    boxes: list[BBox]  # per exposure
    group_index: np.ndarray  # unit of each exposure
    fallback: np.ndarray | None  # label per unit
    thumbnail_factor: int


@dataclass
class _PatchSet:
    """The resampled units: patches (images in a store) and per-exposure findings."""

    patches: list[Patch]
    reasons: list[str]  # per exposure, why it is not usable ('' if it is)
    flatness: list[float]  # per unit
    thumbnails: list  # per unit


@dataclass
class _PairSet:
    """Measured pairs between patches of different units (labelled with units)."""

    used: list[PairMeasurement] = field(default_factory=list)
    geometry: list[tuple[int, int, BBox]] = field(default_factory=list)  # patches and common box
    rejected: list[PairMeasurement] = field(default_factory=list)
    alignment: list[PairCheck] = field(default_factory=list)


def _layout(
    exposures: Sequence[ExposureSource],
    groups: Sequence[Sequence[int]],
    config: MatchConfig,
    grid: SkyGrid | None,
    fallback: Sequence[int] | None,
) -> _Layout:
    """Check the partition, choose the grid and place every exposure on it."""
    n = len(exposures)
    if n == 0:
        raise ValueError("No exposures to match.")
    covered = sorted(k for g in groups for k in g)
    if covered != list(range(n)):
        raise ValueError("groups must partition the exposure indices 0..n-1 exactly once")
    groups = [list(g) for g in groups]
    if fallback is not None:
        fallback = np.asarray(fallback)
        if fallback.shape != (len(groups),):
            raise ValueError("fallback must give one label per group")
    if grid is None:
        grid = SkyGrid.for_sources(exposures, config.grid_scale)
    # Footprints computed from the WCS follow the (distorted) edges; given ones
    # are usually corners only, so their boxes get a wider margin.
    boxes = [
        grid.bbox_of(e.sky_footprint(), margin=2 if e.footprint is None else e.footprint_margin)
        for e in exposures
    ]
    for k, box in enumerate(boxes):
        if box.is_empty:
            raise ValueError(f"{exposures[k].name}: its footprint does not fall on the common grid.")
    factor = max(1, math.ceil(max(grid.shape) / config.thumbnail_size)) if config.thumbnail_size else 0
    log.info(
        "Common grid: %d x %d pixels of %.4f arcsec; %d exposures in %d units of one level each.",
        grid.shape[1],
        grid.shape[0],
        grid.pixel_scale * 3600.0,
        n,
        len(groups),
    )
    group_index = np.empty(n, dtype=int)
    for g, members in enumerate(groups):
        group_index[members] = g
    return _Layout(grid, groups, boxes, group_index, fallback, factor)


def _unit_payloads(
    exposures: Sequence[ExposureSource], members: Sequence[int], portable: bool = False
) -> list:
    """``(data, good, wcs)`` of a unit's exposures, loaded now.

    With ``portable``, exposures that can be loaded in another process are
    represented by their ``portable_load`` instead (read by the worker).
    """
    payloads = []
    for k in members:
        if portable and exposures[k].portable_load is not None:
            payloads.append(exposures[k].portable_load)
            continue
        loaded = exposures[k].load()
        wcs = loaded[2] if len(loaded) > 2 else exposures[k].wcs
        if wcs is None:
            raise ValueError(f"{exposures[k].name}: no WCS")
        payloads.append((loaded[0], loaded[1], wcs))
    return payloads


@dataclass
class _StoredPatch:
    """Where a worker left a patch image (in place of the image itself)."""

    bbox: BBox
    area: int


def _patch_key(unit: int, n: int) -> str:
    return f"u{unit:06d}p{n:03d}"


def _build_stored_unit(
    payloads: Sequence,
    boxes: Sequence[BBox],
    grid: SkyGrid,
    config: MatchConfig,
    factor: int,
    files,
    unit: int,
) -> tuple[UnitProduct, list]:
    """:func:`build_unit` in a worker: load what it was given to load, leave the patches in ``files``.

    Returns the product, with each patch image replaced by its box and area,
    and the WCS of each exposure the worker loaded (None for the others).
    """
    loaded, wcs_out = [], []
    for item in payloads:
        if callable(item):
            data, good, wcs = item()[:3]
            loaded.append((data, good, wcs))
            wcs_out.append(wcs)
        else:
            loaded.append(item)
            wcs_out.append(None)
    product = build_unit(loaded, boxes, grid, config, factor)
    stored = []
    for n, (positions, image, pedestal) in enumerate(product.patches):
        files.write(_patch_key(unit, n), image)
        stored.append((positions, _StoredPatch(image.bbox, int(image.valid.sum())), pedestal))
    product.patches = stored
    return product, wcs_out


def _shares_files(executor, store) -> bool:
    """Whether tasks run in other processes and exchange images through the store's folder."""
    return executor.remote and isinstance(getattr(store, "files", None), StoredImages)


def _resample_units(
    exposures: Sequence[ExposureSource], layout: _Layout, config: MatchConfig, executor, store
) -> _PatchSet:
    """Build every unit's patches (:func:`build_unit`) into ``store``.

    Worker processes (``executor.remote``) load the exposures they can load
    themselves and write their patches into the store's folder: only names,
    boxes and small results come back.
    """
    groups = layout.groups
    reasons = [""] * len(exposures)
    constant = np.zeros(len(exposures), dtype=bool)
    patches: list[Patch] = []
    flatness: list[float] = []
    thumbnails: list = []
    remote = _shares_files(executor, store)
    factor = layout.thumbnail_factor

    def tasks():
        for g, members in enumerate(groups):
            boxes = [layout.boxes[k] for k in members]
            if remote:
                payloads = _unit_payloads(exposures, members, portable=True)
                yield (payloads, boxes, layout.grid, config, factor, store.files, g)
            else:
                yield (_unit_payloads(exposures, members), boxes, layout.grid, config, factor)

    progress = _Progress("Resampling exposures", len(groups))
    for g, product in enumerate(executor.imap(_build_stored_unit if remote else build_unit, tasks())):
        members = groups[g]
        if remote:
            product, loaded_wcs = product
            for pos, wcs in enumerate(loaded_wcs):
                if wcs is not None and exposures[members[pos]].wcs is None:
                    exposures[members[pos]].wcs = wcs  # kept for later use (planes on detectors)
        for pos, k in enumerate(members):
            if product.problems[pos]:
                reasons[k] = product.problems[pos]
            constant[k] = product.constant[pos]
        for n, (positions, image, pedestal) in enumerate(product.patches):
            key = _patch_key(g, n)
            if isinstance(image, _StoredPatch):
                store.register(key, image.bbox)
                area = image.area
            else:
                store.put(key, image)
                area = int(image.valid.sum())
            patches.append(Patch(g, [members[p] for p in positions], image.bbox, area, pedestal, key))
        flatness.append(product.flatness)
        thumbnails.append(product.thumbnail)
        del product
        progress.update(g + 1)
    # Constant exposures (blank readouts) carry no sky: leave them out,
    # unless every usable exposure is constant (noiseless data).
    usable = np.array([not r for r in reasons])
    blank = constant & usable
    if blank.any() and (usable & ~constant).any():
        for k in np.flatnonzero(blank):
            reasons[k] = "constant data (blank or dropped readout?)"
    return _PatchSet(patches, reasons, flatness, thumbnails)


def _pair_tasks(built: _PatchSet, layout: _Layout, config: MatchConfig) -> list[PairTask]:
    """Every overlapping pair of usable patches of different units."""
    patches = built.patches
    kept = [i for i, p in enumerate(patches) if not any(built.reasons[k] for k in p.members)]
    boxes = [p.bbox for p in patches]
    pair_list = [
        (kept[a], kept[b])
        for a, b in candidate_pairs([boxes[i] for i in kept])
        if patches[kept[a]].unit != patches[kept[b]].unit
    ]
    labels = np.arange(len(layout.groups)) if layout.fallback is None else layout.fallback
    check = _alignment_pairs(pair_list, patches, boxes, labels) if config.check_alignment else set()
    return [
        PairTask(
            a,
            b,
            overlap_bbox(boxes[a], boxes[b]),
            (boxes[a], boxes[b]),
            (patches[a].area, patches[b].area),
            (a, b) in check,
        )
        for a, b in pair_list
    ]


def _measure_pairs(
    tasks: Sequence[PairTask], built: _PatchSet, layout: _Layout, config: MatchConfig, executor, store
) -> _PairSet:
    """Measure every pair task; label the pairs with their units and pedestals."""
    patches = built.patches
    remote = _shares_files(executor, store)
    if remote:
        # Workers read their cut-outs from the store's folder themselves.
        fn = _measure_stored_pair
        jobs = (
            (task, (patches[task.a].key, patches[task.b].key), store.files, config, layout.grid.center)
            for task in tasks
        )
    else:
        fn = measure_pair
        jobs = (
            (
                task,
                store.cutout(patches[task.a].key, task.box),
                store.cutout(patches[task.b].key, task.box),
                config,
                layout.grid.center,
            )
            for task in tasks
        )
    out = _PairSet()
    progress = _Progress("Measuring pairs", len(tasks))
    outcomes = executor.imap(fn, jobs, chunksize=chunk_size(len(tasks), executor))
    for count, (task, outcome) in enumerate(zip(tasks, outcomes, strict=True), start=1):
        pa, pb = patches[task.a], patches[task.b]
        pair = outcome.pair
        if task.check_alignment and pair is not None:
            out.alignment.append(PairCheck(pa.unit, pb.unit, outcome.shift))
        if pair is not None:
            pair.i, pair.j = pa.unit, pb.unit
            pair.coeffs = pair.coeffs.copy()
            pair.coeffs[0] += pa.pedestal - pb.pedestal
            _pair_sigma_floor(pair, (pa.pedestal, pb.pedestal))
            if outcome.usable:
                out.used.append(pair)
                out.geometry.append((task.a, task.b, task.box))
            else:
                out.rejected.append(pair)
        progress.update(count)
    for p in out.rejected:
        log.info("Pair of units %d-%d not used: %s.", p.i + 1, p.j + 1, "; ".join(p.flags))
    return out


def _measure_stored_pair(
    task: PairTask,
    keys: tuple[str, str],
    files: StoredImages,
    config: MatchConfig,
    center: tuple[float, float],
) -> PairOutcome:
    """:func:`measure_pair` in a worker, which reads both cut-outs from ``files``."""
    cut_a = files.cutout(keys[0], task.boxes[0], task.box)
    cut_b = files.cutout(keys[1], task.boxes[1], task.box)
    return measure_pair(task, cut_a, cut_b, config, center)


def _store_kind(execution: ExecutionSettings, executor, layout: _Layout) -> str:
    """The store asked for, or the disk when workers run elsewhere or memory would not do."""
    if execution.store != "memory":
        return execution.store
    if executor.remote:
        # Workers exchange images through files (the page cache), not pipes:
        # nothing large is pickled either way.
        log.info("Parallel run: resampled images are shared with the workers through a temporary folder.")
        return "disk"
    # Image and weight in float32 for every exposure's box (co-added patches
    # of a unit take less).
    need = 8.0 * sum(box.size for box in layout.boxes)
    left = execution.budget_bytes - execution.held_bytes
    if need > left:
        gib_held = execution.held_bytes / 2**30
        held = f" ({gib_held:.2f} GiB held by the exposures)" if execution.held_bytes else ""
        log.info(
            "Resampled images need about %.2f GiB, more than the %.2f GiB left of the memory budget%s: they "
            "wait on disk in a temporary folder (%s) until their pairs are measured (memory_budget sets the "
            "budget).",
            need / 2**30,
            max(left, 0.0) / 2**30,
            held,
            execution.temp_dir or "the system's temporary directory",
        )
        return "disk"
    return "memory"


def _solve_units(pairs: _PairSet, layout: _Layout, config: MatchConfig, reasons: list[str]) -> LevelSolution:
    """Solve all unit levels; units whose pairs contradict are left out and named.

    Updates ``pairs`` (left-out pairs move to ``rejected``) and ``reasons``.
    """
    n_units = len(layout.groups)
    solution = _solve(n_units, pairs.used, config, pair_level_covariance(pairs.used, pairs.geometry))
    discordant = (
        _discordant_units(n_units, pairs.used, solution, config)
        if config.robust and config.exclude_discordant
        else {}
    )
    if not discordant:
        return solution
    # Left out of the solution (their pairs would bend it), named; they can
    # still take their fallback group's level.
    keep = [e for e, p in enumerate(pairs.used) if p.i not in discordant and p.j not in discordant]
    kept = set(keep)
    for e, p in enumerate(pairs.used):
        if e not in kept:
            p.flags.append("pair of an exposure whose pairs contradict each other")
            pairs.rejected.append(p)
    pairs.used = [pairs.used[e] for e in keep]
    pairs.geometry = [pairs.geometry[e] for e in keep]
    for g, why in discordant.items():
        for k in layout.groups[g]:
            reasons[k] = why
    return _solve(n_units, pairs.used, config, pair_level_covariance(pairs.used, pairs.geometry))


def _exposure_levels(
    layout: _Layout, solution: LevelSolution, reasons: list[str], ncoef: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-exposure coefficients, uncertainties, components and status from the unit solution.

    Updates ``reasons`` for exposures that are not measured.
    """
    groups = layout.groups
    n = len(reasons)
    unit_levels, unit_sigma, unit_component, borrowed = _fallback_levels(
        solution, layout.fallback, len(groups)
    )
    coefficients = np.full((n, ncoef), np.nan)
    sigma = np.full((n, ncoef), np.nan)
    component = np.full(n, -1)
    status = np.full(n, "unmatched", dtype=object)
    for g, members in enumerate(groups):
        members = np.asarray(members)
        if unit_component[g] < 0:
            for k in members:
                reasons[k] = reasons[k] or "no usable overlap with any exposure of another group"
            continue
        coefficients[members] = unit_levels[g]
        sigma[members] = unit_sigma[g]
        component[members] = unit_component[g]
        status[members] = "group" if borrowed[g] else "measured"
        for k in members:
            if borrowed[g]:
                reasons[k] = reasons[k] or "no usable overlap with any exposure of another group"
            elif reasons[k]:
                status[k] = "group"  # shares the level its unit-mates measured
    for k in range(n):
        if reasons[k].startswith("constant data"):
            coefficients[k] = np.nan
            sigma[k] = np.nan
            component[k] = -1
            status[k] = "excluded"
    return coefficients, sigma, component, np.asarray(status, dtype=str)


def match_exposures(
    exposures: Sequence[ExposureSource],
    groups: Sequence[Sequence[int]],
    config: MatchConfig | None = None,
    grid: SkyGrid | None = None,
    fallback: Sequence[int] | None = None,
    execution: ExecutionSettings | None = None,
) -> MatchResult:
    """Match the background of exposures from per-pixel differences.

    Parameters
    ----------
    exposures : sequence of ExposureSource
        The exposures.
    groups : sequence of sequence of int
        Partition of the exposure indices into units that share one level
        (e.g. jwst's ``group_id`` groups; see
        :mod:`~jwst_skymatch_plus.core.grouping`).
    config : MatchConfig, optional
        Algorithm settings.
    grid : SkyGrid, optional
        Common grid; by default one covering all exposures at
        ``config.grid_scale`` times their native pixel size.
    fallback : sequence of int, optional
        A label per *unit* (e.g. its visit): a unit that no used pair ties
        to anything takes the mean level of the measured units with the same
        label (status ``'group'``).  None: such units stay unmatched.
    execution : ExecutionSettings, optional
        Workers, Dask scheduler and store (serial and in memory by default);
        results do not depend on them.

    Returns
    -------
    MatchResult
    """
    config = config or MatchConfig()
    execution = execution or ExecutionSettings()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    layout = _layout(exposures, groups, config, grid, fallback)
    timings["grid"] = time.perf_counter() - t0
    with (
        execution.executor() as executor,
        make_store(_store_kind(execution, executor, layout), execution.temp_dir) as store,
    ):
        t0 = time.perf_counter()
        built = _resample_units(exposures, layout, config, executor, store)
        timings["resample"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        pairs = _measure_pairs(_pair_tasks(built, layout, config), built, layout, config, executor, store)
        timings["pairs"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    reasons = built.reasons
    solution = _solve_units(pairs, layout, config, reasons)
    timings["solve"] = time.perf_counter() - t0
    coefficients, sigma, component, status = _exposure_levels(layout, solution, reasons, config.ncoef)
    return MatchResult(
        grid=layout.grid,
        fit_type=config.fit_type,
        plane_scale=config.plane_scale,
        groups=layout.groups,
        coefficients=coefficients,
        sigma=sigma,
        component=component,
        group_index=layout.group_index,
        status=status,
        reasons=reasons,
        group_solution=solution,
        group_pairs=pairs.used,
        rejected_pairs=pairs.rejected,
        alignment=pairs.alignment,
        group_boxes=[_unit_box(g, built.patches) for g in range(len(layout.groups))],
        group_flatness=np.array(built.flatness),
        thumbnails=built.thumbnails,
        timings=timings,
    )


def _unit_box(g: int, patches: Sequence[Patch]) -> BBox:
    """Box of unit ``g``'s largest patch (an empty box if it has none)."""
    mine = [p for p in patches if p.unit == g]
    if not mine:
        return BBox(0, 0, 0, 0)
    return max(mine, key=lambda p: p.area).bbox
