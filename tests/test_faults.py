"""Faults: nothing lost, nothing left behind.

Runs killed with SIGTERM or SIGKILL while saving or matching, worker
processes orphaned by their parent's death, failed renames and file modes.
The command-line runs use ``strun`` in a subprocess; the test hook
``JWST_SKYMATCH_PLUS_TEST_PAUSE`` (see ``jwst_skymatch_plus._atomic``) holds
the run at the moment it is to be killed.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

import jwst_skymatch_plus
from jwst_skymatch_plus import PixelSkyMatchStep
from jwst_skymatch_plus._atomic import STAGING_PREFIX, TEST_PAUSE_ENV, atomic_path, remove_stale, run_tag
from jwst_skymatch_plus._signals import Terminated, sigterm_raises
from jwst_skymatch_plus.core.store import STORE_PREFIX

pytestmark = pytest.mark.skipif(os.name != "posix", reason="signals and process checks of POSIX")

PACKAGE_ROOT = str(Path(jwst_skymatch_plus.__file__).resolve().parent.parent)
OFFSETS = "sim_mosaic_skymatch_offsets.ecsv"


def strun() -> str:
    found = Path(sys.executable).with_name("strun")
    return str(found) if found.exists() else shutil.which("strun")


def run_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    env["STPIPE_DISABLE_CRDS_STEPPARS"] = "true"
    env.pop(TEST_PAUSE_ENV, None)
    env.update(extra)
    return env


def start(asn, out, cwd, *options, **env):
    """Start ``strun pixel_skymatch`` saving its products in ``out``; its log goes next to ``out``."""
    out = Path(out)
    args = [strun(), "pixel_skymatch", str(asn), "--save_results=true", f"--output_dir={out}", *options]
    log = out.parent / f"{out.name}-run{len(list(out.parent.glob(out.name + '-run*.log')))}.log"
    with log.open("w") as stream:
        run = subprocess.Popen(args, cwd=cwd, env=run_env(**env), stdout=stream, stderr=subprocess.STDOUT)
    run.log = log
    return run


def tail(run) -> str:
    return run.log.read_text()[-3000:]


def wait_for(condition, run, timeout=30.0):
    """Poll until ``condition()`` is true; fail if the run ends first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        if run.poll() is not None:
            pytest.fail(f"the run ended (status {run.returncode}) first:\n{tail(run)}")
        time.sleep(0.05)
    run.kill()
    run.wait()
    pytest.fail(f"timed out waiting for the run:\n{tail(run)}")


def named(directory: Path, prefix: str) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith(prefix)) if directory.exists() else []


def descendants(pid: int) -> list[int]:
    """Pids of every process below ``pid`` (psutil, else /proc)."""
    try:
        import psutil
    except ImportError:
        found, todo = [], [pid]
        while todo:
            parent = todo.pop()
            for task in Path(f"/proc/{parent}/task").glob("*"):
                children = (task / "children").read_text().split()
                found += [int(c) for c in children]
                todo += [int(c) for c in children]
        return found
    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        import psutil

        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except ImportError:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False
    except psutil.NoSuchProcess:
        return False


