"""What an exposure's JWST metadata says about it: visit, exposure, time, Lyot region.

Every rule that reads these keywords lives here, once.  Each function takes
the exposure's metadata either as a flat dictionary
(``{"meta.observation.visit_number": "001", ...}``, as
``ModelLibrary.read_metadata`` returns it) or as a data model (the same
paths read as attributes); a keyword that is missing reads as ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

from .regions import miri_lyot_region

__all__ = [
    "EXPOSURE_KEYWORDS",
    "VISIT_KEYWORDS",
    "exposure_key",
    "is_miri_imager",
    "keyword",
    "keyword_text",
    "lyot_region",
    "mid_time",
    "plain_number",
    "start_time",
    "visit_key",
]

#: Keywords naming an exposure's visit: program, observation and visit number.
VISIT_KEYWORDS = (
    "meta.observation.program_number",
    "meta.observation.observation_number",
    "meta.observation.visit_number",
)
#: Keywords jwst builds an exposure's ``group_id`` from (the detectors read out together).
EXPOSURE_KEYWORDS = (
    *VISIT_KEYWORDS,
    "meta.observation.visit_group",
    "meta.observation.sequence_id",
    "meta.observation.activity_id",
    "meta.observation.exposure_number",
)


def keyword(meta: Mapping | Any, path: str) -> Any:
    """The value of a metadata keyword (a flat ``meta.`` path), or None when it is missing.

    Parameters
    ----------
    meta : mapping or data model
        Flat metadata, or a data model whose attributes are read.
    path : str
        Flat keyword path, e.g. ``'meta.instrument.name'``.
    """
    if isinstance(meta, Mapping):
        return meta.get(path)
    node = meta
    for name in path.split("."):
        node = getattr(node, name, None)
        if node is None:
            return None
    return node


def keyword_text(meta: Mapping | Any, path: str) -> str:
    """A keyword's value as text; ``''`` when it is missing."""
    value = keyword(meta, path)
    return "" if value is None else str(value)


def plain_number(value: Any) -> str:
    """A metadata number as text without leading zeros (``'001'`` and ``1`` both give ``'1'``).

    ``None`` gives ``''``; text that is not a whole number is returned stripped.
    """
    if value is None:
        return ""
    text = str(value).strip()
    return (text.lstrip("0") or "0") if text.isdigit() else text


def visit_key(meta: Mapping | Any) -> tuple[str, str, str]:
    """``(program, observation, visit)`` of an exposure: the same for every exposure of one visit.

    Numbers are written without leading zeros (:func:`plain_number`), so
    that headers, tables and file names that pad them differently agree;
    a missing keyword gives ``''``.  A mosaic tile is a visit.
    """
    program, observation, visit = (plain_number(keyword(meta, k)) for k in VISIT_KEYWORDS)
    return program, observation, visit


def exposure_key(meta: Mapping | Any, index: int) -> Hashable:
    """A key equal for the detectors read out together in one exposure (jwst's ``group_id``).

    The recorded ``meta.group_id`` when there is one; else the keywords it
    is built from (:data:`EXPOSURE_KEYWORDS`); an exposure lacking any of
    them is an exposure of its own, ``('exposure', index)``, as jwst's
    ``ModelLibrary`` makes it.

    Parameters
    ----------
    meta : mapping or data model
        The exposure's metadata.
    index : int
        Its position among the exposures of the run.
    """
    group_id = keyword(meta, "meta.group_id")
    if group_id:
        return str(group_id)
    values = [keyword(meta, k) for k in EXPOSURE_KEYWORDS]
    if any(v is None for v in values):
        return ("exposure", index)
    return tuple(plain_number(v) for v in values)


def _mjd(value: Any) -> float | None:
    try:
        t = float(value)
    except (TypeError, ValueError):
        return None
    return t if math.isfinite(t) else None


def start_time(meta: Mapping | Any) -> float | None:
    """Exposure start (MJD, ``meta.exposure.start_time``), or None when not recorded."""
    return _mjd(keyword(meta, "meta.exposure.start_time"))


def mid_time(meta: Mapping | Any) -> float | None:
    """Mid-exposure time (MJD, ``meta.exposure.mid_time``), else the start; None when neither is recorded."""
    t = _mjd(keyword(meta, "meta.exposure.mid_time"))
    return t if t is not None else start_time(meta)


def is_miri_imager(meta: Mapping | Any) -> bool:
    """True for an exposure of the MIRI imager (detector ``MIRIMAGE``)."""
    return (
        keyword_text(meta, "meta.instrument.name").upper() == "MIRI"
        and keyword_text(meta, "meta.instrument.detector").upper() == "MIRIMAGE"
    )


def lyot_region(meta: Mapping | Any, shape: tuple[int, int] | None = None) -> tuple[slice, slice] | None:
    """Array slices of the Lyot coronagraph in a MIRI imager exposure; None for others.

    Parameters
    ----------
    meta : mapping or data model
        The exposure's metadata (instrument, detector and subarray keywords).
    shape : tuple of int, optional
        The image's shape ``(ny, nx)``; default: the subarray size recorded
        in the metadata.

    Returns
    -------
    tuple of slice or None
        ``(rows, columns)`` (see
        :func:`~jwst_skymatch_plus.core.regions.miri_lyot_region`), or None
        when the exposure is not a MIRI imager one or its subarray misses the
        coronagraph.

    Raises
    ------
    ValueError
        For a MIRI imager exposure whose size is neither given nor recorded.
    """
    if not is_miri_imager(meta):
        return None
    if shape is None:
        size = [keyword(meta, f"meta.subarray.{k}") for k in ("ysize", "xsize")]
        if None in size:
            raise ValueError(
                f"{keyword(meta, 'meta.filename') or 'a MIRI imager exposure'}: no subarray size "
                "(meta.subarray.xsize/ysize) to place the Lyot coronagraph in"
            )
        shape = (int(size[0]), int(size[1]))
    return miri_lyot_region(
        shape,
        xstart=int(keyword(meta, "meta.subarray.xstart") or 1),
        ystart=int(keyword(meta, "meta.subarray.ystart") or 1),
        full_frame=(keyword_text(meta, "meta.subarray.name") or "FULL").upper() == "FULL",
    )
