"""Same answers from every backend: serial, local processes, Dask; memory or disk store."""

import numpy as np
import pytest
from conftest import metas_of
from conftest import sources_of as _sources

from jwst_skymatch_plus.core.execution import ExecutionSettings
from jwst_skymatch_plus.core.grouping import group_exposures
from jwst_skymatch_plus.core.matching import MatchConfig, match_exposures


def _groups(sim):
    return group_exposures(metas_of(sim), "visit")


@pytest.fixture(scope="module")
def serial(miri_mosaic):
    return match_exposures(_sources(miri_mosaic), _groups(miri_mosaic), MatchConfig())


def _same(a, b):
    np.testing.assert_array_equal(a.coefficients, b.coefficients)
    np.testing.assert_array_equal(a.sigma, b.sigma)
    np.testing.assert_array_equal(a.component, b.component)
    assert [(p.i, p.j) for p in a.group_pairs] == [(p.i, p.j) for p in b.group_pairs]


def test_local_processes_give_identical_results(miri_mosaic, serial):
    _same(
        serial,
        match_exposures(
            _sources(miri_mosaic),
            _groups(miri_mosaic),
            MatchConfig(),
            execution=ExecutionSettings(n_workers=2),
        ),
    )


def test_disk_store_gives_identical_results(miri_mosaic, serial, tmp_path):
    result = match_exposures(
        _sources(miri_mosaic),
        _groups(miri_mosaic),
        MatchConfig(),
        execution=ExecutionSettings(store="disk", temp_dir=str(tmp_path)),
    )
    _same(serial, result)
    assert list(tmp_path.iterdir()) == []  # the store cleans up after itself


def test_dask_cluster_gives_identical_results(miri_mosaic, serial):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cl:
        result = match_exposures(
            _sources(miri_mosaic),
            _groups(miri_mosaic),
            MatchConfig(),
            execution=ExecutionSettings(scheduler=cl.scheduler_address),
        )
    _same(serial, result)


def test_order_of_exposures_does_not_matter(miri_mosaic, serial):
    sources = _sources(miri_mosaic)
    groups = _groups(miri_mosaic)
    perm = np.random.default_rng(3).permutation(len(sources))
    inverse = np.argsort(perm)
    shuffled = [sources[k] for k in perm]
    new_groups = [sorted(int(inverse[k]) for k in g) for g in groups]
    result = match_exposures(shuffled, new_groups, MatchConfig())
    a = serial.coefficients[:, 0] - serial.coefficients[:, 0].mean()
    b = result.coefficients[inverse, 0] - result.coefficients[:, 0].mean()
    # The grid orientation follows the first exposure, so pixel phases (and
    # the noise they see) change: agreement to well inside the uncertainty.
    assert np.all(np.abs(a - b) < 0.5 * serial.sigma[:, 0])


def test_step_results_do_not_depend_on_worker_count(small_mosaic):
    from conftest import copy_models, levels_of

    from jwst_skymatch_plus import PixelSkyMatchStep

    one = levels_of(PixelSkyMatchStep.call(copy_models(small_mosaic), n_workers=1))
    two = levels_of(PixelSkyMatchStep.call(copy_models(small_mosaic), n_workers=2, in_memory=False))
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("in_memory", [False, True])
def test_workers_read_files_themselves_with_identical_results(tmp_path, monkeypatch, in_memory):
    """A parallel run of an association: each worker opens its exposures by path.

    The parent process never loads a member's pixels for matching (the
    workers do, from the files), and the levels equal the serial in-memory
    run's bit for bit.  An in-memory library reads each model, and writes
    its level in, when the model is first borrowed.
    """
    from jwst_skymatch_plus import PixelSkyMatchStep
    from jwst_skymatch_plus.core import model_choice
    from jwst_skymatch_plus.simulate import recorded_levels, simulate_mosaic, write_association
    from jwst_skymatch_plus.steps import pixel_skymatch

    sim = simulate_mosaic("miri", shape=(96, 96), tiles=(2, 1), dithers=2, out_dir=tmp_path, seed=21)
    asn = write_association(sim.filenames, tmp_path, "workers")
    serial = recorded_levels(PixelSkyMatchStep.call(str(asn)))

    portable, parent_loads = [], []
    match = model_choice.match_exposures

    def watched(sources, *args, **kwargs):
        for s in sources:
            portable.append(s.portable_load is not None)
            s.load = lambda load=s.load, name=s.name: parent_loads.append(name) or load()
        return match(sources, *args, **kwargs)

    monkeypatch.setattr(pixel_skymatch, "match_exposures", watched)
    monkeypatch.setattr(model_choice, "match_exposures", watched)  # fit_type='auto' matches through it
    result = PixelSkyMatchStep.call(str(asn), n_workers=2, in_memory=in_memory)
    assert result._on_disk is not in_memory
    if in_memory:
        assert result._loaded_models == {}  # not even stpipe's closing pass loaded one
        assert result.read_metadata(0)["meta.background.level"] == serial[0]
    parallel = recorded_levels(result)
    np.testing.assert_array_equal(serial, parallel)
    assert portable == [True] * len(sim.filenames)
    assert parent_loads == []
    if in_memory:
        assert len(result._loaded_models) == len(sim.filenames)
        np.testing.assert_array_equal(recorded_levels(result), serial)  # kept, not updated twice
        with result:
            model = result.borrow(1)
            assert model.meta.calibration_software_version  # stpipe's closing stamps
            result.shelve(model, 1)


