"""Re-measuring the archive with an analysis version: batch jobs, local or on Dask.

`plan` (which ECGs lack a summary of a version, split by data file), `worker`
(read Parquet, decode, analyse: no catalog), `engines` (a local process pool or a
Dask cluster), `job` (the driver and single writer), `compare` and `plot` (how
two versions differ), `cli` (``waveform reanalyze``). See docs/scale.md.
"""

from __future__ import annotations

from waveform.reanalyze.engines import ENGINES, DaskEngine, Engine, LocalEngine, make_engine
from waveform.reanalyze.job import JobResult, commit_new, run
from waveform.reanalyze.plan import Filter, Plan, WorkUnit, parse_filter, plan
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
