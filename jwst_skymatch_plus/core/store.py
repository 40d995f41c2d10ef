"""Where group images live between being built and being differenced.

Group images are needed again when pairs are measured, long after they were
built.  Keeping them all in memory costs one group footprint per group; the
disk store keeps only the pair being measured in memory.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from .._atomic import pause_for_tests, remove_stale, run_tag
from .grid import BBox
from .resample import Resampled

__all__ = ["STORE_PREFIX", "DiskGroupStore", "GroupStore", "MemoryGroupStore", "StoredImages", "make_store"]


class GroupStore:
    """Interface: ``put`` a group image, read back cut-outs."""

    def put(self, key, image: Resampled) -> None:
        """Store the image of group ``key`` (any hashable usable in a file name)."""
        raise NotImplementedError

    def bbox(self, key: int) -> BBox:
        """Grid box of group ``key``."""
        raise NotImplementedError

    def cutout(self, key: int, box: BBox) -> tuple[np.ndarray, np.ndarray]:
        """Image and weight of group ``key`` inside ``box`` (copies)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release resources."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class MemoryGroupStore(GroupStore):
    """Group images kept in memory."""

    def __init__(self) -> None:
        self._images: dict[int, Resampled] = {}

    def put(self, key: int, image: Resampled) -> None:  # noqa: D102
        self._images[key] = image

    def bbox(self, key: int) -> BBox:  # noqa: D102
        return self._images[key].bbox

    def cutout(self, key: int, box: BBox) -> tuple[np.ndarray, np.ndarray]:  # noqa: D102
        img, wht = self._images[key].cutout(box)
        return img.copy(), wht.copy()

    def close(self) -> None:  # noqa: D102
        self._images.clear()


#: Name prefix of the disk store's temporary directories.
STORE_PREFIX = "skymatch_plus_"


class StoredImages:
    """Images as ``.npy`` files in one folder; small enough to send to workers.

    Worker processes (local or Dask) write the images they build here and
    read the cut-outs they measure, so that only file names and boxes travel
    between processes, never arrays.  The folder must be one every worker
    can see (on a cluster: a shared filesystem).
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def _path(self, key, kind: str) -> Path:
        return self.directory / f"{key}_{kind}.npy"

    def write(self, key, image: Resampled) -> None:
        """Save ``image`` under ``key``."""
        np.save(self._path(key, "img"), image.image, allow_pickle=False)
        np.save(self._path(key, "wht"), image.weight, allow_pickle=False)

    def cutout(self, key, bbox: BBox, box: BBox) -> tuple[np.ndarray, np.ndarray]:
        """Image and weight inside ``box`` of the image ``key`` that covers ``bbox``."""
        sl = box.slices_in(bbox)
        img = np.load(self._path(key, "img"), mmap_mode="r")
        wht = np.load(self._path(key, "wht"), mmap_mode="r")
        out = np.array(img[sl]), np.array(wht[sl])
        del img, wht  # unmap
        return out


class DiskGroupStore(GroupStore):
    """Group images in ``.npy`` files of a temporary directory, read by memory map.

    The directory, ``skymatch_plus_<pid>-<host>-<random>``, is removed by
    :meth:`close` (the ``with`` block's end, also on an exception).  Stores
    left by runs killed outright are removed by the next store made in the
    same place once their process is gone (see :mod:`jwst_skymatch_plus._atomic`).

    Parameters
    ----------
    directory : str or Path, optional
        Parent of the temporary directory (default: the system's,
        ``tempfile.gettempdir()``, which honours ``TMPDIR``).
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        parent = Path(directory) if directory is not None else Path(tempfile.gettempdir())
        remove_stale(parent, STORE_PREFIX)
        self._dir = Path(tempfile.mkdtemp(prefix=STORE_PREFIX + run_tag(), dir=parent))
        self.files = StoredImages(self._dir)
        self._boxes: dict = {}

    def put(self, key, image: Resampled) -> None:  # noqa: D102
        self.files.write(key, image)
        self.register(key, image.bbox)
        pause_for_tests("store")

    def register(self, key, bbox: BBox) -> None:
        """Record an image a worker wrote into :attr:`files` under ``key``."""
        self._boxes[key] = bbox

    def bbox(self, key) -> BBox:  # noqa: D102
        return self._boxes[key]

    def cutout(self, key, box: BBox) -> tuple[np.ndarray, np.ndarray]:  # noqa: D102
        return self.files.cutout(key, self._boxes[key], box)

    def close(self) -> None:  # noqa: D102
        shutil.rmtree(self._dir, ignore_errors=True)


def make_store(kind: str, directory: str | Path | None = None) -> GroupStore:
    """A group store by name: ``'memory'`` or ``'disk'``."""
    if kind == "memory":
        return MemoryGroupStore()
    if kind == "disk":
        return DiskGroupStore(directory)
    raise ValueError(f"unknown group store {kind!r}; use 'memory' or 'disk'")
