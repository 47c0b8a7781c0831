"""The attributes of an NM whole-body image instance, written in one place for every writer.

Two writers make NM whole-body instances: :func:`bonescan.data.dicom.write_synthetic_study` (a
realistic patient, study and camera, as a hospital sends them) and
:func:`bonescan.data.io.write_dicom_scan` (a case's two views; nothing known of the patient, the
study or the camera). Both build their instances with :func:`nm_dataset`, so both pass dicom3tools'
``dciodvfy`` without errors. What a writer does not know is written empty where the IOD allows it
(type 2) and left out where it is optional (type 3), never made up.

Needs pydicom and numpy only, and imports nothing else of ``bonescan.data``: io.py and dicom.py
both import it (dicom.py imports io.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
VIEWS = ("anterior", "posterior")
# View codes (CID 26 "Nuclear Medicine Projection"): SCT 399321004 "Anterior projection" and
# 399001007 "Posterior projection" (pydicom.sr.codedict codes.SCT.AnteriorProjection /
# PosteriorProjection).
VIEW_CODE = {"anterior": ("399321004", "SCT", "Anterior projection"),
             "posterior": ("399001007", "SCT", "Posterior projection")}
_LABEL = {"anterior": "ANT", "posterior": "POST"}


@dataclass(frozen=True)
class NMStudy:
    """Patient, study and equipment of an instance. Empty strings are written as empty type 2
    attributes; None leaves a type 3 attribute out."""

    study_instance_uid: str
    patient_id: str
    patient_name: str = ""
    issuer_of_patient_id: str | None = None
    birth_date: str = ""  # YYYYMMDD
    sex: str = ""  # "M", "F", "O" or ""
    age: str | None = None  # "060Y"
    study_date: str = ""  # YYYYMMDD
    study_time: str = ""  # HHMMSS
    accession_number: str = ""
    referring_physician: str = ""
    study_id: str = ""
    study_description: str | None = None
    manufacturer: str = ""
    institution: str | None = None
    station: str | None = None


def code(value: str, scheme: str, meaning: str) -> Any:
    """A code sequence item (CodeValue, CodingSchemeDesignator, CodeMeaning)."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def file_meta(sop_class: str, sop_uid: str) -> Any:
    """File meta information of an instance written in explicit VR little endian."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def patient_study(ds: Any, s: NMStudy) -> None:
    """Patient, General Study, Patient Study and General Equipment attributes."""
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = s.patient_name
    ds.PatientID = s.patient_id
    if s.issuer_of_patient_id is not None:
        ds.IssuerOfPatientID = s.issuer_of_patient_id
    ds.PatientBirthDate = s.birth_date
    ds.PatientSex = s.sex
    if s.age is not None:
        ds.PatientAge = s.age
    ds.StudyInstanceUID = s.study_instance_uid
    ds.StudyDate = s.study_date
    ds.StudyTime = s.study_time
    ds.AccessionNumber = s.accession_number
    ds.ReferringPhysicianName = s.referring_physician
    ds.StudyID = s.study_id
    if s.study_description is not None:
        ds.StudyDescription = s.study_description
    ds.Manufacturer = s.manufacturer
    if s.institution is not None:
        ds.InstitutionName = s.institution
    if s.station is not None:
        ds.StationName = s.station


def nm_dataset(study: NMStudy, views: tuple[str, ...], pixels: np.ndarray, *, sop_instance_uid: str,
               series_instance_uid: str, frame_of_reference_uid: str, series_number: int,
               spacing: tuple[float, float] | list[float] | None, camera: bool) -> Any:
    """One NM whole-body instance holding ``views`` (one frame each, ``pixels`` [n, H, W] counts).

    Args:
        spacing: (row, column) mm; None (not known) writes PixelSpacing and ScanLength empty.
        camera: the synthetic camera's acquisition is known (collimator, field of view, energy
            window, Tc-99m MDP dose, sweep speed); False writes those attributes empty or leaves
            them out, as for views whose acquisition nothing says.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.tag import Tag

    ds = Dataset()
    ds.file_meta = file_meta(NM_IMAGE_STORAGE, sop_instance_uid)
    ds.SOPClassUID, ds.SOPInstanceUID = NM_IMAGE_STORAGE, sop_instance_uid
    patient_study(ds, study)
    ds.Modality = "NM"
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = series_number
    ds.BodyPartExamined = "WHOLEBODY"  # unpaired: Laterality (type 2C) must then be absent
    ds.SeriesDescription = "WB Bone ANT+POST" if len(views) == 2 else f"WB Bone {_LABEL[views[0]]}"
    if study.study_date:
        ds.SeriesDate, ds.SeriesTime = study.study_date, study.study_time
        ds.ContentDate, ds.ContentTime = study.study_date, study.study_time
        ds.AcquisitionDate, ds.AcquisitionTime = study.study_date, study.study_time
    ds.InstanceNumber = 1  # each instance opens its own series
    ds.ImageID = "ANT+POST" if len(views) == 2 else _LABEL[views[0]]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    _orientation(ds)
    _isotope(ds, camera)
    _acquisition(ds, spacing, camera)
    ds.NumberOfFrames = len(views)
    ds.FrameIncrementPointer = [Tag(0x0054, 0x0010), Tag(0x0054, 0x0020)]  # EnergyWindowVector, DetectorVector
    ds.EnergyWindowVector = [1] * len(views)
    ds.DetectorVector = list(range(1, len(views) + 1))
    ds.NumberOfDetectors = len(views)
    ds.DetectorInformationSequence = Sequence([_detector(v, camera) for v in views])
    _pixels(ds, pixels, spacing)
    return ds


