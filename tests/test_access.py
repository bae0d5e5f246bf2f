"""Every row of the access decision table (docs/access.md), through the real gRPC API.

One in-process server for the module, over a fresh store, with a `ManualClock`
(the release delay) and the audit journal in a directory of its own. Each case
asserts the status code, the exact set of objects the caller gets, and the one
audit event the call appended (with the rule that decided it).

The decision matrix puts one patient in each consent x denial state, with an ECG
and a document archived by org-a and an ECG archived by org-b, and asks a
clinician of the controller organisation and one of another organisation, each
with and without the emergency purpose, for a summary, a trace, the DICOM object,
a printout, the document, a search and the recent examinations; the roles that
are refused whatever the patient chose (device, admin, auditor, citizen) are asked
in three of the states.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pydicom.uid
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tests.conftest import Backend
from waveform.analysis import analyze
from waveform.archive import Archive, ManualClock, ReleaseDelays
from waveform.dicom import decode, encode
from waveform.dicom.synthetic import synthetic_ecg
from waveform.service._proto.waveform.v1 import archive_pb2 as pb
from waveform.service._proto.waveform.v1 import archive_pb2_grpc as pb_grpc
from waveform.service._proto.waveform.v1 import records_pb2 as rpb
from waveform.service._proto.waveform.v1 import records_pb2_grpc as rpb_grpc
from waveform.service.identity import Identity, TokenIdentities, hash_token
from waveform.service.server import start
from waveform.store import Store

T = TypeVar("T")
Metadata = list[tuple[str, str]]

OK = grpc.StatusCode.OK
NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED
INVALID = grpc.StatusCode.INVALID_ARGUMENT

START = dt.datetime(2026, 1, 10, 12, 0, tzinfo=dt.UTC)
REASON = "unconscious on arrival, no next of kin reachable"
DAY = dt.timedelta(days=1)

# --------------------------------------------------------------------------------------
# Callers. Every patient of the module has a citizen identity, so that the patient's
# own consent and denials are set through the API.

CONSENTS = ("never", "granted", "withdrawn")
DENIALS = ("none", "organisation", "study", "unrelated")
STATES = tuple(itertools.product(CONSENTS, DENIALS))
# Patients of the scenario tests below (one each, so that shared state cannot interfere).
SCENARIO_PATIENTS = (
    "PAT-1", "PAT-2", "PAT-OWN-DENIAL", "PAT-SEARCH-ORG", "PAT-PAGE-HIDDEN", "PAT-PAGE-PLAIN",
    "PAT-RECENT", "PAT-VERSIONS", "PAT-ACCESSION", "PAT-PERFORMER", "PAT-CROSS-DOC",
    "PAT-STUDY-HIDDEN", "PAT-RELEASE", "PAT-DUPLICATE", "PAT-CONSENT", "PAT-CONSENT-2",
    "PAT-EMERGENCY", "PAT-TRAIL", "PAT-WRITES", "PAT-PURPOSE", "PAT-ATTACH", "PAT-EACH",
    "PAT-CONCURRENT",
)


def matrix_patient(consent: str, denial: str) -> str:
    return f"PAT-M-{consent}-{denial}"


def citizen(patient: str) -> str:
    """The caller name of the citizen whose patient id is ``patient``."""
    return f"citizen:{patient}"


CALLERS: dict[str, Identity] = {
    "cart_a": Identity("org-a", "cart-a", "device"),
    "cart_b": Identity("org-b", "cart-b", "device"),
    "dr_a": Identity("org-a", "dr-a", "clinician"),
    "dr_b": Identity("org-b", "dr-b", "clinician"),
    "dr_c": Identity("org-c", "dr-c", "clinician"),
    "auditor": Identity("national", "audit-1", "auditor"),
    # A second auditor counts events; its own queries are left out of the counts.
    "counter": Identity("national", "audit-counter", "auditor"),
    "admin": Identity("org-a", "ops", "admin"),
    **{citizen(p): Identity("citizens", f"c-{p.lower()}", "citizen", patient_id=p)
       for p in (*SCENARIO_PATIENTS, *(matrix_patient(c, d) for c, d in STATES))},
}
CALLERS["P1"] = CALLERS[citizen("PAT-1")]
CALLERS["P2"] = CALLERS[citizen("PAT-2")]


CLINICIAN_OF = {"cart_a": "dr_a", "cart_b": "dr_b"}


def token(who: str) -> str:
    return f"token-{who}"


@dataclass
class World:
    """The running server, its clock and audit directory, and stubs for both services."""

    clock: ManualClock
    server: Any
    audit_dir: Path
    channel: grpc.Channel
    ecg: pb_grpc.EcgArchiveStub
    rec: rpb_grpc.PatientRecordsStub
    seeds: Iterator[int] = field(default_factory=lambda: itertools.count(50_000))
    marks: dict[str, int] = field(default_factory=dict)

    def now(self) -> dt.datetime:
        return self.clock()

    def md(self, who: str, *, emergency: bool = False) -> Metadata:
        out = [("authorization", f"Bearer {token(who)}")]
        if emergency:
            out += [("purpose", "emergency"), ("purpose-reason", REASON)]
        return out

    # ------------------------------------------------------------ making data
    def ecg_bytes(self, patient: str, *, acquired: dt.datetime, study: str = "",
                  accession: str = "", operator: str = "Operator^Olga",
                  reader: str = "Reader^Rita", heart_rate: float = 72.0) -> bytes:
        ecg = synthetic_ecg(seed=next(self.seeds), duration_s=2.0, heart_rate=heart_rate)
        ecg = ecg.replace(
            sop_instance_uid=str(pydicom.uid.generate_uid()),
            study_instance_uid=study or str(pydicom.uid.generate_uid()),
            accession_number=accession, patient_id=patient,
            acquisition_datetime=acquired.astimezone(dt.UTC).replace(tzinfo=None),
            operator=operator, reading_physician=reader)
        return encode(ecg)

    def ingest(self, device: str, data: bytes) -> pb.IngestResponse:
        r: pb.IngestResponse = self.ecg.Ingest(
            pb.IngestRequest(dicom=data, wait_for_summary=True), metadata=self.md(device))
        return r

    def add_ecgs(self, specs: Sequence[tuple[str, str, float, dict[str, Any]]]
                 ) -> list[tuple[str, str, bytes]]:
        """Archive ECGs (device, patient, days ago, `ecg_bytes` options) concurrently, so
        that they share commits; (SOP Instance UID, Study UID, bytes) of each."""
        made = []
        for device, patient, days_ago, kw in specs:
            study = kw.get("study") or str(pydicom.uid.generate_uid())
            data = self.ecg_bytes(patient, acquired=self.now() - days_ago * DAY,
                                  **{**kw, "study": study})
            future = self.ecg.Ingest.future(pb.IngestRequest(dicom=data, wait_for_summary=True),
                                            metadata=self.md(device))
            made.append((device, study, data, future))
        out = []
        for device, study, data, future in made:
            r = future.result()
            if not r.HasField("summary"):  # not measured within the server's wait (load)
                self.wait_for_summary(r.sop_instance_uid, CLINICIAN_OF[device])
            out.append((r.sop_instance_uid, study, data))
        return out

    def wait_for_summary(self, uid: str, clinician: str, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            code, _, details = answer(lambda: self.ecg.GetSummary(
                pb.GetSummaryRequest(sop_instance_uid=uid), metadata=self.md(clinician)))
            if code == OK:
                return
            assert code == NOT_FOUND and time.monotonic() < deadline, details
            time.sleep(0.2)

    def add_ecg(self, device: str, patient: str, *, days_ago: float, **kw: Any
                ) -> tuple[str, str, bytes]:
        """Archive an ECG acquired ``days_ago``; (SOP Instance UID, Study UID, bytes)."""
        (made,) = self.add_ecgs([(device, patient, days_ago, kw)])
        return made

    def attach(self, who: str, patient: str, *, kind: rpb.DocumentKind = rpb.STATEMENT,
               study: str = "",
               accession: str = "", author: str = "Author^Ann", text: str = "",
               authored_at: dt.datetime | None = None, document_id: str = "",
               cda: bytes = b"") -> rpb.DocumentRef:
        req = rpb.AttachDocumentRequest(
            kind=kind, patient_id=patient, study_instance_uid=study, accession_number=accession,
            visit_id="VISIT-1", author=author, title="ECG", text=text or f"text by {author}",
            cda_xml=cda, document_id=document_id)
        if authored_at is not None:
            req.authored_at.CopyFrom(ts(authored_at))
        ref: rpb.DocumentRef = self.rec.AttachDocument(req, metadata=self.md(who))
        return ref

    # ----------------------------------------------------------------- audit
    def events(self, **filters: Any) -> list[rpb.AuditEvent]:
        """Every event matching ``filters`` (QueryAudit by the counting auditor), oldest
        first, without the counting auditor's own queries."""
        out: list[rpb.AuditEvent] = []
        page_token = ""
        while True:
            page = self.rec.QueryAudit(
                rpb.QueryAuditRequest(limit=1000, page_token=page_token, **filters),
                metadata=self.md("counter"))
            out += [e for e in page.events if e.user != CALLERS["counter"].user]
            page_token = page.next_page_token
            if not page_token:
                return out

    @contextmanager
    def appended(self, patient: str, *, cached: bool = False) -> Iterator[Appended]:
        """The events about ``patient`` that the block appends. ``cached``: start from
        the last event seen by the previous cached block of this patient (for patients
        that only such blocks touch) instead of asking the trail."""
        before = self.marks.pop(patient, None) if cached else None
        if before is None:
            before = max((e.seq for e in self.events(patient_id=patient)), default=0)
        box = Appended(patient)
        yield box
        box.events = [e for e in self.events(patient_id=patient) if e.seq > before]
        if cached:
            self.marks[patient] = max([before, *(e.seq for e in box.events)])

    @contextmanager
    def one_event(self, patient: str) -> Iterator[Appended]:
        """Assert that the block appends exactly one event about ``patient``."""
        with self.appended(patient) as box:
            yield box
        assert box.one


