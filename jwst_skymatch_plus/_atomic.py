"""The package's one way of writing files: nothing half-written, nothing left behind.

Everything the package saves (step products, tables, figures) is written
into a private *staging folder* next to its destination and renamed into
place, so the destination holds either the previous file or the complete
new one.  The staging folder is removed whatever happens, including a
failed rename.  Files are created fresh in that folder, so their
permissions follow the umask, as any other file would.

A run killed outright (SIGKILL, a power cut) cannot remove its staging
folder.  Staging folders, and the temporary group stores of
:mod:`jwst_skymatch_plus.core.store`, are therefore named after the process
that made them (``<prefix><pid>-<host>-<random>``): a later run removes
those whose process is gone, and never those of a run still going, in
the same directory or elsewhere.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "STAGING_PREFIX",
    "TEST_PAUSE_ENV",
    "atomic_path",
    "pause_for_tests",
    "pid_alive",
    "place",
    "remove_stale",
    "run_tag",
    "staging_folder",
]

log = logging.getLogger(__name__)

#: Name prefix of staging folders (hidden on POSIX).
STAGING_PREFIX = ".saving_"

#: Age (seconds) after which a folder of ours that cannot be tied to a local
#: process (made on another host, or by a version that did not record its
#: process) counts as abandoned.
ABANDONED_AFTER = 24 * 3600.0

#: Test hook, used by ``tests/test_faults.py`` only: ``"<point>:<seconds>"``
#: makes the process sleep that long at the named point (``staging``: a
#: product written into its staging folder, not yet renamed; ``store``: a
#: group image just written to the disk store), so that a test can kill the
#: run at that moment.  Unset, it costs one dictionary look-up.
TEST_PAUSE_ENV = "JWST_SKYMATCH_PLUS_TEST_PAUSE"

_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TAGGED = re.compile(r"(\d+)-([0-9a-f]{8})-")
# What tempfile.mkdtemp appends (names made before folders carried a tag).
_UNTAGGED = re.compile(r"[a-z0-9_]{8}")
_SWEEP_INTERVAL = 60.0
_last_sweep: dict[str, float] = {}


def run_tag() -> str:
    """``<pid>-<host>-``: the part of a folder name that ties it to this process."""
    return f"{os.getpid()}-{_HOST}-"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (True when it cannot be told)."""
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill would terminate the process there
        try:
            import psutil
        except ImportError:
            return True
        return psutil.pid_exists(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def _abandoned(suffix: str, mtime: float, untagged_too: bool) -> bool:
    tagged = _TAGGED.match(suffix)
    if tagged and tagged.group(2) == _HOST:
        return not pid_alive(int(tagged.group(1)))
    if tagged or (untagged_too and _UNTAGGED.fullmatch(suffix)):
        return time.time() - mtime > ABANDONED_AFTER
    return False


def remove_stale(directory: str | os.PathLike, prefix: str, untagged_too: bool = False) -> list[Path]:
    """Remove folders ``<prefix>...`` in ``directory`` left by runs that are gone.

    A folder is removed only if it belongs to this user and either names a
    process of this host that no longer exists, or (made elsewhere, or
    untagged when ``untagged_too``) has not changed for
    :data:`ABANDONED_AFTER` seconds.  A live run's folder is never touched.

    Parameters
    ----------
    directory : path-like
        Where to look (not recursively).
    prefix : str
        Name prefix of the folders (e.g. :data:`STAGING_PREFIX`).
    untagged_too : bool
        Also consider folders named ``<prefix>`` plus eight ``mkdtemp``
        characters, as earlier versions made them.

    Returns
    -------
    list of Path
        The folders removed.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    uid = os.getuid() if hasattr(os, "getuid") else None
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if uid is not None and info.st_uid != uid:
            continue
        if _abandoned(entry.name[len(prefix) :], info.st_mtime, untagged_too):
            shutil.rmtree(entry.path, ignore_errors=True)
            if not os.path.lexists(entry.path):
                removed.append(Path(entry.path))
    if removed:
        log.info(
            "Removed %d folder(s) left by interrupted runs in %s: %s",
            len(removed),
            directory,
            ", ".join(p.name for p in removed),
        )
    return removed


def _sweep(directory: Path) -> None:
    """Remove abandoned staging folders of ``directory`` (at most once a minute)."""
    key = os.path.abspath(directory)
    now = time.monotonic()
    if now - _last_sweep.get(key, -_SWEEP_INTERVAL) < _SWEEP_INTERVAL:
        return
    _last_sweep[key] = now
    remove_stale(directory, STAGING_PREFIX, untagged_too=True)


@contextmanager
def staging_folder(directory: str | os.PathLike) -> Iterator[Path]:
    """A private folder in ``directory``, removed on exit whatever happens.

    ``directory`` is created if needed, and staging folders abandoned there
    by runs that no longer exist are removed first.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _sweep(directory)
    stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX + run_tag(), dir=directory))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def place(written: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Rename a file written in a staging folder to its destination (atomically)."""
    pause_for_tests("staging")
    os.replace(written, destination)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a path to write; on success it is renamed to ``path``.

    The yielded path has ``path``'s file name, in a staging folder next to
    it.  If the body raises, or the rename fails, nothing is left behind and
    ``path`` is untouched.

    Examples
    --------
    >>> with atomic_path("table.ecsv") as tmp:  # doctest: +SKIP
    ...     table.write(tmp, format="ascii.ecsv")
    """
    path = Path(path)
    with staging_folder(path.parent) as stage:
        tmp = stage / path.name
        yield tmp
        place(tmp, path)


def pause_for_tests(point: str) -> None:
    """Sleep at ``point`` if :data:`TEST_PAUSE_ENV` asks for it (tests only)."""
    wanted = os.environ.get(TEST_PAUSE_ENV)
    if not wanted:
        return
    where, _, seconds = wanted.partition(":")
    if where == point:
        time.sleep(float(seconds or 0))
