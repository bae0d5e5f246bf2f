"""Write an `Ecg` as a DICOM waveform object (PS3.3 A.34) with pydicom.

Encoding is not on the hot path: it makes export files and test data, so it
uses pydicom and favours conformance (``dciodvfy`` reports no errors on what it
writes) over speed. Every field of the model is written, so that
``decode(encode(ecg)) == ecg`` for any `Ecg` whose values the standard can
carry (see `encode` for the few that it cannot).
"""

from __future__ import annotations

import datetime as dt
import io
import math
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, generate_uid
from pydicom.valuerep import format_number_as_ds

from waveform.dicom.codes import LEAD_CODES, SOP_CLASSES, TRANSFER_SYNTAXES, lead_from_text
from waveform.errors import InvalidArgument
from waveform.model import SAMPLE_DTYPES, Annotation, Channel, Code, Ecg, WaveformGroup

__all__ = ["DEFAULT_TRANSFER_SYNTAX", "MODALITIES", "UNIT_MEANINGS", "encode", "lead_code"]

#: Explicit VR Little Endian: what `encode` writes unless told otherwise.
DEFAULT_TRANSFER_SYNTAX = "1.2.840.10008.1.2.1"

#: Modality (0008,0060) per waveform SOP class: the enumerated value of each
#: IOD's General Series module specialisation (PS3.3 A.34.x.3).
MODALITIES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.9.1.1": "ECG",  # 12-lead ECG
    "1.2.840.10008.5.1.4.1.1.9.1.2": "ECG",  # General ECG
    "1.2.840.10008.5.1.4.1.1.9.1.3": "ECG",  # Ambulatory ECG
    "1.2.840.10008.5.1.4.1.1.9.1.4": "ECG",  # General 32-bit ECG
    "1.2.840.10008.5.1.4.1.1.9.2.1": "HD",  # Hemodynamic
    "1.2.840.10008.5.1.4.1.1.9.3.1": "EPS",  # Cardiac Electrophysiology
    "1.2.840.10008.5.1.4.1.1.9.5.1": "HD",  # Arterial Pulse
    "1.2.840.10008.5.1.4.1.1.9.6.1": "RESP",  # Respiratory
    "1.2.840.10008.5.1.4.1.1.9.6.2": "RESP",  # Multi-channel Respiratory
    "1.2.840.10008.5.1.4.1.1.9.8.1": "POS",  # Body Position
}

#: Code meanings of the UCUM units we write (CID 3082 Waveform Units of Measurement).
UNIT_MEANINGS: dict[str, str] = {
    "uV": "microvolt",
    "mV": "millivolt",
    "V": "volt",
    "nV": "nanovolt",
    "mm[Hg]": "mmHg",
    "kPa": "kilopascal",
    "cm[H2O]": "cmH2O",
    "ms": "millisecond",
    "s": "second",
    "/min": "per minute",
    "{beats}/min": "beats per minute",
    "Hz": "hertz",
    "deg": "degree",
    "%": "percent",
    "L/s": "liter per second",
    "mL": "milliliter",
    "L": "liter",
    "Cel": "degree Celsius",
    "1": "no units",
}

# The lead names' code meanings in CID 3001 (MDC scheme).
_LEAD_MEANINGS: dict[str, str] = {
    "I": "Lead I", "II": "Lead II", "III": "Lead III",
    "aVR": "aVR, augmented voltage, right", "aVL": "aVL, augmented voltage, left",
    "aVF": "aVF, augmented voltage, foot",
    "V1": "Lead V1", "V2": "Lead V2", "V3": "Lead V3",
    "V4": "Lead V4", "V5": "Lead V5", "V6": "Lead V6",
}
_MDC_LEADS: dict[str, str] = {
    lead: value for (scheme, value), lead in LEAD_CODES.items()
    if scheme == "MDC" and value.startswith("2:")
}

# The Synchronization Frame of Reference of UTC-synchronised equipment (PS3.6 A.1).
_UTC_FRAME_OF_REFERENCE = "1.2.840.10008.15.1.1"

# General Series Laterality is Type 2C (required if the body part is paired);
# dciodvfy requires it, empty, for hemodynamic objects and refuses it for ECG.
_LATERALITY_MODALITIES = frozenset({"HD"})

# Coding Scheme Version is Type 1C: required where the designator alone does not
# identify the scheme (PS3.3 Table 8.8-1a); SCP-ECG codes are from version 1.3.
_SCHEME_VERSIONS: dict[str, str] = {"SCPECG": "1.3"}

# The longest Short String (SH) value, such as a Code Value (PS3.5 6.2).
_SH_LENGTH = 16

