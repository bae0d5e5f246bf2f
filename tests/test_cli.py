"""The command line: demo, info and import-wfdb, through `main()`."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from tests.conftest import shared
from waveform.cli import demo_objects, main
from waveform.dicom import decode


def test_demo_objects_decode() -> None:
    objects = list(demo_objects())
    assert len(objects) >= 3
    for _, data in objects:
        ecg = decode(data)
        assert ecg.rhythm is not None and ecg.rhythm.n_channels == 12


def test_info_prints_groups_and_leads(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(get_testdata_file("waveform_ecg.dcm"))
    assert main(["info", path]) == 0
    out = capsys.readouterr().out
    assert "12 ch x 10000 samples at 1000 Hz (SS): I II III aVR aVL aVF V1 V2 V3 V4 V5 V6" in out


def test_info_reports_bad_files_without_traceback(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x04\x00abcd")
    assert main(["info", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{bad}: ") and "Traceback" not in err


def test_import_wfdb_writes_general_ecg(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    record = shared("wfdb", "ludb", "1.hea").with_suffix("")
    assert main(["import-wfdb", str(record), "-o", str(tmp_path)]) == 0
    written = [Path(line) for line in capsys.readouterr().out.split()]
    assert len(written) == 1
    ecg = decode(written[0].read_bytes())
    assert ecg.sop_class_uid == "1.2.840.10008.5.1.4.1.1.9.1.2"
    assert ecg.groups[0].n_channels == 12 and ecg.groups[0].sampling_frequency == 500.0
