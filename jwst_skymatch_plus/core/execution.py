"""Run independent pieces of work serially, in local processes, or on Dask.

Every backend runs the same functions on the same inputs, so results are the
same bit for bit whichever runs them; only the wall time differs.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from .._atomic import pid_alive

__all__ = [
    "ExecutionSettings",
    "Executor",
    "auto_workers",
    "available_memory",
    "chunk_size",
    "default_memory_budget",
    "default_workers",
    "make_executor",
    "memory_budget_bytes",
    "usable_cores",
]


def available_memory() -> float | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def default_memory_budget() -> float:
    """GiB a run's large arrays may hold by default: a quarter of the available memory, 1 to 3 GiB.

    The budget covers the exposures held in memory and the resampled images;
    the interpreter, the workers and the pair measurements need the rest
    (about 0.5-1 GiB), so a default run stays under 4 GiB.
    """
    available = available_memory()
    if available is None:
        return 2.0
    return float(min(3.0, max(1.0, available / 4 / 2**30)))


def memory_budget_bytes(gib: float | None) -> float:
    """A ``memory_budget`` parameter (GiB, None for the default) in bytes."""
    return float(default_memory_budget() if gib is None else gib) * 2**30


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


#: Input pixels (all exposures together) from which ``n_workers=0`` starts
#: worker processes.  Measured on 2 cores: 4 MIRI frames of 96 x 96 took
#: 0.2 s serially and 0.28 s on 2 workers; 8 of 512 x 512 (2 Mpix) 0.86 s
#: and 0.68 s; 8 full frames (8 Mpix) 2.15 s and 1.5 s.  Below this
#: threshold workers save a fraction of a second at best, not worth
#: starting processes for; above it they save seconds to minutes.
AUTO_WORKERS_MIN_PIXELS = 8 * 2**20

#: Most worker processes ``n_workers=0`` starts: each holds one group's
#: exposures and a few resampled images in memory.
AUTO_WORKERS_MAX = 4


def default_workers(n_pixels: float | None = None) -> int:
    """Worker processes for ``n_workers=0``: see :func:`auto_workers`."""
    return auto_workers(n_pixels)[0]


def auto_workers(n_pixels: float | None = None) -> tuple[int, str]:
    """How many worker processes ``n_workers=0`` starts, and why.

    Every usable core, at most :data:`AUTO_WORKERS_MAX` (the main process
    mostly waits for the workers); one (serial) when there is one core, when
    this process is a daemon (which may not start processes, e.g. a
    ``multiprocessing.Pool`` worker), or when the exposures hold fewer than
    :data:`AUTO_WORKERS_MIN_PIXELS` pixels.

    Parameters
    ----------
    n_pixels : float, optional
        Pixels of all exposures together; None: not known (large).

    Returns
    -------
    n_workers : int
    reason : str
    """
    import multiprocessing

    cores = usable_cores()
    if multiprocessing.current_process().daemon:
        return 1, "this is a daemonic process, which cannot start worker processes"
    if cores < 2:
        return 1, "one usable core"
    if n_pixels is not None and n_pixels < AUTO_WORKERS_MIN_PIXELS:
        return 1, (
            f"{n_pixels / 2**20:.1f} Mpix of exposures, under the "
            f"{AUTO_WORKERS_MIN_PIXELS / 2**20:.0f} Mpix that repay starting workers"
        )
    n = min(AUTO_WORKERS_MAX, cores)
    return n, f"{cores} usable cores" + (f", at most {AUTO_WORKERS_MAX} workers" if cores > n else "")


@dataclass
class ExecutionSettings:
    """Where and how matching runs; no setting here changes a result.

    Parameters
    ----------
    n_workers : int
        Local worker processes (1: serial; 0 or less: :func:`default_workers`,
        every usable core up to four).
    scheduler : str or distributed.Client, optional
        Dask scheduler address (``"tcp://host:8786"``) or client; overrides
        ``n_workers``.
    store : {'memory', 'disk'}
        Where resampled images wait between resampling and pair measurement.
    temp_dir : str, optional
        Parent directory of the disk store (default: the system's).
    memory_budget : float, optional
        GiB the run's large arrays may hold in memory: the exposures held in
        memory (``held_bytes``) and the resampled images.  When the images'
        estimate exceeds what the exposures leave of it, they wait on disk
        instead (``store='disk'``).  None: :func:`default_memory_budget`.
    held_bytes : float
        Bytes the exposures already take in memory (counted against the
        budget).
    """

    n_workers: int = 1
    scheduler: str | Any | None = None
    store: str = "memory"
    temp_dir: str | None = None
    memory_budget: float | None = None
    held_bytes: float = 0.0

    def __post_init__(self) -> None:
        if self.store not in ("memory", "disk"):
            raise ValueError(f"store must be 'memory' or 'disk', got {self.store!r}")

    @property
    def budget_bytes(self) -> float:
        """The memory budget in bytes."""
        return memory_budget_bytes(self.memory_budget)

    def executor(self) -> Executor:
        """The backend these settings ask for (a context manager)."""
        return make_executor(self.n_workers, self.scheduler)


class Executor:
    """Map a function over tasks, yielding results in submission order.

    At most ``max_pending`` tasks are in flight, which bounds the memory held
    by inputs waiting to be processed.
    """

    #: Tasks run in other processes: arrays must not travel with them.
    remote = False
    #: Tasks that run at the same time.
    workers = 1

    def __init__(self, max_pending: int = 1) -> None:
        self.max_pending = max(1, max_pending)

    def submit(self, fn: Callable, *args: Any) -> Future:
        """Start ``fn(*args)``."""
        raise NotImplementedError

    def imap(self, fn: Callable, tasks: Iterable[tuple], chunksize: int = 1) -> Iterator[Any]:
        """Yield ``fn(*task)`` for each task, in order, keeping a bounded queue.

        With ``chunksize`` > 1 tasks travel in lists of that many, one
        submission each: short tasks would otherwise spend more time on
        their way to a worker and back than in it.
        """
        pending: list[Future] = []
        for chunk in _chunks(tasks, max(1, chunksize)):
            pending.append(self.submit(_run_chunk, fn, chunk))
            if len(pending) >= self.max_pending:
                yield from pending.pop(0).result()
        while pending:
            yield from pending.pop(0).result()

    def close(self) -> None:
        """Release workers."""

    def abort(self) -> None:
        """Release workers without waiting for work in progress (the run failed)."""
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _chunks(tasks: Iterable[tuple], size: int) -> Iterator[list[tuple]]:
    chunk: list[tuple] = []
    for task in tasks:
        chunk.append(task)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _run_chunk(fn: Callable, chunk: list[tuple]) -> list[Any]:
    """Run one list of tasks in a worker."""
    return [fn(*task) for task in chunk]


def chunk_size(n_tasks: int, executor: Executor, per_worker: int = 8, largest: int = 64) -> int:
    """Tasks per submission so that each worker gets about ``per_worker`` submissions.

    Serial runs, and remote ones with few tasks, submit tasks one by one.
    """
    if not executor.remote:
        return 1
    return max(1, min(largest, n_tasks // max(1, per_worker * executor.workers)))


class _Done(Future):
    def __init__(self, value):
        super().__init__()
        self.set_result(value)


class SerialExecutor(Executor):
    """Run everything in this process."""

    def submit(self, fn, *args):
        return _Done(fn(*args))


class ProcessExecutor(Executor):
    """Local worker processes.

    Workers never outlive the process that started them: each one watches
    it (:func:`_watch_parent`) and exits when it is gone, even killed with
    SIGKILL; on an exception in the parent (SIGTERM included, see
    :mod:`jwst_skymatch_plus._signals`) they are stopped at once.
    """

    remote = True

    def __init__(self, n_workers: int) -> None:
        super().__init__(max_pending=2 * n_workers)
        self.workers = n_workers
        self._pool = ProcessPoolExecutor(
            max_workers=n_workers, initializer=_start_worker, initargs=(os.getpid(),)
        )

    def submit(self, fn, *args):
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        pool = self._pool
        processes = getattr(pool, "_processes", None)
        results = getattr(pool, "_result_queue", None)
        if processes is None or results is None:  # not CPython's pool as we know it
            terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
            if terminate is not None:
                terminate()
            else:
                pool.shutdown(wait=False, cancel_futures=True)
            return
        processes = list(processes.values())
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=5)
        # A worker stopped halfway through sending its result leaves the
        # pool's manager thread waiting for the rest, and the interpreter
        # waiting for that thread at exit, for ever.  With this process's
        # copy of the writing end closed no writer is left: the wait ends
        # and the pool shuts itself down as broken.
        writer = getattr(results, "_writer", None)
        if writer is not None:
            writer.close()
        pool.shutdown(wait=False, cancel_futures=True)


#: Seconds between a worker's checks that its parent is alive.
WATCH_INTERVAL = 0.5
#: Ask Linux to signal workers the moment their parent dies (PR_SET_PDEATHSIG);
#: the polling watchdog covers other systems and the unlikely race at start.
USE_PDEATHSIG = True


def _start_worker(parent_pid: int) -> None:
    """Initializer of local worker processes: watch the parent, tune the allocator."""
    _watch_parent(parent_pid)
    tune_allocator()


def _watch_parent(parent_pid: int) -> None:
    """Worker initializer: exit when the process ``parent_pid`` is gone.

    A worker blocked on its task queue would otherwise wait forever once
    its parent was killed.  On Linux the kernel sends SIGTERM to the worker
    when its parent dies; everywhere a daemon thread checks twice a second
    and ends the worker if the parent is gone.  SIGTERM gets its default
    action back in the worker (a forked worker inherits the parent's
    handler, which would only raise an exception inside the task).
    """
    import signal
    import threading

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    forked = os.getppid() == parent_pid
    # The kernel ties the death signal to the thread that started the worker:
    # the one using the pool, which outlives it (the pool is closed first).
    if forked and USE_PDEATHSIG and sys.platform.startswith("linux"):
        _set_parent_death_signal(signal.SIGTERM)

    def gone() -> bool:
        return os.getppid() != parent_pid if forked else not pid_alive(parent_pid)

    if gone():
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(WATCH_INTERVAL)
            if gone():
                os._exit(1)

    threading.Thread(target=watch, name="skymatch-plus-parent-watch", daemon=True).start()


def _set_parent_death_signal(signum: int) -> None:
    """prctl(PR_SET_PDEATHSIG, signum) through ctypes; silently nothing if unavailable."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signum, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


#: glibc malloc settings of worker processes, bytes: M_MMAP_THRESHOLD, M_TRIM_THRESHOLD.
WORKER_MALLOC = (32 << 20, 256 << 20)
_allocator_tuned = False


def tune_allocator() -> None:
    """Let glibc's malloc reuse freed memory in this worker process (once; Linux only).

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_`` set, and any
    such setting turns off glibc's adaptive mmap threshold: every temporary
    array above 128 KiB is then mapped from the kernel and unmapped again,
    page faults included.  The pair statistics ran 1.5x slower in such a
    worker than in a plain process (measured); with arrays up to 32 MiB
    served from the heap and up to 256 MiB of freed heap kept for reuse
    they run faster than in either.
    """
    global _allocator_tuned
    if _allocator_tuned or not sys.platform.startswith("linux"):
        return
    _allocator_tuned = True
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-3, WORKER_MALLOC[0])  # M_MMAP_THRESHOLD
        libc.mallopt(-1, WORKER_MALLOC[1])  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