def test_memory_budget_spills_resampled_images_to_disk(miri_mosaic, serial, tmp_path, caplog):
    """Above the budget the images wait on disk, said once in the log, with identical levels."""
    execution = ExecutionSettings(memory_budget=1e-4, temp_dir=str(tmp_path))
    with caplog.at_level("INFO", logger="jwst_skymatch_plus.core.matching"):
        result = match_exposures(
            _sources(miri_mosaic), _groups(miri_mosaic), MatchConfig(), execution=execution
        )
    _same(serial, result)
    spilled = [r for r in caplog.records if "left of the memory budget" in r.getMessage()]
    assert len(spilled) == 1
    assert list(tmp_path.iterdir()) == []  # the disk store was used, then removed


def test_exposures_held_in_memory_count_against_the_budget(miri_mosaic, serial, tmp_path, caplog):
    """A budget the images alone fit in is not enough once the exposures take most of it."""
    need = 8.0 * sum(s.shape[0] * s.shape[1] for s in _sources(miri_mosaic))  # more than the boxes need
    budget = 2 * need / 2**30
    with caplog.at_level("INFO", logger="jwst_skymatch_plus.core.matching"):
        roomy = ExecutionSettings(memory_budget=budget, temp_dir=str(tmp_path))
        _same(
            serial,
            match_exposures(_sources(miri_mosaic), _groups(miri_mosaic), MatchConfig(), execution=roomy),
        )
        assert not [r for r in caplog.records if "memory budget" in r.getMessage()]
        held = ExecutionSettings(memory_budget=budget, held_bytes=1.9 * need, temp_dir=str(tmp_path))
        _same(
            serial,
            match_exposures(_sources(miri_mosaic), _groups(miri_mosaic), MatchConfig(), execution=held),
        )
    (spilled,) = [r.getMessage() for r in caplog.records if "memory budget" in r.getMessage()]
    assert "held by the exposures" in spilled


def test_exposures_above_the_memory_budget_are_read_from_disk(tmp_path, caplog):
    """Files that would not fit the budget stay on disk (logged once); same levels, inputs untouched."""
    import hashlib
    import os

    from jwst_skymatch_plus import PixelSkyMatchStep
    from jwst_skymatch_plus.simulate import recorded_levels, simulate_mosaic, write_association

    sim = simulate_mosaic("miri", shape=(96, 96), tiles=(2, 1), dithers=2, out_dir=tmp_path, seed=23)
    asn = write_association(sim.filenames, tmp_path, "budget")
    files = [tmp_path / f for f in sim.filenames]
    digests = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    size = sum(os.path.getsize(f) for f in files)
    in_memory = PixelSkyMatchStep.call(str(asn))
    assert not in_memory._on_disk
    with caplog.at_level("INFO", logger="jwst_skymatch_plus"):
        small = PixelSkyMatchStep.call(str(asn), memory_budget=0.5 * size / 2**30)
    assert small._on_disk
    told = [r for r in caplog.records if "as with in_memory=False" in r.getMessage()]
    assert len(told) == 1 and str(len(files)) in told[0].getMessage()
    np.testing.assert_array_equal(recorded_levels(in_memory), recorded_levels(small))
    assert [hashlib.sha256(f.read_bytes()).hexdigest() for f in files] == digests
    # A budget the files fit in keeps them in memory, as in_memory=True asks.
    assert not PixelSkyMatchStep.call(str(asn), memory_budget=2 * size / 2**30)._on_disk


