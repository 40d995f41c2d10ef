"""Pure algorithms on numpy arrays and WCS objects (no stpipe, no datamodels)."""

from .grid import BBox, SkyGrid, footprint_of, native_pixel_scale, overlap_bbox
from .grouping import group_exposures, parse_grouping
from .matching import ExposureSource, MatchConfig, MatchResult, match_exposures
from .pairs import DifferenceStatistic, PairMeasurement, fit_plane, measure_difference
from .resample import Resampled, drizzle_noise_ratio, grid_pixmap, resample_to_grid
from .solve import LevelSolution, apply_match_down, solve_levels

__all__ = [
    "BBox",
    "DifferenceStatistic",
    "ExposureSource",
    "LevelSolution",
    "MatchConfig",
    "MatchResult",
    "PairMeasurement",
    "Resampled",
    "SkyGrid",
    "apply_match_down",
    "drizzle_noise_ratio",
    "fit_plane",
    "footprint_of",
    "grid_pixmap",
    "group_exposures",
    "match_exposures",
    "measure_difference",
    "native_pixel_scale",
    "overlap_bbox",
    "parse_grouping",
    "resample_to_grid",
    "solve_levels",
]