# Waveform Data is OB for 8-bit samples, OW otherwise (PS3.5 8.3; PS3.3 C.10.9.1.5).
_DATA_VR: dict[int, str] = {8: "OB", 16: "OW", 32: "OW", 64: "OW"}


def lead_code(lead: str) -> Code:
    """The MDC code (CID 3001) of a standard lead name: ``Code("MDC", "2:1", "Lead I")``."""
    try:
        return Code("MDC", _MDC_LEADS[lead], _LEAD_MEANINGS[lead])
    except KeyError:
        raise InvalidArgument(
            f"lead {lead!r} has no MDC code; expected one of {', '.join(_MDC_LEADS)}"
        ) from None


def encode(ecg: Ecg, transfer_syntax_uid: str | None = None) -> bytes:
    """The DICOM Part 10 file (preamble, meta header, data set) that carries ``ecg``.

    ``transfer_syntax_uid`` defaults to ``ecg.transfer_syntax_uid``, or Explicit VR
    Little Endian if that is empty; Implicit VR LE, Deflated Explicit VR LE and
    Explicit VR BE are also written.

    Values the standard cannot carry are adjusted so that the object stays
    conformant: a channel without units is written without sensitivity (the
    Channel Sensitivity attributes are conditional on each other), a channel
    without bits stored gets the group's bits allocated, and an annotation
    without referenced channels references all channels of group 1 (``1\\0``,
    C.10.10.1.1). When ``acquisition_datetime`` is None the Type 1 date and
    time attributes are absent and the object does not validate.
    """
    tsuid = transfer_syntax_uid or ecg.transfer_syntax_uid or DEFAULT_TRANSFER_SYNTAX
    syntax = TRANSFER_SYNTAXES.get(tsuid)
    if syntax is None:
        raise InvalidArgument(
            f"transfer syntax {tsuid!r} cannot be written; expected one of "
            + ", ".join(f"{t.uid} ({t.name})" for t in TRANSFER_SYNTAXES.values())
        )
    if ecg.sop_class_uid not in SOP_CLASSES:
        raise InvalidArgument(
            f"SOP class {ecg.sop_class_uid!r} is not a waveform class we write; expected "
            "one of " + ", ".join(f"{s.uid} ({s.name})" for s in SOP_CLASSES.values())
        )
    if not ecg.groups:
        raise InvalidArgument("the ECG has no multiplex group; a waveform object needs >= 1")

    ds = _dataset(ecg, little_endian=syntax.little_endian)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(ecg.sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(ecg.sop_instance_uid)
    meta.TransferSyntaxUID = UID(tsuid)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "WAVEFORM_0_1"
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128

    out = io.BytesIO()
    # The transfer syntax in the meta header decides the encoding (and deflation).
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


# ---------------------------------------------------------------------------
# The data set, module by module.


def _dataset(ecg: Ecg, *, little_endian: bool) -> Dataset:
    ds = Dataset()
    charset = ecg.specific_character_set or _charset_for(ecg)
    if charset:
        ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset

    # SOP Common
    ds.SOPClassUID = UID(ecg.sop_class_uid)
    ds.SOPInstanceUID = UID(ecg.sop_instance_uid)

    # Dates and times: Acquisition DateTime and the dates derived from it agree.
    when = ecg.acquisition_datetime
    date = when.strftime("%Y%m%d") if when else ""
    time = _tm(when) if when else ""
    ds.StudyDate = date
    ds.StudyTime = time
    if when is not None:
        ds.ContentDate = date
        ds.ContentTime = time
        ds.AcquisitionDateTime = _dt(when)

    # General Study
    ds.AccessionNumber = ecg.accession_number
    ds.ReferringPhysicianName = ecg.referring_physician
    ds.StudyDescription = ecg.study_description or None
    ds.StudyInstanceUID = UID(ecg.study_instance_uid or _derived_uid(ecg, "study"))
    ds.StudyID = ""
    if ecg.reading_physician:
        ds.NameOfPhysiciansReadingStudy = ecg.reading_physician

    # Patient
    ds.PatientName = ecg.patient_name
    ds.PatientID = ecg.patient_id
    if ecg.patient_id_issuer:
        ds.IssuerOfPatientID = ecg.patient_id_issuer
    ds.PatientBirthDate = ecg.birth_date.strftime("%Y%m%d") if ecg.birth_date else ""
    ds.PatientSex = ecg.sex

    # General Series
    ds.Modality = MODALITIES[ecg.sop_class_uid]
    ds.SeriesInstanceUID = UID(ecg.series_instance_uid or _derived_uid(ecg, "series"))
    ds.SeriesNumber = None
    if ds.Modality in _LATERALITY_MODALITIES:
        ds.Laterality = None
    if ecg.operator:
        ds.OperatorsName = ecg.operator

    # General Equipment
    ds.Manufacturer = ecg.manufacturer
    if ecg.institution:
        ds.InstitutionName = ecg.institution
    if ecg.model:
        ds.ManufacturerModelName = ecg.model
    if ecg.device_serial_number:
        ds.DeviceSerialNumber = ecg.device_serial_number
    if ecg.software_versions:
        ds.SoftwareVersions = ecg.software_versions

    # Waveform Identification
    ds.InstanceNumber = 1

    # Acquisition Context: Type 2, present and empty (no context is claimed).
    ds.AcquisitionContextSequence = Sequence()

    # Synchronization: a group offset in time needs Acquisition Time Synchronized
    # = Y, the condition of Multiplex Group Time Offset (C.10.9.1, C.7.4.2).
    synchronized = any(g.time_offset for g in ecg.groups)
    if synchronized:
        ds.SynchronizationFrameOfReferenceUID = _UTC_FRAME_OF_REFERENCE
        ds.SynchronizationTrigger = "NO TRIGGER"
        ds.AcquisitionTimeSynchronized = "Y"

    # Waveform
    ds.WaveformSequence = Sequence(
        [
            _group_item(g, i, little_endian=little_endian, synchronized=synchronized)
            for i, g in enumerate(ecg.groups, 1)
        ]
    )

    # Waveform Annotation
    if ecg.annotations:
        ds.WaveformAnnotationSequence = Sequence(
            [_annotation_item(a) for a in ecg.annotations]
        )
    return ds


def _group_item(
    group: WaveformGroup, number: int, *, little_endian: bool, synchronized: bool
) -> Dataset:
    raw = group.raw
    key = (raw.dtype.itemsize * 8, group.interpretation)
    dtype = SAMPLE_DTYPES.get(key)
    if raw.ndim != 2 or dtype is None or raw.dtype.newbyteorder("=") != dtype:
        raise InvalidArgument(
            f"multiplex group {number} ({group.label!r}): samples of dtype {raw.dtype} shaped "
            f"{raw.shape} cannot be written as {group.interpretation!r}; expected a 2-D "
            "(channels, samples) array of "
            + ", ".join(f"{i} -> {d}" for (_, i), d in SAMPLE_DTYPES.items())
        )
    if len(group.channels) != raw.shape[0]:
        raise InvalidArgument(
            f"multiplex group {number} ({group.label!r}) defines {len(group.channels)} "
            f"channels but its samples have {raw.shape[0]} rows"
        )
    bits = dtype.itemsize * 8
    item = Dataset()
    # Multiplex Group Time Offset is Type 1C: required when Acquisition Time
    # Synchronized (0018,1800) is Y, and dciodvfy reports it as an error otherwise.
    # So it is written, for every group, exactly when some group is offset.
    if synchronized:
        item.MultiplexGroupTimeOffset = _ds(group.time_offset)
    if group.trigger_time_offset is not None:
        item.TriggerTimeOffset = _ds(group.trigger_time_offset)
    item.WaveformOriginality = group.originality
    item.NumberOfWaveformChannels = raw.shape[0]
    item.NumberOfWaveformSamples = raw.shape[1]
    item.SamplingFrequency = _ds(group.sampling_frequency)
    if group.label:
        item.MultiplexGroupLabel = group.label
    item.ChannelDefinitionSequence = Sequence([_channel_item(c, bits) for c in group.channels])
    item.WaveformBitsAllocated = bits
    item.WaveformSampleInterpretation = group.interpretation

    padding = next((c.padding for c in group.channels if c.padding is not None), None)
    order: Literal["<", ">"] = "<" if little_endian else ">"
    if padding is not None:
        pad = np.array([padding]).astype(dtype.newbyteorder(order)).tobytes()
        # An 8-bit padding value is OB of one byte, padded to even length.
        item.add_new(0x5400100A, _DATA_VR[bits], pad + b"\x00" * (len(pad) % 2))

    # Interleave C1S1 C2S1 ... CnS1 C1S2 ...: the transposed array, C order.
    # pydicom writes OB/OW bytes as given, so big endian values are made here.
    data = np.ascontiguousarray(raw.T, dtype=dtype.newbyteorder(order)).tobytes()
    item.add_new(0x54001010, _DATA_VR[bits], data)
    return item


def _channel_item(channel: Channel, bits_allocated: int) -> Dataset:
    item = Dataset()
    source = channel.source
    if source is None:
        lead = channel.lead or (None if channel.label == "" else lead_from_text(channel.label))
        if lead is None:
            raise InvalidArgument(
                f"channel {channel.label!r} has neither a source code nor a standard lead; "
                "Channel Source Sequence (003A,0208) is Type 1: give Channel.source"
            )
        source = lead_code(lead)
    item.ChannelSourceSequence = Sequence([_code_item(source)])
    if channel.label:
        item.ChannelLabel = channel.label
    if channel.units is not None:
        item.ChannelSensitivity = _ds(channel.sensitivity)
        item.ChannelSensitivityUnitsSequence = Sequence([_unit_item(channel.units)])
        item.ChannelSensitivityCorrectionFactor = _ds(channel.correction)
        item.ChannelBaseline = _ds(channel.baseline)
    # The model holds skew in seconds: Channel Time Skew carries it exactly
    # (Channel Sample Skew would need a division by the sampling frequency).
    item.ChannelTimeSkew = _ds(channel.skew)
    item.WaveformBitsStored = (
        channel.bits_stored if channel.bits_stored is not None else bits_allocated
    )
    if channel.filter_low_hz is not None:
        item.FilterLowFrequency = _ds(channel.filter_low_hz)
    if channel.filter_high_hz is not None:
        item.FilterHighFrequency = _ds(channel.filter_high_hz)
    if channel.notch_hz is not None:
        item.NotchFilterFrequency = _ds(channel.notch_hz)
    return item


def _annotation_item(ann: Annotation) -> Dataset:
    item = Dataset()
    if ann.text is not None:
        item.UnformattedTextValue = ann.text
    if ann.concept is not None:
        item.ConceptNameCodeSequence = Sequence([_code_item(ann.concept)])
    if ann.value_code is not None:
        item.ConceptCodeSequence = Sequence([_code_item(ann.value_code)])
    if ann.value is not None:
        item.NumericValue = _ds(ann.value)
        if ann.units is not None:
            item.MeasurementUnitsCodeSequence = Sequence([_unit_item(ann.units)])
    pairs = ann.channels or ((1, 0),)
    item.ReferencedWaveformChannels = [n for pair in pairs for n in pair]
    if ann.group_number is not None:
        item.AnnotationGroupNumber = ann.group_number
    if ann.temporal_range_type is not None:
        item.TemporalRangeType = ann.temporal_range_type
    if ann.sample_positions:
        item.ReferencedSamplePositions = list(ann.sample_positions)
    if ann.time_offsets:
        item.ReferencedTimeOffsets = [_ds(t) for t in ann.time_offsets]
    return item


# ---------------------------------------------------------------------------
# Value formatting.


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    # Code Value is SH (16 characters); a longer one is Long Code Value (UC), PS3.3 8.8.
    if len(code.value) > _SH_LENGTH:
        item.LongCodeValue = code.value
    else:
        item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme
    version = _SCHEME_VERSIONS.get(code.scheme)
    if version:
        item.CodingSchemeVersion = version
    item.CodeMeaning = code.meaning or code.value
    return item


def _unit_item(units: str) -> Dataset:
    return _code_item(Code("UCUM", units, UNIT_MEANINGS.get(units, units)))


def _ds(value: float) -> str:
    """A Decimal String that reads back as exactly ``value`` when 16 characters allow."""
    if not math.isfinite(value):
        raise InvalidArgument(f"{value!r} cannot be written as a DICOM Decimal String")
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    text = repr(float(value))
    if len(text) <= 16:
        return text
    return format_number_as_ds(float(value))


def _tm(when: dt.datetime | dt.time) -> str:
    text = when.strftime("%H%M%S")
    if when.microsecond:
        text += f".{when.microsecond:06d}"
    return text


def _dt(when: dt.datetime) -> str:
    text = when.strftime("%Y%m%d") + _tm(when)
    offset = when.utcoffset()
    if offset is not None:
        minutes = int(offset.total_seconds()) // 60
        sign = "+" if minutes >= 0 else "-"
        text += f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    return text


def _charset_for(ecg: Ecg) -> str:
    """ISO_IR 192 (UTF-8) when some text is not ASCII and no character set was given."""
    texts: Iterable[Any] = (
        ecg.patient_name, ecg.patient_id, ecg.patient_id_issuer, ecg.study_description,
        ecg.institution, ecg.manufacturer, ecg.model, ecg.operator, ecg.reading_physician,
        ecg.referring_physician, ecg.accession_number, ecg.software_versions,
        ecg.device_serial_number,
        *(a.text or "" for a in ecg.annotations),
        *(c.label for g in ecg.groups for c in g.channels),
        *(g.label for g in ecg.groups),
    )
    return "" if all(str(t).isascii() for t in texts) else "ISO_IR 192"


def _derived_uid(ecg: Ecg, what: str) -> str:
    return str(generate_uid(entropy_srcs=[ecg.sop_instance_uid, what]))
