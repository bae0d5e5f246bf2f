"""What each caller may do: the one place access decisions are made.

Every handler that touches patient data asks this module, with the caller's
`Identity` and the ECG's context (its archiving organisation, its patient). The
rules of the archive (consent, denials, the citizen's view) are enforced here,
so that no handler can forget them.

Current rules:
- ``device``: may ingest (archived under its own organisation), nothing else.
- ``clinician``: may read ECGs archived by their own organisation.
- ``admin``: may run maintenance (compaction); no patient data.
- ``auditor``, ``citizen``: no traces, objects or summaries here.
A caller who may not see an ECG is told it does not exist (`NotFound`), so that
nothing reveals that a hidden ECG exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from waveform.errors import AccessDenied, NotFound
from waveform.service.identity import Identity

__all__ = ["require_role", "search_scope", "visible"]


def require_role(identity: Identity, action: str, *roles: str) -> None:
    if identity.role not in roles:
        raise AccessDenied(f"{identity.describe()} may not {action} (needs role "
                           f"{' or '.join(roles)})")


def visible(identity: Identity, ecg: Mapping[str, Any], uid: str) -> None:
    """Raise `NotFound` unless ``identity`` may read the ECG whose context is ``ecg``."""
    if identity.role == "clinician" and ecg.get("organisation") == identity.organisation:
        return
    raise NotFound(f"no ECG {uid} is visible to {identity.describe()}")


def search_scope(identity: Identity) -> dict[str, str]:
    """Equality filters every search of ``identity`` is confined to."""
    require_role(identity, "search ECGs", "clinician")
    return {"organisation": identity.organisation}
