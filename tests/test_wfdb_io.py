"""WFDB import/export against wfdb's own reading of the shared records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import wfdb

from tests.conftest import shared
from waveform.dicom.synthetic import GENERAL_ECG, synthetic_ecg
from waveform.errors import InvalidArgument
from waveform.model import WaveformGroup
from waveform.wfdb_io import import_wfdb, read_record, write_record

RECORDS = [
    ("ludb", "1"),
    ("ludb", "42"),
    ("mitbih", "100"),
    ("ptbxl-cinc2021", "E07500"),
    ("ptbxl-cinc2021", "HR06000"),
    ("ptbxl-cinc2021", "JS20000"),
    ("cpsc2021", "data_84_1"),
    ("other", "s0010_re"),
    ("other", "test01_00s"),
    ("other", "a103l"),
]


def _physical(g: WaveformGroup) -> np.ndarray:
    out = g.raw.astype(np.float64)
    for i, c in enumerate(g.channels):
        out[i] = out[i] * c.sensitivity * c.correction + c.baseline
        if c.padding is not None:
            out[i][g.raw[i] == c.padding] = np.nan
    return out


@pytest.mark.parametrize(("folder", "name"), RECORDS, ids=[f"{f}/{n}" for f, n in RECORDS])
def test_read_record_equals_wfdb(folder: str, name: str) -> None:
    path = shared("wfdb", folder, f"{name}.hea").with_suffix("")
    ecg = read_record(path)
    digital = wfdb.rdrecord(str(path), physical=False)
    physical = wfdb.rdrecord(str(path))
    g = ecg.groups[0]
    assert ecg.sop_class_uid == GENERAL_ECG
    assert g.sampling_frequency == float(digital.fs)
    assert np.array_equal(g.raw.T, digital.d_signal)
    assert g.raw.dtype == np.int16
    np.testing.assert_allclose(_physical(g).T, physical.p_signal, rtol=1e-12, atol=1e-12)
    assert ecg.patient_id == name
    assert ecg == read_record(path)  # deterministic, UIDs included
    for c, sig in zip(g.channels, digital.sig_name, strict=True):
        assert c.label == sig[:16]


def test_leads_and_units_are_mapped() -> None:
    ecg = read_record(shared("wfdb", "ludb", "1.hea").with_suffix(""))
    g = ecg.groups[0]
    assert g.leads == ("I", "II", "III", "aVR", "aVL", "aVF",
                       "V1", "V2", "V3", "V4", "V5", "V6")
    assert {c.units for c in g.channels} == {"mV"}
    assert g.channels[0].source is not None and g.channels[0].source.value == "2:1"
    assert ecg.sex == "F"

    mixed = read_record(shared("wfdb", "other", "a103l.hea").with_suffix(""))
    chans = mixed.groups[0].channels
    assert [c.lead for c in chans] == ["II", None, None]
    assert chans[2].units == "1"  # WFDB "NU" (normalised units)
    assert chans[2].source is not None and chans[2].source.scheme == "99WFDB"


def test_import_wfdb_writes_general_ecg_objects(tmp_path: Path) -> None:
    rec = shared("wfdb", "ludb", "2.hea").with_suffix("")
    [out] = import_wfdb([rec], tmp_path)
    assert out == tmp_path / "2.dcm"
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == GENERAL_ECG
    assert ds.PatientID == "2"
    assert ds.WaveformSequence[0].NumberOfWaveformChannels == 12


def test_imported_objects_pass_dciodvfy(tmp_path: Path) -> None:
    import shutil
    import subprocess

    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy is not installed: `make test` installs it (dicom3tools)")
    recs = [shared("wfdb", f, f"{n}.hea").with_suffix("")
            for f, n in (("ludb", "1"), ("other", "a103l"), ("other", "s0010_re"))]
    for out in import_wfdb(recs, tmp_path):
        run = subprocess.run([tool, str(out)], capture_output=True, text=True, timeout=60)
        errors = [x for x in (run.stdout + run.stderr).splitlines() if "Error" in x]
        assert not errors, (out.name, errors)


def test_write_then_read_is_lossless(tmp_path: Path) -> None:
    ecg = synthetic_ecg(sop_class_uid=GENERAL_ECG, duration_s=2.0, seed=4)
    write_record(ecg, tmp_path / "syn")
    back = read_record(tmp_path / "syn")
    g, h = ecg.groups[0], back.groups[0]
    assert np.array_equal(g.raw, h.raw)
    assert h.leads == g.leads
    np.testing.assert_allclose(_physical(h), _physical(g), rtol=1e-9, atol=1e-9)


def test_missing_record_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot be read"):
        read_record(tmp_path / "nope")
