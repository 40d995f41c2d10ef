"""Multi-stage level matching: dithers, Lyot recombination, NIRCam short chips, mosaic tiles.

Each stage is one call of :func:`~jwst_skymatch_plus.core.matching.match_exposures`
on a subset of the exposures with a stage-specific grouping, on data already
corrected by the earlier stages.  The stages only differ in which pixels form
an "image", which images are matched together, and how the free constants
are fixed:

``dithers``
    The levels of the dithered exposures of each mosaic tile (a visit) and
    detector relative to each other, measured from all their overlaps
    (every exposure is matched against every other at once, so overlaps
    with other tiles count too).  Corrections have zero mean per tile, so
    the tile as a whole keeps its level for the tile stage.
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
    free constant fixed by a reference tile or ``match_down``.  The NIRCam
    modules A and B of a tile are units of their own (each module gets its
    own level: their backgrounds differ) unless no chain of usable overlaps
    ties them together; then the tile is matched whole.

A stage with ``fit_type='auto'`` chooses levels or planes with
:func:`~jwst_skymatch_plus.core.model_choice.match_auto` on its own pairs.
The dither stage matches every exposure against every other, so its choice
counts the pairs of single exposures across the whole mosaic; when it takes
planes, each exposure keeps the slopes of that joint solution (only the
levels are made zero-mean per tile) and an ``'auto'`` tile stage then
matches the tiles' levels.  A tile stage matched alone has a few units and
hardly any degrees of freedom for the test: there ``'auto'`` seldom leaves
levels.

A stage never hands exposures it could not tie to the next one as if they
were matched: when the dithers of a tile (or the chips in the NIRCam stage)
fall into parts with no usable overlap between them, each part keeps its own
level, and the tile stage matches every part as a unit of its own instead of
co-adding it into its tile (a part that nothing ties in the tile stage either
gets the background of the rest of its tile, with a warning).
:func:`check_solution` then measures every overlapping exposure pair after
all corrections and names the exposures whose differences are not
consistent with their noise.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np

from .execution import ExecutionSettings
from .finalize import Gauge, detector_planes, finalize
from .grouping import group_exposures, instrument_family, nircam_module
from .keys import exposure_key, visit_key
from .matching import ExposureSource, MatchConfig, MatchResult, match_exposures
from .model_choice import FitChoice, match_auto
from .planes import DetectorPlane

__all__ = [
    "STAGES",
    "Correction",
    "PairResidual",
    "SolutionCheck",
    "StageOutcome",
    "check_solution",
    "corrected_source",
    "run_stages",
]

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
    # Exposures this stage matched but could not tie together: for every
    # match whose exposures came out in more than one connected part, the
    # list of those parts (an exposure tied to nothing is a part of its
    # own).  Later stages keep the parts apart.
    split: list[list[list[int]]] = field(default_factory=list)
    note: str | None = None  # extra detail for the progress line
    choice: FitChoice | None = None  # what fit_type='auto' chose in this stage, and why


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


def _restricted(
    source: ExposureSource, region: tuple[slice, slice], inside: bool, rename: bool = True
) -> ExposureSource:
    """``source`` with only the pixels inside (or outside) ``region`` marked good.

    ``rename`` appends ``[lyot]`` or ``[main]`` to the name (for the Lyot
    stage, where both parts of an exposure are matched).
    """
    load = source.load

    def restricted_load():
        data, good, *rest = load()
        keep = np.zeros(good.shape, dtype=bool)
        keep[region] = True
        return (data, good & (keep if inside else ~keep), *rest)

    suffix = ("[lyot]" if inside else "[main]") if rename else ""
    return replace(source, name=source.name + suffix, load=restricted_load)


def _parts(component: np.ndarray) -> list[list[int]]:
    """Positions grouped by connected part; an unconnected position (-1) is a part of its own."""
    return _partition([int(c) if c >= 0 else -1 - i for i, c in enumerate(component)])


def _split_parts(result: MatchResult, members: Sequence[int], sources, what: str) -> list[list[list[int]]]:
    """``[parts]`` of one stage match, in exposure indices, when there is more than one (else [])."""
    parts = [[members[i] for i in part] for part in _parts(result.component)]
    if len(parts) < 2:
        return []
    log.info(
        "%s: no usable overlap ties these parts to each other, so each keeps its own level "
        "and later stages match it as a unit of its own: %s.",
        what,
        " | ".join(", ".join(sources[k].name for k in part) for part in parts),
    )
    return [parts]


def _shifted(plane: DetectorPlane, level: float) -> DetectorPlane:
    return DetectorPlane(level, plane.slope_x, plane.slope_y, plane.x_center, plane.y_center)


def _partition(keys: Sequence) -> list[list[int]]:
    out: dict = {}
    for k, key in enumerate(keys):
        out.setdefault(key, []).append(k)
    return list(out.values())


def _stage_config(config: MatchConfig, fit_type: str) -> MatchConfig:
    # Stages match single images (or tiles as units): nothing to match inside groups.
    # Stages leave inconsistent exposures in: the step's final check of every
    # overlap names them once all stages are done.
    fit_type = "level" if fit_type == "auto" else fit_type  # match_auto measures levels first
    return replace(config, fit_type=fit_type, check_alignment=False, exclude_discordant=False)


def _match(sources, groups, config, fit_type, execution, what) -> tuple[MatchResult, FitChoice | None]:
    """One stage match: with ``fit_type``, or chosen from the data when it is ``'auto'``."""
    stage_config = _stage_config(config, fit_type)
    if fit_type != "auto":
        return match_exposures(sources, groups, stage_config, execution=execution), None
    log.info("%s: choosing between levels and planes (fit_type='auto').", what)
    return match_auto(sources, groups, stage_config, execution=execution)


def _run_dithers(sources, metas, config, fit_type, execution=None) -> StageOutcome:
    n = len(sources)
    corrections: list[Correction | None] = [None] * n
    split: list[list[list[int]]] = []
    keys = [(*visit_key(m), str(m.get("meta.instrument.detector"))) for m in metas]
    tiles = [members for members in _partition(keys) if len(members) >= 2]
    if not tiles:
        return StageOutcome("dithers", corrections)
    # Every exposure is matched against every other at once, so that a
    # dither's overlaps with other tiles measure its level relative to its
    # tile-mates too (dithers tied to each other only by thin strips were
    # 1.5-2 times less precise matched tile by tile); each tile then keeps
    # only its dithers' levels relative to each other (below).
    # With fit_type='auto' the choice is taken here, on the pairs of single
    # exposures (the tile stage's few units leave its test hardly any
    # degrees of freedom).
    result, choice = _match(sources, [[k] for k in range(n)], config, fit_type, execution, "Dither stage")
    # Planes chosen by 'auto' were measured against the whole mosaic at
    # once: every exposure keeps its slopes (the tile stage, matching levels,
    # never measures them again) and only the levels are made zero-mean per
    # tile.  Planes asked for explicitly are zero-mean per tile and left to
    # the tile stage's own plane fit.
    keep_slopes = choice is not None and choice.fit_type == "level+slope"
    columns = slice(0, 1) if keep_slopes else slice(None)
    coefficients = result.coefficients.copy()
    for members in tiles:
        # Zero mean over each tile's connected parts: the tile keeps its
        # level when its dithers are all tied; otherwise every part keeps
        # its own, and the tile stage matches the parts separately.
        component = result.component[members]
        for part in _parts(component):
            ks = [members[i] for i in part]
            coefficients[ks, columns] -= coefficients[ks, columns].mean(axis=0)
        split += _split_parts(
            replace(result, component=component),
            members,
            sources,
            f"Dithers of {sources[members[0]].name} and its tile-mates",
        )
    tiled = {k for members in tiles for k in members}
    if keep_slopes:
        # An exposure alone in its tile keeps its slopes, with no level.
        alone = [k for k in range(n) if k not in tiled]
        coefficients[alone, 0] = 0.0
        tiled = set(range(n))
    for k, plane in enumerate(detector_planes(replace(result, coefficients=coefficients), sources)):
        if plane is not None and k in tiled:
            corrections[k] = Correction("dithers", plane)
    return StageOutcome("dithers", corrections, [result], split=split, choice=choice)


def _run_lyot(sources, metas, config, fit_type, lyot_region, execution=None) -> StageOutcome:
    n = len(sources)
    miri = [k for k in range(n) if instrument_family(metas[k]) == "miri" and lyot_region(k) is not None]
    if len(miri) < 2:
        return StageOutcome("lyot", [None] * n, skipped="fewer than two MIRI imager exposures")
    parts, owner = [], []
    for k in miri:
        region = lyot_region(k)
        parts += [_restricted(sources[k], region, inside=False), _restricted(sources[k], region, inside=True)]
        owner += [k, k]
    result, choice = _match(
        parts, [[i] for i in range(len(parts))], config, fit_type, execution, "Lyot stage"
    )
    planes = detector_planes(result, parts)
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
    return StageOutcome("lyot", corrections, [result], choice=choice)


def _run_nircam_short(sources, metas, config, fit_type, execution=None) -> StageOutcome:
    n = len(sources)
    short = [k for k in range(n) if instrument_family(metas[k]) == "nircam_short"]
    corrections: list[Correction | None] = [None] * n
    if len(short) < 2:
        return StageOutcome(
            "nircam_short", corrections, skipped="fewer than two NIRCam short-wavelength images"
        )
    results, choices = [], []
    split: list[list[list[int]]] = []
    for members in _partition([visit_key(metas[k]) for k in short]):
        members = [short[i] for i in members]
        subset = [sources[k] for k in members]
        result, choice = _match(
            subset, [[i] for i in range(len(subset))], config, fit_type, execution, "NIRCam short-chip stage"
        )
        results.append(result)
        choices.append(choice)
        planes = detector_planes(result, subset)
        split += _split_parts(result, members, sources, f"NIRCam short chips of {subset[0].name}'s tile")
        # Zero mean over the chips of each exposure and module (inside one
        # connected part: levels of different parts are not comparable):
        # chips are equalised, the exposure keeps its level for later stages.
        exposure_keys = [
            (exposure_key(metas[k], k), nircam_module(metas[k]), int(result.component[i]))
            for i, k in enumerate(members)
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
    # One choice per tile: the stage reports the first that took planes, else the first.
    chosen = [c for c in choices if c is not None]
    choice = next((c for c in chosen if c.fit_type == "level+slope"), chosen[0] if chosen else None)
    return StageOutcome("nircam_short", corrections, results, split=split, choice=choice)


def _tile_units(
    metas, earlier: Sequence[StageOutcome], modules_apart: Callable[[int], bool] = lambda v: False
) -> tuple[list[list[int]], list[list[int]], list[tuple]]:
    """Units of the tile stage, the tiles (visits), and each unit's tile and part.

    A tile is one unit unless an earlier stage split it: then every part
    that stage tied together (and every exposure it tied to nothing) is a
    unit of its own, never co-added uncorrected with the rest of its tile.
    When ``modules_apart(v)`` holds for tile ``v``, each of its parts is
    split further by NIRCam module (A and B each a unit of their own).
    """
    visits = group_exposures(metas, "visit")
    part_of: dict[int, tuple] = {}
    for s, outcome in enumerate(earlier):
        for m, parts in enumerate(outcome.split):
            for p, part in enumerate(parts):
                for k in part:
                    part_of[k] = (*part_of.get(k, ()), (s, m, p))
    units, places = [], []
    for v, members in enumerate(visits):
        apart = modules_apart(v)
        keys = [(part_of.get(k, ()), nircam_module(metas[k]) if apart else "") for k in members]
        for sub in _partition(keys):
            units.append([members[i] for i in sub])
            places.append((v, keys[sub[0]][0]))
    return units, visits, places


def _modules_untied(result: MatchResult, units: Sequence[Sequence[int]], places: Sequence[tuple]) -> set[int]:
    """Tiles whose NIRCam modules no chain of overlaps ties together.

    Module units of one tile part (see :func:`_tile_units`) that came out
    in different connected components would each get a gauge of their own;
    those tiles are matched whole instead.  A unit tied to nothing does not
    count: it gets the level of the rest of its tile anyway.
    """
    components: dict[tuple, set[int]] = {}
    for members, place in zip(units, places, strict=True):
        c = int(result.component[members[0]])
        if c >= 0:
            components.setdefault(place, set()).add(c)
    return {place[0] for place, found in components.items() if len(found) > 1}


def _run_tiles(
    sources,
    metas,
    config,
    fit_type,
    reference,
    background_times,
    match_down,
    earlier,
    execution=None,
    split_modules=True,
) -> StageOutcome:
    n = len(sources)
    units, visits, places = _tile_units(metas, earlier, lambda v: split_modules)
    if len(units) < 2:
        return StageOutcome("tiles", [None] * n, skipped="a single mosaic tile")
    dithers = next((o for o in earlier if o.stage == "dithers" and o.choice is not None), None)
    if fit_type == "auto" and dithers is not None:
        # The dither stage chose on every exposure pair and, when it chose
        # planes, removed every exposure's slopes: what is left is levels.
        fit_type = "level"
    result, choice = _match(sources, units, config, fit_type, execution, "Tile stage")
    if choice is not None:
        fit_type = choice.fit_type
    stage_config = _stage_config(config, fit_type)
    whole = _modules_untied(result, units, places) if split_modules else set()
    if whole:
        # Their modules would float freely against each other: match these
        # tiles with both modules as one unit, as they were read out.
        log.warning(
            "NIRCam modules A and B of %d tile(s) share no chain of usable overlaps; those tiles "
            "are matched with both modules as one unit, so a background difference between their "
            "modules stays uncorrected: %s.",
            len(whole),
            ", ".join(sources[visits[v][0]].name for v in sorted(whole)),
        )
        units, visits, places = _tile_units(metas, earlier, lambda v: v not in whole)
        result = match_exposures(sources, units, stage_config, execution=execution)
    rule = (reference or "").strip()
    if rule == "auto":
        rule = "closest_to_background" if background_times else "most_connected"
    # The reference tile (all its units) is held at zero mean.
    final = finalize(
        _fall_back_to_tile(result, visits, sources),
        sources,
        metas,
        visits,
        Gauge(rule, match_down, tuple(background_times or ())),
        kind="tile",
        units_compete=True,
    )
    corrections = [None if p is None else Correction("tiles", p) for p in final.planes]
    label = None
    if final.reference is not None:
        first = visits[final.reference][0]
        label = f"tile {final.reference + 1} ({metas[first].get('meta.filename') or first}), by {rule!r}"
    note = None
    if len(units) > len(visits):
        why = []
        if any(outcome.split for outcome in earlier):
            why.append("split by earlier stages")
        if len(units) > len(_tile_units(metas, earlier)[0]):
            why.append("NIRCam modules apart")
        note = f"{len(visits)} tiles matched as {len(units)} units ({', '.join(why)})"
    return StageOutcome("tiles", corrections, [result], reference=label, note=note, choice=choice)


def _fall_back_to_tile(result: MatchResult, visits: Sequence[Sequence[int]], sources) -> MatchResult:
    """Give units that nothing tied the background of the rest of their tile.

    A part of a tile that no usable overlap ties to anything, in any stage,
    cannot be measured; the rest of its tile's background (mean over the
    tile's largest matched part, in the grid frame) is the best estimate
    left, the one a tile matched as a whole would have given it.
    """
    coefficients = result.coefficients.copy()
    component = result.component.copy()
    assumed = []
    for members in visits:
        members = np.asarray(members)
        lost = members[component[members] < 0]
        matched = members[component[members] >= 0]
        if lost.size == 0 or matched.size == 0:
            continue
        labels, counts = np.unique(component[matched], return_counts=True)
        donors = matched[component[matched] == labels[np.argmax(counts)]]
        coefficients[lost] = coefficients[donors].mean(axis=0)
        component[lost] = component[donors[0]]
        assumed += lost.tolist()
    if not assumed:
        return result
    log.warning(
        "%d exposure(s) share no usable overlap with anything and get the background of the rest of "
        "their tile (their own drift cannot be measured): %s.",
        len(assumed),
        ", ".join(sources[k].name for k in assumed),
    )
    return replace(result, coefficients=coefficients, component=component)


def run_stages(
    sources: Sequence[ExposureSource],
    metas: Sequence[Mapping],
    stages: Sequence[str],
    fit_types: Mapping[str, str],
    config: MatchConfig,
    *,
    lyot_region: Callable[[int], tuple[slice, slice] | None] = lambda k: None,
    reference: str = "auto",
    background_times: Sequence[float] = (),
    match_down: bool = True,
    progress: Callable[[str], None] | None = None,
    execution: ExecutionSettings | None = None,
    split_modules: bool = True,
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
        ``'level'``, ``'level+slope'`` or ``'auto'`` per stage.  ``'auto'``
        chooses with :func:`~jwst_skymatch_plus.core.model_choice.match_auto`
        on the stage's own pairs, except in the tile stage after a dither
        stage that chose: there the choice was taken on every exposure pair
        of the mosaic, the slopes of planes are already removed per
        exposure, and the tile stage matches levels.
    config : MatchConfig
        Matching settings shared by the stages.
    lyot_region : callable
        ``lyot_region(k)``: the Lyot coronagraph slices of exposure ``k``, or
        None.  The region is left out of every stage but ``lyot`` (it is
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
    execution : ExecutionSettings, optional
        Where matching runs (results do not depend on it).
    split_modules : bool
        In the tile stage, match the NIRCam modules A and B of every tile
        as units of their own (each module its own level); a tile whose
        modules no chain of usable overlaps ties together is matched whole.

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
        if stage != "lyot":
            current = [
                s if lyot_region(k) is None else _restricted(s, lyot_region(k), inside=False, rename=False)
                for k, s in enumerate(current)
            ]
        fit_type = fit_types.get(stage, "level")
        if stage == "dithers":
            outcome = _run_dithers(current, metas, config, fit_type, execution)
        elif stage == "lyot":
            outcome = _run_lyot(current, metas, config, fit_type, lyot_region, execution)
        elif stage == "nircam_short":
            outcome = _run_nircam_short(current, metas, config, fit_type, execution)
        else:
            outcome = _run_tiles(
                current,
                metas,
                config,
                fit_type,
                reference,
                background_times,
                match_down,
                outcomes,
                execution,
                split_modules,
            )
        for k, c in enumerate(outcome.corrections):
            if c is not None:
                applied[k].append(c)
        if progress is not None:
            done = sum(c is not None for c in outcome.corrections)
            nparts = sum(len(parts) for parts in outcome.split)
            progress(
                f"stage {stage}: "
                + (f"skipped ({outcome.skipped})" if outcome.skipped else f"{done}/{len(sources)} corrected")
                + (
                    f"; {len(outcome.split)} tile(s) fall into {nparts} parts with no usable overlap "
                    "between them"
                    if outcome.split
                    else ""
                )
                + (f"; {outcome.note}" if outcome.note else "")
                + (f"; fit_type='auto' chose {outcome.choice.fit_type!r}" if outcome.choice else "")
                + (f"; reference {outcome.reference}" if outcome.reference else "")
            )
        outcomes.append(outcome)
    tiles = next((o for o in outcomes if o.stage == "tiles"), None)
    apart = sorted({k for o in outcomes for parts in o.split for part in parts for k in part})
    if apart and (tiles is None or tiles.skipped):
        log.warning(
            "%d exposure(s) could not be tied to the rest of their tile and no tile stage ran to "
            "match them: each part of the tile keeps its own level (%s).",
            len(apart),
            ", ".join(sources[k].name for k in apart),
        )
    return outcomes


# --------------------------------------------------------------------------
# Final check
# --------------------------------------------------------------------------
@dataclass
class PairResidual:
    """Background difference of two overlapping exposures after every correction."""

    i: int
    j: int
    residual: float  # exposure i minus exposure j, in the overlap
    sigma: float  # its 1-sigma uncertainty (pixel noise of the overlap)
    npix: int

    @property
    def nsigma(self) -> float:
        """``|residual| / sigma``."""
        return abs(self.residual) / self.sigma if self.sigma > 0 else math.inf


@dataclass
class SolutionCheck:
    """Every usable overlapping exposure pair measured after all corrections.

    Attributes
    ----------
    names : list of str
        Exposure names.
    pairs : list of PairResidual
        Pairs whose overlap passes the matching thresholds.
    nsigma : float
        Threshold: a pair whose residual exceeds ``nsigma`` times its
        uncertainty is inconsistent with the solution.
    """

    names: list[str]
    pairs: list[PairResidual]
    nsigma: float

    def inconsistent(self) -> list[PairResidual]:
        """Pairs whose residual exceeds the threshold, worst first."""
        bad = [p for p in self.pairs if p.nsigma > self.nsigma]
        return sorted(bad, key=lambda p: -p.nsigma)

    def by_exposure(self) -> list[tuple[int, list[PairResidual], int]]:
        """``(exposure, its inconsistent pairs, its checked pairs)``, most inconsistent first.

        An exposure whose own background is wrong disagrees with most of its
        overlaps; its partners each disagree with it alone.
        """
        total: dict[int, int] = {}
        bad: dict[int, list[PairResidual]] = {}
        for p in self.pairs:
            for k in (p.i, p.j):
                total[k] = total.get(k, 0) + 1
                if p.nsigma > self.nsigma:
                    bad.setdefault(k, []).append(p)
        order = sorted(
            bad, key=lambda k: (-len(bad[k]) / total[k], -len(bad[k]), -max(p.nsigma for p in bad[k]))
        )
        return [(k, sorted(bad[k], key=lambda p: -p.nsigma), total[k]) for k in order]


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Silence a logger below ERROR (the check repeats what the stages already reported)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_solution(
    sources: Sequence[ExposureSource],
    outcomes: Sequence[StageOutcome],
    config: MatchConfig,
    *,
    nsigma: float = 5.0,
    lyot_region: Callable[[int], tuple[slice, slice] | None] = lambda k: None,
    exclude_lyot: bool = True,
    execution: ExecutionSettings | None = None,
) -> SolutionCheck:
    """Measure every overlapping exposure pair after all stages' corrections.

    Each exposure, with every correction of ``outcomes`` subtracted, is
    resampled once and every pair whose overlap passes the thresholds of
    ``config`` is measured as the stages measure pairs
    (:func:`~jwst_skymatch_plus.core.matching.match_exposures`, each exposure
    its own group).  A consistent solution leaves differences within their
    noise; a WARNING names the exposures whose pairs exceed ``nsigma``.

    Parameters
    ----------
    sources : sequence of ExposureSource
        The exposures, uncorrected (as given to :func:`run_stages`).
    outcomes : sequence of StageOutcome
        What :func:`run_stages` returned.
    config : MatchConfig
        Matching settings (statistic, grid, thresholds) shared with the stages.
    nsigma : float
        Largest residual, in units of its uncertainty, of a consistent pair.
    lyot_region : callable
        As for :func:`run_stages`.
    exclude_lyot : bool
        Leave the Lyot region out of the check (as the stages but ``lyot`` do).
    execution : ExecutionSettings, optional
        Where matching runs (results do not depend on it).

    Returns
    -------
    SolutionCheck
    """
    current = []
    for k, src in enumerate(sources):
        s = corrected_source(src, [o.corrections[k] for o in outcomes if o.corrections[k] is not None])
        if exclude_lyot and lyot_region(k) is not None:
            s = _restricted(s, lyot_region(k), inside=False, rename=False)
        current.append(s)
    names = [src.name for src in sources]
    if len(sources) < 2:
        return SolutionCheck(names, [], nsigma)
    with _quiet("jwst_skymatch_plus.core.matching"):
        result = match_exposures(
            current, [[k] for k in range(len(sources))], _stage_config(config, "level"), execution=execution
        )
    pairs = [
        PairResidual(p.i, p.j, float(p.coeffs[0]), float(p.sigma[0]), int(p.npix)) for p in result.group_pairs
    ]
    check = SolutionCheck(names, pairs, nsigma)
    worst = max(pairs, key=lambda p: p.nsigma, default=None)
    log.info(
        "Check of the solution: %d overlapping exposure pairs measured after correction%s.",
        len(pairs),
        ""
        if worst is None
        else f"; largest residual {worst.residual:+.4g} = {worst.nsigma:.1f} sigma "
        f"({names[worst.i]} - {names[worst.j]})",
    )
    flagged = check.by_exposure()
    if flagged:
        lines = []
        for k, bad, total in flagged:
            p = bad[0]
            other = p.j if p.i == k else p.i
            residual = p.residual if p.i == k else -p.residual
            lines.append(
                f"  {names[k]}: {len(bad)} of {total} overlapping exposures disagree; worst "
                f"{residual:+.4g} ({p.nsigma:.1f} sigma) against {names[other]}"
            )
        log.warning(
            "%d of %d overlapping exposure pairs differ by more than %g sigma after level matching: "
            "the solution is not consistent with these overlaps (an exposure whose background is not "
            "a level/plane, bad data, or misalignment), most affected first:\n%s",
            len(check.inconsistent()),
            len(pairs),
            nsigma,
            "\n".join(lines),
        )
    return check
