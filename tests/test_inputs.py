"""One way in: every input form opened the same way, for the steps and the pipeline alike."""

import json
from pathlib import Path

import numpy as np
import pytest
from jwst.datamodels import ModelLibrary

from jwst_skymatch_plus import PixelSkyMatchStep
from jwst_skymatch_plus.inputs import borrowed, each_model, open_exposures, read_exposures
from jwst_skymatch_plus.pipeline import Image3PlusPipeline
from jwst_skymatch_plus.simulate import recorded_levels, simulate_mosaic, write_association

OFFLINE = {"tweakreg": {"skip": True}, "source_catalog": {"skip": True}}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """2 visits x 2 dithers of small MIRI detectors on disk: the simulation, its files, its association."""
    sim = simulate_mosaic("miri", shape=(64, 64), tiles=(2, 1), dithers=2, seed=5)
    path = tmp_path_factory.mktemp("inputs")
    asn = sim.write(path)
    return sim, [str(path / Path(f).name) for f in sim.filenames], asn


def test_every_form_of_the_same_exposures_gives_the_same_metadata(written):
    sim, files, asn = written
    by_asn = open_exposures(str(asn))
    by_files = open_exposures(files, on_disk=True)
    by_models = open_exposures([m.copy() for m in sim.models])
    keys = ("meta.filename", "meta.group_id", "meta.observation.visit_number", "meta.exposure.mid_time")
    for opened in (by_files, by_models):
        assert [[m[k] for k in keys] for m in opened.metas] == [[m[k] for k in keys] for m in by_asn.metas]
    # A list of file names is opened like an association: on disk when asked.
    assert by_files.library.on_disk
    assert [e.filename for e in by_files.exposures] == [Path(f).name for f in files]
    one = open_exposures(files[0])
    assert len(one.library) == 1 and one.metas[0]["meta.filename"] == Path(files[0]).name


def test_a_library_is_taken_as_it_is(written):
    _, _, asn = written
    library = ModelLibrary(str(asn))
    opened = open_exposures(library)
    assert opened.library is library and opened.exposures is None
    assert len(opened.metas) == len(library)
    # Nothing loaded, nothing held; loaded models count what their arrays take.
    assert opened.held_bytes == 0
    in_memory = ModelLibrary([m.copy() for m in written[0].models])
    expected = sum(m.data.nbytes + m.dq.nbytes + m.err.nbytes for m in written[0].models)
    assert open_exposures(in_memory).held_bytes >= expected


def test_only_science_and_background_members_are_read_by_the_steps_too(written):
    """A member of another type (here a target acquisition) is ignored, as calwebb_image3 ignores it."""
    _, files, asn = written
    table = json.loads(Path(asn).read_text())
    table["products"][0]["members"].append({"expname": Path(files[0]).name, "exptype": "target_acquisition"})
    with_tacq = Path(asn).parent / "tacq_asn.json"
    with_tacq.write_text(json.dumps(table))
    result = PixelSkyMatchStep.call(str(with_tacq))
    assert len(result) == len(files)
    assert [e.exptype for e in read_exposures(str(with_tacq))] == ["science"] * len(files)


def test_background_only_input_is_refused_with_the_way_out(written):
    _, files, asn = written
    asn = write_association(files[:2], Path(asn).parent, product_name="bg", exptypes=["background"] * 2)
    with pytest.raises(ValueError, match=r"all 2 are background observations.*process_bgr_like_science"):
        open_exposures(str(asn))
    assert len(open_exposures(str(asn), keep_background=True).library) == 2


def test_pipeline_takes_a_list_of_files_with_in_memory_false(written, tmp_path):
    _, files, _ = written
    Image3PlusPipeline.call(
        files, output_dir=str(tmp_path), save_results=True, in_memory=False, steps=OFFLINE
    )
    assert len(list(tmp_path.glob("*_crf.fits"))) == len(files)


def test_each_model_lends_every_member_and_shelves_it(written):
    sim, _, asn = written
    library = ModelLibrary(str(asn), on_disk=True)
    for index, model in each_model(library, modify=True):
        model.meta.background.level = float(index)
    np.testing.assert_array_equal(recorded_levels(library), np.arange(len(sim.models)))
    for _, model in each_model(library):
        model.meta.background.level = -1.0  # modify=False: not kept
    np.testing.assert_array_equal(recorded_levels(library), np.arange(len(sim.models)))
    # Inside an open library the loop leaves it open; leaving early shelves the model.
    with library:
        for _, _model in each_model(library):
            break
        with borrowed(library, 1) as model:
            assert model.meta.background.level == 1.0