@dataclass
class Appended:
    """The events a block appended about one patient (`World.appended`)."""

    patient: str
    events: list[rpb.AuditEvent] = field(default_factory=list)

    @property
    def one(self) -> rpb.AuditEvent:
        assert len(self.events) == 1, (
            f"expected exactly one audit event about {self.patient}, got "
            f"{[(e.action, e.user, e.outcome, e.rule) for e in self.events]}")
        return self.events[0]


def ts(when: dt.datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(when)
    return t


def when(t: Timestamp) -> dt.datetime:
    return t.ToDatetime(tzinfo=dt.UTC)


def answer(fn: Callable[[], T]) -> tuple[grpc.StatusCode, T | None, str]:
    """(status code, result or None, details) of one call."""
    try:
        return OK, fn(), ""
    except grpc.RpcError as e:
        return e.code(), None, e.details()


def refused(fn: Callable[[], object]) -> grpc.StatusCode:
    code, _, _ = answer(fn)
    return code


@contextmanager
def open_world(root: Path, backend: Backend | None = None) -> Iterator[World]:
    """A server over a fresh store in ``root`` (or on ``backend``), its audit journal
    in ``root/audit``."""
    # The server runs in this process: measuring one ECG here compiles the analysis
    # kernels first, so that no ingest waits for a compilation past its summary timeout.
    analyze(decode(encode(synthetic_ecg(seed=1, duration_s=2.0))))
    clock = ManualClock(START)
    identities = TokenIdentities({hash_token(token(w)): ident for w, ident in CALLERS.items()})
    store = (Store.open(root / "data", analyze="auto") if backend is None else
             Store.open(backend.data_dir, catalog=backend.catalog,
                        data_path=backend.data_path, analyze="auto"))
    archive = Archive.open(store, root / "audit", clock=clock,
                           release=ReleaseDelays(default_days=14,
                                                 by_organisation={"org-b": {"statement": 3}}))
    server = start(store, identities, archive=archive, port=0)
    channel = grpc.insecure_channel(server.address)
    try:
        yield World(clock, server, root / "audit", channel, pb_grpc.EcgArchiveStub(channel),
                    rpb_grpc.PatientRecordsStub(channel))
    finally:
        channel.close()
        server.stop(5)
        archive.close()
        store.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, module_backend: Backend
          ) -> Iterator[World]:
    """The decision table and the audit checks run on each backend in turn."""
    with open_world(tmp_path_factory.mktemp("access"), module_backend) as w:
        yield w


# --------------------------------------------------------------------------------------
# The decision table, as the test reads it (docs/access.md, "Who sees an ECG or a
# document"): rows in order, the first that matches decides.


@dataclass(frozen=True, slots=True)
class Case:
    role: str
    same_organisation: bool  # the caller's organisation is the object's controller
    consent: str             # never, granted, withdrawn
    denial: str              # none, organisation, study, unrelated
    emergency: bool


@dataclass(frozen=True, slots=True)
class Row:
    rule: str
    when: Callable[[Case], bool]
    code: grpc.StatusCode


ROWS: tuple[Row, ...] = (
    Row("role", lambda c: c.role != "clinician", DENIED),
    Row("controller", lambda c: c.same_organisation, OK),
    Row("denied-organisation", lambda c: c.denial == "organisation", NOT_FOUND),
    Row("denied-study", lambda c: c.denial == "study", NOT_FOUND),
    Row("consent", lambda c: c.consent == "granted", OK),
    Row("emergency", lambda c: c.emergency, OK),
    Row("no-consent", lambda c: True, NOT_FOUND),
)


