import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from waveform.service._proto.waveform.v1 import archive_pb2 as _archive_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DocumentKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DOCUMENT_KIND_UNSPECIFIED: _ClassVar[DocumentKind]
    REFERRAL: _ClassVar[DocumentKind]
    EXAMINATION_NOTE: _ClassVar[DocumentKind]
    STATEMENT: _ClassVar[DocumentKind]
DOCUMENT_KIND_UNSPECIFIED: DocumentKind
REFERRAL: DocumentKind
EXAMINATION_NOTE: DocumentKind
STATEMENT: DocumentKind

class AttachDocumentRequest(_message.Message):
    __slots__ = ("kind", "patient_id", "study_instance_uid", "accession_number", "visit_id", "author", "authored_at", "title", "text", "cda_xml", "document_id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    ACCESSION_NUMBER_FIELD_NUMBER: _ClassVar[int]
    VISIT_ID_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    AUTHORED_AT_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CDA_XML_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    kind: DocumentKind
    patient_id: str
    study_instance_uid: str
    accession_number: str
    visit_id: str
    author: str
    authored_at: _timestamp_pb2.Timestamp
    title: str
    text: str
    cda_xml: bytes
    document_id: str
    def __init__(self, kind: _Optional[_Union[DocumentKind, str]] = ..., patient_id: _Optional[str] = ..., study_instance_uid: _Optional[str] = ..., accession_number: _Optional[str] = ..., visit_id: _Optional[str] = ..., author: _Optional[str] = ..., authored_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., title: _Optional[str] = ..., text: _Optional[str] = ..., cda_xml: _Optional[bytes] = ..., document_id: _Optional[str] = ...) -> None: ...

class DocumentRef(_message.Message):
    __slots__ = ("document_id", "version")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    version: int
    def __init__(self, document_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetDocumentsRequest(_message.Message):
    __slots__ = ("study_instance_uid", "accession_number", "document_id", "all_versions", "with_cda")
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    ACCESSION_NUMBER_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ALL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    WITH_CDA_FIELD_NUMBER: _ClassVar[int]
    study_instance_uid: str
    accession_number: str
    document_id: str
    all_versions: bool
    with_cda: bool
    def __init__(self, study_instance_uid: _Optional[str] = ..., accession_number: _Optional[str] = ..., document_id: _Optional[str] = ..., all_versions: _Optional[bool] = ..., with_cda: _Optional[bool] = ...) -> None: ...

class Document(_message.Message):
    __slots__ = ("document_id", "version", "kind", "patient_id", "study_instance_uid", "accession_number", "visit_id", "organisation", "author", "authored_at", "stored_at", "title", "text", "cda_xml", "visible_to_patient_from")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    ACCESSION_NUMBER_FIELD_NUMBER: _ClassVar[int]
    VISIT_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANISATION_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    AUTHORED_AT_FIELD_NUMBER: _ClassVar[int]
    STORED_AT_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CDA_XML_FIELD_NUMBER: _ClassVar[int]
    VISIBLE_TO_PATIENT_FROM_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    version: int
    kind: DocumentKind
    patient_id: str
    study_instance_uid: str
    accession_number: str
    visit_id: str
    organisation: str
    author: str
    authored_at: _timestamp_pb2.Timestamp
    stored_at: _timestamp_pb2.Timestamp
    title: str
    text: str
    cda_xml: bytes
    visible_to_patient_from: _timestamp_pb2.Timestamp
    def __init__(self, document_id: _Optional[str] = ..., version: _Optional[int] = ..., kind: _Optional[_Union[DocumentKind, str]] = ..., patient_id: _Optional[str] = ..., study_instance_uid: _Optional[str] = ..., accession_number: _Optional[str] = ..., visit_id: _Optional[str] = ..., organisation: _Optional[str] = ..., author: _Optional[str] = ..., authored_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stored_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., title: _Optional[str] = ..., text: _Optional[str] = ..., cda_xml: _Optional[bytes] = ..., visible_to_patient_from: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DocumentList(_message.Message):
    __slots__ = ("documents", "performer", "reporting_physician")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    PERFORMER_FIELD_NUMBER: _ClassVar[int]
    REPORTING_PHYSICIAN_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    performer: str
    reporting_physician: str
    def __init__(self, documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ..., performer: _Optional[str] = ..., reporting_physician: _Optional[str] = ...) -> None: ...

class ReleaseDocumentRequest(_message.Message):
    __slots__ = ("document_id",)
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    def __init__(self, document_id: _Optional[str] = ...) -> None: ...

class ReleaseDocumentResponse(_message.Message):
    __slots__ = ("released_at",)
    RELEASED_AT_FIELD_NUMBER: _ClassVar[int]
    released_at: _timestamp_pb2.Timestamp
    def __init__(self, released_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RecentExaminationsRequest(_message.Message):
    __slots__ = ("patient_id", "within_days")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    WITHIN_DAYS_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    within_days: int
    def __init__(self, patient_id: _Optional[str] = ..., within_days: _Optional[int] = ...) -> None: ...

class DocumentLink(_message.Message):
    __slots__ = ("document_id", "kind", "version")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    kind: DocumentKind
    version: int
    def __init__(self, document_id: _Optional[str] = ..., kind: _Optional[_Union[DocumentKind, str]] = ..., version: _Optional[int] = ...) -> None: ...

class Examination(_message.Message):
    __slots__ = ("sop_instance_uid", "study_instance_uid", "accession_number", "organisation", "acquired", "examination_type", "heart_rate_bpm", "rhythm", "qtc_ms", "qtc_formula", "documents")
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    ACCESSION_NUMBER_FIELD_NUMBER: _ClassVar[int]
    ORGANISATION_FIELD_NUMBER: _ClassVar[int]
    ACQUIRED_FIELD_NUMBER: _ClassVar[int]
    EXAMINATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    HEART_RATE_BPM_FIELD_NUMBER: _ClassVar[int]
    RHYTHM_FIELD_NUMBER: _ClassVar[int]
    QTC_MS_FIELD_NUMBER: _ClassVar[int]
    QTC_FORMULA_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    sop_instance_uid: str
    study_instance_uid: str
    accession_number: str
    organisation: str
    acquired: _timestamp_pb2.Timestamp
    examination_type: str
    heart_rate_bpm: _archive_pb2.Measured
    rhythm: str
    qtc_ms: _archive_pb2.Measured
    qtc_formula: str
    documents: _containers.RepeatedCompositeFieldContainer[DocumentLink]
    def __init__(self, sop_instance_uid: _Optional[str] = ..., study_instance_uid: _Optional[str] = ..., accession_number: _Optional[str] = ..., organisation: _Optional[str] = ..., acquired: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., examination_type: _Optional[str] = ..., heart_rate_bpm: _Optional[_Union[_archive_pb2.Measured, _Mapping]] = ..., rhythm: _Optional[str] = ..., qtc_ms: _Optional[_Union[_archive_pb2.Measured, _Mapping]] = ..., qtc_formula: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[DocumentLink, _Mapping]]] = ...) -> None: ...

class RecentExaminationsResponse(_message.Message):
    __slots__ = ("examinations", "notice")
    EXAMINATIONS_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    examinations: _containers.RepeatedCompositeFieldContainer[Examination]
    notice: str
    def __init__(self, examinations: _Optional[_Iterable[_Union[Examination, _Mapping]]] = ..., notice: _Optional[str] = ...) -> None: ...

class MyExaminationsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CitizenExamination(_message.Message):
    __slots__ = ("acquired", "organisation", "examination_type", "performer", "reporting_physician", "documents")
    ACQUIRED_FIELD_NUMBER: _ClassVar[int]
    ORGANISATION_FIELD_NUMBER: _ClassVar[int]
    EXAMINATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    PERFORMER_FIELD_NUMBER: _ClassVar[int]
    REPORTING_PHYSICIAN_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    acquired: _timestamp_pb2.Timestamp
    organisation: str
    examination_type: str
    performer: str
    reporting_physician: str
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    def __init__(self, acquired: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., organisation: _Optional[str] = ..., examination_type: _Optional[str] = ..., performer: _Optional[str] = ..., reporting_physician: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ...) -> None: ...

class MyExaminationsResponse(_message.Message):
    __slots__ = ("examinations",)
    EXAMINATIONS_FIELD_NUMBER: _ClassVar[int]
    examinations: _containers.RepeatedCompositeFieldContainer[CitizenExamination]
    def __init__(self, examinations: _Optional[_Iterable[_Union[CitizenExamination, _Mapping]]] = ...) -> None: ...

class GetConsentStateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetConsentRequest(_message.Message):
    __slots__ = ("granted",)
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    granted: bool
    def __init__(self, granted: _Optional[bool] = ...) -> None: ...

class AddDenialRequest(_message.Message):
    __slots__ = ("organisation", "study_instance_uid")
    ORGANISATION_FIELD_NUMBER: _ClassVar[int]
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    organisation: str
    study_instance_uid: str
    def __init__(self, organisation: _Optional[str] = ..., study_instance_uid: _Optional[str] = ...) -> None: ...

class RemoveDenialRequest(_message.Message):
    __slots__ = ("denial_id",)
    DENIAL_ID_FIELD_NUMBER: _ClassVar[int]
    denial_id: str
    def __init__(self, denial_id: _Optional[str] = ...) -> None: ...

class Denial(_message.Message):
    __slots__ = ("denial_id", "organisation", "study_instance_uid", "since")
    DENIAL_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANISATION_FIELD_NUMBER: _ClassVar[int]
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    denial_id: str
    organisation: str
    study_instance_uid: str
    since: _timestamp_pb2.Timestamp
    def __init__(self, denial_id: _Optional[str] = ..., organisation: _Optional[str] = ..., study_instance_uid: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ConsentState(_message.Message):
    __slots__ = ("patient_id", "consent_granted", "consent_changed_at", "denials")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CONSENT_GRANTED_FIELD_NUMBER: _ClassVar[int]
    CONSENT_CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    DENIALS_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    consent_granted: bool
    consent_changed_at: _timestamp_pb2.Timestamp
    denials: _containers.RepeatedCompositeFieldContainer[Denial]
    def __init__(self, patient_id: _Optional[str] = ..., consent_granted: _Optional[bool] = ..., consent_changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., denials: _Optional[_Iterable[_Union[Denial, _Mapping]]] = ...) -> None: ...

class QueryAuditRequest(_message.Message):
    __slots__ = ("patient_id", "user", "organisation", "to", "limit", "page_token")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    ORGANISATION_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    user: str
    organisation: str
    to: _timestamp_pb2.Timestamp
    limit: int
    page_token: str
    def __init__(self, patient_id: _Optional[str] = ..., user: _Optional[str] = ..., organisation: _Optional[str] = ..., to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ..., **kwargs) -> None: ...

class MyAccessLogRequest(_message.Message):
    __slots__ = ("limit", "page_token")
    FROM_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    limit: int
    page_token: str
    def __init__(self, limit: _Optional[int] = ..., page_token: _Optional[str] = ..., **kwargs) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("seq", "time", "user", "organisation", "role", "purpose", "reason", "patient_id", "objects", "action", "outcome", "rule", "emergency", "hash")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    ORGANISATION_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    EMERGENCY_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: _timestamp_pb2.Timestamp
    user: str
    organisation: str
    role: str
    purpose: str
    reason: str
    patient_id: str
    objects: _containers.RepeatedScalarFieldContainer[str]
    action: str
    outcome: str
    rule: str
    emergency: bool
    hash: str
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., user: _Optional[str] = ..., organisation: _Optional[str] = ..., role: _Optional[str] = ..., purpose: _Optional[str] = ..., reason: _Optional[str] = ..., patient_id: _Optional[str] = ..., objects: _Optional[_Iterable[str]] = ..., action: _Optional[str] = ..., outcome: _Optional[str] = ..., rule: _Optional[str] = ..., emergency: _Optional[bool] = ..., hash: _Optional[str] = ...) -> None: ...

class AuditPage(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
