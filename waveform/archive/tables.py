"""The archive's own tables in the store's catalog (`waveform.store.schema.RESERVED`).

Every change is a new row (documents are versioned, consent and denials are
events), so nothing is updated in place and the history stays readable. The
audit trail is not here: it is an append-only journal (`waveform.archive.audit`).
"""

from __future__ import annotations

import threading
import time

import pyarrow as pa

__all__ = ["CONSENT", "DENIAL", "DOCUMENT", "RELEASE", "TABLES", "next_seq"]

_TS = pa.timestamp("us", tz="UTC")
_last_seq = 0
_seq_lock = threading.Lock()


def next_seq() -> int:
    """A strictly increasing number within this process (wall-clock nanoseconds, bumped
    on ties). Only the catalog orders the changes of several servers: rows are applied
    by the snapshot that committed them (`waveform.archive.refresh`), never by ``seq``."""
    global _last_seq
    with _seq_lock:
        _last_seq = max(time.time_ns(), _last_seq + 1)
        return _last_seq

#: One row per version of a document.
DOCUMENT = pa.schema([
    ("document_id", pa.string()),
    ("version", pa.int32()),
    ("kind", pa.string()),
    ("patient_id", pa.string()),
    ("study_instance_uid", pa.string()),
    ("accession_number", pa.string()),
    ("visit_id", pa.string()),
    ("organisation", pa.string()),
    ("author", pa.string()),
    ("authored_at", _TS),
    ("stored_at", _TS),
    ("stored_by", pa.string()),
    ("title", pa.string()),
    ("text", pa.string()),
    ("cda_xml", pa.binary()),
])

#: An organisation showing a document to the patient before its delay ends.
RELEASE = pa.schema([
    ("document_id", pa.string()),
    ("organisation", pa.string()),
    ("released_by", pa.string()),
    ("released_at", _TS),
])

#: The patient's consent to disclosure, one row per change.
CONSENT = pa.schema([
    ("seq", pa.int64()),  # `next_seq`: when this process made the change (not the order)
    ("patient_id", pa.string()),
    ("granted", pa.bool_()),
    ("changed_at", _TS),
    ("changed_by", pa.string()),
])

#: Denials added ("add") and removed ("remove"), one row per change.
DENIAL = pa.schema([
    ("seq", pa.int64()),
    ("denial_id", pa.string()),
    ("patient_id", pa.string()),
    ("change", pa.string()),
    ("organisation", pa.string()),
    ("study_instance_uid", pa.string()),
    ("changed_at", _TS),
    ("changed_by", pa.string()),
])

TABLES: dict[str, pa.Schema] = {
    "document": DOCUMENT, "document_release": RELEASE, "consent": CONSENT, "denial": DENIAL,
}
