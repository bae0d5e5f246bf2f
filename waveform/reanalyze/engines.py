"""Where units are measured: a local process pool, or a Dask cluster.

An engine maps `measure_unit` over work units and yields each unit's outcome as
it completes, with a bounded number of units in flight (the driver commits as
results arrive; memory stays flat whatever the archive's size). Engines are
found by name in `ENGINES`; the Dask one is an optional extra and says which
``pip install`` makes it available.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import signal
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from waveform.errors import InvalidArgument
from waveform.reanalyze.planning import WorkUnit
from waveform.reanalyze.worker import Analyze, UnitResult, measure_unit, warm_up

__all__ = ["ENGINES", "DaskEngine", "Engine", "LocalEngine", "Outcome", "make_engine"]

#: A unit and what measuring it gave: its result, or the exception that ended the task.
Outcome = tuple[WorkUnit, UnitResult | BaseException]

DASK_INSTALL = "pip install 'waveform[dask]'  (or: pip install 'dask[distributed]')"


class Engine(ABC):
    """Runs `measure_unit` on workers. Use as a context manager (`start`, `close`)."""

    name: str = ""

    @property
    @abstractmethod
    def workers(self) -> int:
        """How many units can be measured at once."""

    @abstractmethod
    def start(self) -> None:
        """Start (or connect to) the workers and warm them up (imports, compiled kernels)."""

    @abstractmethod
    def _submit(self, unit: WorkUnit, version: str, analyze: Analyze | None) -> Any:
        """A future of ``measure_unit(unit, version, analyze)``."""

    @abstractmethod
    def _completed(self, pending: set[Any]) -> Iterator[Any]:
        """Futures of ``pending`` as they complete (at least one per call)."""

    @abstractmethod
    def close(self) -> None: ...

    def run(self, units: Iterable[WorkUnit], version: str,
            analyze: Analyze | None = None) -> Iterator[Outcome]:
        """Every unit's outcome, in completion order, at most 2 units per worker in flight."""
        todo = iter(units)
        pending: dict[Any, WorkUnit] = {}
        limit = max(1, 2 * self.workers)
        while True:
            while len(pending) < limit:
                unit = next(todo, None)
                if unit is None:
                    break
                pending[self._submit(unit, version, analyze)] = unit
            if not pending:
                return
            for fut in self._completed(set(pending)):
                unit = pending.pop(fut)
                try:
                    yield unit, fut.result()
                except Exception as e:  # a worker died or the task broke: the unit is unread
                    yield unit, e

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalEngine(Engine):
    """A pool of ``workers`` processes on this machine (spawned, not forked: the
    driver holds a DuckDB connection and threads that a fork must not copy)."""

    name = "local"

    def __init__(self, workers: int = 0) -> None:
        self._n = workers if workers > 0 else (multiprocessing.cpu_count() or 1)
        self._pool: cf.ProcessPoolExecutor | None = None

    @property
    def workers(self) -> int:
        return self._n

    def start(self) -> None:
        if self._pool is not None:
            return
        self._pool = cf.ProcessPoolExecutor(
            self._n, mp_context=multiprocessing.get_context("spawn"), initializer=_pool_worker)
        # The pool starts processes on demand: ask each for something now, so the
        # start-up and compile time is not charged to the first units.
        for f in [self._pool.submit(_nothing) for _ in range(self._n)]:
            f.result()

    def _submit(self, unit: WorkUnit, version: str, analyze: Analyze | None) -> Any:
        if self._pool is None:
            self.start()
        assert self._pool is not None
        return self._pool.submit(measure_unit, unit, version, analyze)

    def _completed(self, pending: set[Any]) -> Iterator[Any]:
        done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
        yield from done

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _pool_worker() -> None:
    """A local pool process: Ctrl-C on the terminal reaches the whole process
    group, but only the driver acts on it (it stops submitting and shuts the
    pool down); the workers ignore it rather than each printing a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warm_up()


def _nothing() -> None:
    return None


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as e:
        raise InvalidArgument(
            f"the dask engine needs dask.distributed, which is not installed ({e}); "
            f"install it with: {DASK_INSTALL}"
        ) from e
    return distributed


class DaskEngine(Engine):
    """Units as tasks of a Dask cluster: the one at ``scheduler`` (``tcp://host:8786``),
    or, without one, a `LocalCluster` of ``workers`` single-threaded processes on
    127.0.0.1 (tests, benchmarks, one machine)."""

    name = "dask"

    def __init__(self, workers: int = 0, scheduler: str | None = None) -> None:
        self._distributed = _distributed()
        self._want = workers if workers > 0 else (multiprocessing.cpu_count() or 1)
        self._scheduler = scheduler
        self._cluster: Any = None
        self._client: Any = None
        self._n = self._want

    @property
    def workers(self) -> int:
        return self._n

    def start(self) -> None:
        if self._client is not None:
            return
        d = self._distributed
        if self._scheduler:
            self._client = d.Client(self._scheduler)
        else:
            self._cluster = d.LocalCluster(
                n_workers=self._want, threads_per_worker=1, processes=True,
                host="127.0.0.1", dashboard_address=None, silence_logs=logging.ERROR,
            )
            self._client = d.Client(self._cluster)
            self._client.wait_for_workers(self._want)
        self._client.run(warm_up)
        info = self._client.scheduler_info()
        self._n = max(1, sum(w.get("nthreads", 1) for w in info.get("workers", {}).values()))

    def _submit(self, unit: WorkUnit, version: str, analyze: Analyze | None) -> Any:
        if self._client is None:
            self.start()
        return self._client.submit(measure_unit, unit, version, analyze, pure=False)

    def _completed(self, pending: set[Any]) -> Iterator[Any]:
        done = self._distributed.wait(list(pending), return_when="FIRST_COMPLETED").done
        yield from done

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


#: Engine classes by the name ``--engine`` takes.
ENGINES: dict[str, Callable[..., Engine]] = {"local": LocalEngine, "dask": DaskEngine}


def make_engine(name: str, *, workers: int = 0, scheduler: str | None = None) -> Engine:
    """The engine called ``name`` (`ENGINES`); ``scheduler`` only for ``dask``."""
    if name not in ENGINES:
        raise InvalidArgument(f"engine {name!r}: expected one of {', '.join(ENGINES)}")
    if scheduler and name != "dask":
        raise InvalidArgument(f"--scheduler {scheduler} needs --engine dask")
    if name == "dask":
        return DaskEngine(workers, scheduler)
    return LocalEngine(workers)
