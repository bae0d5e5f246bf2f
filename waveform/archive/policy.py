"""Who may see what: the decision table of docs/access.md, in one place.

Two questions are asked here and nowhere else:
- may this role make this call at all (`ROLES`, refused with `AccessDenied`);
- may this clinician see this ECG or document (`decide`), from the object's
  controller organisation, its study, the patient's consent and denials, and the
  purpose of the call. A hidden object is answered `NotFound`, so that nothing
  reveals that it exists.
Each decision names its rule; the audit trail records it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from waveform.archive.consent import ConsentState
from waveform.errors import AccessDenied, InvalidArgument
from waveform.model import Identity

__all__ = [
    "CARE",
    "PHRASES",
    "ROLES",
    "Decision",
    "Purpose",
    "decide",
    "parse_purpose",
    "reaches_others",
    "require_role",
    "roles_for",
]

#: Action -> the roles that may call it. Everything not listed is refused.
ROLES: Mapping[str, tuple[str, ...]] = {
    "ingest": ("device",),
    "attach-document": ("clinician", "device"),
    "search": ("clinician",),
    "summary": ("clinician",),
    "trace": ("clinician",),
    "dicom": ("clinician",),
    "original": ("clinician",),
    "render": ("clinician",),
    "documents": ("clinician",),
    "release-document": ("clinician",),
    "recent-examinations": ("clinician",),
    "my-examinations": ("citizen",),
    "consent-state": ("citizen",),
    "set-consent": ("citizen",),
    "add-denial": ("citizen",),
    "remove-denial": ("citizen",),
    "my-access-log": ("citizen",),
    "query-audit": ("auditor",),
    "compact": ("admin",),
    "reanalyze": ("admin",),
    "compare-versions": ("admin",),
}


def roles_for(action: str) -> tuple[str, ...]:
    return ROLES[action]


#: How a refusal names an action whose name is not a verb ("may not read summaries",
#: never "may not summary"); the others read as they are ("may not ingest").
PHRASES: Mapping[str, str] = {
    "summary": "read summaries",
    "trace": "read traces",
    "dicom": "export DICOM objects",
    "original": "export the files carts sent",
    "render": "render printouts",
    "search": "search ECGs",
    "documents": "read documents",
    "recent-examinations": "list a patient's recent examinations",
    "my-examinations": "see a citizen's own examinations",
    "consent-state": "read a citizen's consent",
    "my-access-log": "read a citizen's access log",
    "query-audit": "query the audit trail",
}


def require_role(identity: Identity, action: str) -> None:
    """`AccessDenied` unless ``identity``'s role may make a call of ``action``."""
    roles = ROLES[action]
    if identity.role not in roles:
        what = PHRASES.get(action, action.replace("-", " "))
        raise AccessDenied(f"{identity.describe()} may not {what} "
                           f"(role {' or '.join(roles)} only)")


@dataclass(frozen=True, slots=True)
class Purpose:
    """Why the caller acts: ``care`` (default) or ``emergency`` (with a reason)."""

    name: str = "care"
    reason: str = ""

    @property
    def emergency(self) -> bool:
        return self.name == "emergency"


CARE = Purpose()


def parse_purpose(metadata: Sequence[tuple[str, str | bytes]]) -> Purpose:
    """The purpose from call metadata (``purpose``, ``purpose-reason``)."""
    values = {k: (v if isinstance(v, str) else v.decode("utf-8", "replace"))
              for k, v in metadata if k in ("purpose", "purpose-reason")}
    name = values.get("purpose", "care").strip().lower() or "care"
    reason = values.get("purpose-reason", "").strip()
    if name not in ("care", "emergency"):
        raise InvalidArgument(f"metadata purpose {name!r} is not 'care' or 'emergency'")
    if name == "emergency" and not reason:
        raise InvalidArgument("metadata purpose 'emergency' needs a purpose-reason saying "
                              "why the patient's consent cannot be asked")
    return Purpose(name, reason if name == "emergency" else "")


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: str
    emergency: bool = False  # allowed only because of the emergency purpose


def decide(caller_organisation: str, controller: str, study_instance_uid: str,
           state: ConsentState, purpose: Purpose) -> Decision:
    """May a clinician of ``caller_organisation`` see an object that ``controller``
    archived, in that study, of a patient whose choices are ``state``?"""
    if caller_organisation == controller:
        return Decision(True, "controller")
    denial = state.denial_for(controller, study_instance_uid)
    if denial is not None:
        return Decision(False, "denied-organisation" if denial.organisation else "denied-study")
    if state.granted:
        return Decision(True, "consent")
    if purpose.emergency:
        return Decision(True, "emergency", emergency=True)
    return Decision(False, "no-consent")


def reaches_others(state: ConsentState, purpose: Purpose) -> bool:
    """Whether other organisations' objects of this patient may be shown at all."""
    return state.granted or purpose.emergency
