"""One common pixel grid for a whole mosaic, and boxes on it.

Every exposure and group is resampled onto the same tangent-plane grid so that
two groups can be differenced pixel by pixel.  Nothing ever allocates the whole
grid: each group lives in its own bounding box (:class:`BBox`) and pairs are
compared inside the intersection of two boxes (:func:`overlap_bbox`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS

__all__ = ["MAX_BOX_PIXELS", "BBox", "SkyGrid", "footprint_of", "native_pixel_scale", "overlap_bbox"]

#: Largest grid box one exposure may cover (pixels).  Every exposure and group
#: is resampled into arrays of its box (several float32/float64 arrays at
#: once): 2**28 pixels is about 1 GB per float32 array.
MAX_BOX_PIXELS = 2**28


@dataclass(frozen=True)
class BBox:
    """A half-open box of grid pixels: columns ``x0:x1``, rows ``y0:y1``."""

    x0: int
    x1: int
    y0: int
    y1: int

    @property
    def shape(self) -> tuple[int, int]:
        """Array shape ``(ny, nx)`` of the box."""
        return (max(self.y1 - self.y0, 0), max(self.x1 - self.x0, 0))

    @property
    def size(self) -> int:
        """Number of pixels in the box."""
        ny, nx = self.shape
        return ny * nx

    @property
    def is_empty(self) -> bool:
        """True when the box holds no pixel."""
        return self.size == 0

    def slices_in(self, outer: BBox) -> tuple[slice, slice]:
        """Array slices selecting this box inside an array that covers ``outer``."""
        return (
            slice(self.y0 - outer.y0, self.y1 - outer.y0),
            slice(self.x0 - outer.x0, self.x1 - outer.x0),
        )

    def union(self, other: BBox) -> BBox:
        """Smallest box containing both boxes."""
        if self.is_empty:
            return other
        if other.is_empty:
            return self
        return BBox(
            min(self.x0, other.x0), max(self.x1, other.x1), min(self.y0, other.y0), max(self.y1, other.y1)
        )


def overlap_bbox(a: BBox, b: BBox) -> BBox:
    """Intersection of two boxes (possibly empty)."""
    x0, x1 = max(a.x0, b.x0), min(a.x1, b.x1)
    y0, y1 = max(a.y0, b.y0), min(a.y1, b.y1)
    if x1 <= x0 or y1 <= y0:
        return BBox(0, 0, 0, 0)
    return BBox(x0, x1, y0, y1)


def footprint_of(wcs, shape: tuple[int, int], n_edge: int = 8) -> np.ndarray:
    """Sky positions (N, 2) along the edges of a detector.

    Points are taken along each edge, not only at the corners, so that a
    distorted detector's bulging edges are covered.

    Parameters
    ----------
    wcs : gwcs.WCS or object with ``pixel_to_world_values``
        Detector-to-sky transform.
    shape : tuple of int
        Detector array shape ``(ny, nx)``.
    n_edge : int
        Points per edge.

    """
    ny, nx = shape
    t = np.linspace(0.0, 1.0, n_edge, endpoint=False)
    x = np.concatenate([-0.5 + t * nx, np.full(n_edge, nx - 0.5), nx - 0.5 - t * nx, np.full(n_edge, -0.5)])
    y = np.concatenate([np.full(n_edge, -0.5), -0.5 + t * ny, np.full(n_edge, ny - 0.5), ny - 0.5 - t * ny])
    ra, dec = _pixel_to_world(wcs, x, y)
    return np.column_stack([ra, dec])


def _pixel_to_world(wcs, x, y):
    # gwcs bounding boxes would turn the edge points (at -0.5) into NaN on
    # some versions; evaluate the transform without it.
    if hasattr(wcs, "forward_transform"):
        return wcs.forward_transform(x, y)
    return wcs.pixel_to_world_values(x, y)


def native_pixel_scale(wcs, shape: tuple[int, int]) -> float:
    """Pixel scale (degrees) at the detector centre, from the local Jacobian."""
    ny, nx = shape
    xc, yc = (nx - 1) / 2.0, (ny - 1) / 2.0
    ra, dec = _pixel_to_world(wcs, np.array([xc, xc + 1.0, xc]), np.array([yc, yc, yc + 1.0]))
    cosd = math.cos(math.radians(dec[0]))
    dx = np.array([(ra[1] - ra[0]) * cosd, dec[1] - dec[0]])
    dy = np.array([(ra[2] - ra[0]) * cosd, dec[2] - dec[0]])
    return math.sqrt(abs(dx[0] * dy[1] - dx[1] * dy[0]))


def _y_axis_position_angle(wcs, shape: tuple[int, int]) -> float:
    """Position angle (deg, East of North) of a detector's +y axis at its centre."""
    ny, nx = shape
    xc, yc = (nx - 1) / 2.0, (ny - 1) / 2.0
    ra, dec = _pixel_to_world(wcs, np.array([xc, xc]), np.array([yc, yc + 10.0]))
    cosd = math.cos(math.radians(dec[0]))
    return math.degrees(math.atan2((ra[1] - ra[0]) * cosd, dec[1] - dec[0]))


