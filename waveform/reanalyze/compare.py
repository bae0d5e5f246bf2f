"""How one analysis version measures the archive differently from another.

On the ECGs that have a summary of both versions (the latest of each), per
measurement: how many both measured, the mean and SD of the difference (new
minus old), the largest changes with their UIDs, and how many ECGs became
measurable or stopped being measurable. Values come from each summary's
document (every measurement is there; the typed columns hold only some), all
of a document's values in one JSON parse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from waveform.store import Store, TableRef

__all__ = ["MEASUREMENTS", "Comparison", "Difference", "Measurement", "compare"]


@dataclass(frozen=True, slots=True)
class Measurement:
    """A compared measurement: its label, key in the summary document and unit;
    ``degrees``: an angle, whose differences wrap to [-180, 180)."""

    label: str
    key: str
    unit: str
    degrees: bool = False


MEASUREMENTS: tuple[Measurement, ...] = (
    Measurement("rate", "heart_rate_bpm", "/min"),
    Measurement("PR", "pr_ms", "ms"),
    Measurement("QRS", "qrs_ms", "ms"),
    Measurement("QT", "qt_ms", "ms"),
    Measurement("QTc Bazett", "qtc_bazett_ms", "ms"),
    Measurement("QTc Fridericia", "qtc_fridericia_ms", "ms"),
    Measurement("P axis", "p_axis_deg", "deg", degrees=True),
    Measurement("QRS axis", "qrs_axis_deg", "deg", degrees=True),
    Measurement("T axis", "t_axis_deg", "deg", degrees=True),
)


@dataclass(frozen=True, slots=True)
class Difference:
    """One measurement, new version minus old, over the ECGs both versions measured.

    ``old``/``new`` hold the pairs (for a plot); ``largest``: (UID, old, new) of
    the biggest absolute changes.
    """

    measurement: Measurement
    n: int
    mean: float
    sd: float
    became: int
    stopped: int
    largest: tuple[tuple[str, float, float], ...]
    old: np.ndarray
    new: np.ndarray

    @property
    def diff(self) -> np.ndarray:
        return _diff(self.old, self.new, self.measurement.degrees)


@dataclass(frozen=True, slots=True)
class Comparison:
    old_version: str
    new_version: str
    n_old: int
    n_new: int
    n_common: int
    differences: tuple[Difference, ...]

    def lines(self, top: int = 3) -> list[str]:
        """A table: one row per measurement, then the largest changes."""
        out = [
            f"analysis {self.new_version} against {self.old_version}: {self.n_common} ECGs "
            f"measured by both ({self.n_old} by {self.old_version}, {self.n_new} by "
            f"{self.new_version}); differences are new - old",
            f"{'measurement':<15} {'both':>6} {'mean':>8} {'SD':>8} {'became':>7} "
            f"{'stopped':>7}  unit",
        ]
        for d in self.differences:
            out.append(f"{d.measurement.label:<15} {d.n:>6} {_num(d.mean, '+'):>8} "
                       f"{_num(d.sd):>8} "
                       f"{d.became:>7} {d.stopped:>7}  {d.measurement.unit}")
        out.append("largest changes (old -> new):")
        for d in self.differences:
            for uid, o, n in d.largest[:top]:
                out.append(f"  {d.measurement.label:<15} {uid}  {o:.1f} -> {n:.1f} "
                           f"{d.measurement.unit}")
        return out


def _num(v: float, sign: str = "") -> str:
    return "-" if np.isnan(v) else f"{v:{sign}.2f}"


def _diff(old: np.ndarray, new: np.ndarray, degrees: bool) -> np.ndarray:
    d = new - old
    return (d + 180.0) % 360.0 - 180.0 if degrees else d


def _latest(summary: TableRef, version_param: str) -> str:
    return (f"SELECT sop_instance_uid, document FROM {summary.sql} "
            f"WHERE analysis_version = {version_param} QUALIFY row_number() OVER "
            "(PARTITION BY sop_instance_uid ORDER BY measured_at DESC) = 1")


def compare(store: Store, old: str, new: str, *,
            measurements: tuple[Measurement, ...] = MEASUREMENTS, top: int = 10) -> Comparison:
    """How version ``new`` differs from ``old`` on the ECGs that have both."""
    paths = "[" + ", ".join(f"'$.{m.key}'" for m in measurements) + "]"
    summary = store.table("summary")
    counts = dict(store.sql(
        f"SELECT analysis_version, count(DISTINCT sop_instance_uid) FROM {summary.sql} "
        "WHERE analysis_version IN (?, ?) GROUP BY analysis_version", [old, new]))
    rows = store.sql(
        f"WITH o AS ({_latest(summary, '?')}), n AS ({_latest(summary, '?')}) "
        f"SELECT o.sop_instance_uid, json_extract_string(o.document, {paths}), "
        f"json_extract_string(n.document, {paths}) "
        "FROM o JOIN n USING (sop_instance_uid) ORDER BY o.sop_instance_uid", [old, new])
    uids = np.array([r[0] for r in rows], dtype=object)
    k = len(measurements)

    def values(col: int) -> np.ndarray:
        out = np.full((len(rows), k), np.nan)
        for i, r in enumerate(rows):
            for j, v in enumerate(r[col] or [None] * k):
                if v is not None and v != "null":
                    try:
                        out[i, j] = float(v)
                    except ValueError:  # a value that is not a number is not measured
                        pass
        return out

    before, after = values(1), values(2)
    diffs = []
    for j, m in enumerate(measurements):
        o, n = before[:, j], after[:, j]
        both = ~np.isnan(o) & ~np.isnan(n)
        d = _diff(o[both], n[both], m.degrees)
        order = np.argsort(-np.abs(d), kind="stable")[:top]
        largest = tuple((str(uids[both][i]), float(o[both][i]), float(n[both][i]))
                        for i in order if d[i] != 0)
        diffs.append(Difference(
            m, int(both.sum()),
            float(d.mean()) if d.size else float("nan"),
            float(d.std(ddof=1)) if d.size > 1 else float("nan"),
            int((np.isnan(o) & ~np.isnan(n)).sum()), int((~np.isnan(o) & np.isnan(n)).sum()),
            largest, o[both], n[both],
        ))
    return Comparison(old, new, int(counts.get(old, 0)), int(counts.get(new, 0)), len(rows),
                      tuple(diffs))