def _in_worker(fn: Callable, *args: Any) -> Any:
    """Run a task in a worker process whose allocator is tuned (see :func:`tune_allocator`)."""
    tune_allocator()
    return fn(*args)


class DaskExecutor(Executor):
    """An existing Dask cluster (``dask.distributed``)."""

    remote = True

    def __init__(self, scheduler: str | Any) -> None:
        from distributed import Client

        self._own = isinstance(scheduler, str)
        self._client = Client(scheduler) if self._own else scheduler
        n = sum(self._client.nthreads().values()) or 1
        super().__init__(max_pending=2 * n)
        self.workers = n

    def submit(self, fn, *args):
        # Pure=False: identical inputs are still separate tasks (no caching of
        # large arrays by key on the cluster).
        return self._client.submit(_in_worker, fn, *args, pure=False)

    def close(self) -> None:
        if self._own:
            self._client.close()


def make_executor(n_workers: int = 1, scheduler: str | Any | None = None) -> Executor:
    """Pick a backend.

    Parameters
    ----------
    n_workers : int
        Local worker processes; 1 runs serially, 0 or less means
        :func:`default_workers` (every usable core, at most four).
    scheduler : str or distributed.Client, optional
        Address of a Dask scheduler (``"tcp://host:8786"``) or a client; when
        given it takes precedence over ``n_workers``.
    """
    if scheduler:
        return DaskExecutor(scheduler)
    if n_workers is None or n_workers <= 0:
        n_workers = default_workers()
    if n_workers == 1:
        return SerialExecutor()
    return ProcessExecutor(n_workers)
