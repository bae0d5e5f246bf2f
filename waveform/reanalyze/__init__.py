"""Re-measuring the archive with an analysis version: batch jobs, local or on Dask.

`planning` (which ECGs lack a summary of a version, split by data file), `worker`
(read Parquet, decode, analyse: no catalog), `engines` (a local process pool or a
Dask cluster), `job` (the driver and single writer), `compare` and `plot` (how
two versions differ), `cli` (``waveform reanalyze``). See docs/scale.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from waveform.reanalyze.engines import ENGINES, DaskEngine, Engine, LocalEngine, make_engine
    from waveform.reanalyze.job import JobResult, commit_new, run
    from waveform.reanalyze.planning import Filter, Plan, WorkUnit, parse_filter, plan
    from waveform.reanalyze.worker import UnitResult, measure_unit

__all__ = [
    "ENGINES",
    "DaskEngine",
    "Engine",
    "Filter",
    "JobResult",
    "LocalEngine",
    "Plan",
    "UnitResult",
    "WorkUnit",
    "commit_new",
    "make_engine",
    "measure_unit",
    "parse_filter",
    "plan",
    "run",
]

#: Where each public name lives. Imported on first use (PEP 562), so that the
#: `waveform` command line, which builds the ``reanalyze`` parser for every
#: command, does not pay for pyarrow, numba and the analysis at start-up.
_HOMES = {
    "ENGINES": "engines", "DaskEngine": "engines", "Engine": "engines",
    "LocalEngine": "engines", "make_engine": "engines",
    "JobResult": "job", "commit_new": "job", "run": "job",
    "Filter": "planning", "Plan": "planning", "WorkUnit": "planning",
    "parse_filter": "planning",
    "plan": "planning",
    "UnitResult": "worker", "measure_unit": "worker",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'waveform.reanalyze' has no attribute {name!r}")
    return getattr(importlib.import_module(f"waveform.reanalyze.{home}"), name)