def decide(case: Case) -> Row:
    return next(row for row in ROWS if row.when(case))


def test_the_table_covers_every_case() -> None:
    """Each row decides at least one case of the matrix (no dead row)."""
    used = {decide(Case(role, same, consent, denial, emergency)).rule
            for role in ("clinician", "device", "citizen", "auditor", "admin")
            for same, emergency in itertools.product((True, False), repeat=2)
            for consent, denial in STATES}
    assert used == {row.rule for row in ROWS}


# --------------------------------------------------------------------------------------
# The matrix.


@dataclass(frozen=True, slots=True)
class Scenario:
    patient: str
    consent: str
    denial: str
    a_uid: str      # archived by org-a (cart_a), 2 days ago
    a_study: str
    a_bytes: bytes
    b_uid: str      # archived by org-b (cart_b), 5 days ago
    b_study: str
    document_id: str  # a statement by org-a (dr_a) on study a_study


def _set_choices(w: World, patient: str, consent: str, denial: str, a_study: str) -> None:
    md = w.md(citizen(patient))
    if consent in ("granted", "withdrawn"):
        w.rec.SetConsent(rpb.SetConsentRequest(granted=True), metadata=md)
    if consent == "withdrawn":
        w.rec.SetConsent(rpb.SetConsentRequest(granted=False), metadata=md)
    if denial == "organisation":
        w.rec.AddDenial(rpb.AddDenialRequest(organisation="org-a"), metadata=md)
    elif denial == "study":
        w.rec.AddDenial(rpb.AddDenialRequest(study_instance_uid=a_study), metadata=md)
    elif denial == "unrelated":  # denials that name neither org-a nor the study
        w.rec.AddDenial(rpb.AddDenialRequest(organisation="org-c"), metadata=md)
        w.rec.AddDenial(rpb.AddDenialRequest(study_instance_uid=str(pydicom.uid.generate_uid())),
                        metadata=md)
    state = w.rec.GetConsentState(rpb.GetConsentStateRequest(), metadata=md)
    assert state.consent_granted == (consent == "granted")
    assert len(state.denials) == {"none": 0, "organisation": 1, "study": 1, "unrelated": 2}[denial]


@pytest.fixture(scope="module")
def matrix(world: World) -> dict[tuple[str, str], Scenario]:
    ecgs = iter(world.add_ecgs([
        (device, matrix_patient(consent, denial), days_ago, {})
        for consent, denial in STATES for device, days_ago in (("cart_a", 2), ("cart_b", 5))]))

    def scenario(consent: str, denial: str) -> Scenario:
        patient = matrix_patient(consent, denial)
        (a_uid, a_study, a_bytes), (b_uid, b_study, _) = next(ecgs), next(ecgs)
        doc = world.attach("dr_a", patient, study=a_study, author="Statement^Sam")
        _set_choices(world, patient, consent, denial, a_study)
        return Scenario(patient, consent, denial, a_uid, a_study, a_bytes, b_uid, b_study,
                        doc.document_id)

    made = [scenario(consent, denial) for consent, denial in STATES]
    return {(s.consent, s.denial): s for s in made}


# Caller of the matrix -> (caller name, emergency purpose). "citizen" is the patient's own.
MATRIX_CALLERS: dict[str, tuple[str, bool]] = {
    "dr_a": ("dr_a", False),
    "dr_a+emergency": ("dr_a", True),
    "dr_b": ("dr_b", False),
    "dr_b+emergency": ("dr_b", True),
    "cart_a": ("cart_a", False),
    "admin": ("admin", False),
    "auditor": ("auditor", False),
    "citizen": ("citizen", False),
}


@dataclass(frozen=True, slots=True)
class Op:
    """A call about one object: the audit action, how to make it, what an answer holds."""

    action: str
    call: Callable[[World, Metadata, str], Any]
    check: Callable[[Any, Scenario], None]


def _check_summary(r: pb.Summary, s: Scenario) -> None:
    assert r.sop_instance_uid == s.a_uid and r.heart_rate_bpm.value > 0


def _check_trace(chunks: list[pb.TraceChunk], s: Scenario) -> None:
    assert chunks[0].sop_instance_uid == s.a_uid and list(chunks[0].leads) == ["II"]
    assert sum(c.samples for c in chunks) == chunks[0].total_samples > 0


def _check_dicom(chunks: list[pb.DicomChunk], s: Scenario) -> None:
    assert b"".join(c.data for c in chunks) == s.a_bytes


def _check_render(chunks: list[pb.RenderChunk], s: Scenario) -> None:
    assert chunks[0].media_type == "image/png"
    assert b"".join(c.data for c in chunks).startswith(b"\x89PNG")


def _check_documents(r: rpb.DocumentList, s: Scenario) -> None:
    assert [(d.document_id, d.organisation, d.study_instance_uid) for d in r.documents] == [
        (s.document_id, "org-a", s.a_study)]


OPS: dict[str, Op] = {
    "summary": Op("summary", lambda w, md, uid: w.ecg.GetSummary(
        pb.GetSummaryRequest(sop_instance_uid=uid), metadata=md), _check_summary),
    "trace": Op("trace", lambda w, md, uid: list(w.ecg.GetTrace(
        pb.GetTraceRequest(sop_instance_uid=uid, leads=["II"]), metadata=md)), _check_trace),
    "dicom": Op("dicom", lambda w, md, uid: list(w.ecg.GetDicom(
        pb.GetDicomRequest(sop_instance_uid=uid), metadata=md)), _check_dicom),
    "render": Op("render", lambda w, md, uid: list(w.ecg.Render(
        pb.RenderRequest(sop_instance_uid=uid, dpi=50), metadata=md)), _check_render),
    "documents": Op("documents", lambda w, md, doc: w.rec.GetDocuments(
        rpb.GetDocumentsRequest(document_id=doc), metadata=md), _check_documents),
}


def _caller(name: str, s: Scenario) -> tuple[str, Identity, bool]:
    who, emergency = MATRIX_CALLERS[name]
    if who == "citizen":
        who = citizen(s.patient)
    return who, CALLERS[who], emergency


def _check_event(ev: rpb.AuditEvent, ident: Identity, s: Scenario, action: str,
                 emergency: bool, allowed: bool) -> None:
    assert (ev.user, ev.organisation, ev.role) == (ident.user, ident.organisation, ident.role)
    assert (ev.patient_id, ev.action) == (s.patient, action)
    assert (ev.purpose, ev.reason) == (("emergency", REASON) if emergency else ("care", ""))
    assert ev.outcome == ("allowed" if allowed else "denied")
    assert re.fullmatch("[0-9a-f]{64}", ev.hash)


