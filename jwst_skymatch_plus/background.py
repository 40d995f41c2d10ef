"""Recognising background observations among the exposures of a level-3 run.

A *background observation* is an exposure of empty sky taken to measure the
background (a dedicated background visit, or an off-target pointing such as
a coordinated parallel that misses the target).  ``calwebb_image3_plus``
leaves them out of the science mosaic by default, can process them like
science, and passes their times to the steps that use them as a time
reference for the sky level (``reference='closest_to_background'``).

Which exposures are background observations is decided by a
:class:`BackgroundRule`:

``'asn_exptype'``
    Members the association lists with ``"exptype": "background"``.
``'name'``
    File names containing ``name`` (case-insensitive), e.g. ``'off'``.
``'keyword'``
    A metadata keyword equal to a value, by default the observatory's own
    flag ``meta.observation.bkgdtarg`` (FITS ``BKGDTARG``, "Background
    target") equal to true.
``'target_name'``
    The proposer's target name (``meta.target.proposer_name``, FITS
    ``TARGPROP``) containing ``name`` (case-insensitive), for programs that
    name their background pointings e.g. ``NGC1234-OFF``.
``'parallel'``
    Exposures taken in a parallel sequence (``meta.observation.sequence_id``,
    FITS ``SEQ_ID``, other than ``'1'``; the digit after the visit group in
    JWST file names), i.e. coordinated parallels that land off the target.

Members listed as ``background`` in the association are background
observations under every rule: the association is explicit.  The other rules
add exposures the association lists as science.

This module holds the rules, applied to metadata already read;
:func:`jwst_skymatch_plus.inputs.open_exposures` reads the input once and
classifies its exposures with them.  :func:`background_times` gives the
times of the background observations found.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .core.keys import mid_time, start_time

__all__ = [
    "BGR_CHECK_ALIASES",
    "BGR_CHECK_TYPES",
    "BackgroundRule",
    "Exposure",
    "background_times",
    "classify",
    "format_times",
]

log = logging.getLogger(__name__)

#: Rules for recognising background observations (see the module docs).
BGR_CHECK_TYPES = ("asn_exptype", "name", "keyword", "target_name", "parallel")

#: PJPipe's names for the same rules, accepted so its configurations carry over.
BGR_CHECK_ALIASES = {"parallel_off": "parallel", "check_in_name": "name", "filename": "name"}

_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


@dataclass(frozen=True)
class BackgroundRule:
    """How background observations are recognised.

    Parameters
    ----------
    check_type : str
        One of :data:`BGR_CHECK_TYPES`.
    name : str
        Substring for ``'name'`` and ``'target_name'`` (case-insensitive).
    keyword : str
        Flat metadata path for ``'keyword'`` (``meta.`` prefix optional).
    value : str
        Value ``keyword`` must have for ``'keyword'``; compared as booleans
        when both sides read as booleans, as numbers when both are numbers,
        else as case-insensitive strings.
    """

    check_type: str = "asn_exptype"
    name: str = "off"
    keyword: str = "meta.observation.bkgdtarg"
    value: str = "true"

    def __post_init__(self) -> None:
        if self.check_type in BGR_CHECK_ALIASES:
            object.__setattr__(self, "check_type", BGR_CHECK_ALIASES[self.check_type])
        if self.check_type not in BGR_CHECK_TYPES:
            raise ValueError(
                f"Unknown background rule {self.check_type!r}; choose from {', '.join(BGR_CHECK_TYPES)}"
            )
        if self.check_type in ("name", "target_name") and not str(self.name or "").strip():
            raise ValueError(f"The background rule {self.check_type!r} needs a non-empty name to match")
        if self.check_type == "keyword" and not str(self.keyword or "").strip():
            raise ValueError("The background rule 'keyword' needs a metadata keyword path")

    @property
    def keyword_path(self) -> str:
        """The keyword as a flat metadata path starting with ``meta.``."""
        key = str(self.keyword).strip()
        return key if key.startswith("meta.") else f"meta.{key}"

    def describe(self) -> str:
        """One-line description for logs and metadata."""
        if self.check_type == "name":
            return f"file name contains {self.name!r}"
        if self.check_type == "target_name":
            return f"target name contains {self.name!r}"
        if self.check_type == "keyword":
            return f"{self.keyword_path} == {self.value!r}"
        if self.check_type == "parallel":
            return "parallel sequence (meta.observation.sequence_id != '1')"
        return "association exptype 'background'"

    def reason(self, filename: str, meta: Mapping[str, Any], exptype: str) -> str | None:
        """Why an exposure is a background observation, or None if it is not.

        Parameters
        ----------
        filename : str
            The exposure's file name.
        meta : mapping
            Flat metadata (``{"meta.observation.bkgdtarg": True, ...}``).
        exptype : str
            The association member type (``'science'``, ``'background'``).
        """
        if str(exptype).lower() == "background":
            return "association exptype 'background'"
        if self.check_type == "asn_exptype":
            return None
        if self.check_type == "name":
            hit = self.name.lower() in Path(str(filename)).name.lower()
        elif self.check_type == "target_name":
            target = meta.get("meta.target.proposer_name") or ""
            hit = self.name.lower() in str(target).lower()
        elif self.check_type == "keyword":
            hit = _same_value(meta.get(self.keyword_path), self.value)
        else:  # parallel
            seq = meta.get("meta.observation.sequence_id")
            if seq is None:
                seq = _sequence_from_filename(filename)
            hit = seq is not None and str(seq).strip() not in ("", "1")
        return self.describe() if hit else None


@dataclass(frozen=True)
class Exposure:
    """One exposure of a run and whether it is a background observation."""

    filename: str
    exptype: str
    background: bool
    reason: str | None
    start_time: float | None
    mid_time: float | None  # the start when the mid time is not recorded
    meta: dict = field(default_factory=dict, compare=False, repr=False)  # flat metadata, as read

    def time(self, kind: str = "mid") -> float | None:
        """Start or mid time (MJD); mid falls back to start when unknown."""
        if kind == "start":
            return self.start_time
        if kind != "mid":
            raise ValueError(f"kind must be 'mid' or 'start', not {kind!r}")
        return self.mid_time


def _same_value(actual: Any, wanted: str) -> bool:
    if actual is None:
        return False
    a, w = str(actual).strip().lower(), str(wanted).strip().lower()
    if a in _TRUE | _FALSE and w in _TRUE | _FALSE:
        return (a in _TRUE) == (w in _TRUE)
    try:
        return float(a) == float(w)
    except ValueError:
        return a == w


def _sequence_from_filename(filename: str) -> str | None:
    # jwPPPPPOOOVVV_GGSAA_EEEEE_...: S (parallel sequence) follows the visit group GG.
    parts = Path(str(filename)).name.split("_")
    if len(parts) > 1 and parts[0].startswith("jw") and len(parts[1]) == 5 and parts[1].isdigit():
        return parts[1][2]
    return None


def classify(filename: str, exptype: str, meta: Mapping[str, Any], rule: BackgroundRule) -> Exposure:
    """Apply a rule to one exposure whose metadata has been read.

    Parameters
    ----------
    filename : str
        The exposure's file name (or path).
    exptype : str
        Its association member type (``'science'``, ``'background'``).
    meta : mapping
        Its flat metadata.
    rule : BackgroundRule
        How background observations are recognised.

    Returns
    -------
    Exposure
    """
    reason = rule.reason(filename, meta, exptype)
    return Exposure(
        filename=Path(str(filename)).name,
        exptype=str(exptype).lower(),
        background=reason is not None,
        reason=reason,
        start_time=start_time(meta),
        mid_time=mid_time(meta),
        meta=dict(meta),
    )


def background_times(exposures: Sequence[Exposure], kind: str = "mid") -> list[float]:
    """Times (MJD) of the background observations among classified exposures.

    The time reference of ``reference='closest_to_background'``
    (PixelSkyMatchStep and LevelMatchStep).

    Parameters
    ----------
    exposures : sequence of Exposure
        Classified exposures (:func:`classify`,
        :func:`jwst_skymatch_plus.inputs.read_exposures`).
    kind : {'mid', 'start'}
        Exposure mid times (``meta.exposure.mid_time``, falling back to the
        start time) or start times (``meta.exposure.start_time``).

    Returns
    -------
    list of float
        Sorted times; exposures without a recorded time are skipped with a
        warning.
    """
    times = []
    for exp in exposures:
        if not exp.background:
            continue
        t = exp.time(kind)
        if t is None:
            log.warning("Background observation %s has no exposure time in MJD; skipped.", exp.filename)
            continue
        times.append(t)
    return sorted(times)


def format_times(times: Sequence[float]) -> str:
    """Comma-separated MJDs for a step's ``background_times`` string parameter.

    Eight decimals (under a millisecond) so that nothing is lost in the string.
    """
    return ",".join(f"{t:.8f}" for t in times)
