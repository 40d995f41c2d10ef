"""stpipe Steps: thin layers that read models, call the core and write metadata."""

from .pixel_skymatch import PixelSkyMatchStep

__all__ = ["PixelSkyMatchStep"]