# The roles that are refused whatever the patient's choices are asked in three states:
# one where another organisation's clinician would see the object, one where nobody
# else would, and one with a denial.
_ROLE_STATES = (("granted", "none"), ("never", "none"), ("withdrawn", "study"))
_MATRIX = [(c, d, who) for (c, d) in STATES for who in MATRIX_CALLERS
           if who.startswith("dr_") or (c, d) in _ROLE_STATES]


def _ids(params: Sequence[tuple[str, ...]]) -> list[str]:
    return ["-".join(p) for p in params]


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize(("consent", "denial", "caller"), _MATRIX, ids=_ids(_MATRIX))
def test_one_object(world: World, matrix: dict[tuple[str, str], Scenario], op: str,
                    consent: str, denial: str, caller: str) -> None:
    """GetSummary, GetTrace, GetDicom, Render and GetDocuments of org-a's ECG or document."""
    s = matrix[consent, denial]
    who, ident, emergency = _caller(caller, s)
    row = decide(Case(ident.role, ident.organisation == "org-a", consent, denial, emergency))
    spec = OPS[op]
    target = s.document_id if op == "documents" else s.a_uid
    with world.appended(s.patient, cached=True) as box:
        code, result, details = answer(lambda: spec.call(world, world.md(who, emergency=emergency),
                                                         target))
    assert code == row.code, f"rule {row.rule}: {details}"
    if code == OK:
        spec.check(result, s)
    elif code == NOT_FOUND:  # a hidden object looks exactly like one that does not exist
        assert details.replace(target, "<id>") == _unknown_answer(world, op, who, emergency)
    ev = box.one
    _check_event(ev, ident, s, spec.action, emergency, code == OK)
    assert (list(ev.objects), ev.rule) == ([target], row.rule)
    if row.rule == "emergency":
        assert ev.emergency
    if not emergency:
        assert not ev.emergency


_UNKNOWN: dict[tuple[str, str, bool], str] = {}


def _unknown_answer(w: World, op: str, who: str, emergency: bool) -> str:
    """The NOT_FOUND message of ``op`` for an object that does not exist, with its id
    written ``<id>``."""
    key = (op, who, emergency)
    if key not in _UNKNOWN:
        unknown = str(pydicom.uid.generate_uid()) if op != "documents" else "no-such-document"
        code, _, details = answer(lambda: OPS[op].call(w, w.md(who, emergency=emergency),
                                                       unknown))
        assert code == NOT_FOUND, details
        _UNKNOWN[key] = details.replace(unknown, "<id>")
    return _UNKNOWN[key]


def _visible(ident: Identity, emergency: bool, s: Scenario) -> list[str]:
    """What a search of the patient shows ``ident``, newest first (A before B)."""
    out = []
    for uid, controller in ((s.a_uid, "org-a"), (s.b_uid, "org-b")):
        # A denial names org-a or study A only: org-b's ECG is never covered by it.
        denial = s.denial if controller == "org-a" else "none"
        row = decide(Case(ident.role, ident.organisation == controller, s.consent, denial,
                          emergency))
        if row.code == OK:
            out.append(uid)
    return out


@pytest.mark.parametrize(("consent", "denial", "caller"), _MATRIX, ids=_ids(_MATRIX))
def test_search_by_patient(world: World, matrix: dict[tuple[str, str], Scenario], consent: str,
                           denial: str, caller: str) -> None:
    s = matrix[consent, denial]
    who, ident, emergency = _caller(caller, s)
    with world.appended(s.patient, cached=True) as box:
        code, r, details = answer(lambda: world.ecg.Search(
            pb.SearchRequest(patient_id=s.patient), metadata=world.md(who, emergency=emergency)))
    if ident.role != "clinician":
        assert code == DENIED, details
        ev = box.one
        _check_event(ev, ident, s, "search", emergency, False)
        assert ev.rule == "role"
        return
    assert code == OK, details
    assert r is not None
    assert [h.sop_instance_uid for h in r.hits] == _visible(ident, emergency, s)
    assert r.next_page_token == ""
    _check_event(box.one, ident, s, "search", emergency, True)


@pytest.mark.parametrize(("consent", "denial", "caller"), _MATRIX, ids=_ids(_MATRIX))
def test_recent_examinations(world: World, matrix: dict[tuple[str, str], Scenario],
                             consent: str, denial: str, caller: str) -> None:
    s = matrix[consent, denial]
    who, ident, emergency = _caller(caller, s)
    with world.appended(s.patient, cached=True) as box:
        code, r, details = answer(lambda: world.rec.RecentExaminations(
            rpb.RecentExaminationsRequest(patient_id=s.patient, within_days=30),
            metadata=world.md(who, emergency=emergency)))
    if ident.role != "clinician":
        assert code == DENIED, details
        ev = box.one
        _check_event(ev, ident, s, "recent-examinations", emergency, False)
        assert ev.rule == "role"
        return
    assert code == OK, details
    assert r is not None
    assert [e.sop_instance_uid for e in r.examinations] == _visible(ident, emergency, s)
    links = {s.a_uid: [(s.document_id, rpb.STATEMENT, 1)], s.b_uid: []}
    assert [[(d.document_id, d.kind, d.version) for d in e.documents] for e in r.examinations
            ] == [links[e.sop_instance_uid] for e in r.examinations]
    # The notice says exactly when other organisations were not searched: no consent,
    # no emergency. A denial is no reason for it (the patient has consented).
    assert bool(r.notice) == (consent != "granted" and not emergency), r.notice
    _check_event(box.one, ident, s, "recent-examinations", emergency, True)


# --------------------------------------------------------------------------------------
# Search: confined to the caller's organisation without a patient filter; paging does
# not reveal a hidden ECG.


def _page_shapes(w: World, who: str, patient: str, page_size: int) -> list[tuple[int, bool]]:
    shapes, page_token = [], ""
    for _ in range(20):
        r = w.ecg.Search(pb.SearchRequest(patient_id=patient, page_size=page_size,
                                          page_token=page_token), metadata=w.md(who))
        shapes.append((len(r.hits), bool(r.next_page_token)))
        page_token = r.next_page_token
        if not page_token:
            return shapes
    raise AssertionError("search paging did not end")


