"""Run every benchmark module in `bench/` (``make bench``)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

import bench


def modules() -> list[str]:
    here = Path(bench.__file__).parent
    return sorted(
        m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_")
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("names", nargs="*", help=f"benchmarks to run (default all: {modules()})")
    p.add_argument("--small", action="store_true", help="tiny inputs (what the tests run)")
    args = p.parse_args(argv)
    for name in args.names or modules():
        print(f"\n## bench.{name}\n", flush=True)
        importlib.import_module(f"bench.{name}").main(small=args.small)
    return 0


if __name__ == "__main__":
    sys.exit(main())
