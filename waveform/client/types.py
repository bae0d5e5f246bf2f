"""What the client's calls return: plain frozen dataclasses, numpy and Arrow.

The summary of an ECG is `waveform.model.Summary` itself; everything else the
service answers has a small value type here, with Python types only (datetimes
in UTC, ``None`` for an absent value), so that no protobuf message reaches a user.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from waveform.errors import WaveformError
from waveform.model import Summary

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "AuditEvent",
    "AuditPage",
    "CitizenExamination",
    "Compaction",
    "ConsentState",
    "Denial",
    "Document",
    "DocumentList",
    "DocumentRef",
    "Examination",
    "IngestResult",
    "OriginalFile",
    "ReanalyzeStatus",
    "RecentExaminations",
    "SearchPage",
    "Trace",
]


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What became of one object sent: stored (``already_stored`` when the same
    bytes were there before) or refused (``error`` set, nothing stored)."""

    source: str                       # the file's path, or "#3" for the 4th bytes object
    sop_instance_uid: str = ""
    already_stored: bool = False
    sha256: str = ""
    warnings: tuple[str, ...] = ()
    summary: Summary | None = None
    error: WaveformError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True, eq=False)
class OriginalFile:
    """The file a cart sent in its own format, byte for byte (`Client.original`):
    ``format`` is "ge-muse-xml", "philips-sierra-xml", "hl7-aecg" or "scp-ecg"."""

    format: str
    data: bytes
    sha256: str


@dataclass(frozen=True, slots=True)
class SearchPage:
    """One page of a search: a table with a row per ECG, and the cursor of the next
    page (empty on the last one)."""

    table: pa.Table
    next_page_token: str = ""


@dataclass(frozen=True, slots=True, eq=False)
class Trace:
    """Samples of one multiplex group, shaped (leads, samples).

    ``units`` "uV": float32 microvolts. ``units`` "raw": the stored integers, and
    ``physical = samples * sensitivity * correction + baseline`` in ``channel_units``
    (per lead). ``start_s`` is the time of the first sample from the recording's start.
    """

    sop_instance_uid: str
    leads: tuple[str, ...]
    sampling_frequency: float
    start_s: float
    units: Literal["uV", "raw"]
    samples: np.ndarray
    sensitivity: tuple[float, ...] = ()
    correction: tuple[float, ...] = ()
    baseline: tuple[float, ...] = ()
    channel_units: tuple[str, ...] = ()

    @property
    def times(self) -> np.ndarray:
        """Seconds of each sample from the recording's start."""
        return self.start_s + np.arange(self.samples.shape[1]) / self.sampling_frequency


@dataclass(frozen=True, slots=True)
class Compaction:
    merged_files: int
    written_files: int
    removed_files: int
    orphans_removed: int


@dataclass(frozen=True, slots=True)
class ReanalyzeStatus:
    """Where a server's re-analysis job is (one message of its stream); counts are
    totals so far, ``failed_ecgs``/``unread_ecgs`` the (UID, reason) pairs new in
    this message. ``final`` marks the last one."""

    analysis_version: str
    planned: int
    pass_number: int
    pass_ecgs: int
    done: int
    committed: int
    already_present: int
    failed: int
    unread: int
    commits: int
    rate: float
    note: str
    failed_ecgs: tuple[tuple[str, str], ...]
    unread_ecgs: tuple[tuple[str, str], ...]
    final: bool
    files: int
    units: int
    seconds: float


# ------------------------------------------------------------ PatientRecords
DocumentKind = Literal["referral", "examination_note", "statement"]


@dataclass(frozen=True, slots=True)
class DocumentRef:
    document_id: str
    version: int


@dataclass(frozen=True, slots=True)
class Document:
    document_id: str
    version: int
    kind: str
    patient_id: str
    study_instance_uid: str
    accession_number: str
    visit_id: str
    organisation: str
    author: str
    authored_at: dt.datetime | None
    stored_at: dt.datetime | None
    title: str
    text: str
    cda_xml: bytes
    visible_to_patient_from: dt.datetime | None


@dataclass(frozen=True, slots=True)
class DocumentList:
    documents: tuple[Document, ...]
    performer: str = ""
    reporting_physician: str = ""


@dataclass(frozen=True, slots=True)
class Examination:
    sop_instance_uid: str
    study_instance_uid: str
    accession_number: str
    organisation: str
    acquired: dt.datetime | None
    examination_type: str
    heart_rate_bpm: float | None
    rhythm: str
    qtc_ms: float | None
    qtc_formula: str
    documents: tuple[DocumentRef, ...] = ()
    document_kinds: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RecentExaminations:
    examinations: tuple[Examination, ...]
    notice: str = ""


@dataclass(frozen=True, slots=True)
class CitizenExamination:
    acquired: dt.datetime | None
    organisation: str
    examination_type: str
    performer: str
    reporting_physician: str
    documents: tuple[Document, ...] = ()


@dataclass(frozen=True, slots=True)
class Denial:
    denial_id: str
    organisation: str
    study_instance_uid: str
    since: dt.datetime | None


@dataclass(frozen=True, slots=True)
class ConsentState:
    patient_id: str
    consent_granted: bool
    consent_changed_at: dt.datetime | None
    denials: tuple[Denial, ...] = ()


@dataclass(frozen=True, slots=True)
class AuditEvent:
    seq: int
    time: dt.datetime | None
    user: str
    organisation: str
    role: str
    purpose: str
    reason: str
    patient_id: str
    objects: tuple[str, ...]
    action: str
    outcome: str
    rule: str
    emergency: bool
    hash: str


@dataclass(frozen=True, slots=True)
class AuditPage:
    events: tuple[AuditEvent, ...] = field(default=())
    next_page_token: str = ""
