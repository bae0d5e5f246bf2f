import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Units(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNITS_MICROVOLTS: _ClassVar[Units]
    UNITS_RAW: _ClassVar[Units]
UNITS_MICROVOLTS: Units
UNITS_RAW: Units

class IngestRequest(_message.Message):
    __slots__ = ("dicom", "wait_for_summary", "format")
    DICOM_FIELD_NUMBER: _ClassVar[int]
    WAIT_FOR_SUMMARY_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    dicom: bytes
    wait_for_summary: bool
    format: str
    def __init__(self, dicom: _Optional[bytes] = ..., wait_for_summary: _Optional[bool] = ..., format: _Optional[str] = ...) -> None: ...

class RequestError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class IngestResponse(_message.Message):
    __slots__ = ("sop_instance_uid", "already_stored", "sha256", "warnings", "summary", "error")
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    ALREADY_STORED_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    sop_instance_uid: str
    already_stored: bool
    sha256: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    summary: Summary
    error: RequestError
    def __init__(self, sop_instance_uid: _Optional[str] = ..., already_stored: _Optional[bool] = ..., sha256: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ..., summary: _Optional[_Union[Summary, _Mapping]] = ..., error: _Optional[_Union[RequestError, _Mapping]] = ...) -> None: ...

class GetSummaryRequest(_message.Message):
    __slots__ = ("sop_instance_uid", "analysis_version")
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    ANALYSIS_VERSION_FIELD_NUMBER: _ClassVar[int]
    sop_instance_uid: str
    analysis_version: str
    def __init__(self, sop_instance_uid: _Optional[str] = ..., analysis_version: _Optional[str] = ...) -> None: ...

class Measured(_message.Message):
    __slots__ = ("value", "reason")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    value: float
    reason: str
    def __init__(self, value: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class LeadQuality(_message.Message):
    __slots__ = ("lead", "quality", "reason")
    LEAD_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    lead: str
    quality: float
    reason: str
    def __init__(self, lead: _Optional[str] = ..., quality: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class Summary(_message.Message):
    __slots__ = ("sop_instance_uid", "analysis_version", "heart_rate_bpm", "heart_rate_min_bpm", "heart_rate_max_bpm", "rr_mean_ms", "rr_sd_ms", "pr_ms", "qrs_ms", "qt_ms", "qtc_bazett_ms", "qtc_fridericia_ms", "qtc_framingham_ms", "qtc_hodges_ms", "p_axis_deg", "qrs_axis_deg", "t_axis_deg", "beat_count", "lead_quality", "document_json", "beats", "sampling_frequency", "source_format")
    class Beat(_message.Message):
        __slots__ = ("sample", "beat_class", "p_onset", "p_offset", "qrs_onset", "qrs_offset", "t_peak", "t_offset", "reasons")
        class ReasonsEntry(_message.Message):
            __slots__ = ("key", "value")
            KEY_FIELD_NUMBER: _ClassVar[int]
            VALUE_FIELD_NUMBER: _ClassVar[int]
            key: str
            value: str
            def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
        SAMPLE_FIELD_NUMBER: _ClassVar[int]
        BEAT_CLASS_FIELD_NUMBER: _ClassVar[int]
        P_ONSET_FIELD_NUMBER: _ClassVar[int]
        P_OFFSET_FIELD_NUMBER: _ClassVar[int]
        QRS_ONSET_FIELD_NUMBER: _ClassVar[int]
        QRS_OFFSET_FIELD_NUMBER: _ClassVar[int]
        T_PEAK_FIELD_NUMBER: _ClassVar[int]
        T_OFFSET_FIELD_NUMBER: _ClassVar[int]
        REASONS_FIELD_NUMBER: _ClassVar[int]
        sample: int
        beat_class: str
        p_onset: int
        p_offset: int
        qrs_onset: int
        qrs_offset: int
        t_peak: int
        t_offset: int
        reasons: _containers.ScalarMap[str, str]
        def __init__(self, sample: _Optional[int] = ..., beat_class: _Optional[str] = ..., p_onset: _Optional[int] = ..., p_offset: _Optional[int] = ..., qrs_onset: _Optional[int] = ..., qrs_offset: _Optional[int] = ..., t_peak: _Optional[int] = ..., t_offset: _Optional[int] = ..., reasons: _Optional[_Mapping[str, str]] = ...) -> None: ...
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    ANALYSIS_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEART_RATE_BPM_FIELD_NUMBER: _ClassVar[int]
    HEART_RATE_MIN_BPM_FIELD_NUMBER: _ClassVar[int]
    HEART_RATE_MAX_BPM_FIELD_NUMBER: _ClassVar[int]
    RR_MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    RR_SD_MS_FIELD_NUMBER: _ClassVar[int]
    PR_MS_FIELD_NUMBER: _ClassVar[int]
    QRS_MS_FIELD_NUMBER: _ClassVar[int]
    QT_MS_FIELD_NUMBER: _ClassVar[int]
    QTC_BAZETT_MS_FIELD_NUMBER: _ClassVar[int]
    QTC_FRIDERICIA_MS_FIELD_NUMBER: _ClassVar[int]
    QTC_FRAMINGHAM_MS_FIELD_NUMBER: _ClassVar[int]
    QTC_HODGES_MS_FIELD_NUMBER: _ClassVar[int]
    P_AXIS_DEG_FIELD_NUMBER: _ClassVar[int]
    QRS_AXIS_DEG_FIELD_NUMBER: _ClassVar[int]
    T_AXIS_DEG_FIELD_NUMBER: _ClassVar[int]
    BEAT_COUNT_FIELD_NUMBER: _ClassVar[int]
    LEAD_QUALITY_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    BEATS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FREQUENCY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    sop_instance_uid: str
    analysis_version: str
    heart_rate_bpm: Measured
    heart_rate_min_bpm: Measured
    heart_rate_max_bpm: Measured
    rr_mean_ms: Measured
    rr_sd_ms: Measured
    pr_ms: Measured
    qrs_ms: Measured
    qt_ms: Measured
    qtc_bazett_ms: Measured
    qtc_fridericia_ms: Measured
    qtc_framingham_ms: Measured
    qtc_hodges_ms: Measured
    p_axis_deg: Measured
    qrs_axis_deg: Measured
    t_axis_deg: Measured
    beat_count: int
    lead_quality: _containers.RepeatedCompositeFieldContainer[LeadQuality]
    document_json: str
    beats: _containers.RepeatedCompositeFieldContainer[Summary.Beat]
    sampling_frequency: float
    source_format: str
    def __init__(self, sop_instance_uid: _Optional[str] = ..., analysis_version: _Optional[str] = ..., heart_rate_bpm: _Optional[_Union[Measured, _Mapping]] = ..., heart_rate_min_bpm: _Optional[_Union[Measured, _Mapping]] = ..., heart_rate_max_bpm: _Optional[_Union[Measured, _Mapping]] = ..., rr_mean_ms: _Optional[_Union[Measured, _Mapping]] = ..., rr_sd_ms: _Optional[_Union[Measured, _Mapping]] = ..., pr_ms: _Optional[_Union[Measured, _Mapping]] = ..., qrs_ms: _Optional[_Union[Measured, _Mapping]] = ..., qt_ms: _Optional[_Union[Measured, _Mapping]] = ..., qtc_bazett_ms: _Optional[_Union[Measured, _Mapping]] = ..., qtc_fridericia_ms: _Optional[_Union[Measured, _Mapping]] = ..., qtc_framingham_ms: _Optional[_Union[Measured, _Mapping]] = ..., qtc_hodges_ms: _Optional[_Union[Measured, _Mapping]] = ..., p_axis_deg: _Optional[_Union[Measured, _Mapping]] = ..., qrs_axis_deg: _Optional[_Union[Measured, _Mapping]] = ..., t_axis_deg: _Optional[_Union[Measured, _Mapping]] = ..., beat_count: _Optional[int] = ..., lead_quality: _Optional[_Iterable[_Union[LeadQuality, _Mapping]]] = ..., document_json: _Optional[str] = ..., beats: _Optional[_Iterable[_Union[Summary.Beat, _Mapping]]] = ..., sampling_frequency: _Optional[float] = ..., source_format: _Optional[str] = ...) -> None: ...

class Range(_message.Message):
    __slots__ = ("measure", "low", "high")
    MEASURE_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    measure: str
    low: float
    high: float
    def __init__(self, measure: _Optional[str] = ..., low: _Optional[float] = ..., high: _Optional[float] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("patient_id", "patient_id_issuer", "organisation", "sop_class_uid", "manufacturer", "model", "study_instance_uid", "accession_number", "acquired_from", "acquired_to", "ranges", "order_by", "ascending", "page_size", "page_token")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_ISSUER_FIELD_NUMBER: _ClassVar[int]
    ORGANISATION_FIELD_NUMBER: _ClassVar[int]
    SOP_CLASS_UID_FIELD_NUMBER: _ClassVar[int]
    MANUFACTURER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    ACCESSION_NUMBER_FIELD_NUMBER: _ClassVar[int]
    ACQUIRED_FROM_FIELD_NUMBER: _ClassVar[int]
    ACQUIRED_TO_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    ASCENDING_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    patient_id_issuer: str
    organisation: str
    sop_class_uid: str
    manufacturer: str
    model: str
    study_instance_uid: str
    accession_number: str
    acquired_from: _timestamp_pb2.Timestamp
    acquired_to: _timestamp_pb2.Timestamp
    ranges: _containers.RepeatedCompositeFieldContainer[Range]
    order_by: str
    ascending: bool
    page_size: int
    page_token: str
    def __init__(self, patient_id: _Optional[str] = ..., patient_id_issuer: _Optional[str] = ..., organisation: _Optional[str] = ..., sop_class_uid: _Optional[str] = ..., manufacturer: _Optional[str] = ..., model: _Optional[str] = ..., study_instance_uid: _Optional[str] = ..., accession_number: _Optional[str] = ..., acquired_from: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., acquired_to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ranges: _Optional[_Iterable[_Union[Range, _Mapping]]] = ..., order_by: _Optional[str] = ..., ascending: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("sop_instance_uid", "patient_id", "organisation", "sop_class_uid", "study_instance_uid", "accession_number", "acquired", "manufacturer", "model", "analysis_version", "heart_rate_bpm", "pr_ms", "qrs_ms", "qt_ms", "qtc_ms", "source_format")
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANISATION_FIELD_NUMBER: _ClassVar[int]
    SOP_CLASS_UID_FIELD_NUMBER: _ClassVar[int]
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    ACCESSION_NUMBER_FIELD_NUMBER: _ClassVar[int]
    ACQUIRED_FIELD_NUMBER: _ClassVar[int]
    MANUFACTURER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ANALYSIS_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEART_RATE_BPM_FIELD_NUMBER: _ClassVar[int]
    PR_MS_FIELD_NUMBER: _ClassVar[int]
    QRS_MS_FIELD_NUMBER: _ClassVar[int]
    QT_MS_FIELD_NUMBER: _ClassVar[int]
    QTC_MS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    sop_instance_uid: str
    patient_id: str
    organisation: str
    sop_class_uid: str
    study_instance_uid: str
    accession_number: str
    acquired: _timestamp_pb2.Timestamp
    manufacturer: str
    model: str
    analysis_version: str
    heart_rate_bpm: Measured
    pr_ms: Measured
    qrs_ms: Measured
    qt_ms: Measured
    qtc_ms: Measured
    source_format: str
    def __init__(self, sop_instance_uid: _Optional[str] = ..., patient_id: _Optional[str] = ..., organisation: _Optional[str] = ..., sop_class_uid: _Optional[str] = ..., study_instance_uid: _Optional[str] = ..., accession_number: _Optional[str] = ..., acquired: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., manufacturer: _Optional[str] = ..., model: _Optional[str] = ..., analysis_version: _Optional[str] = ..., heart_rate_bpm: _Optional[_Union[Measured, _Mapping]] = ..., pr_ms: _Optional[_Union[Measured, _Mapping]] = ..., qrs_ms: _Optional[_Union[Measured, _Mapping]] = ..., qt_ms: _Optional[_Union[Measured, _Mapping]] = ..., qtc_ms: _Optional[_Union[Measured, _Mapping]] = ..., source_format: _Optional[str] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "next_page_token")
    HITS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    next_page_token: str
    def __init__(self, hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetTraceRequest(_message.Message):
    __slots__ = ("sop_instance_uid", "group", "leads", "start_s", "duration_s", "sampling_frequency", "units", "samples_per_chunk")
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    LEADS_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FREQUENCY_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_CHUNK_FIELD_NUMBER: _ClassVar[int]
    sop_instance_uid: str
    group: int
    leads: _containers.RepeatedScalarFieldContainer[str]
    start_s: float
    duration_s: float
    sampling_frequency: float
    units: Units
    samples_per_chunk: int
    def __init__(self, sop_instance_uid: _Optional[str] = ..., group: _Optional[int] = ..., leads: _Optional[_Iterable[str]] = ..., start_s: _Optional[float] = ..., duration_s: _Optional[float] = ..., sampling_frequency: _Optional[float] = ..., units: _Optional[_Union[Units, str]] = ..., samples_per_chunk: _Optional[int] = ...) -> None: ...

class TraceChunk(_message.Message):
    __slots__ = ("sop_instance_uid", "leads", "sampling_frequency", "start_s", "units", "sensitivity", "correction", "baseline", "channel_units", "first_sample", "samples", "data", "total_samples")
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    LEADS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FREQUENCY_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    SENSITIVITY_FIELD_NUMBER: _ClassVar[int]
    CORRECTION_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_UNITS_FIELD_NUMBER: _ClassVar[int]
    FIRST_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    sop_instance_uid: str
    leads: _containers.RepeatedScalarFieldContainer[str]
    sampling_frequency: float
    start_s: float
    units: Units
    sensitivity: _containers.RepeatedScalarFieldContainer[float]
    correction: _containers.RepeatedScalarFieldContainer[float]
    baseline: _containers.RepeatedScalarFieldContainer[float]
    channel_units: _containers.RepeatedScalarFieldContainer[str]
    first_sample: int
    samples: int
    data: bytes
    total_samples: int
    def __init__(self, sop_instance_uid: _Optional[str] = ..., leads: _Optional[_Iterable[str]] = ..., sampling_frequency: _Optional[float] = ..., start_s: _Optional[float] = ..., units: _Optional[_Union[Units, str]] = ..., sensitivity: _Optional[_Iterable[float]] = ..., correction: _Optional[_Iterable[float]] = ..., baseline: _Optional[_Iterable[float]] = ..., channel_units: _Optional[_Iterable[str]] = ..., first_sample: _Optional[int] = ..., samples: _Optional[int] = ..., data: _Optional[bytes] = ..., total_samples: _Optional[int] = ...) -> None: ...

class GetDicomRequest(_message.Message):
    __slots__ = ("sop_instance_uid",)
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    sop_instance_uid: str
    def __init__(self, sop_instance_uid: _Optional[str] = ...) -> None: ...

class DicomChunk(_message.Message):
    __slots__ = ("data", "total_bytes", "sha256")
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    total_bytes: int
    sha256: str
    def __init__(self, data: _Optional[bytes] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class GetOriginalRequest(_message.Message):
    __slots__ = ("sop_instance_uid",)
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    sop_instance_uid: str
    def __init__(self, sop_instance_uid: _Optional[str] = ...) -> None: ...

class OriginalChunk(_message.Message):
    __slots__ = ("data", "total_bytes", "sha256", "format")
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    total_bytes: int
    sha256: str
    format: str
    def __init__(self, data: _Optional[bytes] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., format: _Optional[str] = ...) -> None: ...

class CompactRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CompactResponse(_message.Message):
    __slots__ = ("merged_files", "written_files", "removed_files", "orphans_removed")
    MERGED_FILES_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FILES_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FILES_FIELD_NUMBER: _ClassVar[int]
    ORPHANS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    merged_files: int
    written_files: int
    removed_files: int
    orphans_removed: int
    def __init__(self, merged_files: _Optional[int] = ..., written_files: _Optional[int] = ..., removed_files: _Optional[int] = ..., orphans_removed: _Optional[int] = ...) -> None: ...

class ReanalyzeRequest(_message.Message):
    __slots__ = ("where", "engine", "scheduler", "workers", "unit_ecgs", "commit_rows")
    WHERE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    UNIT_ECGS_FIELD_NUMBER: _ClassVar[int]
    COMMIT_ROWS_FIELD_NUMBER: _ClassVar[int]
    where: _containers.RepeatedScalarFieldContainer[str]
    engine: str
    scheduler: str
    workers: int
    unit_ecgs: int
    commit_rows: int
    def __init__(self, where: _Optional[_Iterable[str]] = ..., engine: _Optional[str] = ..., scheduler: _Optional[str] = ..., workers: _Optional[int] = ..., unit_ecgs: _Optional[int] = ..., commit_rows: _Optional[int] = ...) -> None: ...

class ReanalyzeFailure(_message.Message):
    __slots__ = ("sop_instance_uid", "reason")
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    sop_instance_uid: str
    reason: str
    def __init__(self, sop_instance_uid: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReanalyzeProgress(_message.Message):
    __slots__ = ("analysis_version", "planned", "pass_number", "pass_ecgs", "done", "committed", "already_present", "failed", "unread", "commits", "rate", "note", "failed_ecgs", "unread_ecgs", "final", "files", "units", "seconds")
    ANALYSIS_VERSION_FIELD_NUMBER: _ClassVar[int]
    PLANNED_FIELD_NUMBER: _ClassVar[int]
    PASS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PASS_ECGS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_PRESENT_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    UNREAD_FIELD_NUMBER: _ClassVar[int]
    COMMITS_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    FAILED_ECGS_FIELD_NUMBER: _ClassVar[int]
    UNREAD_ECGS_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
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
    failed_ecgs: _containers.RepeatedCompositeFieldContainer[ReanalyzeFailure]
    unread_ecgs: _containers.RepeatedCompositeFieldContainer[ReanalyzeFailure]
    final: bool
    files: int
    units: int
    seconds: float
    def __init__(self, analysis_version: _Optional[str] = ..., planned: _Optional[int] = ..., pass_number: _Optional[int] = ..., pass_ecgs: _Optional[int] = ..., done: _Optional[int] = ..., committed: _Optional[int] = ..., already_present: _Optional[int] = ..., failed: _Optional[int] = ..., unread: _Optional[int] = ..., commits: _Optional[int] = ..., rate: _Optional[float] = ..., note: _Optional[str] = ..., failed_ecgs: _Optional[_Iterable[_Union[ReanalyzeFailure, _Mapping]]] = ..., unread_ecgs: _Optional[_Iterable[_Union[ReanalyzeFailure, _Mapping]]] = ..., final: _Optional[bool] = ..., files: _Optional[int] = ..., units: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class CompareVersionsRequest(_message.Message):
    __slots__ = ("old_version", "new_version", "top", "plot")
    OLD_VERSION_FIELD_NUMBER: _ClassVar[int]
    NEW_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    PLOT_FIELD_NUMBER: _ClassVar[int]
    old_version: str
    new_version: str
    top: int
    plot: bool
    def __init__(self, old_version: _Optional[str] = ..., new_version: _Optional[str] = ..., top: _Optional[int] = ..., plot: _Optional[bool] = ...) -> None: ...

class VersionChange(_message.Message):
    __slots__ = ("sop_instance_uid", "old_value", "new_value")
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    OLD_VALUE_FIELD_NUMBER: _ClassVar[int]
    NEW_VALUE_FIELD_NUMBER: _ClassVar[int]
    sop_instance_uid: str
    old_value: float
    new_value: float
    def __init__(self, sop_instance_uid: _Optional[str] = ..., old_value: _Optional[float] = ..., new_value: _Optional[float] = ...) -> None: ...

class VersionDifference(_message.Message):
    __slots__ = ("label", "key", "unit", "compared", "mean", "sd", "became", "stopped", "largest")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    COMPARED_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    SD_FIELD_NUMBER: _ClassVar[int]
    BECAME_FIELD_NUMBER: _ClassVar[int]
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    LARGEST_FIELD_NUMBER: _ClassVar[int]
    label: str
    key: str
    unit: str
    compared: int
    mean: float
    sd: float
    became: int
    stopped: int
    largest: _containers.RepeatedCompositeFieldContainer[VersionChange]
    def __init__(self, label: _Optional[str] = ..., key: _Optional[str] = ..., unit: _Optional[str] = ..., compared: _Optional[int] = ..., mean: _Optional[float] = ..., sd: _Optional[float] = ..., became: _Optional[int] = ..., stopped: _Optional[int] = ..., largest: _Optional[_Iterable[_Union[VersionChange, _Mapping]]] = ...) -> None: ...

class CompareVersionsResponse(_message.Message):
    __slots__ = ("old_version", "new_version", "old_ecgs", "new_ecgs", "common_ecgs", "differences", "plot_png")
    OLD_VERSION_FIELD_NUMBER: _ClassVar[int]
    NEW_VERSION_FIELD_NUMBER: _ClassVar[int]
    OLD_ECGS_FIELD_NUMBER: _ClassVar[int]
    NEW_ECGS_FIELD_NUMBER: _ClassVar[int]
    COMMON_ECGS_FIELD_NUMBER: _ClassVar[int]
    DIFFERENCES_FIELD_NUMBER: _ClassVar[int]
    PLOT_PNG_FIELD_NUMBER: _ClassVar[int]
    old_version: str
    new_version: str
    old_ecgs: int
    new_ecgs: int
    common_ecgs: int
    differences: _containers.RepeatedCompositeFieldContainer[VersionDifference]
    plot_png: bytes
    def __init__(self, old_version: _Optional[str] = ..., new_version: _Optional[str] = ..., old_ecgs: _Optional[int] = ..., new_ecgs: _Optional[int] = ..., common_ecgs: _Optional[int] = ..., differences: _Optional[_Iterable[_Union[VersionDifference, _Mapping]]] = ..., plot_png: _Optional[bytes] = ...) -> None: ...

class RenderRequest(_message.Message):
    __slots__ = ("sop_instance_uid", "layout", "paper", "format", "dpi", "speed_mm_s", "gain_mm_mv", "qtc_formula")
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    PAPER_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    DPI_FIELD_NUMBER: _ClassVar[int]
    SPEED_MM_S_FIELD_NUMBER: _ClassVar[int]
    GAIN_MM_MV_FIELD_NUMBER: _ClassVar[int]
    QTC_FORMULA_FIELD_NUMBER: _ClassVar[int]
    sop_instance_uid: str
    layout: str
    paper: str
    format: str
    dpi: float
    speed_mm_s: float
    gain_mm_mv: float
    qtc_formula: str
    def __init__(self, sop_instance_uid: _Optional[str] = ..., layout: _Optional[str] = ..., paper: _Optional[str] = ..., format: _Optional[str] = ..., dpi: _Optional[float] = ..., speed_mm_s: _Optional[float] = ..., gain_mm_mv: _Optional[float] = ..., qtc_formula: _Optional[str] = ...) -> None: ...

class RenderChunk(_message.Message):
    __slots__ = ("data", "media_type", "total_bytes")
    DATA_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    media_type: str
    total_bytes: int
    def __init__(self, data: _Optional[bytes] = ..., media_type: _Optional[str] = ..., total_bytes: _Optional[int] = ...) -> None: ...
