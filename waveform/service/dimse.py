"""The DICOM network doors: Storage SCP, Verification SCP and Storage Commitment
Push Model SCP (pynetdicom), beside the gRPC server and into the same intake.

A cart associates with its AE title; the devices registry (`Devices`) says which
organisation it belongs to, and an unknown caller is rejected at association
(A-ASSOCIATE-RJ). Every association, accepted or rejected, is an audit event
(action ``associate``). A C-STORE is handed to the server's `Intake` exactly as
a gRPC ``Ingest`` is (the same in-flight budget, the same audit event) and is
answered ``0x0000`` only after the group commit that makes it durable. The
object kept is the data set as the cart sent it, behind File Meta Information
the archive writes (`part10`), so that ``GetDicom`` returns a Part 10 file.

Status codes (PS3.4 B.2.3; the error comment is the message, cut to 64
characters of LO) are one table, `STORE_STATUS`. Storage commitment answers
success only for instances the archive holds durably (docs/dimse.md).
"""

from __future__ import annotations

import io
import logging
import ssl
import struct
import threading
import time
import uuid
import weakref
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID
from pynetdicom import AE, build_role, evt

from waveform.archive import CARE
from waveform.archive.audit import AuditEvent
from waveform.dicom.codes import SOP_CLASSES, TRANSFER_SYNTAXES, TransferSyntax
from waveform.errors import (
    Conflict,
    InvalidArgument,
    InvalidDicom,
    LimitExceeded,
    Overloaded,
    StorageError,
    UnsupportedObject,
    WaveformError,
)
from waveform.service.devices import Device, Devices, check_ae_title
from waveform.service.intake import Intake, oversized

if TYPE_CHECKING:
    from pynetdicom.association import Association

    from waveform.service.server import Server, TlsFiles

__all__ = [
    "COMMITMENT_FAILURE",
    "STORE_STATUS",
    "DicomServer",
    "error_comment",
    "part10",
    "start_dicom",
]

log = logging.getLogger("waveform.dimse")

#: Outcome of a C-STORE -> (status, Error Comment; None: the error's own message).
#: PS3.4 B.2.3: A7xx refused, out of resources (safe to send again later); A900
#: data set does not match SOP class; Cxxx cannot understand.
STORE_STATUS: dict[type[BaseException], tuple[int, str | None]] = {
    Overloaded: (0xA700, None),
    StorageError: (0xA701, None),
    TimeoutError: (0xA702, "not committed in time; sending it again is safe"),
    InvalidDicom: (0xC000, None),
    LimitExceeded: (0xC000, None),
    UnsupportedObject: (0xC001, None),
    Conflict: (0xC002, "UID conflict: this SOP Instance UID holds other content"),
    InvalidArgument: (0xC004, None),
}
#: The data set's SOP Class UID is not the request's Affected SOP Class UID.
STATUS_CLASS_MISMATCH = 0xA900
#: The data set's SOP Instance UID is not the request's Affected SOP Instance UID.
STATUS_INSTANCE_MISMATCH = 0xC003
#: A defect of the archive (logged with a reference).
STATUS_INTERNAL = 0xC0FF

#: Storage commitment Failure Reason (0008,1197), PS3.4 J.3.2.1.2 / C.14.1.1.
COMMITMENT_FAILURE = {
    "no-such-instance": 0x0112,
    "class-instance-conflict": 0x0119,
}
_EVENT_ALL_COMMITTED = 1
_EVENT_FAILURES_EXIST = 2
_ACTION_REQUEST_COMMITMENT = 1
#: PS3.4 A.4 / J.3.5 (PS3.6 Annex A): the SOP classes and well-known instance served.
VERIFICATION = "1.2.840.10008.1.1"
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"

# File Meta Information the archive writes before a received data set: always the
# same bytes for the same data set, so that a second send of an object is the
# same object (stored once) whoever sends it.
_IMPLEMENTATION_VERSION = b"WAVEFORM_0_1"
_LO_MAX = 64


# ----------------------------------------------------------------------- objects
def _element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sHI", 2, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 2, element, vr, len(value)) + value