def test_search_without_patient_is_confined_to_own_organisation(world: World) -> None:
    p = "PAT-SEARCH-ORG"
    world.rec.SetConsent(rpb.SetConsentRequest(granted=True), metadata=world.md(citizen(p)))
    a_uid, a_study, _ = world.add_ecg("cart_a", p, days_ago=1)
    b_uid, b_study, _ = world.add_ecg("cart_b", p, days_ago=1)
    by_study = {study: [h.sop_instance_uid for h in world.ecg.Search(
        pb.SearchRequest(study_instance_uid=study), metadata=world.md("dr_b")).hits]
        for study in (a_study, b_study)}
    assert by_study == {a_study: [], b_study: [b_uid]}  # consent, but no patient filter
    asked = world.ecg.Search(pb.SearchRequest(organisation="org-a"), metadata=world.md("dr_b"))
    assert list(asked.hits) == []
    everything: list[pb.SearchHit] = []
    page_token = ""
    while True:
        r = world.ecg.Search(pb.SearchRequest(page_size=500, page_token=page_token),
                             metadata=world.md("dr_b"))
        everything += r.hits
        page_token = r.next_page_token
        if not page_token:
            break
    assert {h.organisation for h in everything} == {"org-b"}
    assert b_uid in {h.sop_instance_uid for h in everything}
    # With the patient filter the consented org-a ECG is included.
    mine = world.ecg.Search(pb.SearchRequest(patient_id=p), metadata=world.md("dr_b"))
    assert {h.sop_instance_uid for h in mine.hits} == {a_uid, b_uid}


def test_search_paging_does_not_reveal_hidden_ecgs(world: World) -> None:
    """Hidden ECGs newer than, between and older than the visible ones change nothing
    in the pages: the same sizes and the same next-page tokens as without them."""
    hidden, plain = "PAT-PAGE-HIDDEN", "PAT-PAGE-PLAIN"
    made = world.add_ecgs([("cart_b", hidden, 3, {}), ("cart_b", hidden, 6, {}),
                           # org-a's, no consent: hidden from dr_b
                           ("cart_a", hidden, 1, {}), ("cart_a", hidden, 4, {}),
                           ("cart_a", hidden, 8, {}),
                           ("cart_b", plain, 3, {}), ("cart_b", plain, 6, {})])
    visible = [uid for uid, _, _ in made[:2]]
    for page_size in (1, 2, 3):
        assert _page_shapes(world, "dr_b", hidden, page_size) == \
            _page_shapes(world, "dr_b", plain, page_size), page_size
    seen, page_token = [], ""
    while True:
        r = world.ecg.Search(pb.SearchRequest(patient_id=hidden, page_size=1,
                                              page_token=page_token), metadata=world.md("dr_b"))
        seen += [h.sop_instance_uid for h in r.hits]
        page_token = r.next_page_token
        if not page_token:
            break
    assert seen == visible


# --------------------------------------------------------------------------------------
# RecentExaminations: the window, the order, the summary values, the links.


def test_recent_examinations_window_order_and_links(world: World) -> None:
    p = "PAT-RECENT"
    world.rec.SetConsent(rpb.SetConsentRequest(granted=True), metadata=world.md(citizen(p)))
    (a1, study1, _), (b3, _, _), (a10, _, _), (a40, _, _), (a400, _, _) = world.add_ecgs([
        ("cart_a", p, 1, {"heart_rate": 60.0}), ("cart_b", p, 3, {"heart_rate": 90.0}),
        ("cart_a", p, 10, {}), ("cart_a", p, 40, {}), ("cart_a", p, 400, {})])
    statement = world.attach("dr_a", p, study=study1)
    referral = world.attach("dr_a", p, study=study1, kind=rpb.REFERRAL)

    def recent(days: int) -> list[rpb.Examination]:
        r = world.rec.RecentExaminations(
            rpb.RecentExaminationsRequest(patient_id=p, within_days=days),
            metadata=world.md("dr_a"))
        assert r.notice == ""
        return list(r.examinations)

    assert [e.sop_instance_uid for e in recent(2)] == [a1]
    assert [e.sop_instance_uid for e in recent(30)] == [a1, b3, a10]
    assert [e.sop_instance_uid for e in recent(0)] == [a1, b3, a10, a40]  # default 365 days
    first, second = recent(30)[:2]
    assert (first.organisation, second.organisation) == ("org-a", "org-b")
    assert first.study_instance_uid == study1 and first.examination_type
    assert first.heart_rate_bpm.value == pytest.approx(60.0, abs=3.0)
    assert second.heart_rate_bpm.value == pytest.approx(90.0, abs=3.0)
    assert first.qtc_ms.value > 0 and first.qtc_formula and first.rhythm
    assert when(first.acquired) == world.now() - DAY
    assert sorted((d.document_id, d.kind, d.version) for d in first.documents) == sorted(
        [(statement.document_id, rpb.STATEMENT, 1), (referral.document_id, rpb.REFERRAL, 1)])
    assert list(second.documents) == []
    assert a400 not in {e.sop_instance_uid for e in recent(0)}


# --------------------------------------------------------------------------------------
# Documents (docs/access.md, "Documents").


def test_attach_is_for_clinicians_and_devices(world: World) -> None:
    p = "PAT-ATTACH"
    _, study, _ = world.add_ecg("cart_a", p, days_ago=1)
    for who in (citizen(p), "admin", "auditor"):
        with world.one_event(p) as box:
            assert refused(lambda: world.attach(who, p, study=study)) == DENIED, who  # noqa: B023
        assert (box.one.outcome, box.one.rule, box.one.action) == (
            "denied", "role", "attach-document")
    with world.one_event(p) as box:
        ref = world.attach("cart_a", p, study=study, kind=rpb.EXAMINATION_NOTE)
    assert (ref.version, box.one.action, box.one.outcome) == (1, "attach-document", "allowed")
    assert list(box.one.objects) == [ref.document_id]
    (doc,) = world.rec.GetDocuments(rpb.GetDocumentsRequest(document_id=ref.document_id),
                                    metadata=world.md("dr_a")).documents
    assert (doc.organisation, doc.kind, doc.patient_id, doc.visit_id) == (
        "org-a", rpb.EXAMINATION_NOTE, p, "VISIT-1")
    assert when(doc.stored_at) == world.now() == when(doc.authored_at)


def test_versions_of_a_document(world: World) -> None:
    p = "PAT-VERSIONS"
    _, study, _ = world.add_ecg("cart_a", p, days_ago=1)
    v1 = world.attach("dr_a", p, study=study, text="QT normal", cda=b"<ClinicalDocument/>")
    v2 = world.attach("dr_a", p, study=study, text="QT prolonged (corrected)",
                      document_id=v1.document_id)
    assert (v1.version, v2.version, v2.document_id) == (1, 2, v1.document_id)

    def docs(who: str = "dr_a", **kw: Any) -> list[tuple[int, str, bytes]]:
        r = world.rec.GetDocuments(rpb.GetDocumentsRequest(**kw), metadata=world.md(who))
        return sorted((d.version, d.text, d.cda_xml) for d in r.documents)

    assert docs(document_id=v1.document_id) == [(2, "QT prolonged (corrected)", b"")]
    assert docs(study_instance_uid=study) == [(2, "QT prolonged (corrected)", b"")]
    assert docs(document_id=v1.document_id, all_versions=True) == [
        (1, "QT normal", b""), (2, "QT prolonged (corrected)", b"")]
    assert docs(document_id=v1.document_id, all_versions=True, with_cda=True)[0] == (
        1, "QT normal", b"<ClinicalDocument/>")
    # Another organisation cannot add a version, seen (consent) or not.
    for consent in (False, True):
        world.rec.SetConsent(rpb.SetConsentRequest(granted=consent),
                             metadata=world.md(citizen(p)))
        code = refused(lambda: world.attach("dr_b", p, study=study, text="overwritten",
                                            document_id=v1.document_id))
        assert code in (NOT_FOUND, DENIED), code
        code = refused(lambda: world.attach("cart_b", p, study=study, text="overwritten",
                                            document_id=v1.document_id))
        assert code in (NOT_FOUND, DENIED), code
    assert [v for v, _, _ in docs(document_id=v1.document_id, all_versions=True)] == [1, 2]
    assert [v for v, _, _ in docs("dr_b", document_id=v1.document_id, all_versions=True)] == [
        1, 2]  # consent is granted now: dr_b sees both versions