def test_default_memory_budget_is_within_its_documented_range():
    from jwst_skymatch_plus.core.execution import default_memory_budget

    assert 1.0 <= default_memory_budget() <= 3.0
    assert ExecutionSettings().budget_bytes == default_memory_budget() * 2**30
    assert ExecutionSettings(memory_budget=0.5).budget_bytes == 2**29


def test_on_disk_run_writes_levels_as_models_are_borrowed(tmp_path, monkeypatch):
    """On disk, neither the step nor stpipe's closing pass saves; a model has its level when borrowed."""
    import gc
    import hashlib
    from pathlib import Path

    from stpipe.library import AbstractModelLibrary

    from jwst_skymatch_plus import PixelSkyMatchStep
    from jwst_skymatch_plus.simulate import recorded_levels, simulate_mosaic, write_association

    sim = simulate_mosaic("miri", shape=(96, 96), tiles=(2, 1), dithers=2, out_dir=tmp_path, seed=22)
    asn = write_association(sim.filenames, tmp_path, "once")
    digests = [hashlib.sha256((tmp_path / f).read_bytes()).hexdigest() for f in sim.filenames]
    in_memory = PixelSkyMatchStep.call(str(asn))
    saves = []
    shelve = AbstractModelLibrary.shelve

    def counted(self, model, index=None, modify=True):
        saves.append(bool(modify and self._on_disk))
        return shelve(self, model, index, modify)

    monkeypatch.setattr(AbstractModelLibrary, "shelve", counted)
    on_disk = PixelSkyMatchStep.call(str(asn), in_memory=False)
    assert sum(saves) == 0
    # read_metadata shows the levels before any model is opened.
    expected = recorded_levels(in_memory)
    for index in range(len(on_disk)):
        meta = on_disk.read_metadata(index)
        assert meta["meta.background.level"] == expected[index]
        assert meta["meta.cal_step.skymatch"] == "COMPLETE"
        assert meta["meta.skymatch_plus.pixel_skymatch.method"] == "pixel-match"
        nested = on_disk.read_metadata(index, flatten=False)
        assert nested["meta"]["skymatch_plus"]["pixel_skymatch"]["status"] == "measured"
    # Borrowed read-only, twice: the update applies each time (the file on disk lacks it).
    for _ in range(2):
        np.testing.assert_array_equal(recorded_levels(on_disk), expected)
    assert sum(saves) == 0
    with on_disk:
        for index, model in enumerate(on_disk):
            assert model.meta.cal_step.skymatch == "COMPLETE"
            assert model.meta.calibration_software_version  # stpipe's closing stamps
            on_disk.shelve(model, index, modify=index == 0)
    # Exposure 0 was saved with its level (re-applying is covered with subtract=True below).
    assert sum(saves) == 1
    with on_disk:
        model = on_disk.borrow(0)
        assert model.meta.background.level == expected[0]
        assert not model.meta.background.subtracted
        on_disk.shelve(model, 0, modify=False)
    np.testing.assert_array_equal(recorded_levels(on_disk), expected)
    assert [hashlib.sha256((tmp_path / f).read_bytes()).hexdigest() for f in sim.filenames] == digests
    # Nothing keeps the library (and its temporary folder) alive once dropped.
    folder = Path(on_disk._temp_path).resolve()
    assert folder.is_dir()
    del on_disk, model
    gc.collect()  # stpipe's own step-library references form cycles
    assert not folder.exists()


@pytest.mark.parametrize("in_memory, n_workers", [(False, 1), (True, 2)])
def test_subtraction_on_borrow_applies_once(tmp_path, in_memory, n_workers):
    """subtract=True, models updated as borrowed: the data are the serial run's, however often borrowed."""
    from jwst_skymatch_plus import PixelSkyMatchStep
    from jwst_skymatch_plus.simulate import simulate_mosaic, write_association

    sim = simulate_mosaic("miri", shape=(96, 96), tiles=(2, 1), dithers=2, out_dir=tmp_path, seed=24)
    asn = write_association(sim.filenames, tmp_path, "subtract")
    serial = PixelSkyMatchStep.call(str(asn), subtract=True, n_workers=1)
    result = PixelSkyMatchStep.call(str(asn), subtract=True, in_memory=in_memory, n_workers=n_workers)
    with serial, result:
        for index in range(len(result)):
            expected = serial.borrow(index)
            for modify in (False, True, False):
                model = result.borrow(index)
                np.testing.assert_array_equal(model.data, expected.data)
                assert model.meta.background.subtracted
                result.shelve(model, index, modify=modify)
            serial.shelve(expected, index, modify=False)


