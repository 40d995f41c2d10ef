"""Run independent pieces of work serially, in local processes, or on Dask.

Every backend runs the same functions on the same inputs, so results are the
same bit for bit whichever runs them; only the wall time differs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

__all__ = ["Executor", "default_workers", "make_executor"]


def default_workers() -> int:
    """A laptop-friendly default: all cores but one, at most four, at least one.

    Each worker holds one group's exposures in memory, so more workers cost
    memory as well as cores.
    """
    return max(1, min(4, (os.cpu_count() or 1) - 1))


class Executor:
    """Map a function over tasks, yielding results in submission order.

    At most ``max_pending`` tasks are in flight, which bounds the memory held
    by inputs waiting to be processed.
    """

    def __init__(self, max_pending: int = 1) -> None:
        self.max_pending = max(1, max_pending)

    def submit(self, fn: Callable, *args: Any) -> Future:
        """Start ``fn(*args)``."""
        raise NotImplementedError

    def imap(self, fn: Callable, tasks: Iterable[tuple]) -> Iterator[Any]:
        """Yield ``fn(*task)`` for each task, in order, keeping a bounded queue."""
        pending: list[Future] = []
        for task in tasks:
            pending.append(self.submit(fn, *task))
            if len(pending) >= self.max_pending:
                yield pending.pop(0).result()
        while pending:
            yield pending.pop(0).result()

    def close(self) -> None:
        """Release workers."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Done(Future):
    def __init__(self, value):
        super().__init__()
        self.set_result(value)


class SerialExecutor(Executor):
    """Run everything in this process."""

    def submit(self, fn, *args):
        return _Done(fn(*args))


class ProcessExecutor(Executor):
    """Local worker processes."""

    def __init__(self, n_workers: int) -> None:
        super().__init__(max_pending=2 * n_workers)
        self._pool = ProcessPoolExecutor(max_workers=n_workers)

    def submit(self, fn, *args):
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor(Executor):
    """An existing Dask cluster (``dask.distributed``)."""

    def __init__(self, scheduler: str | Any) -> None:
        from distributed import Client

        self._own = isinstance(scheduler, str)
        self._client = Client(scheduler) if self._own else scheduler
        n = sum(self._client.nthreads().values()) or 1
        super().__init__(max_pending=2 * n)

    def submit(self, fn, *args):
        # Pure=False: identical inputs are still separate tasks (no caching of
        # large arrays by key on the cluster).
        return self._client.submit(fn, *args, pure=False)

    def close(self) -> None:
        if self._own:
            self._client.close()


def make_executor(n_workers: int = 1, scheduler: str | Any | None = None) -> Executor:
    """Pick a backend.

    Parameters
    ----------
    n_workers : int
        Local worker processes; 1 runs serially, 0 or less means
        :func:`default_workers`.
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
