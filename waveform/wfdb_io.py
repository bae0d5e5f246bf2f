"""WFDB records in and out: `read_record`, `write_record`, `import_wfdb`.

A WFDB record becomes a General ECG object (General 32-bit ECG when its digital
values do not fit 16 bits). The digital samples are kept exactly; WFDB's
``physical = (digital - baseline) / gain`` becomes DICOM's ``raw * sensitivity
+ baseline`` with sensitivity = 1 / gain and baseline = -baseline / gain
(PS3.3 C.10.9.1.4.3), so the physical values equal wfdb's ``p_signal`` to
within the 16 characters of a Decimal String. Samples WFDB marks invalid
(the format's most negative value) are the group's padding value.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import numpy as np
import wfdb
from pydicom.uid import generate_uid

from waveform.dicom.codes import lead_from_text
from waveform.dicom.encode import encode, lead_code
from waveform.errors import InvalidArgument, StorageError, WaveformError
from waveform.model import Channel, Code, Ecg, WaveformGroup

__all__ = ["import_wfdb", "read_record", "write_record"]

GENERAL_ECG = "1.2.840.10008.5.1.4.1.1.9.1.2"
GENERAL_32BIT_ECG = "1.2.840.10008.5.1.4.1.1.9.1.4"
_MAX_CHANNELS = 24  # General ECG and General 32-bit ECG (PS3.3 A.34.4, A.34.12)

#: WFDB unit strings -> UCUM codes (Channel Sensitivity Units, CID 3082).
UNITS_TO_UCUM: dict[str, str] = {
    "mV": "mV", "mv": "mV", "uV": "uV", "µV": "uV", "μV": "uV", "V": "V", "nV": "nV",
    "mmHg": "mm[Hg]", "kPa": "kPa", "cmH2O": "cm[H2O]", "NU": "1", "nu": "1", "%": "%",
    "bpm": "/min", "degC": "Cel", "l/s": "L/s", "L/s": "L/s", "ml": "mL", "mL": "mL",
}
_UCUM_TO_UNITS: dict[str, str] = {
    "mV": "mV", "uV": "uV", "V": "V", "nV": "nV", "mm[Hg]": "mmHg", "kPa": "kPa",
    "cm[H2O]": "cmH2O", "1": "NU", "%": "%", "/min": "bpm", "Cel": "degC", "L/s": "L/s",
    "mL": "mL",
}

# The most negative value of a WFDB format marks an invalid sample (WFDB's WFDB_INVALID_*).
_INVALID: dict[str, int] = {
    "8": -128, "16": -32768, "61": -32768, "80": -128, "160": -32768, "212": -2048,
    "310": -512, "311": -512, "24": -(2**23), "32": -(2**31),
}

_PRIVATE_SCHEME = "99WFDB"
_SEX = re.compile(r"sex>?\s*:\s*(?P<sex>[A-Za-z]+)", re.IGNORECASE)


def read_record(path: str | Path) -> Ecg:
    """The WFDB record at ``path`` (without extension) as a General ECG `Ecg`."""
    path = Path(path)
    try:
        rec = wfdb.rdrecord(str(path), physical=False)
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"WFDB record {path} cannot be read: {exc}") from exc
    d = rec.d_signal
    if d is None or d.ndim != 2:
        raise InvalidArgument(f"WFDB record {path} has no uniform digital signal")
    n_sig = d.shape[1]
    if n_sig > _MAX_CHANNELS:
        raise InvalidArgument(
            f"WFDB record {path} has {n_sig} signals; a General ECG object holds at most "
            f"{_MAX_CHANNELS}"
        )
    fmts = [str(f) for f in (rec.fmt or ["16"] * n_sig)]
    invalid = {_INVALID.get(f) for f in fmts}
    pad = invalid.pop() if len(invalid) == 1 else None
    has_pad = pad is not None and bool(np.any(d == pad))

    lo, hi = (int(d.min()), int(d.max())) if d.size else (0, 0)
    dtype: np.dtype[Any]
    if -32768 <= lo and hi <= 32767:
        sop_class, dtype, interp = GENERAL_ECG, np.dtype(np.int16), "SS"
    elif -(2**31) <= lo and hi < 2**31:
        sop_class, dtype, interp = GENERAL_32BIT_ECG, np.dtype(np.int32), "SL"
    else:
        raise InvalidArgument(f"WFDB record {path}: digital values {lo}..{hi} exceed 32 bits")
    raw = np.ascontiguousarray(d.T).astype(dtype)
    raw.flags.writeable = False

    channels = []
    for i, name in enumerate(rec.sig_name):
        gain = float(rec.adc_gain[i])
        if gain == 0:
            # WFDB: a gain of 0 means "uncalibrated"; the default gain is 200 units/mV.
            gain = 200.0
        lead = lead_from_text(name)
        source = lead_code(lead) if lead else Code(_PRIVATE_SCHEME, name[:16], name)
        units = rec.units[i] if rec.units else "mV"
        channels.append(Channel(
            label=name[:16],
            source=source,
            lead=lead,
            units=UNITS_TO_UCUM.get(units, units),
            sensitivity=1.0 / gain,
            correction=1.0,
            baseline=-float(rec.baseline[i]) / gain,
            bits_stored=dtype.itemsize * 8,
            padding=pad if has_pad else None,
        ))

    name = rec.record_name
    when = None
    if rec.base_date is not None:
        when = dt.datetime.combine(rec.base_date, rec.base_time or dt.time())
    sex = ""
    for comment in rec.comments or []:
        m = _SEX.search(comment)
        if m:
            sex = {"m": "M", "f": "F"}.get(m.group("sex")[0].lower(), "O")
            break
    entropy = [name, str(rec.fs), str(rec.sig_len), *rec.sig_name]
    return Ecg(
        sop_class_uid=sop_class,
        sop_instance_uid=str(generate_uid(entropy_srcs=[*entropy, "instance"])),
        study_instance_uid=str(generate_uid(entropy_srcs=[*entropy, "study"])),
        series_instance_uid=str(generate_uid(entropy_srcs=[*entropy, "series"])),
        patient_id=name[:64],
        sex=sex,
        acquisition_datetime=when,
        study_description=f"WFDB record {name}"[:64],
        groups=(WaveformGroup(
            label="RHYTHM",
            sampling_frequency=float(rec.fs),
            channels=tuple(channels),
            raw=raw,
            interpretation=interp,
        ),),
    )


def write_record(ecg: Ecg, path: str | Path, group: int = 0) -> None:
    """Write multiplex group ``group`` of ``ecg`` as the WFDB record ``path`` (no extension).

    Linear samples are written as they are (format 16, or 32 for wider ones) with
    gain = 1 / (sensitivity x correction) and baseline = -baseline x gain; companded
    (MB, AB) and unsigned 64-bit samples are written from their physical values.
    """
    path = Path(path)
    try:
        g = ecg.groups[group]
    except IndexError:
        raise InvalidArgument(
            f"group {group} does not exist; the ECG has {len(ecg.groups)} groups"
        ) from None
    names = [c.label or c.name or f"ch{i + 1}" for i, c in enumerate(g.channels)]
    units = [_UCUM_TO_UNITS.get(c.units or "", c.units or "NU") for c in g.channels]
    common = {
        "record_name": path.name,
        "fs": g.sampling_frequency,
        "units": units,
        "sig_name": names,
        "write_dir": str(path.parent),
    }
    try:
        if g.interpretation in ("MB", "AB") or g.raw.dtype == np.uint64:
            wfdb.wrsamp(p_signal=g.physical().T, fmt=["32"] * g.n_channels, **common)
            return
        fmt = "16" if g.raw.dtype.itemsize <= 2 else "32"
        scale = np.array([c.sensitivity * c.correction for c in g.channels])
        if np.any(scale == 0):
            raise InvalidArgument("a channel sensitivity of 0 cannot be written as a WFDB gain")
        gain = 1.0 / scale
        base = [c.baseline for c in g.channels]
        baseline = [round(float(-b * k)) for b, k in zip(base, gain, strict=True)]
        d = g.raw.T.astype(np.int64)
        wfdb.wrsamp(d_signal=d, fmt=[fmt] * g.n_channels, adc_gain=list(gain),
                    baseline=baseline, **common)
    except WaveformError:
        raise
    except (OSError, ValueError) as exc:
        raise StorageError(f"WFDB record {path} could not be written: {exc}") from exc


def import_wfdb(
    records: list[str | Path], out_dir: str | Path, *, when: dt.datetime | None = None
) -> list[Path]:
    """Read each WFDB record and write it as ``out_dir/<record>.dcm``; the paths written.

    Acquisition DateTime is Type 1 in a waveform object, but most WFDB headers carry
    no base date. A record without one gets ``when`` if given, else the time its
    header file was last modified (UTC), so that the object stays conformant.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for record in records:
        ecg = read_record(record)
        if ecg.acquisition_datetime is None:
            header = Path(f"{record}.hea")
            stamp = when or dt.datetime.fromtimestamp(
                header.stat().st_mtime, tz=dt.UTC
            ).replace(microsecond=0)
            ecg = ecg.replace(acquisition_datetime=stamp)
        target = out / f"{Path(record).name}.dcm"
        try:
            target.write_bytes(encode(ecg))
        except OSError as exc:
            raise StorageError(f"{target} could not be written: {exc}") from exc
        written.append(target)
    return written