def dead_pid() -> int:
    """The pid of a process that has ended (for folders of 'dead runs')."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def mosaic_asn(small_mosaic, tmp_path):
    return small_mosaic.write(tmp_path / "in")


# ------------------------------------------------------------- killed while saving


def test_sigterm_while_saving_leaves_no_staging_folder_and_no_table(mosaic_asn, tmp_path, small_mosaic):
    out = tmp_path / "out"
    run = start(mosaic_asn, out, tmp_path, **{TEST_PAUSE_ENV: "staging:60"})
    wait_for(lambda: named(out, STAGING_PREFIX), run)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=20) == 128 + signal.SIGTERM
    assert named(out, STAGING_PREFIX) == []
    # Stopped while saving the first product: no offsets table claiming them all.
    assert not (out / OFFSETS).exists()
    assert len(list(out.glob("*.fits"))) < len(small_mosaic.models)


def test_sigkill_while_saving_then_rerun_cleans_up(mosaic_asn, tmp_path, small_mosaic):
    out = tmp_path / "out"
    run = start(mosaic_asn, out, tmp_path, **{TEST_PAUSE_ENV: "staging:60"})
    wait_for(lambda: named(out, STAGING_PREFIX), run)
    run.kill()
    run.wait(timeout=20)
    # Nothing can clean up after SIGKILL, but the table is written last.
    assert len(named(out, STAGING_PREFIX)) == 1
    assert not (out / OFFSETS).exists()
    # A live run's staging folder in the same directory (this process's pid).
    live = out / f"{STAGING_PREFIX}{run_tag()}livexxxx"
    live.mkdir()
    rerun = start(mosaic_asn, out, tmp_path)
    assert rerun.wait(timeout=60) == 0, tail(rerun)
    assert named(out, STAGING_PREFIX) == [live]
    assert len(list(out.glob("*.fits"))) == len(small_mosaic.models)
    assert len(Table.read(out / OFFSETS)) == len(small_mosaic.models)


# ---------------------------------------------------------------- the disk store


def test_sigterm_removes_the_disk_store_from_tmpdir(mosaic_asn, tmp_path):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    stale = tmpdir / f"{STORE_PREFIX}{dead_pid()}-{run_tag().split('-')[1]}-deadxxxx"
    stale.mkdir()
    (stale / "group000000_img.npy").write_bytes(b"x")
    work = tmp_path / "work"
    work.mkdir()
    run = start(
        mosaic_asn,
        tmp_path / "out",
        work,
        "--in_memory=false",
        TMPDIR=str(tmpdir),
        **{TEST_PAUSE_ENV: "store:60"},
    )
    wait_for(lambda: [p for p in named(tmpdir, STORE_PREFIX) if p != stale], run)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=20) == 128 + signal.SIGTERM
    # Neither this run's store nor the one a dead run left.
    assert named(tmpdir, STORE_PREFIX) == []
    # The on-disk ModelLibrary's own temporary folder (made in the working
    # directory by stpipe) is gone too.
    assert list(work.iterdir()) == []


def test_disk_store_is_removed_on_error(tmp_path, monkeypatch):
    from jwst_skymatch_plus.core.store import DiskGroupStore

    with pytest.raises(RuntimeError), DiskGroupStore(tmp_path) as store:
        assert store._dir.parent == tmp_path
        raise RuntimeError
    assert named(tmp_path, STORE_PREFIX) == []


# ---------------------------------------------------------------- worker processes


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
def test_workers_do_not_outlive_a_killed_parent(mosaic_asn, tmp_path, signum):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    run = start(
        mosaic_asn,
        tmp_path / "out",
        tmp_path,
        "--in_memory=false",
        "--n_workers=2",
        TMPDIR=str(tmpdir),
        **{TEST_PAUSE_ENV: "store:60"},
    )
    # A group image is stored: the pool has started its workers.
    wait_for(lambda: list(tmpdir.glob(f"{STORE_PREFIX}*/*.npy")), run)
    workers = descendants(run.pid)
    assert len(workers) >= 2
    run.send_signal(signum)
    status = run.wait(timeout=20)
    end = time.monotonic() + 5
    while any(running(w) for w in workers) and time.monotonic() < end:
        time.sleep(0.1)
    left = [w for w in workers if running(w)]
    for pid in left:  # do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert left == []
    if signum == signal.SIGTERM:
        assert status == 128 + signal.SIGTERM
        assert named(tmpdir, STORE_PREFIX) == []


WATCHDOG_SCRIPT = """
import sys, time
from jwst_skymatch_plus.core import execution
execution.USE_PDEATHSIG = False
pool = execution.ProcessExecutor(2)
futures = [pool.submit(time.sleep, 60) for _ in range(2)]
time.sleep(1.0)
print(" ".join(str(p) for p in pool._pool._processes), flush=True)
time.sleep(60)
"""


def test_worker_watchdog_alone_ends_orphans(tmp_path):
    """Without PR_SET_PDEATHSIG (other systems), busy workers still exit with their parent."""
    parent = subprocess.Popen(
        [sys.executable, "-c", WATCHDOG_SCRIPT], env=run_env(), stdout=subprocess.PIPE, text=True
    )
    workers = [int(p) for p in parent.stdout.readline().split()]
    assert len(workers) == 2 and all(running(w) for w in workers)
    parent.kill()
    parent.wait()
    end = time.monotonic() + 5
    while any(running(w) for w in workers) and time.monotonic() < end:
        time.sleep(0.1)
    left = [w for w in workers if running(w)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == []


# ---------------------------------------------------------- stale folders, signals


def test_only_abandoned_folders_are_removed(tmp_path):
    host = run_tag().split("-")[1]
    old = time.time() - 2 * 24 * 3600
    folders = {
        "dead": (f"{STAGING_PREFIX}{dead_pid()}-{host}-abcdefgh", None, True),
        "live": (f"{STAGING_PREFIX}{os.getpid()}-{host}-abcdefgh", old, False),
        "other host, recent": (f"{STAGING_PREFIX}1-0123abcd-abcdefgh", None, False),
        "other host, old": (f"{STAGING_PREFIX}1-0123abcd-abcdefg2", old, True),
        "untagged, recent": (f"{STAGING_PREFIX}abcd_fgh", None, False),
        "untagged, old": (f"{STAGING_PREFIX}abcd_fg2", old, True),
        "not ours": (f"{STAGING_PREFIX}results", old, False),
    }
    for name, mtime, _ in folders.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("x")
        if mtime:
            os.utime(tmp_path / name, (mtime, mtime))
    (tmp_path / f"{STAGING_PREFIX}{dead_pid()}-{host}-aaaaaaaa.fits").write_text("a file, not a folder")
    removed = remove_stale(tmp_path, STAGING_PREFIX, untagged_too=True)
    assert sorted(p.name for p in removed) == sorted(n for n, _, gone in folders.values() if gone)
    for label, (name, _, gone) in folders.items():
        assert (tmp_path / name).exists() != gone, label


def test_sigterm_handler_is_scoped_and_chained():
    calls = []

    def previous(signum, frame):
        calls.append(signum)

    saved = signal.signal(signal.SIGTERM, previous)
    try:
        with sigterm_raises():
            assert signal.getsignal(signal.SIGTERM) is not previous
        assert signal.getsignal(signal.SIGTERM) is previous
        with pytest.raises(Terminated) as info, sigterm_raises():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted by the handler
        assert info.value.code == 128 + signal.SIGTERM
        assert calls == [signal.SIGTERM]  # the previous handler still hears of it
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, saved)


# ------------------------------------------------------------------ atomic writer


def test_failed_rename_leaves_no_temporary_file(small_mosaic, tmp_path, monkeypatch):
    """The offsets table's rename fails: no temporary file is left next to it."""
    from conftest import copy_models

    out = tmp_path / "tables"
    real_replace = os.replace

    def fail_for_tables(src, dst):
        if str(dst).endswith(".ecsv"):
            raise OSError("rename refused")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_for_tables)
    with pytest.raises(OSError, match="rename refused"):
        PixelSkyMatchStep.call(copy_models(small_mosaic), offsets_table=str(out / "offsets.ecsv"))
    assert list(out.iterdir()) == []


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "table.ecsv"
    target.write_text("old")
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise ValueError
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.ecsv"]


# ------------------------------------------------------------------- file modes


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield 0o640
    os.umask(previous)


def test_every_output_follows_the_umask(small_mosaic, tmp_path, umask_027):
    pytest.importorskip("matplotlib")
    from conftest import copy_models

    from jwst_skymatch_plus.steps.wcs_adjust import write_wcs_adjust_table

    out = tmp_path / "out"
    PixelSkyMatchStep.call(
        copy_models(small_mosaic), save_results=True, output_dir=str(out), diagnostic_plot="auto"
    )
    table = Table({"visit": ["v1"], "shift_ra": np.array([0.1]), "measured": [True]})
    written = write_wcs_adjust_table(table, out / "wcs_adjust.ecsv", ["ecsv", "asdf", "toml"])
    files = sorted(p for p in out.iterdir() if p.is_file())
    kinds = {p.suffix for p in files}
    assert {".fits", ".ecsv", ".png", ".asdf", ".toml"} <= kinds and set(written) <= set(files)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {oct(umask_027)}, modes
