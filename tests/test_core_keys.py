"""JWST metadata keys: one rule each, the same from flat metadata and from a data model."""

import numpy as np
import pytest
from stdatamodels.jwst import datamodels

from jwst_skymatch_plus.core.grouping import group_exposures
from jwst_skymatch_plus.core.keys import (
    exposure_key,
    keyword,
    lyot_region,
    mid_time,
    plain_number,
    start_time,
    visit_key,
)
from jwst_skymatch_plus.core.regions import miri_lyot_region

OBSERVATION = {
    "program_number": "01234",
    "observation_number": "001",
    "visit_number": "002",
    "visit_group": "01",
    "sequence_id": "1",
    "activity_id": "01",
    "exposure_number": "00003",
}


def _flat(**observation) -> dict:
    return {f"meta.observation.{k}": v for k, v in observation.items()}


def _model(shape=(64, 72), subarray="FULL", xstart=1, ystart=1) -> datamodels.ImageModel:
    model = datamodels.ImageModel(shape)
    for k, v in OBSERVATION.items():
        setattr(model.meta.observation, k, v)
    model.meta.instrument.name = "MIRI"
    model.meta.instrument.detector = "MIRIMAGE"
    model.meta.subarray.name = subarray
    model.meta.subarray.xstart, model.meta.subarray.ystart = xstart, ystart
    model.meta.subarray.ysize, model.meta.subarray.xsize = shape
    model.meta.exposure.start_time = 60000.25
    model.meta.exposure.mid_time = 60000.5
    return model


def test_a_model_and_its_flat_metadata_give_the_same_keys():
    model = _model()
    flat = dict(model.get_crds_parameters())
    assert visit_key(model) == visit_key(flat) == ("1234", "1", "2")
    assert exposure_key(model, 0) == exposure_key(flat, 0) == ("1234", "1", "2", "1", "1", "1", "3")
    assert mid_time(model) == mid_time(flat) == 60000.5
    assert start_time(model) == start_time(flat) == 60000.25
    assert lyot_region(model) == lyot_region(flat) == miri_lyot_region((64, 72), full_frame=True)
    assert keyword(model, "meta.instrument.nonexistent") is None


def test_visit_key_ignores_padding_and_reads_missing_as_empty():
    padded = _flat(program_number="01234", observation_number="001", visit_number="002")
    plain = _flat(program_number=1234, observation_number=1, visit_number=2)
    assert visit_key(padded) == visit_key(plain)
    assert visit_key({}) == ("", "", "")  # as grouping always wrote it ('None' nowhere)
    assert group_exposures([padded, plain, {}], "visit") == [[0, 1], [2]]
    assert [plain_number(v) for v in ("000", "0010", " 7 ", "A1", None)] == ["0", "10", "7", "A1", ""]


def test_exposure_key_is_the_group_id_else_its_keywords_else_the_exposure_alone():
    assert exposure_key({"meta.group_id": "jw01234001002_01101_00003", **_flat(**OBSERVATION)}, 5) == (
        "jw01234001002_01101_00003"
    )
    incomplete = _flat(**{k: v for k, v in OBSERVATION.items() if k != "activity_id"})
    assert exposure_key(incomplete, 5) == ("exposure", 5)
    assert exposure_key(incomplete, 6) != exposure_key(incomplete, 5)


@pytest.mark.parametrize(
    "times, expected",
    [
        ({"meta.exposure.mid_time": 60000.5, "meta.exposure.start_time": 60000.2}, 60000.5),
        ({"meta.exposure.start_time": 60000.2}, 60000.2),
        ({"meta.exposure.mid_time": float("nan"), "meta.exposure.start_time": "60000.2"}, 60000.2),
        ({"meta.exposure.mid_time": "not a time"}, None),
        ({}, None),
    ],
)
def test_mid_time_falls_back_to_the_start(times, expected):
    assert mid_time(times) == expected


def test_lyot_region_of_subarrays_and_other_detectors():
    # BRIGHTSKY-like subarray starting at full-frame column 457: no Lyot there.
    assert lyot_region(_model((64, 64), "BRIGHTSKY", xstart=457, ystart=51)) is None
    # A subarray over the coronagraph corner: rows from 735, columns below 290 (full frame).
    region = lyot_region(_model((300, 300), "SUB256", xstart=1, ystart=701))
    assert region == (slice(35, 300), slice(0, 290))
    model = _model((300, 300), "SUB256", xstart=1, ystart=701)
    mask = np.zeros(model.data.shape, bool)
    mask[lyot_region(model, model.data.shape)] = True
    assert mask.sum() == (300 - 35) * 290
    nircam = _model()
    nircam.meta.instrument.name, nircam.meta.instrument.detector = "NIRCAM", "NRCA1"
    assert lyot_region(nircam) is None
    with pytest.raises(ValueError, match="subarray size"):
        lyot_region({"meta.instrument.name": "MIRI", "meta.instrument.detector": "MIRIMAGE"})
