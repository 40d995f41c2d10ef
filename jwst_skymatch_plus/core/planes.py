"""Express a background found on the common grid in a detector's own pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grid import SkyGrid

__all__ = ["DetectorPlane", "detector_plane"]


@dataclass(frozen=True)
class DetectorPlane:
    """``level + slope_x * (x - x_center) + slope_y * (y - y_center)`` in detector pixels."""

    level: float
    slope_x: float
    slope_y: float
    x_center: float
    y_center: float

    def evaluate(self, shape: tuple[int, int]) -> np.ndarray:
        """The plane on a detector array of ``shape`` (float32)."""
        ny, nx = shape
        x = np.arange(nx, dtype=np.float64)[None, :] - self.x_center
        y = np.arange(ny, dtype=np.float64)[:, None] - self.y_center
        return (self.level + self.slope_x * x + self.slope_y * y).astype(np.float32)

    @property
    def is_flat(self) -> bool:
        """True when both slopes are zero."""
        return self.slope_x == 0.0 and self.slope_y == 0.0

    def as_dict(self) -> dict[str, float]:
        """Plain-dict form (for metadata and tables)."""
        return {
            "level": float(self.level),
            "slope_x": float(self.slope_x),
            "slope_y": float(self.slope_y),
            "x_center": float(self.x_center),
            "y_center": float(self.y_center),
        }


def detector_plane(
    coeffs: np.ndarray,
    wcs,
    shape: tuple[int, int],
    grid: SkyGrid,
    plane_scale: float,
    n_samples: int = 9,
) -> DetectorPlane:
    """Re-express a grid-frame plane as a plane in detector pixels.

    The grid plane ``c0 + c1 * (X - Xc) / s + c2 * (Y - Yc) / s`` is evaluated at
    ``n_samples`` x ``n_samples`` detector positions mapped onto the grid and
    fitted by a detector-frame plane around the detector centre.  Detector
    distortion makes the mapping slightly non-linear; over a detector the
    resulting departure from a plane is far below the noise, and it is the
    detector-frame plane that is subtracted and recorded, so the record says
    exactly what was removed.

    Parameters
    ----------
    coeffs : array, shape (1,) or (3,)
        Grid-frame coefficients.
    wcs : gwcs.WCS
        Detector-to-sky transform.
    shape : tuple of int
        Detector shape.
    grid : SkyGrid
        The grid the coefficients refer to.
    plane_scale : float
        Slope length scale used for ``coeffs``.
    n_samples : int
        Sample points per axis.

    """
    ny, nx = shape
    xc, yc = (nx - 1) / 2.0, (ny - 1) / 2.0
    coeffs = np.asarray(coeffs, dtype=float)
    if coeffs.size == 1:
        return DetectorPlane(float(coeffs[0]), 0.0, 0.0, xc, yc)
    xs, ys = np.meshgrid(np.linspace(0, nx - 1, n_samples), np.linspace(0, ny - 1, n_samples))
    fwd = wcs.forward_transform if hasattr(wcs, "forward_transform") else wcs.pixel_to_world_values
    ra, dec = fwd(xs.ravel(), ys.ravel())
    gx, gy = grid.world_to_pixel(ra, dec)
    gcx, gcy = grid.center
    values = coeffs[0] + coeffs[1] * (gx - gcx) / plane_scale + coeffs[2] * (gy - gcy) / plane_scale
    design = np.column_stack([np.ones(xs.size), xs.ravel() - xc, ys.ravel() - yc])
    sol, *_ = np.linalg.lstsq(design, values, rcond=None)
    return DetectorPlane(float(sol[0]), float(sol[1]), float(sol[2]), xc, yc)