def test_documents_before_the_ecg_are_linked_by_accession(world: World) -> None:
    p = "PAT-ACCESSION"
    world.rec.SetConsent(rpb.SetConsentRequest(granted=True), metadata=world.md(citizen(p)))
    mine = world.attach("dr_a", p, accession="ACC-LINK-1", kind=rpb.REFERRAL)
    theirs = world.attach("dr_b", p, accession="ACC-LINK-1", kind=rpb.REFERRAL)  # org-b's
    _, study, _ = world.add_ecg("cart_a", p, days_ago=0, accession="ACC-LINK-1")
    after = world.attach("dr_a", p, study=study)
    for who in ("dr_a", "dr_b"):
        r = world.rec.GetDocuments(rpb.GetDocumentsRequest(study_instance_uid=study),
                                   metadata=world.md(who))
        assert {d.document_id for d in r.documents} == {mine.document_id, after.document_id}, who
        assert theirs.document_id not in {d.document_id for d in r.documents}


def test_performer_and_reporting_physician(world: World) -> None:
    p = "PAT-PERFORMER"
    _, study, _ = world.add_ecg("cart_a", p, days_ago=1, operator="Nurse^Ann",
                                reader="Reader^Rex")

    def names() -> tuple[str, str]:
        r = world.rec.GetDocuments(rpb.GetDocumentsRequest(study_instance_uid=study),
                                   metadata=world.md("dr_a"))
        return r.performer, r.reporting_physician

    world.attach("dr_a", p, study=study, kind=rpb.REFERRAL, author="Referrer^Rolf")
    assert names() == ("Nurse^Ann", "Reader^Rex")  # no statement: the ECG's reader
    first = world.attach("dr_a", p, study=study, author="Stat^One")
    assert names() == ("Nurse^Ann", "Stat^One")
    world.attach("dr_a", p, study=study, author="Stat^Two", document_id=first.document_id)
    assert names() == ("Nurse^Ann", "Stat^Two")  # the latest statement's author


def _by_study(w: World, who: str, study: str, **kw: Any
              ) -> tuple[grpc.StatusCode, set[str], tuple[str, str]]:
    code, r, _ = answer(lambda: w.rec.GetDocuments(
        rpb.GetDocumentsRequest(study_instance_uid=study), metadata=w.md(who, **kw)))
    if r is None:
        return code, set(), ("", "")
    return code, {d.document_id for d in r.documents}, (r.performer, r.reporting_physician)


def test_documents_follow_their_own_organisation(world: World) -> None:
    """A document's controller is the organisation that attached it, also on another
    organisation's examination; a study denial hides it from everyone else."""
    p = "PAT-CROSS-DOC"
    _, study, _ = world.add_ecg("cart_a", p, days_ago=1, operator="Nurse^Ann")
    a_doc = world.attach("dr_a", p, study=study).document_id
    b_doc = world.attach("dr_b", p, study=study, kind=rpb.EXAMINATION_NOTE).document_id
    unknown = _by_study(world, "dr_b", str(pydicom.uid.generate_uid()))
    assert unknown[1:] == (set(), ("", ""))

    assert _by_study(world, "dr_a", study)[:2] == (OK, {a_doc})  # no consent
    code, docs, names = _by_study(world, "dr_b", study)
    assert (code, docs) == (OK, {b_doc})
    assert names == ("", "")  # the ECG is hidden from org-b: so are its names
    assert _by_study(world, "dr_c", study) == unknown

    world.rec.SetConsent(rpb.SetConsentRequest(granted=True), metadata=world.md(citizen(p)))
    assert _by_study(world, "dr_a", study)[1] == {a_doc, b_doc}
    assert _by_study(world, "dr_c", study)[:2] == (OK, {a_doc, b_doc})

    world.rec.AddDenial(rpb.AddDenialRequest(study_instance_uid=study),
                        metadata=world.md(citizen(p)))
    assert _by_study(world, "dr_a", study)[1] == {a_doc}
    assert _by_study(world, "dr_b", study)[1] == {b_doc}
    assert _by_study(world, "dr_c", study) == unknown
    assert _by_study(world, "dr_c", study, emergency=True) == unknown


def test_hidden_study_answers_like_an_unknown_one(world: World) -> None:
    p = "PAT-STUDY-HIDDEN"
    _, study, _ = world.add_ecg("cart_a", p, days_ago=1)
    world.attach("dr_a", p, study=study)
    unknown = _by_study(world, "dr_b", str(pydicom.uid.generate_uid()))
    assert _by_study(world, "dr_b", study) == unknown  # no consent
    world.rec.AddDenial(rpb.AddDenialRequest(organisation="org-a"), metadata=world.md(citizen(p)))
    assert _by_study(world, "dr_b", study, emergency=True) == unknown


def test_release_document(world: World) -> None:
    p = "PAT-RELEASE"
    _, study, _ = world.add_ecg("cart_a", p, days_ago=1)
    doc = world.attach("dr_a", p, study=study).document_id

    def release(who: str) -> grpc.StatusCode:
        with world.one_event(p) as box:
            code = refused(lambda: world.rec.ReleaseDocument(
                rpb.ReleaseDocumentRequest(document_id=doc), metadata=world.md(who)))
        assert box.one.action == "release-document" and list(box.one.objects) == [doc]
        assert box.one.outcome == ("allowed" if code == OK else "denied")
        return code

    for who in ("cart_a", "admin", "auditor", citizen(p)):
        assert release(who) == DENIED, who
    assert release("dr_b") == NOT_FOUND  # may not see it
    world.rec.SetConsent(rpb.SetConsentRequest(granted=True), metadata=world.md(citizen(p)))
    assert release("dr_b") == DENIED  # sees it, but it is org-a's
    r = world.rec.ReleaseDocument(rpb.ReleaseDocumentRequest(document_id=doc),
                                  metadata=world.md("dr_a"))
    assert when(r.released_at) == world.now()
    (d,) = world.rec.GetDocuments(rpb.GetDocumentsRequest(document_id=doc),
                                  metadata=world.md("dr_a")).documents
    assert when(d.visible_to_patient_from) == world.now()