def _ui(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def part10(dataset: bytes | memoryview, sop_class_uid: str, sop_instance_uid: str,
           transfer_syntax_uid: str) -> bytes:
    """A DICOM Part 10 file: preamble, ``DICM``, File Meta Information (PS3.10 7.1),
    then ``dataset`` byte for byte as received (deflated if its syntax is)."""
    version = _IMPLEMENTATION_VERSION + (b" " if len(_IMPLEMENTATION_VERSION) % 2 else b"")
    body = b"".join((
        _element(0x0001, b"OB", b"\x00\x01"),
        _element(0x0002, b"UI", _ui(sop_class_uid)),
        _element(0x0003, b"UI", _ui(sop_instance_uid)),
        _element(0x0010, b"UI", _ui(transfer_syntax_uid)),
        _element(0x0012, b"UI", _ui(PYDICOM_IMPLEMENTATION_UID)),
        _element(0x0013, b"SH", version),
    ))
    length = struct.pack("<HH2sHI", 2, 0, b"UL", 4, len(body))
    return b"".join((b"\x00" * 128, b"DICM", length, body, dataset))


def _identify(dataset: bytes, syntax: TransferSyntax) -> tuple[str, str] | None:
    """The data set's (SOP Class UID, SOP Instance UID), reading only the elements
    before them; None when they cannot be read (the codec then says what is wrong)."""
    data = dataset
    if syntax.deflated:
        try:
            data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(dataset, 1 << 16)
        except zlib.error:
            return None
    try:
        ds = read_dataset(io.BytesIO(data), syntax.implicit_vr, syntax.little_endian,
                          stop_when=lambda tag, vr, length: tag > 0x00080018)
        return str(ds.get("SOPClassUID", "")).rstrip("\x00 "), \
            str(ds.get("SOPInstanceUID", "")).rstrip("\x00 ")
    except Exception:  # any failure of pydicom here: the codec decides and explains
        return None


def error_comment(message: str) -> str:
    """``message`` as an Error Comment (0000,0902), LO: at most 64 characters of
    printable ASCII without backslash, cut at a word with "..." when longer."""
    text = "".join(c if 0x20 <= ord(c) < 0x7F and c != "\\" else "/" if c == "\\" else "?"
                   for c in " ".join(message.split()))
    if len(text) <= _LO_MAX:
        return text
    cut = text[:_LO_MAX - 3]
    space = cut.rfind(" ")
    if space >= _LO_MAX // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:") + "..."


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = error_comment(comment)
    return ds


def _refusal(exc: BaseException) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if cls in STORE_STATUS:
            code, comment = STORE_STATUS[cls]
            return code, comment or str(exc)
    ref = uuid.uuid4().hex[:12]
    log.error("internal error", exc_info=exc, extra={"ref": ref, "method": "C-STORE"})
    return STATUS_INTERNAL, f"internal error (log reference {ref})"


# ------------------------------------------------------------------------ server
@dataclass(frozen=True, slots=True)
class _Peer:
    device: Device
    address: str
    port: int


class DicomServer:
    """A running Storage / Verification / Storage Commitment SCP; `stop()` ends it."""

    def __init__(self, intake: Intake, devices: Devices, *, ae_title: str,
                 max_object_bytes: int, commit_timeout_s: float, max_associations: int,
                 timeout_s: float, ssl_context: ssl.SSLContext | None,
                 client_ssl_context: ssl.SSLContext | None, report_delay_s: float,
                 host: str, port: int) -> None:
        self.intake = intake
        self.store = intake.store
        self.archive = intake.archive
        self.devices = devices
        self.ae_title = ae_title
        self.max_object_bytes = max_object_bytes
        self.commit_timeout_s = commit_timeout_s
        self.timeout_s = timeout_s
        self.report_delay_s = report_delay_s
        self._client_ssl = client_ssl_context
        self._peers: weakref.WeakKeyDictionary[Association, _Peer] = \
            weakref.WeakKeyDictionary()
        # UIDs acknowledged to an organisation whose object is controlled by
        # another (a duplicate): storage commitment may confirm them to it.
        self._acknowledged: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._ack_lock = threading.Lock()
        self._reports = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dimse-report")
        ae = AE(ae_title=ae_title)
        ae.maximum_associations = max_associations
        ae.require_called_aet = True
        ae.acse_timeout = timeout_s
        ae.dimse_timeout = timeout_s
        ae.network_timeout = timeout_s
        ae.maximum_pdu_size = 1 << 20
        for sop in SOP_CLASSES:
            ae.add_supported_context(sop, list(TRANSFER_SYNTAXES))
        ae.add_supported_context(VERIFICATION, list(TRANSFER_SYNTAXES))
        ae.add_supported_context(STORAGE_COMMITMENT, list(TRANSFER_SYNTAXES))
        self.ae = ae
        self._ssl = ssl_context
        self._server: Any = None
        self.port = 0
        self.host = ""
        self._start(host, port)

    # ------------------------------------------------------------ lifecycle
    def _start(self, host: str, port: int) -> None:
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_C_ECHO, lambda event: 0x0000),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_N_ACTION, self._on_commitment),
        ]
        try:
            self._server = self.ae.start_server((host, port), block=False,
                                                ssl_context=self._ssl, evt_handlers=handlers)
        except OSError as exc:
            raise StorageError(f"cannot listen for DICOM on {host}:{port}: {exc.strerror} "
                               "(is the port taken?)") from None
        self.host, self.port = self._server.server_address[:2]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, grace_s: float = 30.0) -> None:
        """Refuse new associations, let open ones finish for ``grace_s`` (their
        C-STOREs are answered after their commit), then abort the rest. Stop this
        before the store it writes to is closed."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.shutdown()
        deadline = time.monotonic() + grace_s
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in server.active_associations:
            assoc.abort()
        self._reports.shutdown(wait=True, cancel_futures=False)

    # ---------------------------------------------------------- associations
    def _audit(self, action: str, outcome: str, rule: str, *, title: str, organisation: str,
               reason: str, objects: list[str] | None = None) -> None:
        self.archive.audit.append(AuditEvent(
            user=title, organisation=organisation, role="device", action=action,
            outcome=outcome, rule=rule, objects=objects or [], reason=reason))

    def _on_requested(self, event: Any) -> None:
        assoc = event.assoc
        rq = assoc.requestor.primitive
        title = str(rq.calling_ae_title).strip()
        address, port = assoc.requestor.address, assoc.requestor.port
        device = self.devices.find(title, address)
        if device is not None:
            self._peers[assoc] = _Peer(device, address, port)
            return
        self._audit("associate", "denied", "unknown-device", title=title, organisation="",
                    reason=f"from {address}:{port} to {str(rq.called_ae_title).strip()}: "
                           "no device with this AE title and address is registered")
        log.warning("association rejected: unknown calling AE title",
                    extra={"calling_ae": title, "address": address})
        # Rejected permanent, by the service user, calling AE title not recognised.
        assoc.acse.send_reject(0x01, 0x01, 0x03)
        assoc.kill()

    def _on_accepted(self, event: Any) -> None:
        peer = self._peers.get(event.assoc)
        if peer is None:  # not through _on_requested: cannot happen, refuse anyway
            event.assoc.abort()
            return
        try:
            self._audit("associate", "allowed", "device-registry", title=peer.device.ae_title,
                        organisation=peer.device.organisation,
                        reason=f"from {peer.address}:{peer.port} to {self.ae_title}")
        except WaveformError:
            log.error("association aborted: its audit event cannot be written",
                      extra={"calling_ae": peer.device.ae_title})
            event.assoc.abort()

    def _on_rejected(self, event: Any) -> None:
        assoc = event.assoc
        rj = assoc.acceptor.primitive
        rule = {(0x01, 0x01, 0x07): "called-ae-title-not-recognised",
                (0x02, 0x03, 0x02): "association-limit"}.get(
            (rj.result, rj.result_source, rj.diagnostic), "rejected")
        peer = self._peers.get(assoc)
        rq = assoc.requestor.primitive
        self._audit("associate", "denied", rule, title=str(rq.calling_ae_title).strip(),
                    organisation=peer.device.organisation if peer else "",
                    reason=f"from {assoc.requestor.address}:{assoc.requestor.port} to "
                           f"{str(rq.called_ae_title).strip()}")

    # ---------------------------------------------------------------- C-STORE
    def _on_store(self, event: Any) -> int | Dataset:
        peer = self._peers.get(event.assoc)
        if peer is None:
            return _status(STATUS_INTERNAL, "association without a registered device")
        rq = event.request
        sop_class = str(rq.AffectedSOPClassUID)
        sop_instance = str(rq.AffectedSOPInstanceUID)
        syntax = TRANSFER_SYNTAXES[str(event.context.transfer_syntax)]
        dataset = rq.DataSet.getvalue()
        found = _identify(dataset, syntax)
        if found is not None and found[0] and found[0] != sop_class:
            return _status(STATUS_CLASS_MISMATCH,
                           f"data set SOP Class {found[0]} is not the request's {sop_class}")
        if found is not None and found[1] and found[1] != sop_instance:
            return _status(STATUS_INSTANCE_MISMATCH,
                           f"data set SOP Instance UID is not the request's {sop_instance}")
        data = part10(dataset, sop_class, sop_instance, syntax.uid)
        del dataset
        try:
            controls = self._ingest(peer.device, data)
        except Exception as exc:
            code, comment = _refusal(exc)
            log.warning("C-STORE refused", extra={
                "calling_ae": peer.device.ae_title, "uid": sop_instance,
                "status": f"0x{code:04X}", "error": str(exc)})
            return _status(code, comment)
        if not controls:
            with self._ack_lock:
                self._acknowledged[(peer.device.organisation, sop_instance)] = None
                while len(self._acknowledged) > 100_000:
                    self._acknowledged.popitem(last=False)
        return 0x0000

    def _ingest(self, device: Device, data: bytes) -> bool:
        """The object stored durably (or found stored), as gRPC ``Ingest`` does it;
        whether the device's organisation controls it."""
        identity = device.identity
        size = len(data)
        budget = self.intake.budget
        with self.archive.access(identity, CARE, "ingest") as acc:
            too_large = oversized(size, self.max_object_bytes, "the C-STORE")
            if too_large is not None:
                raise too_large
            if not budget.try_acquire(size):
                raise budget.refusal(size)
            try:
                future = self.intake.submit(data, identity)
                _, controls = self.intake.settle(acc, future, self.commit_timeout_s)
            except TimeoutError:
                acc.event.outcome, acc.event.rule = "failed", "deadline"
                acc.write()
                raise
            finally:
                budget.release(size)
        return controls

    # ------------------------------------------------------ storage commitment
    def _held(self, organisation: str, sop_class: str, uid: str) -> str | None:
        """None if the archive holds ``uid`` durably for ``organisation``, else the
        failure reason's name."""
        if not uid or not self.store.contains(uid):
            return "no-such-instance"
        ref = self.archive.patients.exam(uid)
        if ref is not None:
            controller, stored_class = ref.organisation, ref.sop_class_uid
        else:  # stored by a path that does not index (a bulk load): ask the store
            ctx = self.store.ecg_context(uid, ["sop_class_uid"])
            controller, stored_class = ctx["organisation"] or "", ctx["sop_class_uid"] or ""
        if controller != organisation:
            with self._ack_lock:
                if (organisation, uid) not in self._acknowledged:
                    return "no-such-instance"  # nothing tells another organisation's object
        if sop_class and stored_class and sop_class != stored_class:
            return "class-instance-conflict"
        return None

    def _on_commitment(self, event: Any) -> tuple[int, Dataset | None]:
        peer = self._peers.get(event.assoc)
        if peer is None:
            return 0x0110, None
        if event.action_type != _ACTION_REQUEST_COMMITMENT:
            return 0x0123, None  # No such action
        try:
            info = event.action_information
            transaction = str(info.TransactionUID)
            refs = [(str(r.ReferencedSOPClassUID), str(r.ReferencedSOPInstanceUID))
                    for r in info.ReferencedSOPSequence]
        except (AttributeError, TypeError, ValueError, KeyError):
            return 0x0120, None  # Missing attribute
        if not transaction or not refs:
            return 0x0120, None
        org = peer.device.organisation
        success: list[tuple[str, str]] = []
        failed: list[tuple[str, str, int]] = []
        for cls, uid in refs:
            why = self._held(org, cls, uid)
            if why is None:
                success.append((cls, uid))
            else:
                failed.append((cls, uid, COMMITMENT_FAILURE[why]))
        try:
            self._audit("storage-commitment", "allowed", "held-durably",
                        title=peer.device.ae_title, organisation=org,
                        reason=f"transaction {transaction}: {len(success)} committed, "
                               f"{len(failed)} not held",
                        objects=[uid for _, uid in refs])
        except WaveformError:
            return 0x0110, None  # Processing failure: nothing is told unaudited
        self._reports.submit(self._report, event.assoc, peer, transaction, success, failed)
        return 0x0000, None

    def _report(self, assoc: Association, peer: _Peer, transaction: str,
                success: list[tuple[str, str]], failed: list[tuple[str, str, int]]) -> None:
        ds = Dataset()
        ds.TransactionUID = transaction
        if success:
            ds.ReferencedSOPSequence = Sequence([_ref(c, u) for c, u in success])
        if failed:
            items = []
            for c, u, reason in failed:
                item = _ref(c, u)
                item.FailureReason = reason
                items.append(item)
            ds.FailedSOPSequence = Sequence(items)
        event_type = _EVENT_FAILURES_EXIST if failed else _EVENT_ALL_COMMITTED
        # The response to the N-ACTION goes first; a cart that releases after it
        # (to be called back) has that long to do so.
        deadline = time.monotonic() + self.report_delay_s
        while time.monotonic() < deadline and assoc.is_established and \
                not assoc.acse.is_release_requested():
            time.sleep(0.01)
        if assoc.is_established and not assoc.acse.is_release_requested():
            status, _ = assoc.send_n_event_report(
                ds, event_type, STORAGE_COMMITMENT, _COMMITMENT_INSTANCE)
            if getattr(status, "Status", None) == 0x0000:
                return
        self._report_anew(peer, ds, event_type, transaction)

    def _report_anew(self, peer: _Peer, ds: Dataset, event_type: int, transaction: str) -> None:
        device = peer.device
        host = device.host or peer.address
        if device.port is None:
            log.error("storage commitment result not delivered: the association closed and "
                      "the devices file gives no port to call the device back on",
                      extra={"calling_ae": device.ae_title, "transaction": transaction})
            return
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.add_requested_context(STORAGE_COMMITMENT)
        role = build_role(STORAGE_COMMITMENT, scp_role=True)
        tls = (self._client_ssl, host) if self._client_ssl is not None else None
        assoc = ae.associate(host, device.port, ae_title=device.ae_title, ext_neg=[role],
                             tls_args=tls)
        if not assoc.is_established:
            log.error("storage commitment result not delivered: the device refused the "
                      "association", extra={"calling_ae": device.ae_title, "host": host,
                                            "port": device.port, "transaction": transaction})
            return
        try:
            status, _ = assoc.send_n_event_report(
                ds, event_type, STORAGE_COMMITMENT, _COMMITMENT_INSTANCE)
            if getattr(status, "Status", None) != 0x0000:
                log.error("storage commitment result not acknowledged by the device",
                          extra={"calling_ae": device.ae_title, "transaction": transaction})
        finally:
            assoc.release()