def test_on_disk_steps_in_a_row_apply_their_updates_in_order(tmp_path):
    """LevelMatchStep, then PixelSkyMatchStep twice, on one on-disk library: the same as in memory.

    The second sky matching adds to the first one's level: applied in the
    wrong order, the first one's level would win.
    """
    from jwst_skymatch_plus import LevelMatchStep, PixelSkyMatchStep
    from jwst_skymatch_plus.simulate import recorded_levels, simulate_mosaic, write_association

    sim = simulate_mosaic("miri", shape=(96, 96), tiles=(2, 1), dithers=2, out_dir=tmp_path, seed=25)
    asn = write_association(sim.filenames, tmp_path, "chain")
    runs, firsts = {}, {}
    for in_memory in (True, False):
        matched = LevelMatchStep.call(str(asn), in_memory=in_memory)
        assert matched._on_disk is not in_memory
        first = PixelSkyMatchStep.call(matched, subtract=True, in_memory=in_memory)
        firsts[in_memory] = recorded_levels(first)
        runs[in_memory] = PixelSkyMatchStep.call(first, subtract=True, in_memory=in_memory)
    np.testing.assert_array_equal(recorded_levels(runs[False]), recorded_levels(runs[True]))
    assert not np.array_equal(recorded_levels(runs[False]), firsts[False])
    with runs[True], runs[False]:
        for index in range(len(sim.filenames)):
            a, b = runs[True].borrow(index), runs[False].borrow(index)
            np.testing.assert_array_equal(a.data, b.data)
            assert set(b.meta.instance["skymatch_plus"]) == {"level_match", "pixel_skymatch"}
            runs[True].shelve(a, index, modify=False)
            runs[False].shelve(b, index, modify=False)
    # read_metadata shows the pending updates as a saved file shows them,
    # flat and nested (lists stay lists; a replaced record keeps no old keys).
    pending = runs[False].read_metadata(0)
    pending_tree = runs[False].read_metadata(0, flatten=False)["meta"]
    with runs[False]:
        model = runs[False].borrow(0)
        runs[False].shelve(model, 0)
    saved = runs[False].read_metadata(0)
    saved_tree = runs[False].read_metadata(0, flatten=False)["meta"]

    def ours(meta):
        return {k: v for k, v in meta.items() if k.startswith(("meta.skymatch_plus", "meta.background"))}

    assert ours(saved) and set(ours(saved)) == set(ours(pending))
    for key, value in ours(saved).items():
        # (Floats as the FITS header keeps them: to about 16 digits.)
        assert pending[key] == (pytest.approx(value, rel=1e-15) if isinstance(value, float) else value), key
    assert pending_tree["skymatch_plus"] == saved_tree["skymatch_plus"]
    assert isinstance(pending_tree["skymatch_plus"]["level_match"]["stages"], list)
    assert pending_tree["background"]["level"] == pytest.approx(saved_tree["background"]["level"], rel=1e-15)


def test_a_failed_update_is_not_applied_twice(tmp_path, monkeypatch):
    """In memory, an update that fails at a borrow leaves no half-updated model behind."""
    from jwst.datamodels import ModelLibrary

    from jwst_skymatch_plus.simulate import simulate_mosaic, write_association
    from jwst_skymatch_plus.steps._updates import ModelUpdate, write_updates

    sim = simulate_mosaic("miri", shape=(64, 64), tiles=(1, 1), dithers=2, out_dir=tmp_path, seed=26)
    asn = write_association(sim.filenames, tmp_path, "fail")
    reference = ModelLibrary(str(asn), on_disk=False)
    with reference:
        model = reference.borrow(0)
        original = model.data.copy()
        reference.shelve(model, 0, modify=False)
    library = ModelLibrary(str(asn), on_disk=False)  # nothing borrowed yet
    write_updates(library, {0: ModelUpdate({"background.level": 1.0}, corrections=(1.0,))})
    calls = []
    apply = ModelUpdate.apply

    def flaky(self, model):
        apply(self, model)  # the data are changed, then something fails, once
        calls.append(model)
        if len(calls) == 1:
            raise RuntimeError("disk full")

    monkeypatch.setattr(ModelUpdate, "apply", flaky)
    with library:
        with pytest.raises(RuntimeError):
            library.borrow(0)
        model = library.borrow(0)
        np.testing.assert_array_equal(model.data, original - 1.0)
        assert model.meta.background.level == 1.0
        library.shelve(model, 0)
    assert len(calls) == 2


