"""Group stores (core.store): what is put is read back bit for bit, and the disk store cleans up."""

import os
import subprocess
import sys

import numpy as np
import pytest

from jwst_skymatch_plus._atomic import run_tag
from jwst_skymatch_plus.core.grid import BBox
from jwst_skymatch_plus.core.resample import Resampled
from jwst_skymatch_plus.core.store import STORE_PREFIX, DiskGroupStore, MemoryGroupStore, make_store


def _image(key: int, box: BBox) -> Resampled:
    rng = np.random.default_rng(key)
    image = rng.normal(10.0, 1.0, box.shape).astype(np.float32)
    weight = rng.uniform(0.0, 2.0, box.shape).astype(np.float32)
    weight[weight < 0.3] = 0.0
    image[weight == 0] = np.nan  # no data there, as resampling leaves it
    return Resampled(box, image, weight)


BOXES = {3: BBox(10, 60, 5, 45), 8: BBox(40, 90, 30, 100)}
OVERLAP = BBox(40, 60, 30, 45)


def _stored(kind, directory):
    store = make_store(kind, directory)
    for key, box in BOXES.items():
        store.put(key, _image(key, box))
    return store


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_cutouts_come_back_bit_for_bit(kind, tmp_path):
    with _stored(kind, tmp_path) as store:
        for key, box in BOXES.items():
            assert store.bbox(key) == box
            truth = _image(key, box)
            for cut in (box, OVERLAP):
                img, wht = store.cutout(key, cut)
                want_img, want_wht = truth.cutout(cut)
                assert img.dtype == np.float32 and img.shape == cut.shape
                np.testing.assert_array_equal(img, want_img)
                np.testing.assert_array_equal(wht, want_wht)


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_cutouts_are_copies(kind, tmp_path):
    with _stored(kind, tmp_path) as store:
        img, wht = store.cutout(3, OVERLAP)
        img[:] = -1.0
        wht[:] = 0.0
        again, weight = store.cutout(3, OVERLAP)
        np.testing.assert_array_equal(again, _image(3, BOXES[3]).cutout(OVERLAP)[0])
        assert weight.any()


def test_disk_store_lives_in_its_own_folder_and_removes_it(tmp_path):
    store = make_store("disk", tmp_path)
    assert isinstance(store, DiskGroupStore)
    (folder,) = tmp_path.iterdir()
    assert folder.name.startswith(STORE_PREFIX + run_tag())
    store.put(3, _image(3, BOXES[3]))
    assert len(list(folder.iterdir())) == 2  # image and weight
    store.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KeyError), DiskGroupStore(tmp_path) as store:
        store.cutout(8, OVERLAP)  # never put: an error, and the folder still goes
    assert list(tmp_path.iterdir()) == []


def test_memory_store_writes_nothing_and_forgets_on_close(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with _stored("memory", tmp_path) as store:
        assert isinstance(store, MemoryGroupStore)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KeyError):
        store.bbox(3)


def test_a_new_store_removes_those_of_dead_runs_only(tmp_path):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    tag = run_tag()
    dead = tmp_path / (STORE_PREFIX + tag.replace(str(os.getpid()), str(ended.pid), 1) + "abc")
    live = tmp_path / (STORE_PREFIX + tag + "def")  # this process: a run still going
    other = tmp_path / "unrelated_folder"
    for folder in (dead, live, other):
        folder.mkdir()
    with DiskGroupStore(tmp_path) as store:
        assert not dead.exists()
        assert live.exists() and other.exists()
        assert store._dir.exists()


def test_unknown_store_is_refused():
    with pytest.raises(ValueError, match="'memory' or 'disk'"):
        make_store("tape")