# --------------------------------------------------------------------------------------
# The duplicate check.


def test_duplicate_of_another_organisations_object(world: World) -> None:
    p = "PAT-DUPLICATE"
    uid, _, data = world.add_ecg("cart_a", p, days_ago=1)
    with world.one_event(p) as box:
        again = world.ingest("cart_b", data)
    assert (again.sop_instance_uid, again.already_stored) == (uid, True)
    assert not again.HasField("summary")  # never another organisation's summary
    assert box.one.action == "ingest" and list(box.one.objects) == [uid]
    assert world.ingest("cart_a", data).HasField("summary")  # its own: yes

    other = bytearray(data)
    other[-1] ^= 0xFF  # the same UID, other samples
    code, _, details = answer(lambda: world.ingest("cart_b", bytes(other)))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert "org-a" not in details, details
    # Sending it did not make org-b its controller.
    assert refused(lambda: world.ecg.GetSummary(pb.GetSummaryRequest(sop_instance_uid=uid),
                                                metadata=world.md("dr_b"))) == NOT_FOUND
    assert list(world.ecg.Search(pb.SearchRequest(patient_id=p),
                                 metadata=world.md("dr_b")).hits) == []


def test_rules_hold_for_concurrent_calls(world: World) -> None:
    """Right after ingests, concurrent calls see each ECG as its controller archived it:
    the controller's clinician reads it, another organisation's duplicate gets no
    summary, and every duplicate is recorded against the patient."""
    p = "PAT-CONCURRENT"
    for _ in range(3):
        datas = [world.ecg_bytes(p, acquired=world.now()) for _ in range(8)]
        stored = [f.result().sop_instance_uid for f in [
            world.ecg.Ingest.future(pb.IngestRequest(dicom=d), metadata=world.md("cart_a"))
            for d in datas]]
        with world.appended(p) as box, ThreadPoolExecutor(16) as pool:
            again = [pool.submit(answer, functools.partial(
                world.ecg.Ingest, pb.IngestRequest(dicom=d, wait_for_summary=True),
                metadata=world.md("cart_b"))) for d in datas]
            read = [pool.submit(answer, lambda uid=uid: list(world.ecg.GetDicom(
                pb.GetDicomRequest(sop_instance_uid=uid), metadata=world.md("dr_a"))))
                for uid in stored]
            answers = [f.result() for f in again]
            reads = [f.result() for f in read]
        # (code, already stored, with a summary): never org-a's summary for cart_b.
        assert [(code, r is not None and r.already_stored, r is not None and r.HasField(
            "summary")) for code, r, _ in answers] == [(OK, True, False)] * 8
        assert [code for code, _, _ in reads] == [OK] * 8, [d for _, _, d in reads]
        assert sorted((e.action, e.rule) for e in box.events) == sorted(
            [("ingest", "duplicate-of-other-organisation")] * 8 + [("dicom", "controller")] * 8)


# --------------------------------------------------------------------------------------
# Roles (rule `role`) for the calls without an object, and the purpose metadata.


ROLE_CALLS: dict[str, Callable[[World, Metadata], Any]] = {
    "Ingest": lambda w, md: w.ecg.Ingest(pb.IngestRequest(
        dicom=w.ecg_bytes("PAT-PURPOSE", acquired=w.now())), metadata=md),
    "MyExaminations": lambda w, md: w.rec.MyExaminations(rpb.MyExaminationsRequest(),
                                                         metadata=md),
    "GetConsentState": lambda w, md: w.rec.GetConsentState(rpb.GetConsentStateRequest(),
                                                           metadata=md),
    "SetConsent": lambda w, md: w.rec.SetConsent(rpb.SetConsentRequest(granted=True),
                                                 metadata=md),
    "AddDenial": lambda w, md: w.rec.AddDenial(rpb.AddDenialRequest(organisation="org-c"),
                                               metadata=md),
    "RemoveDenial": lambda w, md: w.rec.RemoveDenial(rpb.RemoveDenialRequest(denial_id="x"),
                                                     metadata=md),
    "QueryAudit": lambda w, md: w.rec.QueryAudit(rpb.QueryAuditRequest(), metadata=md),
    "MyAccessLog": lambda w, md: w.rec.MyAccessLog(rpb.MyAccessLogRequest(), metadata=md),
}
ROLE_ALLOWED = {"Ingest": "device", "MyExaminations": "citizen", "GetConsentState": "citizen",
                "SetConsent": "citizen", "AddDenial": "citizen", "RemoveDenial": "citizen",
                "QueryAudit": "auditor", "MyAccessLog": "citizen"}
_ROLE_CASES = [(call, who) for call in ROLE_CALLS
               for who in ("cart_a", "dr_a", "P2", "auditor", "admin")
               if CALLERS[who].role != ROLE_ALLOWED[call]]


@pytest.mark.parametrize(("call", "who"), _ROLE_CASES, ids=_ids(_ROLE_CASES))
def test_role_refused(world: World, call: str, who: str) -> None:
    code, _, details = answer(lambda: ROLE_CALLS[call](world, world.md(who)))
    assert code == DENIED, details


def test_purpose_metadata(world: World) -> None:
    p = "PAT-PURPOSE"
    uid, _, _ = world.add_ecg("cart_a", p, days_ago=1)
    auth = world.md("dr_b")
    request = pb.GetSummaryRequest(sop_instance_uid=uid)
    for extra in ([("purpose", "emergency")], [("purpose", "emergency"), ("purpose-reason", "")],
                  [("purpose", "research"), ("purpose-reason", "a study")]):
        md = auth + extra
        code, _, details = answer(lambda: world.ecg.GetSummary(request, metadata=md))  # noqa: B023
        assert code == INVALID, (extra, details)
    care = [*auth, ("purpose", "care")]
    assert refused(lambda: world.ecg.GetSummary(request, metadata=care)) == NOT_FOUND
    r = world.ecg.GetSummary(request, metadata=world.md("dr_b", emergency=True))
    assert r.sop_instance_uid == uid


# --------------------------------------------------------------------------------------
# Consent and denials (the citizen's calls).