def test_a_copied_library_updates_its_own_models(tmp_path):
    """deepcopy of an on-disk result with pending updates: the copy lends its own models, updated."""
    import copy

    from jwst_skymatch_plus import PixelSkyMatchStep
    from jwst_skymatch_plus.simulate import recorded_levels, simulate_mosaic, write_association

    sim = simulate_mosaic("miri", shape=(64, 64), tiles=(2, 1), dithers=2, out_dir=tmp_path, seed=27)
    asn = write_association(sim.filenames, tmp_path, "copy")
    result = PixelSkyMatchStep.call(str(asn), in_memory=False)
    twin = copy.deepcopy(result)
    np.testing.assert_array_equal(recorded_levels(twin), recorded_levels(result))
    with twin:
        model = twin.borrow(0)  # the original library is closed: this is the copy's own
        assert model.meta.cal_step.skymatch == "COMPLETE"
        twin.shelve(model, 0, modify=False)


def test_chunked_submission_keeps_tasks_in_order():
    """Short tasks travel to workers in lists; results come back one per task, in order."""
    from jwst_skymatch_plus.core.execution import ProcessExecutor, SerialExecutor, chunk_size

    tasks = [(i, 2) for i in range(23)]
    with ProcessExecutor(2) as executor:
        assert list(executor.imap(pow, tasks, chunksize=5)) == [i**2 for i in range(23)]
        assert list(executor.imap(pow, tasks)) == [i**2 for i in range(23)]
        # About 8 submissions per worker, 1 to 64 tasks each.
        assert chunk_size(800, executor) == 50
        assert chunk_size(10, executor) == 1
        assert chunk_size(100_000, executor) == 64
    assert chunk_size(800, SerialExecutor()) == 1


def _allocator_tuned() -> bool:
    from jwst_skymatch_plus.core import execution

    return execution._allocator_tuned


def test_worker_processes_tune_their_allocator():
    """Workers keep freed memory for reuse (Dask's nanny settings made pair statistics 1.5x slower)."""
    import sys

    from jwst_skymatch_plus.core.execution import ProcessExecutor

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    with ProcessExecutor(2) as executor:
        assert all(executor.imap(_allocator_tuned, [()] * 4))
    assert not _allocator_tuned()  # the main process keeps its own settings


def test_automatic_workers_follow_cores_and_size(monkeypatch):
    """n_workers=0: a worker per usable core (at most 4) for large runs; serial if small, 1 core or daemon."""
    import multiprocessing

    from jwst_skymatch_plus.core import execution

    big, small = 500 * 1024 * 1032, 4 * 96 * 96
    monkeypatch.setattr(execution, "usable_cores", lambda: 2)
    assert execution.auto_workers(big) == (2, "2 usable cores")
    assert execution.auto_workers(None)[0] == 2
    n, reason = execution.auto_workers(small)
    assert n == 1 and "Mpix" in reason
    monkeypatch.setattr(execution, "usable_cores", lambda: 16)
    assert execution.auto_workers(big) == (4, "16 usable cores, at most 4 workers")
    monkeypatch.setattr(execution, "usable_cores", lambda: 1)
    assert execution.auto_workers(big) == (1, "one usable core")
    monkeypatch.setattr(execution, "usable_cores", lambda: 8)
    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True, raising=False)
    n, reason = execution.auto_workers(big)
    assert n == 1 and "daemonic" in reason


def test_default_run_says_how_many_workers(small_mosaic, caplog):
    """The default (n_workers=0) logs its choice; a small mosaic runs serially."""
    from conftest import copy_models

    from jwst_skymatch_plus import PixelSkyMatchStep

    assert PixelSkyMatchStep().n_workers == 0
    with caplog.at_level("INFO", logger="jwst_skymatch_plus"):
        PixelSkyMatchStep.call(copy_models(small_mosaic))
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("n_workers=0")]
    assert line.startswith("n_workers=0: serial (") and "Mpix" in line


def test_level_match_results_do_not_depend_on_worker_count(small_mosaic):
    """LevelMatchStep in worker processes: the same corrected data, bit for bit."""
    from conftest import copy_models

    from jwst_skymatch_plus import LevelMatchStep

    runs = [LevelMatchStep.call(copy_models(small_mosaic), n_workers=n) for n in (1, 2)]
    with runs[0], runs[1]:
        for index in range(len(runs[0])):
            a, b = runs[0].borrow(index), runs[1].borrow(index)
            assert a.meta.instance["skymatch_plus"]["level_match"]["corrections"]
            np.testing.assert_array_equal(a.data, b.data)
            runs[0].shelve(a, index, modify=False)
            runs[1].shelve(b, index, modify=False)