def _detector(view: str, camera: bool) -> Any:
    """One NM Detector Module item: the view code (CID 26), the collimator, the whole-body geometry."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    if camera:
        item.CollimatorGridName = "LEHR"
        item.CollimatorType = "PARA"
        item.FieldOfViewShape = "RECTANGLE"
        item.FieldOfViewDimensions = [540, 400]
        item.FocalDistance = None
        item.XFocusCenter = None
        item.YFocusCenter = None
        item.ZoomFactor = [1.0, 1.0]
        item.ImagePositionPatient = [0.0, 0.0, 0.0]
    else:
        item.CollimatorType = None
        item.ImagePositionPatient = None
    # the views' orientation is the project's convention (rows head to feet; the posterior view as
    # acquired, seen from behind), known whatever the camera
    item.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0] if view == "anterior" else [-1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    item.ViewCodeSequence = Sequence([code(*VIEW_CODE[view])])
    return item


def _orientation(ds: Any) -> None:
    """NM/PET Patient Orientation: supine, head first (CID 19 / 20 / 21)."""
    from pydicom.sequence import Sequence

    orientation = code("102538003", "SCT", "recumbent")
    orientation.PatientOrientationModifierCodeSequence = Sequence([code("40199007", "SCT", "supine")])
    ds.PatientOrientationCodeSequence = Sequence([orientation])
    ds.PatientGantryRelationshipCodeSequence = Sequence([code("102540008", "SCT", "headfirst")])


def _isotope(ds: Any, camera: bool) -> None:
    """NM Isotope: one 140 keV window, Tc-99m medronate (MDP) given intravenously; without the
    camera's facts one window of unknown limits and no radiopharmaceutical item."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds.NumberOfEnergyWindows = 1
    if not camera:
        ds.EnergyWindowInformationSequence = Sequence()
        ds.RadiopharmaceuticalInformationSequence = Sequence()
        return
    window = Dataset()
    limits = Dataset()
    limits.EnergyWindowLowerLimit, limits.EnergyWindowUpperLimit = 126.0, 154.0
    window.EnergyWindowRangeSequence = Sequence([limits])
    window.EnergyWindowName = "Tc99m"
    ds.EnergyWindowInformationSequence = Sequence([window])
    drug = Dataset()
    drug.RadionuclideCodeSequence = Sequence([code("72454006", "SCT", "^99m^Technetium")])
    drug.RadiopharmaceuticalRoute = "Intravenous"
    drug.AdministrationRouteCodeSequence = Sequence([code("47625008", "SCT", "Intravenous route")])
    drug.RadiopharmaceuticalVolume = 1.0
    drug.RadionuclideTotalDose = 740.0  # MBq (20 mCi), an adult bone scan's dose
    drug.Radiopharmaceutical = "Tc-99m MDP"
    drug.RadiopharmaceuticalCodeSequence = Sequence([code("96390006", "SCT", "Technetium Tc^99m^ medronate")])
    ds.RadiopharmaceuticalInformationSequence = Sequence([drug])


#: ActualFrameDuration of a whole-body sweep, ms: type 1C (a value is required for a WHOLE BODY image),
#: written even when the camera is not known
SWEEP_DURATION_MS = 600000


def _acquisition(ds: Any, spacing: tuple[float, float] | list[float] | None, camera: bool) -> None:
    """NM Image module values of a whole-body sweep (3 h after injection, 15 cm/min)."""
    ds.CountsAccumulated = None
    if camera:
        ds.AcquisitionTerminationCondition = "MANU"
    ds.ActualFrameDuration = SWEEP_DURATION_MS
    if camera:
        ds.WholeBodyTechnique = ["1PS"]  # one pass, both detectors
    ds.ScanVelocity = 15.0 / 6.0 if camera else None  # mm/s
    ds.ScanLength = round(1024 * spacing[0]) if spacing is not None else None
    if camera:
        ds.CorrectedImage = ["UNIF"]
        ds.TableHeight = None
        ds.TableTraverse = None


def _pixels(ds: Any, pixels: np.ndarray, spacing: tuple[float, float] | list[float] | None) -> None:
    """NM Image Pixel: 16-bit unsigned counts, native little endian."""
    frames = np.ascontiguousarray(pixels, dtype=np.uint16)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(frames.shape[-2]), int(frames.shape[-1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = [f"{spacing[0]:.4f}", f"{spacing[1]:.4f}"] if spacing is not None else None
    ds.SmallestImagePixelValue = int(frames.min())
    ds.LargestImagePixelValue = int(frames.max())
    ds.LossyImageCompression = "00"
    ds.PixelData = frames.tobytes()