class SkyGrid:
    """A north-agnostic tangent-plane (TAN) grid shared by all exposures.

    Parameters
    ----------
    crval : (float, float)
        Tangent point (RA, Dec) in degrees.
    pixel_scale : float
        Grid pixel size in degrees.
    rotation : float
        Position angle (deg, East of North) of the grid's +y axis.
    shape : (int, int)
        Grid shape ``(ny, nx)``; pixel ``(0, 0)`` is the lower-left corner.
    crpix : (float, float)
        Zero-based pixel position of the tangent point.

    """

    def __init__(
        self,
        crval: tuple[float, float],
        pixel_scale: float,
        rotation: float,
        shape: tuple[int, int],
        crpix: tuple[float, float],
    ) -> None:
        self.crval = (float(crval[0]), float(crval[1]))
        self.pixel_scale = float(pixel_scale)
        self.rotation = float(rotation)
        self.shape = (int(shape[0]), int(shape[1]))
        self.crpix = (float(crpix[0]), float(crpix[1]))
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = list(self.crval)
        w.wcs.crpix = [self.crpix[0] + 1.0, self.crpix[1] + 1.0]  # FITS is one-based
        th = math.radians(self.rotation)
        # Columns: East is -x for rotation 0 (standard sky orientation).
        w.wcs.cd = self.pixel_scale * np.array([[-math.cos(th), math.sin(th)], [math.sin(th), math.cos(th)]])
        w.pixel_shape = (self.shape[1], self.shape[0])
        self.wcs = w

    def __reduce__(self):
        # Rebuild from the defining numbers: pickling astropy's WCS goes
        # through a FITS header and rounds them, which would make results
        # from worker processes differ (slightly) from serial ones.
        return (type(self), (self.crval, self.pixel_scale, self.rotation, self.shape, self.crpix))

    # -- construction -----------------------------------------------------
    @classmethod
    def from_footprints(
        cls,
        footprints: Sequence[np.ndarray],
        pixel_scale: float,
        rotation: float = 0.0,
        margin: int = 2,
    ) -> SkyGrid:
        """Smallest grid at ``pixel_scale`` and ``rotation`` covering all footprints.

        Parameters
        ----------
        footprints : sequence of (N, 2) arrays
            Sky polygons (RA, Dec in degrees) of the exposures.
        pixel_scale : float
            Grid pixel size, degrees.
        rotation : float
            Position angle of the grid +y axis, degrees East of North.
        margin : int
            Extra pixels on every side.

        """
        if len(footprints) == 0:
            raise ValueError("Cannot build a sky grid without any footprint.")
        pts = np.concatenate([np.asarray(f, dtype=float) for f in footprints])
        if not np.all(np.isfinite(pts)):
            raise ValueError("Footprints contain non-finite sky coordinates.")
        # Tangent point: mean direction of all footprint vertices.
        ra, dec = np.radians(pts[:, 0]), np.radians(pts[:, 1])
        v = np.array([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)]).mean(axis=1)
        v /= np.linalg.norm(v)
        crval = (math.degrees(math.atan2(v[1], v[0])) % 360.0, math.degrees(math.asin(v[2])))
        probe = cls(crval, pixel_scale, rotation, (1, 1), (0.0, 0.0))
        x, y = probe.wcs.world_to_pixel_values(pts[:, 0], pts[:, 1])
        x0 = math.floor(np.min(x)) - margin
        y0 = math.floor(np.min(y)) - margin
        nx = math.ceil(np.max(x)) + margin - x0 + 1
        ny = math.ceil(np.max(y)) + margin - y0 + 1
        return cls(crval, pixel_scale, rotation, (ny, nx), (-x0, -y0))

    @classmethod
    def for_exposures(
        cls,
        wcs_list: Sequence,
        shapes: Sequence[tuple[int, int]],
        scale_factor: float = 1.0,
        rotation: float | None = None,
    ) -> SkyGrid:
        """Grid covering a set of exposures at ``scale_factor`` times their pixel size.

        The pixel scale is the median native scale of the exposures and the
        orientation follows the first exposure's detector axes (so that
        bounding boxes are tight) unless ``rotation`` is given.
        """
        if scale_factor <= 0:
            raise ValueError(f"grid scale factor must be positive, got {scale_factor}")
        scales = [native_pixel_scale(w, s) for w, s in zip(wcs_list, shapes, strict=True)]
        if rotation is None:
            rotation = _y_axis_position_angle(wcs_list[0], shapes[0])
        footprints = [footprint_of(w, s) for w, s in zip(wcs_list, shapes, strict=True)]
        grid = cls.from_footprints(footprints, float(np.median(scales)) * scale_factor, rotation)
        grid.check_size(footprints, scale_factor)
        return grid

    @classmethod
    def for_sources(cls, sources: Sequence, scale_factor: float = 1.0) -> SkyGrid:
        """Grid covering exposures described by footprints and pixel scales.

        ``sources`` are objects with ``sky_footprint()``, ``pixel_scale``,
        ``position_angle``, ``wcs`` and ``shape`` (see
        :class:`~jwst_skymatch_plus.core.matching.ExposureSource`); scales and
        orientation come from the WCS only where not given.
        """
        if scale_factor <= 0:
            raise ValueError(f"grid scale factor must be positive, got {scale_factor}")
        if len(sources) == 0:
            raise ValueError("Cannot build a sky grid without any exposure.")
        scales = [
            s.pixel_scale if s.pixel_scale is not None else native_pixel_scale(s.wcs, s.shape)
            for s in sources
        ]
        first = sources[0]
        rotation = (
            first.position_angle
            if first.position_angle is not None
            else _y_axis_position_angle(first.wcs, first.shape)
        )
        footprints = [s.sky_footprint() for s in sources]
        for k, (s, fp) in enumerate(zip(sources, footprints, strict=True)):
            if not np.all(np.isfinite(fp)):
                name = getattr(s, "name", None) or f"exposure {k}"
                raise ValueError(f"{name}: its footprint has no sky position (NaN); its WCS is unusable.")
        grid = cls.from_footprints(footprints, float(np.median(scales)) * scale_factor, rotation)
        grid.check_size(footprints, scale_factor)
        return grid

    def check_size(self, footprints: Sequence[np.ndarray], scale_factor: float | None = None) -> None:
        """Refuse a grid on which one exposure's box would not fit in memory.

        Nothing allocates the whole grid, but every exposure is resampled
        into arrays of its own box; the largest box is estimated from the
        footprints, before anything is allocated.

        Parameters
        ----------
        footprints : sequence of (N, 2) arrays
            The exposures' sky polygons.
        scale_factor : float, optional
            The grid pixel in native pixels (the steps' ``grid_scale``), for
            the message.

        Raises
        ------
        ValueError
            When one box exceeds :data:`MAX_BOX_PIXELS`, with the estimate.
        """
        largest = max((self.bbox_of(np.asarray(fp, dtype=float)).size for fp in footprints), default=0)
        if largest <= MAX_BOX_PIXELS:
            return
        setting = f"grid_scale={scale_factor:g}: " if scale_factor is not None else ""
        raise ValueError(
            f"{setting}a matching grid of {self.pixel_scale * 3600.0:.3g} arcsec pixels spans "
            f"{self.shape[1]} x {self.shape[0]} pixels; one exposure alone would cover about "
            f"{largest:.3g} pixels ({largest * 4 / 1e9:.3g} GB per float32 array), more than the "
            f"limit of {MAX_BOX_PIXELS:.3g}; choose a larger grid_scale (1 is the native pixel)."
        )

    # -- use ----------------------------------------------------------------
    def world_to_pixel(self, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Zero-based grid pixel coordinates of sky positions (degrees)."""
        return self.wcs.world_to_pixel_values(ra, dec)

    def pixel_to_world(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sky positions (degrees) of zero-based grid pixel coordinates."""
        return self.wcs.pixel_to_world_values(x, y)

    def bbox_of(self, footprint: np.ndarray, margin: int = 2) -> BBox:
        """Grid box enclosing a sky polygon, clipped to the grid."""
        x, y = self.world_to_pixel(footprint[:, 0], footprint[:, 1])
        ny, nx = self.shape
        x0 = max(math.floor(np.min(x)) - margin, 0)
        y0 = max(math.floor(np.min(y)) - margin, 0)
        x1 = min(math.ceil(np.max(x)) + margin + 1, nx)
        y1 = min(math.ceil(np.max(y)) + margin + 1, ny)
        if x1 <= x0 or y1 <= y0:
            return BBox(0, 0, 0, 0)
        return BBox(x0, x1, y0, y1)

    @property
    def center(self) -> tuple[float, float]:
        """Grid pixel coordinates of the grid centre (plane fits are relative to it)."""
        return ((self.shape[1] - 1) / 2.0, (self.shape[0] - 1) / 2.0)

    def __repr__(self) -> str:
        return (
            f"SkyGrid(crval={self.crval}, pixel_scale={self.pixel_scale * 3600:.4f}arcsec, "
            f"rotation={self.rotation:.2f}, shape={self.shape})"
        )
