"""The archive's rules: documents, consent and denials, the access policy, the
citizen's view and the audit trail (docs/access.md).

`Archive.open(store, audit_dir, clock=..., release=...)` is the entry point; the
service asks it, through one `Access` per call, what each caller may see.
"""

from __future__ import annotations

from waveform.archive.access import Access
from waveform.archive.archive import Archive, DocumentView, Examination
from waveform.archive.audit import AuditEvent, AuditTrail, Trail, open_trail, verify
from waveform.archive.clock import Clock, ManualClock, utcnow
from waveform.archive.consent import ConsentState, Denial
from waveform.archive.documents import KINDS, DocumentMeta, ReleaseDelays
from waveform.archive.policy import CARE, Decision, Purpose, decide, parse_purpose

__all__ = [
    "CARE",
    "KINDS",
    "Access",
    "Archive",
    "AuditEvent",
    "AuditTrail",
    "Clock",
    "ConsentState",
    "Decision",
    "Denial",
    "DocumentMeta",
    "DocumentView",
    "Examination",
    "ManualClock",
    "Purpose",
    "ReleaseDelays",
    "Trail",
    "decide",
    "open_trail",
    "parse_purpose",
    "utcnow",
    "verify",
]