def test_consent_and_denials(world: World) -> None:
    p, md = "PAT-CONSENT", world.md(citizen("PAT-CONSENT"))
    with world.one_event(p) as box:
        state = world.rec.GetConsentState(rpb.GetConsentStateRequest(), metadata=md)
    assert (box.one.role, box.one.outcome) == ("citizen", "allowed")
    assert (state.patient_id, state.consent_granted, state.HasField("consent_changed_at"),
            list(state.denials)) == (p, False, False, [])
    with world.one_event(p):
        state = world.rec.SetConsent(rpb.SetConsentRequest(granted=True), metadata=md)
    assert state.consent_granted and when(state.consent_changed_at) == world.now()
    with world.one_event(p):
        by_org = world.rec.AddDenial(rpb.AddDenialRequest(organisation="org-b"), metadata=md)
    study = str(pydicom.uid.generate_uid())
    with world.one_event(p):
        both = world.rec.AddDenial(rpb.AddDenialRequest(study_instance_uid=study), metadata=md)
    named = {(d.organisation, d.study_instance_uid): d for d in both.denials}
    assert sorted(named) == [("", study), ("org-b", "")]
    assert all(when(d.since) == world.now() and d.denial_id for d in both.denials)
    assert [d.denial_id for d in by_org.denials] == [named["org-b", ""].denial_id]
    for wrong in (rpb.AddDenialRequest(), rpb.AddDenialRequest(organisation="org-b",
                                                                study_instance_uid=study)):
        assert refused(lambda: world.rec.AddDenial(wrong, metadata=md)) == INVALID  # noqa: B023
    # Another citizen cannot remove it; an unknown id is not found.
    other = world.md(citizen("PAT-CONSENT-2"))
    first = named["org-b", ""].denial_id
    assert refused(lambda: world.rec.RemoveDenial(rpb.RemoveDenialRequest(denial_id=first),
                                                  metadata=other)) == NOT_FOUND
    assert refused(lambda: world.rec.RemoveDenial(rpb.RemoveDenialRequest(denial_id="nope"),
                                                  metadata=md)) == NOT_FOUND
    with world.one_event(p):
        state = world.rec.RemoveDenial(rpb.RemoveDenialRequest(denial_id=first), metadata=md)
    assert [d.study_instance_uid for d in state.denials] == [study]
    world.clock.advance(minutes=1)
    with world.one_event(p):
        state = world.rec.SetConsent(rpb.SetConsentRequest(granted=False), metadata=md)
    assert not state.consent_granted and when(state.consent_changed_at) == world.now()
    assert world.rec.GetConsentState(rpb.GetConsentStateRequest(), metadata=other
                                     ).patient_id == "PAT-CONSENT-2"


# --------------------------------------------------------------------------------------
# The citizen's view (rule `citizen-own`). These tests move the clock forward: they
# come last.


def _mine(w: World, who: str) -> list[rpb.CitizenExamination]:
    return list(w.rec.MyExaminations(rpb.MyExaminationsRequest(), metadata=w.md(who)).examinations)


def test_citizen_sees_own_examinations_only(world: World) -> None:
    _, a_study, _ = world.add_ecg("cart_a", "PAT-1", days_ago=2, operator="Nurse^Ann",
                                  reader="Reader^Rex")
    world.add_ecg("cart_b", "PAT-1", days_ago=4, operator="Nurse^Bo", reader="Reader^Bea")
    world.add_ecg("cart_a", "PAT-2", days_ago=1, operator="Nurse^Cy")
    # A statement released long ago (no question of the delay here).
    statement = world.attach("dr_a", "PAT-1", study=a_study, author="Stat^Ida",
                             authored_at=world.now() - 15 * DAY).document_id
    with world.one_event("PAT-1") as box:
        mine = _mine(world, "P1")
    assert (box.one.action, box.one.rule, box.one.outcome) == (
        "my-examinations", "citizen-own", "allowed")
    got = sorted((e.organisation, when(e.acquired), e.performer, e.reporting_physician)
                 for e in mine)
    now = world.now()
    assert got == [("org-a", now - 2 * DAY, "Nurse^Ann", "Stat^Ida"),
                   ("org-b", now - 4 * DAY, "Nurse^Bo", "Reader^Bea")]
    assert all(e.examination_type for e in mine)
    assert sorted([d.document_id for d in e.documents] for e in mine) == [[], [statement]]
    assert [e.performer for e in _mine(world, "P2")] == ["Nurse^Cy"]
    # The patient's own denial and missing consent do not hide anything from them.
    p = "PAT-OWN-DENIAL"
    world.add_ecg("cart_a", p, days_ago=1)
    world.rec.AddDenial(rpb.AddDenialRequest(organisation="org-a"), metadata=world.md(citizen(p)))
    assert [e.organisation for e in _mine(world, citizen(p))] == ["org-a"]


def test_release_delay(world: World) -> None:
    """Default 14 days from authored_at; org-b statements 3 days; early release at once."""
    t0 = world.now()
    _, a_study, _ = world.add_ecg("cart_a", "PAT-2", days_ago=3)
    _, b_study, _ = world.add_ecg("cart_b", "PAT-2", days_ago=3)
    hour = dt.timedelta(hours=1)
    a_referral = world.attach("dr_a", "PAT-2", study=a_study, kind=rpb.REFERRAL,
                              authored_at=t0 - 14 * DAY + hour).document_id
    a_statement = world.attach("dr_a", "PAT-2", study=a_study, authored_at=t0).document_id
    a_note = world.attach("dr_a", "PAT-2", study=a_study, kind=rpb.EXAMINATION_NOTE,
                          authored_at=t0).document_id
    b_statement = world.attach("dr_b", "PAT-2", study=b_study,
                               authored_at=t0 - 3 * DAY + hour).document_id
    b_referral = world.attach("dr_b", "PAT-2", study=b_study, kind=rpb.REFERRAL,
                              authored_at=t0 - 3 * DAY + hour).document_id

    def released() -> set[str]:
        return {d.document_id for e in _mine(world, "P2") for d in e.documents}

    def visible_from(who: str, doc: str) -> dt.datetime:
        (d,) = world.rec.GetDocuments(rpb.GetDocumentsRequest(document_id=doc),
                                      metadata=world.md(who)).documents
        return when(d.visible_to_patient_from)

    assert released() == set()
    assert visible_from("dr_a", a_referral) == t0 + hour
    assert visible_from("dr_a", a_statement) == t0 + 14 * DAY
    assert visible_from("dr_b", b_statement) == t0 + hour
    assert visible_from("dr_b", b_referral) == t0 + 11 * DAY + hour

    world.rec.ReleaseDocument(rpb.ReleaseDocumentRequest(document_id=a_note),
                              metadata=world.md("dr_a"))
    assert released() == {a_note}
    world.clock.advance(minutes=59)
    assert released() == {a_note}
    world.clock.advance(minutes=2)
    assert released() == {a_note, a_referral, b_statement}
    world.clock.advance(days=14)
    assert released() == {a_note, a_referral, b_statement, b_referral, a_statement}
    # What the citizen gets of a document: its text, never another patient's.
    docs = {d.document_id: d for e in _mine(world, "P2") for d in e.documents}
    assert all(d.patient_id == "PAT-2" for d in docs.values())
    assert docs[a_statement].text == "text by Author^Ann"
    assert released().isdisjoint({d.document_id for e in _mine(world, "P1") for d in e.documents})
