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

The helper other steps should use for the times is :func:`background_times`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BGR_CHECK_ALIASES",
    "BGR_CHECK_TYPES",
    "BackgroundRule",
    "Exposure",
    "background_times",
    "classify_exposures",
    "format_times",
    "load_association",
]

log = logging.getLogger(__name__)

#: Rules for recognising background observations (see the module docs).
BGR_CHECK_TYPES = ("asn_exptype", "name", "keyword", "target_name", "parallel")

#: PJPipe's names for the same rules, accepted so its configurations carry over.
BGR_CHECK_ALIASES = {"parallel_off": "parallel", "check_in_name": "name", "filename": "name"}

#: Association member types a level-3 imaging run reads; others (target
#: acquisitions, ...) are ignored, as calwebb_image3 does.
RUN_EXPTYPES = ("science", "background")

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
    mid_time: float | None
    meta: dict = field(default_factory=dict, compare=False, repr=False)  # flat metadata, as read

    def time(self, kind: str = "mid") -> float | None:
        """Start or mid time (MJD); mid falls back to start when unknown."""
        if kind == "start":
            return self.start_time
        if kind != "mid":
            raise ValueError(f"kind must be 'mid' or 'start', not {kind!r}")
        return self.mid_time if self.mid_time is not None else self.start_time


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


def _float_or_none(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if out == out else None  # NaN -> None


def load_association(path: str | os.PathLike) -> dict:
    """Read an association file (JSON or YAML) into a plain dictionary.

    Raises
    ------
    OSError
        If the file is not a valid association.
    """
    from jwst.associations import AssociationNotValidError, load_asn

    try:
        with Path(path).open() as handle:
            asn = load_asn(handle)
    except AssociationNotValidError as exc:
        raise OSError(f"Cannot read association {path}: {exc}") from exc
    return dict(asn)


def is_association_path(item: Any) -> bool:
    """True for a path to an association file (``.json``, ``.yaml``, ``.yml``)."""
    return isinstance(item, (str, os.PathLike)) and Path(item).suffix.lower() in (".json", ".yaml", ".yml")


def _model_meta(model) -> dict:
    return dict(model.get_crds_parameters())


def _file_meta(path: str | os.PathLike) -> dict:
    # A file that cannot be read is named with its problem (missing, not
    # FITS, truncated...), not left to fail deep in astropy.
    from .steps._library import read_exposure_metadata

    return read_exposure_metadata(path)


def _exposure(filename: str, exptype: str, meta: Mapping, rule: BackgroundRule) -> Exposure:
    reason = rule.reason(filename, meta, exptype)
    return Exposure(
        filename=Path(str(filename)).name,
        exptype=str(exptype).lower(),
        background=reason is not None,
        reason=reason,
        start_time=_float_or_none(meta.get("meta.exposure.start_time")),
        mid_time=_float_or_none(meta.get("meta.exposure.mid_time")),
        meta=dict(meta),
    )


def association_members(asn: Mapping, asn_dir: str | os.PathLike) -> list[tuple[dict, str]]:
    """Members of an association's first product that a level-3 run reads, with their paths.

    Returns
    -------
    list of (dict, str)
        The member entry and the absolute path of its file.
    """
    members = asn["products"][0]["members"]
    out = []
    for member in members:
        if str(member.get("exptype", "science")).lower() not in RUN_EXPTYPES:
            continue
        path = Path(member["expname"])
        if not path.is_absolute():
            path = Path(asn_dir) / path
        out.append((dict(member), os.fspath(path.resolve())))
    return out


def classify_exposures(input_data: Any, rule: BackgroundRule | None = None) -> list[Exposure]:
    """Which exposures of an input are background observations.

    Parameters
    ----------
    input_data : str, Path, dict, list, ModelLibrary or DataModel
        An association file or dictionary (its science and background
        members), a list of models or file names, a ``ModelLibrary``, or one
        model or file.
    rule : BackgroundRule, optional
        The rule (default: association exptype only).

    Returns
    -------
    list of Exposure
        One entry per exposure, in input order.
    """
    rule = rule or BackgroundRule()
    return [_exposure(name, exptype, meta(), rule) for name, exptype, meta in _iter_inputs(input_data)]


def _iter_inputs(input_data: Any):
    """Yield ``(file name, exptype, metadata loader)`` for every exposure of an input."""
    from jwst.datamodels import ModelLibrary
    from stdatamodels.jwst.datamodels import JwstDataModel

    if isinstance(input_data, ModelLibrary):
        exptypes = input_data.exptypes
        members = input_data.asn["products"][0]["members"]
        with input_data:
            metas = [dict(input_data.read_metadata(i)) for i in range(len(input_data))]
        for member, exptype, meta in zip(members, exptypes, metas, strict=True):
            yield member["expname"], exptype, (lambda m=meta: m)
        return
    if is_association_path(input_data) or isinstance(input_data, Mapping):
        if isinstance(input_data, Mapping):
            asn, asn_dir = dict(input_data), os.getcwd()
        else:
            asn, asn_dir = load_association(input_data), Path(input_data).resolve().parent
        for member, path in association_members(asn, asn_dir):
            yield path, member.get("exptype", "science"), (lambda p=path: _file_meta(p))
        return
    items = [input_data] if isinstance(input_data, (str, os.PathLike, JwstDataModel)) else list(input_data)
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            yield os.fspath(item), "science", (lambda p=item: _file_meta(p))
        else:
            exptype = getattr(item.meta.asn, "exptype", None) or "science"
            yield item.meta.filename or "model", exptype, (lambda m=item: _model_meta(m))


def background_times(input_data: Any, rule: BackgroundRule | None = None, kind: str = "mid") -> list[float]:
    """Times (MJD) of the background observations of an input.

    This is the helper for steps that use background observations as a time
    reference (``reference='closest_to_background'`` of PixelSkyMatchStep,
    and level matching).

    Parameters
    ----------
    input_data : str, Path, dict, list, ModelLibrary, DataModel or sequence of Exposure
        Anything :func:`classify_exposures` accepts, or its result.
    rule : BackgroundRule, optional
        How background observations are recognised (default: association
        exptype ``background``).
    kind : {'mid', 'start'}
        Exposure mid times (``meta.exposure.mid_time``, falling back to the
        start time) or start times (``meta.exposure.start_time``).

    Returns
    -------
    list of float
        Sorted times; exposures without a recorded time are skipped with a
        warning.
    """
    if isinstance(input_data, Sequence) and input_data and isinstance(input_data[0], Exposure):
        exposures = list(input_data)
    else:
        exposures = classify_exposures(input_data, rule)
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
