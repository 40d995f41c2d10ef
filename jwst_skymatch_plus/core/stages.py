"""Multi-stage level matching: dithers, Lyot recombination, NIRCam short chips, mosaic tiles.

Each stage is one call of :func:`~jwst_skymatch_plus.core.matching.match_exposures`
on a subset of the exposures with a stage-specific grouping, on data already
corrected by the earlier stages.  The stages only differ in which pixels form
an "image", which images are matched together, and how the free constants
are fixed:

``dithers``
    In each mosaic tile (a visit) and for each detector, the dithered
    exposures are matched against each other.  Corrections have zero mean
    per tile, so the tile as a whole keeps its level for the tile stage.
``lyot``
    MIRI imager only: the Lyot coronagraph region of every exposure and the
    main imaging field are matched as separate images; the Lyot region is
    then brought to its own exposure's main field (the main field gets no
    correction in this stage).
``nircam_short``
    The NIRCam short-wavelength chips of each tile are matched against each
    other (through the dithers' overlaps); the corrections are made
    zero-mean over the chips of each exposure and module, so every chip is
    corrected and the exposure keeps its level.
``tiles``
    The tiles (with everything above applied) are matched as units, and the
    free constant fixed by a reference tile or ``match_down``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .grouping import group_exposures, instrument_family
from .matching import ExposureSource, MatchConfig, MatchResult, match_exposures
from .planes import DetectorPlane, detector_plane
from .reference import apply_reference, reference_for_result

__all__ = ["STAGES", "Correction", "StageOutcome", "corrected_source", "run_stages"]

log = logging.getLogger(__name__)

#: Stages in the order they run.
STAGES = ("dithers", "lyot", "nircam_short", "tiles")


@dataclass(frozen=True)
class Correction:
    """A background removed from one exposure by one stage."""

    stage: str
    plane: DetectorPlane
    region: tuple[slice, slice] | None = None  # None: the whole detector

    def evaluate(self, shape: tuple[int, int]) -> np.ndarray:
        """The correction on a detector array of ``shape`` (zero outside ``region``)."""
        values = self.plane.evaluate(shape)
        if self.region is None:
            return values
        out = np.zeros(shape, dtype=np.float32)
        out[self.region] = values[self.region]
        return out


@dataclass
class StageOutcome:
    """What one stage did."""

    stage: str
    corrections: list[Correction | None]  # per exposure; None: not corrected by this stage
    results: list[MatchResult] = field(default_factory=list)
    reference: str | None = None
    skipped: str | None = None  # reason, when the stage did not run


def corrected_source(source: ExposureSource, corrections: Sequence[Correction]) -> ExposureSource:
    """A copy of ``source`` whose data come out with ``corrections`` subtracted."""
    if not corrections:
        return source
    load = source.load

    def corrected_load():
        data, good, *rest = load()
        for c in corrections:
            data = data - c.evaluate(data.shape)
        return (data, good, *rest)

    return replace(source, load=corrected_load)


def _restricted(source: ExposureSource, region: tuple[slice, slice], inside: bool) -> ExposureSource:
    """``source`` with only the pixels inside (or outside) ``region`` marked good."""
    load = source.load

    def restricted_load():
        data, good, *rest = load()
        keep = np.zeros(good.shape, dtype=bool)
        keep[region] = True
        return (data, good & (keep if inside else ~keep), *rest)

    suffix = "[lyot]" if inside else "[main]"
    return replace(source, name=source.name + suffix, load=restricted_load)


def _planes(result: MatchResult, sources: Sequence[ExposureSource]) -> list[DetectorPlane | None]:
    planes = []
    for k, src in enumerate(sources):
        coeffs = result.coefficients[k]
        if not np.all(np.isfinite(coeffs)) or src.wcs is None:
            planes.append(None)
        else:
            planes.append(detector_plane(coeffs, src.wcs, src.shape, result.grid, result.plane_scale))
    return planes


def _shifted(plane: DetectorPlane, level: float) -> DetectorPlane:
    return DetectorPlane(level, plane.slope_x, plane.slope_y, plane.x_center, plane.y_center)


def _tile_key(meta: Mapping) -> tuple:
    return tuple(
        str(meta.get(k))
        for k in (
            "meta.observation.program_number",
            "meta.observation.observation_number",
            "meta.observation.visit_number",
        )
    )


def _partition(keys: Sequence) -> list[list[int]]:
    out: dict = {}
    for k, key in enumerate(keys):
        out.setdefault(key, []).append(k)
    return list(out.values())


def _stage_config(config: MatchConfig, fit_type: str) -> MatchConfig:
    # Stages match single images (or tiles as units): nothing to match inside groups.
    return replace(config, fit_type=fit_type, check_alignment=False)


def _run_dithers(sources, metas, config, fit_type) -> StageOutcome:
    n = len(sources)
    corrections: list[Correction | None] = [None] * n
    results = []
    keys = [(*_tile_key(m), str(m.get("meta.instrument.detector"))) for m in metas]
    for members in _partition(keys):
        if len(members) < 2:
            continue
        subset = [sources[k] for k in members]
        result = match_exposures(subset, [[i] for i in range(len(subset))], _stage_config(config, fit_type))
        results.append(result)
        # match_exposures leaves each connected part at zero mean: the tile keeps its level.
        for i, plane in enumerate(_planes(result, subset)):
            if plane is not None:
                corrections[members[i]] = Correction("dithers", plane)
    return StageOutcome("dithers", corrections, results)


def _run_lyot(sources, metas, config, fit_type, lyot_region) -> StageOutcome:
    n = len(sources)
    miri = [k for k in range(n) if instrument_family(metas[k]) == "miri" and lyot_region(k) is not None]
    if len(miri) < 2:
        return StageOutcome("lyot", [None] * n, skipped="fewer than two MIRI imager exposures")
    parts, owner = [], []
    for k in miri:
        region = lyot_region(k)
        parts += [_restricted(sources[k], region, inside=False), _restricted(sources[k], region, inside=True)]
        owner += [k, k]
    result = match_exposures(parts, [[i] for i in range(len(parts))], _stage_config(config, fit_type))
    planes = _planes(result, parts)
    corrections: list[Correction | None] = [None] * n
    for idx, k in enumerate(miri):
        main, lyot = planes[2 * idx], planes[2 * idx + 1]
        if main is None or lyot is None:
            log.warning("%s: Lyot region not tied to the main field; left uncorrected.", sources[k].name)
            continue
        # The main field is held fixed: the Lyot region moves to it.
        diff = DetectorPlane(
            lyot.level - main.level,
            lyot.slope_x - main.slope_x,
            lyot.slope_y - main.slope_y,
            lyot.x_center,
            lyot.y_center,
        )
        corrections[k] = Correction("lyot", diff, lyot_region(k))
    return StageOutcome("lyot", corrections, [result])


def _run_nircam_short(sources, metas, config, fit_type) -> StageOutcome:
    n = len(sources)
    short = [k for k in range(n) if instrument_family(metas[k]) == "nircam_short"]
    corrections: list[Correction | None] = [None] * n
    if len(short) < 2:
        return StageOutcome(
            "nircam_short", corrections, skipped="fewer than two NIRCam short-wavelength images"
        )
    results = []
    for members in _partition([_tile_key(metas[k]) for k in short]):
        members = [short[i] for i in members]
        subset = [sources[k] for k in members]
        result = match_exposures(subset, [[i] for i in range(len(subset))], _stage_config(config, fit_type))
        results.append(result)
        planes = _planes(result, subset)
        # Zero mean over the chips of each exposure and module: chips are
        # equalised, the exposure keeps its level for the later stages.
        exposure_keys = [
            (
                str(metas[k].get("meta.observation.exposure_number")),
                str(metas[k].get("meta.observation.activity_id")),
                str(metas[k].get("meta.instrument.module")),
            )
            for k in members
        ]
        for chips in _partition(exposure_keys):
            good = [i for i in chips if planes[i] is not None]
            if not good:
                continue
            mean = float(np.mean([planes[i].level for i in good]))
            for i in good:
                corrections[members[i]] = Correction(
                    "nircam_short", _shifted(planes[i], planes[i].level - mean)
                )
    return StageOutcome("nircam_short", corrections, results)


def _mid_time(meta: Mapping):
    return meta.get("meta.exposure.mid_time") or meta.get("meta.exposure.start_time")


def _run_tiles(sources, metas, config, fit_type, reference, background_times, match_down) -> StageOutcome:
    n = len(sources)
    groups = group_exposures(metas, "visit")
    if len(groups) < 2:
        return StageOutcome("tiles", [None] * n, skipped="a single mosaic tile")
    result = match_exposures(sources, groups, _stage_config(config, fit_type))
    planes = _planes(result, sources)
    ref_group, rule = _reference(result, metas, reference, background_times)
    centre = np.array([p.level if p is not None else np.nan for p in planes])
    levels = apply_reference(centre, result.component, result.group_index, ref_group, match_down)
    corrections: list[Correction | None] = [
        None
        if p is None or not np.isfinite(levels[k])
        else Correction("tiles", _shifted(p, float(levels[k])))
        for k, p in enumerate(planes)
    ]
    label = None
    if ref_group is not None:
        first = result.groups[ref_group][0]
        label = f"tile {ref_group + 1} ({metas[first].get('meta.filename') or first}), by {rule!r}"
    return StageOutcome("tiles", corrections, [result], reference=label)


def _reference(result: MatchResult, metas, reference: str, background_times) -> tuple[int | None, str]:
    rule = (reference or "").strip()
    if rule == "auto":
        rule = "closest_to_background" if background_times else "most_connected"
    if not rule:
        return None, ""
    names = [[str(metas[k].get("meta.filename")) for k in members] for members in result.groups]
    g = reference_for_result(rule, result, metas, names, background_times or ())
    return g, rule


def run_stages(
    sources: Sequence[ExposureSource],
    metas: Sequence[Mapping],
    stages: Sequence[str],
    fit_types: Mapping[str, str],
    config: MatchConfig,
    *,
    lyot_region: Callable[[int], tuple[slice, slice] | None] = lambda k: None,
    exclude_lyot: bool = True,
    reference: str = "auto",
    background_times: Sequence[float] = (),
    match_down: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[StageOutcome]:
    """Run the requested stages in order, each on the data the earlier ones corrected.

    Parameters
    ----------
    sources : sequence of ExposureSource
        The exposures (with their WCS, needed to express planes on detectors).
    metas : sequence of mapping
        Flat metadata per exposure (grouping is read from it, never from
        file names).
    stages : sequence of str
        Stages to run, any of :data:`STAGES` (run in that order).
    fit_types : mapping
        ``'level'`` or ``'level+slope'`` per stage.
    config : MatchConfig
        Matching settings shared by the stages.
    lyot_region : callable
        ``lyot_region(k)``: the Lyot coronagraph slices of exposure ``k``, or
        None.
    exclude_lyot : bool
        Leave the Lyot region out of every stage but ``lyot`` (it is
        corrected by all of them).
    reference : str
        Reference rule of the tile stage: ``'auto'`` (closest in time to a
        background observation when their times are given, else the tile
        with most overlapping pairs), ``'flattest'``, ``'most_connected'``,
        ``'closest_to_background'``, an exposure name or tile number, or
        ``''`` for ``match_down``.
    background_times : sequence of float
        MJDs of background observations.
    match_down : bool
        Gauge of the tile stage when no reference applies.
    progress : callable, optional
        Called with one line per stage for logging.

    Returns
    -------
    list of StageOutcome
        One per requested stage, in run order.
    """
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; use {', '.join(STAGES)}")
    applied: list[list[Correction]] = [[] for _ in sources]
    outcomes = []
    for stage in STAGES:
        if stage not in stages:
            continue
        current = [corrected_source(s, applied[k]) for k, s in enumerate(sources)]
        if stage != "lyot" and exclude_lyot:
            current = [
                s if lyot_region(k) is None else _restricted(s, lyot_region(k), inside=False)
                for k, s in enumerate(current)
            ]
        fit_type = fit_types.get(stage, "level")
        if stage == "dithers":
            outcome = _run_dithers(current, metas, config, fit_type)
        elif stage == "lyot":
            outcome = _run_lyot(current, metas, config, fit_type, lyot_region)
        elif stage == "nircam_short":
            outcome = _run_nircam_short(current, metas, config, fit_type)
        else:
            outcome = _run_tiles(current, metas, config, fit_type, reference, background_times, match_down)
        for k, c in enumerate(outcome.corrections):
            if c is not None:
                applied[k].append(c)
        if progress is not None:
            done = sum(c is not None for c in outcome.corrections)
            progress(
                f"stage {stage}: "
                + (f"skipped ({outcome.skipped})" if outcome.skipped else f"{done}/{len(sources)} corrected")
                + (f"; reference {outcome.reference}" if outcome.reference else "")
            )
        outcomes.append(outcome)
    return outcomes