def _ref(sop_class: str, uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = uid
    return item


def _server_context(tls: TlsFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(tls.cert, tls.key)
        if tls.client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(tls.client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidArgument(f"TLS files for DICOM: {exc}") from None
    return ctx


def _client_context(tls: TlsFiles) -> ssl.SSLContext:
    """For calling a device back: our certificate, and the devices' CA if given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # devices are called by address
    try:
        ctx.load_cert_chain(tls.cert, tls.key)
        if tls.client_ca is not None:
            ctx.load_verify_locations(tls.client_ca)
        else:
            ctx.verify_mode = ssl.CERT_NONE
    except (OSError, ssl.SSLError) as exc:
        raise InvalidArgument(f"TLS files for DICOM: {exc}") from None
    return ctx


def start_dicom(
    server_or_parts: Server | Intake,
    *,
    host: str = "127.0.0.1",
    port: int = 11112,
    ae_title: str = "WAVEFORM",
    devices: Devices | str | Path,
    tls: TlsFiles | None = None,
    max_associations: int = 128,
    max_object_bytes: int | None = None,
    commit_timeout_s: float = 60.0,
    timeout_s: float = 60.0,
    report_delay_s: float = 0.5,
) -> DicomServer:
    """Serve DICOM on ``host:port`` (0: any free port) as ``ae_title``, into the intake
    of ``server_or_parts`` (a running gRPC `Server`, whose in-flight budget and
    object size limit it shares, or an `Intake`).

    ``devices`` is the registry (or the path of its file). With ``tls``, every
    association is TLS (a client CA in it makes the device's certificate required).
    At most ``max_associations`` are open at once (more are rejected, transient).
    An association silent for ``timeout_s`` is aborted; a C-STORE whose commit takes
    more than ``commit_timeout_s`` is answered 0xA702 (sending it again is safe).
    A storage commitment result goes on the requesting association unless the
    device releases it within ``report_delay_s`` after the N-ACTION response; then
    on a new association to the device's host and port from the registry.
    """
    title = check_ae_title(ae_title, "the archive's DICOM AE title")
    if isinstance(server_or_parts, Intake):
        intake = server_or_parts
        limit = max_object_bytes or 64 << 20
    else:
        intake = server_or_parts.service.intake
        limit = max_object_bytes or server_or_parts.service.max_message_bytes
    if max_associations < 1:
        raise InvalidArgument(f"max_associations {max_associations} admits no device")
    registry = devices if isinstance(devices, Devices) else Devices.load(devices)
    dicom = DicomServer(
        intake, registry, ae_title=title, max_object_bytes=limit,
        commit_timeout_s=commit_timeout_s, max_associations=max_associations,
        timeout_s=timeout_s, ssl_context=_server_context(tls) if tls else None,
        client_ssl_context=_client_context(tls) if tls else None,
        report_delay_s=report_delay_s, host=host, port=port)
    log.info("DICOM storage listening", extra={"address": dicom.address, "ae_title": title,
                                               "devices": len(registry)})
    return dicom
