"""Detector regions that should not take part in matching."""

from __future__ import annotations

__all__ = ["MIRI_FULL_SHAPE", "describe_region", "miri_lyot_region", "region_misses"]

#: Shape (rows, columns) of the MIRI imager full frame.
MIRI_FULL_SHAPE = (1024, 1032)
# The Lyot coronagraph occupies the upper left of the full frame: rows from 735
# up and columns below 290 (the outline the community uses to cut it out).
_LYOT_ROW0 = 735
_LYOT_COL1 = 290


def miri_lyot_region(
    shape: tuple[int, int], xstart: int = 1, ystart: int = 1, full_frame: bool = True
) -> tuple[slice, slice] | None:
    """Array slices of the MIRI Lyot coronagraph in an image of ``shape``.

    Parameters
    ----------
    shape : tuple of int
        Image shape ``(ny, nx)``.
    xstart, ystart : int
        One-based full-frame position of the image's first pixel (subarrays).
    full_frame : bool
        The image is a full-frame readout.  A full-frame image whose shape
        differs from 1024 x 1032 (a scaled simulation) gets the region scaled
        to its shape.

    Returns
    -------
    tuple of slice or None
        ``(rows, columns)``, or ``None`` when the region misses the image.

    """
    ny, nx = shape
    if full_frame:
        r0 = round(_LYOT_ROW0 * ny / MIRI_FULL_SHAPE[0])
        c1 = round(_LYOT_COL1 * nx / MIRI_FULL_SHAPE[1])
        return slice(r0, ny), slice(0, c1)
    r0 = max(_LYOT_ROW0 - (ystart - 1), 0)
    c1 = min(_LYOT_COL1 - (xstart - 1), nx)
    if r0 >= ny or c1 <= 0:
        return None
    return slice(r0, ny), slice(0, c1)


def region_misses(region: tuple[slice, slice], shape: tuple[int, int]) -> bool:
    """True when a region (array slices) selects no pixel of an image of ``shape``.

    Parameters
    ----------
    region : tuple of slice
        ``(rows, columns)``, numpy slices (negative values count from the end).
    shape : tuple of int
        Image shape ``(ny, nx)``.

    """
    return any(len(range(*axis.indices(n))) == 0 for axis, n in zip(region, shape, strict=True))


def describe_region(region: tuple[slice, slice]) -> str:
    """A region written back as ``'rows,cols'`` numpy slices, e.g. ``'735:,:290'``."""

    def text(axis: slice) -> str:
        start = "" if axis.start is None else str(axis.start)
        stop = "" if axis.stop is None else str(axis.stop)
        return f"{start}:{stop}"

    return ",".join(text(axis) for axis in region)
