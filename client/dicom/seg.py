"""A segmentation result -> a DICOM Segmentation (BINARY) over the NM scan it was computed from.

Written with pydicom against the Segmentation IOD rather than with highdicom: highdicom 0.28.2
builds a SEG only over single-frame sources ("Only a single frame is supported"), and a whole-body
bone scan is one two-frame NM instance (anterior + posterior) or two single-frame ones.

The SEG has one segment ("bone metastasis") and two frames, one per view, each drawn over its view
as acquired: frame 1 is the mask over the anterior view; frame 2 the same mask mirrored left-right
(``mask[:, ::-1]``), because the model's mask is in the anterior frame and the posterior view is
seen from behind (bonescan.contract.to_model_frame). A viewer overlays each frame on its source frame.

UIDs are derived from the source's study and instance UIDs and the checkpoint's sha256: sending the
same study through the same checkpoint again replaces the SEG in a PACS instead of adding one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from bonescan.data.io import NM_IMAGE_STORAGE, CaseError, _view_of

if TYPE_CHECKING:
    from pydicom.dataset import Dataset



class ResultLike(Protocol):
    """What DICOM output reads of a bonescan.client.SegmentationResult. A protocol rather than an
    import: the result module delegates its to_dicom() here, so this package may not import it."""

    mask: np.ndarray
    lesions: list[dict[str, Any]]
    model: str
    source: str
    stem: str | None
    answered_by: str | None
    reason: str | None
    report: str
    model_sha256: str | None

    @property
    def spacing_known(self) -> bool: ...

    @property
    def lesion_area_px(self) -> int: ...

    @property
    def lesion_area_mm2(self) -> float | None: ...

    def check_outputs(self, paths: dict[str, Path], stem: str, overwrite: bool) -> None: ...


SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
VIEWS = ("anterior", "posterior")
MANUFACTURER = "BoneScan-Triton"
SEGMENT_LABEL = "bone metastasis"
#: (value, scheme, meaning) of the segment's codes (SNOMED CT as in pydicom's codes.SCT / CID 7150-7151)
CATEGORY = ("49755003", "SCT", "Morphologically Abnormal Structure")
PROPERTY_TYPE = ("14799000", "SCT", "Neoplasm, metastatic")
ANATOMIC_REGION = ("272673000", "SCT", "Bone")
ALGORITHM_FAMILY = ("123110", "DCM", "Artificial Intelligence")  # CID 7162
DERIVATION_SEGMENTATION = ("113076", "DCM", "Segmentation")
SOURCE_FOR_PROCESSING = ("121322", "DCM", "Source image for image processing operation")
#: written as SliceThickness when the source has none (see _shared_group)
NOMINAL_SLICE_THICKNESS = "1"
#: red in DICOM's scaled CIE Lab (RecommendedDisplayCIELabValue), so viewers draw lesions red
RED_CIELAB = [34891, 53480, 50167]
#: study and patient attributes copied from the source, so a PACS files the SEG with its scan;
#: type 2 ones are written empty when the source lacks them
COPIED_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber")
COPIED_OPTIONAL = ("SpecificCharacterSet", "IssuerOfPatientID", "PatientAge", "StudyDescription")


@dataclass(frozen=True)
class SourceFrame:
    """Where one view lives in the source: its instance and, in a multi-frame one, its frame."""

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    frame_number: int | None  # 1-based; None: a single-frame instance (nothing to number)


@dataclass
class Source:
    """The NM scan a result was computed from: one two-frame instance or one instance per view."""

    datasets: list[Dataset]
    views: dict[str, SourceFrame]

    @property
    def first(self) -> Dataset:
        return self.datasets[0]

    @property
    def pixel_spacing(self) -> tuple[float, float] | None:
        from bonescan.data.io import _spacing

        return _spacing(self.first)

    @property
    def sop_instance_uids(self) -> list[str]:
        return sorted({f.sop_instance_uid for f in self.views.values()})


def _name(ds: Dataset) -> str:
    """How an error names a source: its file, never its patient."""
    return str(getattr(ds, "filename", None) or "source dataset")


def _read(item: Any) -> Dataset:
    import pydicom
    from pydicom.dataset import Dataset

    if isinstance(item, Dataset):
        return item
    if not isinstance(item, (str, Path)):
        raise CaseError("source", f"cannot use a {type(item).__name__}: give a DICOM file, a pydicom Dataset, "
                                  "or a sequence of two (anterior, posterior)")
    path = Path(item)
    if not path.is_file():
        raise CaseError(path, "DICOM source file is missing")
    try:
        return pydicom.dcmread(path)
    except Exception as e:  # noqa: BLE001 - pydicom raises several kinds for a non-DICOM file
        raise CaseError(path, f"not a readable DICOM file ({type(e).__name__}): DICOM output needs the DICOM "
                              "scan the result was computed from") from None


def _frame_ref(ds: Dataset, frame_number: int | None) -> SourceFrame:
    for key in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        if not str(getattr(ds, key, "") or ""):
            raise CaseError(_name(ds), f"source has no {key}")
    return SourceFrame(str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), frame_number)


def _check_nm(ds: Dataset) -> None:
    modality = str(getattr(ds, "Modality", "") or "")
    if modality != "NM" and str(getattr(ds, "SOPClassUID", "")) != NM_IMAGE_STORAGE:
        raise CaseError(_name(ds), f"not an NM image (Modality {modality or 'missing'}): DICOM output needs the "
                                   "NM scan the result was computed from")


def _frames(ds: Dataset) -> int:
    return int(getattr(ds, "NumberOfFrames", 1) or 1)


def _two_frame_views(ds: Dataset) -> dict[str, SourceFrame]:
    """The views of a two-frame instance, found as bonescan.data.io.read_dicom_scan finds them (the
    mask was computed from that reading): DetectorInformationSequence[i] labels frame i + 1;
    unlabelled, frame 1 is anterior."""
    det = list(getattr(ds, "DetectorInformationSequence", []) or [])
    views = [_view_of(det[i], v) if i < len(det) else v for i, v in enumerate(VIEWS)]
    if sorted(views) != sorted(VIEWS):
        views = list(VIEWS)
    return {v: _frame_ref(ds, i + 1) for i, v in enumerate(views)}


def _single_view(ds: Dataset, expect: str) -> str:
    """The view of a single-frame instance, as bonescan.data.io.read_dicom_view reads it."""
    if _frames(ds) != 1:
        raise CaseError(_name(ds), f"a view file has one frame, this one has {_frames(ds)}")
    det = list(getattr(ds, "DetectorInformationSequence", []) or [])
    return _view_of(det[0] if det else ds, expect)


def load_source(source: Any) -> Source:
    """The source scan from a DICOM file, a Dataset, or a sequence of two (anterior, posterior);
    checks it is NM and one study. Raises CaseError naming the file and the problem."""
    items = list(source) if isinstance(source, (list, tuple)) else [source]
    datasets = [_read(item) for item in items]
    for ds in datasets:
        _check_nm(ds)
    if len(datasets) == 1 and _frames(datasets[0]) == 2:
        return Source(datasets, _two_frame_views(datasets[0]))
    if len(datasets) != 2:
        raise CaseError(_name(datasets[0]), "expected a two-frame NM whole-body instance (anterior + posterior) or two "
                                            f"single-frame views; got {len(datasets)} instance(s) of "
                                            f"{[_frames(d) for d in datasets]} frame(s)")
    views = {_single_view(ds, expect): ds for ds, expect in zip(datasets, VIEWS)}
    if sorted(views) != sorted(VIEWS):
        raise CaseError(_name(datasets[1]), "the two source files are labelled as the same view")
    if len({str(getattr(ds, "StudyInstanceUID", "")) for ds in datasets}) != 1:
        raise CaseError(_name(datasets[1]), "the two source views belong to different studies (StudyInstanceUID)")
    refs = {v: _frame_ref(ds, 1 if "NumberOfFrames" in ds else None) for v, ds in views.items()}
    return Source([views["anterior"], views["posterior"]], refs)


def check_geometry(result: ResultLike, src: Source) -> None:
    """Refuse a result whose mask is not the size of the source's frames (another scan's result)."""
    for ds in src.datasets:
        rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
        if (rows, cols) != tuple(result.mask.shape):
            raise CaseError(_name(ds), f"source Rows x Columns {rows} x {cols} do not match the result's mask "
                                       f"{result.mask.shape[0]} x {result.mask.shape[1]}: not the scan this result "
                                       "was computed from")


def derived_uid(kind: str, src: Source, model_sha256: str | None, model: str) -> str:
    """A UID that is the same for the same study, source instances and checkpoint: a resend replaces.
    Without a checkpoint hash (the client did not read the server's config) the model name stands in."""
    from pydicom.uid import generate_uid

    study = str(src.first.StudyInstanceUID)
    return str(generate_uid(entropy_srcs=[kind, study, *src.sop_instance_uids, model_sha256 or f"model:{model}"]))


def algorithm_version(result: ResultLike) -> str:
    """Package version + checkpoint: what a reader needs to know which model drew the segment."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg = version("bonescan-triton")
    except PackageNotFoundError:
        pkg = "unknown"
    return f"{pkg} sha256:{(result.model_sha256 or 'unknown')[:16]}"


def code_item(code: tuple[str, str, str]) -> Dataset:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    return item


def _seq(*items: Dataset) -> Any:
    from pydicom.sequence import Sequence as DicomSequence

    return DicomSequence(list(items))


def _copy_study(ds: Dataset, src: Dataset) -> None:
    for key in COPIED_TYPE2:
        setattr(ds, key, getattr(src, key, "") or "")
    for key in COPIED_OPTIONAL:
        if getattr(src, key, None):
            setattr(ds, key, getattr(src, key))
    ds.StudyInstanceUID = src.StudyInstanceUID
    if getattr(src, "FrameOfReferenceUID", None):
        ds.FrameOfReferenceUID = src.FrameOfReferenceUID
        ds.PositionReferenceIndicator = getattr(src, "PositionReferenceIndicator", "") or ""


def _equipment(ds: Dataset, result: ResultLike) -> None:
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = result.model
    ds.DeviceSerialNumber = result.model_sha256 or "unknown"
    ds.SoftwareVersions = algorithm_version(result)


def _segment(result: ResultLike) -> Dataset:
    from pydicom.dataset import Dataset

    seg = Dataset()
    seg.SegmentNumber = 1
    seg.SegmentLabel = SEGMENT_LABEL
    seg.SegmentDescription = "bone metastasis (automatic, BoneScan-Triton)"
    seg.SegmentedPropertyCategoryCodeSequence = _seq(code_item(CATEGORY))
    seg.SegmentedPropertyTypeCodeSequence = _seq(code_item(PROPERTY_TYPE))
    seg.AnatomicRegionSequence = _seq(code_item(ANATOMIC_REGION))
    seg.SegmentAlgorithmType = "AUTOMATIC"
    seg.SegmentAlgorithmName = result.model
    algo = Dataset()
    algo.AlgorithmFamilyCodeSequence = _seq(code_item(ALGORITHM_FAMILY))
    algo.AlgorithmName = result.model
    algo.AlgorithmVersion = algorithm_version(result)
    seg.SegmentationAlgorithmIdentificationSequence = _seq(algo)
    seg.RecommendedDisplayCIELabValue = RED_CIELAB
    return seg


def _frame_group(ref: SourceFrame, view_index: int, view: str) -> Dataset:
    """One frame's functional groups: which source frame it was derived from, its place in the
    dimensions (segment, view), its segment."""
    from pydicom.dataset import Dataset

    source = Dataset()
    source.ReferencedSOPClassUID = ref.sop_class_uid
    source.ReferencedSOPInstanceUID = ref.sop_instance_uid
    if ref.frame_number is not None:
        source.ReferencedFrameNumber = ref.frame_number
    # each SEG frame is drawn over its source frame as acquired (the posterior one mirrored back): a
    # pixel of the SEG frame is the same pixel of its source frame
    source.SpatialLocationsPreserved = "YES"
    source.PurposeOfReferenceCodeSequence = _seq(code_item(SOURCE_FOR_PROCESSING))
    derivation = Dataset()
    derivation.DerivationCodeSequence = _seq(code_item(DERIVATION_SEGMENTATION))
    derivation.SourceImageSequence = _seq(source)
    content = Dataset()
    content.DimensionIndexValues = [1, view_index]
    content.FrameLabel = view
    segment = Dataset()
    segment.ReferencedSegmentNumber = 1
    group = Dataset()
    group.DerivationImageSequence = _seq(derivation)
    group.FrameContentSequence = _seq(content)
    group.SegmentIdentificationSequence = _seq(segment)
    return group


def _dimensions(ds: Dataset, organization_uid: str) -> None:
    """Frames are indexed by segment number and view (FrameLabel: anterior = 1, posterior = 2)."""
    from pydicom.dataset import Dataset
    from pydicom.tag import Tag

    org = Dataset()
    org.DimensionOrganizationUID = organization_uid
    ds.DimensionOrganizationSequence = _seq(org)
    index = []
    for pointer, group, label in ((Tag(0x0062, 0x000B), Tag(0x0062, 0x000A), "Segment Number"),
                                  (Tag(0x0020, 0x9453), Tag(0x0020, 0x9111), "View")):
        item = Dataset()
        item.DimensionOrganizationUID = organization_uid
        item.DimensionIndexPointer = pointer
        item.FunctionalGroupPointer = group
        item.DimensionDescriptionLabel = label
        index.append(item)
    ds.DimensionIndexSequence = _seq(*index)


def _shared_group(spacing: tuple[float, float] | None, slice_thickness: Any) -> Dataset:
    """Pixel Measures when the source's spacing is known. SliceThickness: the source's, else a nominal
    1 mm: a planar projection has none, but highdicom's reader requires the attribute and the IOD
    forbids it empty; nothing measures with it (the SEG has no volume)."""
    from pydicom.dataset import Dataset

    group = Dataset()
    if spacing is not None:
        measures = Dataset()
        measures.PixelSpacing = [f"{spacing[0]:.6g}", f"{spacing[1]:.6g}"]
        measures.SliceThickness = slice_thickness if slice_thickness not in (None, "") else NOMINAL_SLICE_THICKNESS
        group.PixelMeasuresSequence = _seq(measures)
    return group


def _referenced_series(src: Source) -> Any:
    """Common Instance Reference: every source instance, by series."""
    from pydicom.dataset import Dataset

    series: dict[str, list[SourceFrame]] = {}
    for ref in {f.sop_instance_uid: f for f in src.views.values()}.values():
        series.setdefault(ref.series_instance_uid, []).append(ref)
    items = []
    for uid, refs in series.items():
        item = Dataset()
        item.SeriesInstanceUID = uid
        instances = []
        for ref in refs:
            inst = Dataset()
            inst.ReferencedSOPClassUID = ref.sop_class_uid
            inst.ReferencedSOPInstanceUID = ref.sop_instance_uid
            instances.append(inst)
        item.ReferencedInstanceSequence = _seq(*instances)
        items.append(item)
    return _seq(*items)


def seg_frames(mask: np.ndarray) -> np.ndarray:
    """The SEG's frames, each over its view as acquired: [anterior mask, mask mirrored left-right]."""
    m = np.asarray(mask).astype(bool)
    return np.stack([m, m[:, ::-1]])


def _pixels(ds: Dataset, mask: np.ndarray) -> None:
    from pydicom.pixels import pack_bits

    frames = seg_frames(mask)
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = mask.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelRepresentation = 0
    ds.PixelData = pack_bits(frames.astype(np.uint8).ravel(), pad=True)


def _file_meta(sop_instance_uid: str, sop_class_uid: str) -> Any:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def build_seg(result: ResultLike, src: Source) -> Dataset:
    """The Segmentation over ``src`` (already checked by :func:`check_geometry`)."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    uid = derived_uid("seg", src, result.model_sha256, result.model)
    ds.file_meta = _file_meta(uid, SEG_STORAGE)
    ds.SOPClassUID, ds.SOPInstanceUID = SEG_STORAGE, uid
    _copy_study(ds, src.first)
    ds.Modality = "SEG"
    ds.SeriesInstanceUID = derived_uid("seg series", src, result.model_sha256, result.model)
    ds.SeriesNumber, ds.InstanceNumber = 901, 1
    ds.SeriesDescription = "BoneScan lesions (SEG)"
    now = dt.datetime.now()
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.SeriesDate, ds.SeriesTime = ds.ContentDate, ds.ContentTime
    _equipment(ds, result)
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.PatientOrientation = ""  # type 2C; the two frames face opposite ways, so no one value is right
    ds.ContentLabel = "BONE_METS"
    ds.ContentDescription = "bone metastasis segmentation"
    ds.ContentCreatorName = ""
    ds.LossyImageCompression = "00"
    ds.SegmentationType = "BINARY"
    ds.SegmentsOverlap = "NO"
    ds.SegmentSequence = _seq(_segment(result))
    _dimensions(ds, derived_uid("seg dimensions", src, result.model_sha256, result.model))
    ds.SharedFunctionalGroupsSequence = _seq(_shared_group(src.pixel_spacing, getattr(src.first, "SliceThickness", None)))
    ds.PerFrameFunctionalGroupsSequence = _seq(*(_frame_group(src.views[v], i + 1, v) for i, v in enumerate(VIEWS)))
    ds.ReferencedSeriesSequence = _referenced_series(src)
    _pixels(ds, result.mask)
    return ds


def to_seg(result: ResultLike, source: Any) -> Dataset:
    """A result -> its Segmentation over ``source`` (a DICOM file, a Dataset, or the two views)."""
    src = load_source(source)
    check_geometry(result, src)
    return build_seg(result, src)


__all__ = ["SEG_STORAGE", "Source", "SourceFrame", "build_seg", "check_geometry", "derived_uid", "load_source",
           "seg_frames", "to_seg"]
