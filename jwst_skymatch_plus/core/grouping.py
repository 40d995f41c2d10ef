"""Which exposures share one sky level.

Grouping works on flat metadata dictionaries (``{"meta.observation.visit_number":
"001", ...}``, as returned by ``ModelLibrary.read_metadata``), so it runs
without opening any data.

A grouping is a ``+``-joined list of tokens:

``visit``
    Program, observation and visit number (the default: the exposures of one
    visit share a pointing sequence and overlap heavily).
``exposure``
    Every exposure file on its own.
``group_id``
    jwst's exposure group (program, observation, visit, visit group, sequence,
    activity and exposure number): the detectors read out together, e.g. the
    NIRCam short-wavelength chips of one exposure.
``module``, ``detector``, ``filter``, ``channel``
    Split further by that instrument keyword (e.g. ``visit+module`` keeps the
    NIRCam A and B modules apart).
``meta.<path>``
    Any metadata keyword, e.g. ``meta.observation.visit_group``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from .keys import EXPOSURE_KEYWORDS, exposure_key, keyword_text, visit_key

__all__ = [
    "GROUPING_TOKENS",
    "INSTRUMENT_FAMILIES",
    "exposure_label",
    "group_exposures",
    "group_key",
    "instrument_family",
    "nircam_module",
    "parse_families",
    "parse_grouping",
    "regrouped_id",
    "sky_units",
]

_INSTRUMENT_KEYS = {
    "module": "meta.instrument.module",
    "detector": "meta.instrument.detector",
    "filter": "meta.instrument.filter",
    "channel": "meta.instrument.channel",
}
GROUPING_TOKENS = ("visit", "exposure", "group_id", *_INSTRUMENT_KEYS)

log = logging.getLogger(__name__)


def parse_grouping(grouping: str) -> tuple[str, ...]:
    """Split and validate a grouping specification.

    Raises
    ------
    ValueError
        For an unknown token.

    """
    tokens = tuple(t.strip() for t in str(grouping).split("+") if t.strip())
    if not tokens:
        raise ValueError("grouping is empty")
    for t in tokens:
        if t not in GROUPING_TOKENS and not t.startswith("meta."):
            raise ValueError(
                f"Unknown grouping token {t!r}; use {', '.join(GROUPING_TOKENS)} or a 'meta.' keyword path"
            )
    return tokens


def group_key(meta: Mapping, grouping: str | Sequence[str], index: int) -> tuple:
    """Key that is equal for exposures of the same group.

    Parameters
    ----------
    meta : mapping
        Flat metadata of one exposure.
    grouping : str or sequence of str
        Grouping specification (see module docs).
    index : int
        Position of the exposure (used by the ``exposure`` token).

    """
    tokens = parse_grouping(grouping) if isinstance(grouping, str) else tuple(grouping)
    key: list = []
    for t in tokens:
        if t == "visit":
            key.extend(visit_key(meta))
        elif t == "exposure":
            key.append(("exposure", index))
        elif t == "group_id":
            key.append(exposure_key(meta, index))
        elif t in _INSTRUMENT_KEYS:
            key.append(keyword_text(meta, _INSTRUMENT_KEYS[t]))
        else:
            key.append(keyword_text(meta, t))
    return tuple(key)


def group_exposures(metas: Sequence[Mapping], grouping: str = "visit") -> list[list[int]]:
    """Partition exposures into groups, in order of first appearance.

    Parameters
    ----------
    metas : sequence of mapping
        Flat metadata per exposure.
    grouping : str
        Grouping specification.

    Returns
    -------
    list of list of int
        Exposure indices of each group.

    Raises
    ------
    ValueError
        For an unknown token, or a ``meta.`` keyword that no exposure has
        (a typo would otherwise put every exposure into one group).  A
        keyword that only some exposures lack is warned about.

    """
    tokens = parse_grouping(grouping)
    for t in tokens:
        if not t.startswith("meta.") or not metas:
            continue
        missing = [k for k, meta in enumerate(metas) if meta.get(t) is None]
        if len(missing) == len(metas):
            raise ValueError(
                f"grouping={grouping!r}: no exposure has the metadata keyword {t!r} (a typo?); "
                "give a flat keyword path such as 'meta.observation.visit_group'"
            )
        if missing:
            log.warning(
                "grouping keyword %r is missing from %d of %d exposures (e.g. %s); they are "
                "grouped as if it were empty.",
                t,
                len(missing),
                len(metas),
                exposure_label(metas[missing[0]], missing[0]),
            )
    groups: dict[tuple, list[int]] = {}
    for k, meta in enumerate(metas):
        groups.setdefault(group_key(meta, tokens, k), []).append(k)
    return list(groups.values())


def exposure_label(meta: Mapping, index: int) -> str:
    """Short human-readable name of an exposure (its file name when known)."""
    name = meta.get("meta.filename")
    return str(name) if name else f"exposure {index}"


#: Instrument families the pipeline's grouping switches name.
INSTRUMENT_FAMILIES = ("miri", "nircam_long", "nircam_short")


def instrument_family(meta: Mapping | Any) -> str | None:
    """``'miri'``, ``'nircam_long'``, ``'nircam_short'``, or None for other instruments.

    ``meta`` is flat metadata or a data model (see :mod:`~jwst_skymatch_plus.core.keys`).
    """
    instrument = keyword_text(meta, "meta.instrument.name").upper()
    if instrument == "MIRI":
        return "miri"
    if instrument == "NIRCAM":
        detector = keyword_text(meta, "meta.instrument.detector").upper()
        return "nircam_long" if detector.endswith("LONG") else "nircam_short"
    return None


def nircam_module(meta: Mapping | Any) -> str:
    """``'A'`` or ``'B'`` for a NIRCam exposure (its module keyword, else its detector name), else ``''``.

    ``meta`` is flat metadata or a data model (see :mod:`~jwst_skymatch_plus.core.keys`).
    """
    if keyword_text(meta, "meta.instrument.name").upper() != "NIRCAM":
        return ""
    module = keyword_text(meta, "meta.instrument.module").upper()
    if module in ("A", "B"):
        return module
    detector = keyword_text(meta, "meta.instrument.detector").upper()
    return detector[3] if detector.startswith("NRC") and detector[3:4] in ("A", "B") else ""


def parse_families(value: str | Sequence[str] | None, what: str) -> frozenset[str]:
    """Instrument families from a comma-separated string or a list.

    Raises
    ------
    ValueError
        For a name that is not in :data:`INSTRUMENT_FAMILIES`.

    """
    if value is None:
        return frozenset()
    items = value.split(",") if isinstance(value, str) else list(value)
    families = frozenset(str(v).strip().lower() for v in items if str(v).strip())
    unknown = sorted(families - set(INSTRUMENT_FAMILIES))
    if unknown:
        raise ValueError(
            f"{what}: unknown instrument family {', '.join(unknown)}; use {', '.join(INSTRUMENT_FAMILIES)}"
        )
    return families


def regrouped_id(
    meta: Mapping,
    *,
    group_dithers: bool = False,
    split_modules: bool = False,
    split_short_chips: bool = False,
) -> str:
    """A jwst-style ``group_id`` with dithers joined or detectors split.

    jwst's own ``group_id`` puts the detectors read out together (one
    exposure) into one group.  ``group_dithers`` drops the activity and
    exposure numbers, so all exposures of a visit (its dithers) share one
    group; ``split_modules`` adds the NIRCam module and ``split_short_chips``
    the NIRCam short-wavelength detector, so those are aligned on their own.

    Parameters
    ----------
    meta : mapping
        Flat metadata of one exposure.
    group_dithers, split_modules, split_short_chips : bool
        See above.

    """
    keys = EXPOSURE_KEYWORDS[:5] if group_dithers else EXPOSURE_KEYWORDS
    gid = "jw" + "_".join(keyword_text(meta, k) for k in keys)
    family = instrument_family(meta)
    if split_modules and family in ("nircam_long", "nircam_short"):
        gid += "_" + nircam_module(meta)
    if split_short_chips and family == "nircam_short":
        gid += "_" + keyword_text(meta, "meta.instrument.detector")
    return gid


def sky_units(
    metas: Sequence[Mapping], grouping: str = "visit", match_within_groups: bool = True
) -> tuple[list[list[int]], list[int] | None]:
    """Sets of exposures that share one sky level, and their fallback groups.

    Exposures that share jwst's ``group_id`` (the detectors read out together
    in one exposure) always share one level, as in ``SkyMatchStep``; the
    ``module`` and ``detector`` tokens of ``grouping`` split them further.

    With ``match_within_groups`` each such set is matched on its own and the
    groups of ``grouping`` (visits by default) only serve as fallback: a set
    that no overlap ties to anything takes its group's level.  Without it,
    every group of ``grouping`` is one level (merged with the ``group_id``
    sets it touches).

    Parameters
    ----------
    metas : sequence of mapping
        Flat metadata per exposure.
    grouping : str
        Grouping specification (see module docs).
    match_within_groups : bool
        See above.

    Returns
    -------
    units : list of list of int
        Exposure indices of each set that shares one level.
    fallback : list of int or None
        Per unit, the index of its group of ``grouping`` (None when groups
        are units themselves).
    """
    tokens = parse_grouping(grouping)
    split = [t for t in tokens if t in ("module", "detector")]
    units = group_exposures(metas, "+".join(["group_id", *split]))
    groups = group_exposures(metas, grouping)
    group_of = {k: g for g, members in enumerate(groups) for k in members}
    if match_within_groups:
        return units, [group_of[members[0]] for members in units]
    # Union of the two partitions: a group_id set spanning groups joins them.
    parent = list(range(len(groups)))

    def root(g: int) -> int:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    for members in units:
        first = root(group_of[members[0]])
        for k in members[1:]:
            other = root(group_of[k])
            if other != first:
                parent[other] = first
    merged: dict[int, list[int]] = {}
    for k in range(len(metas)):
        merged.setdefault(root(group_of[k]), []).append(k)
    return list(merged.values()), None
