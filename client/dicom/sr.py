"""A segmentation result -> a TID 1500 measurement report (Comprehensive 3D SR, built with highdicom).

One planar ROI group per lesion, each with its tracking identifier ("lesion 1" and a UID derived
like the SEG's, so a resend keeps it), the SEG's anterior frame and segment as its region, its area
(mm² only where the pixel spacing is known; pixels always), its mean and maximum probability, and
its finding site: the bone the anatomy output names, as a SNOMED CT code with laterality and the exact
region as a modifier (SNOMED "Bone" and the image half's side where no region is named). One
study-level group says how many lesions there are, their total area, which path answered and why
(coded: the fail-safe's reason category, never its numbers) and whether a report was read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bonescan.client.dicom.seg import (
    MANUFACTURER,
    SEG_STORAGE,
    ResultLike,
    Source,
    algorithm_version,
    derived_uid,
)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


#: private coding scheme of this project's own answers (which path, why, what was read), declared
#: in the SR's CodingSchemeIdentificationSequence (a "99" designator is private: PS3.3 section 8.2).
#: dciodvfy still warns "Unrecognized defined term <99BONESCAN>" for each use: it checks designators
#: against its fixed list of defined terms and does not read the declaration.
#: the SOP class highdicom writes a TID 1500 report as (bonescan dicom-node acknowledges it without keeping it)
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SCHEME = "99BONESCAN"
SCHEME_NAME = "BoneScan-Triton answers"
SCHEME_ORGANIZATION = "BoneScan-Triton"
#: the fail-safe's reason categories (bonescan.failsafe; the start of ``reason``) -> code values
REASONS = {
    "no report": "NO_REPORT",
    "report not read": "NOT_READ",
    "report names no finding": "NO_FINDING",
    "report does not fit the image": "NO_FIT",
    "report read and consistent with the image": "CONSISTENT",
    "fail-safe off": "FAILSAFE_OFF",
}


def _code(value: str, scheme: str, meaning: str) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def _scheme() -> Any:
    """The CodingSchemeIdentificationSequence item that declares :data:`SCHEME`."""
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    return CodingSchemeIdentificationItem(designator=SCHEME, name=SCHEME_NAME,
                                          responsible_organization=SCHEME_ORGANIZATION)


def _units() -> dict[str, Any]:
    return {"mm2": _code("mm2", "UCUM", "square millimeter"), "px": _code("{pixels}", "UCUM", "pixels"),
            "1": _code("1", "UCUM", "no units"), "lesions": _code("{lesions}", "UCUM", "lesions")}


def _algorithm(result: ResultLike) -> Any:
    from highdicom.sr import AlgorithmIdentification

    return AlgorithmIdentification(name=result.model, version=algorithm_version(result))


def _finding_site(lesion: dict[str, Any]) -> Any:
    """Where the lesion is: the bone the anatomy output names (``site.region``) as its SNOMED CT code, with
    the bone's side as laterality (SNOMED Right / Left) and the exact region ("T7", "rib_R5_posterior") as a
    topographical modifier in the project's scheme; without a named site, SNOMED "Bone" with the lesion's
    side (the half of the image it lies in)."""
    from highdicom.sr import FindingSite
    from pydicom.sr.codedict import codes

    from bonescan.anatomy import CLASS_INDEX, english_name, snomed_laterality, snomed_site

    region = (lesion.get("site") or {}).get("region")
    cls = CLASS_INDEX.get(str(region)) if region else None
    site = snomed_site(cls) if cls else None
    if site is None:
        side = {"right": codes.SCT.Right, "left": codes.SCT.Left}.get(str(lesion.get("side", "")))
        return FindingSite(anatomic_location=codes.SCT.Bone, laterality=side)
    assert cls is not None
    lat = snomed_laterality(cls)
    return FindingSite(anatomic_location=_code(site[0], "SCT", site[1]),
                       laterality=_code(lat[0], "SCT", lat[1]) if lat else None,
                       topographical_modifier=_code(str(region)[:16].upper(), SCHEME, english_name(cls)[:64]))


def _lesion_measurements(result: ResultLike, lesion: dict[str, Any]) -> list[Any]:
    from highdicom.sr import Measurement
    from pydicom.sr.codedict import codes

    u = _units()
    out = []
    if result.spacing_known and lesion.get("area_mm2") is not None:
        out.append(Measurement(name=codes.SCT.Area, value=float(lesion["area_mm2"]), unit=u["mm2"]))
    out.append(Measurement(name=codes.SCT.Area, value=float(lesion["area_px"]), unit=u["px"]))
    for key, derivation in (("mean_probability", codes.SCT.Mean), ("max_probability", codes.SCT.Maximum)):
        if lesion.get(key) is not None:
            out.append(Measurement(name=codes.DCM.Probability, value=float(lesion[key]), unit=u["1"],
                                   derivation=derivation))
    return out


def _lesion_group(result: ResultLike, src: Source, seg: Dataset, index: int, lesion: dict[str, Any]) -> Any:
    """TID 1410 for one lesion: its region is the SEG's anterior frame (frame 1, segment 1)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    ant = src.views["anterior"]
    source_image = hd.sr.SourceImageForSegmentation(
        ant.sop_class_uid, ant.sop_instance_uid,
        referenced_frame_numbers=[ant.frame_number] if ant.frame_number is not None else None)
    tracking = hd.sr.TrackingIdentifier(
        uid=derived_uid(f"sr lesion {index}", src, result.model_sha256, result.model), identifier=f"lesion {index + 1}")
    frame = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=SEG_STORAGE, sop_instance_uid=str(seg.SOPInstanceUID), frame_number=1, segment_number=1,
        source_image=source_image)
    # the SOP Instance Reference macro allows a frame number or a segment number, not both; SEG frame 1
    # belongs to segment 1 alone (its SegmentIdentificationSequence), so the frame says it all
    del frame[0].ReferencedSOPSequence[0].ReferencedSegmentNumber
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, referenced_segment=frame,
        finding_type=codes.SCT.NeoplasmMetastatic, algorithm_id=_algorithm(result),
        finding_sites=[_finding_site(lesion)], measurements=_lesion_measurements(result, lesion))


def _reason_code(reason: str | None) -> Any:
    """The fail-safe's reason category as a code; its numbers stay in the result's JSON."""
    text = (reason or "").lower()
    for start, value in REASONS.items():
        if text.startswith(start):
            return _code(value, SCHEME, start)
    return _code("OTHER" if text else "UNKNOWN", SCHEME, "other reason" if text else "not given")


def _evaluations(result: ResultLike, report_in_study: bool | None = None) -> list[Any]:
    from highdicom.sr import QualitativeEvaluation

    path = result.answered_by or "unknown"
    study = [] if report_in_study is None else [  # what the node found in the study, besides what the model read
        QualitativeEvaluation(_code("REPORT_IN_STUDY", SCHEME, "Report in the study"),
                              _code("PRESENT" if report_in_study else "ABSENT", SCHEME,
                                    "present" if report_in_study else "absent"))]
    return [*study,
        QualitativeEvaluation(_code("ANSWERED_BY", SCHEME, "Answering path"),
                              _code(path.upper()[:16], SCHEME, {"dualpath": "image and report",
                                                                "unet": "image only"}.get(path, path)[:64])),
        QualitativeEvaluation(_code("REASON", SCHEME, "Reason for answering path"), _reason_code(result.reason)),
        QualitativeEvaluation(_code("REPORT", SCHEME, "Report read by the model"),
                              _code(result.report.upper().replace(" ", "_")[:16], SCHEME, result.report)),
    ]


def _study_group(result: ResultLike, src: Source, report_in_study: bool | None = None) -> Any:
    """TID 1501 for the whole scan: lesion count, total area, and which path answered and why."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    u = _units()
    total = codes.SCT.Total
    measurements = [hd.sr.Measurement(name=codes.SCT.NumberOfLesions, value=len(result.lesions), unit=u["lesions"])]
    if result.lesion_area_mm2 is not None:
        measurements.append(hd.sr.Measurement(name=codes.SCT.Area, value=result.lesion_area_mm2, unit=u["mm2"],
                                              derivation=total))
    measurements.append(hd.sr.Measurement(name=codes.SCT.Area, value=result.lesion_area_px, unit=u["px"],
                                          derivation=total))
    tracking = hd.sr.TrackingIdentifier(uid=derived_uid("sr study", src, result.model_sha256, result.model),
                                        identifier="whole scan")
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, finding_type=codes.SCT.NeoplasmMetastatic, algorithm_id=_algorithm(result),
        measurements=measurements, qualitative_evaluations=_evaluations(result, report_in_study))


def _report(result: ResultLike, src: Source, seg: Dataset, report_in_study: bool | None = None) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("sr device", src, result.model_sha256, result.model), name=result.model,
            manufacturer_name=MANUFACTURER, model_name=result.model))
    groups = [_lesion_group(result, src, seg, i, les) for i, les in enumerate(result.lesions)]
    return hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.RadionuclideScanOfWholeBody,
        imaging_measurements=[*groups, _study_group(result, src, report_in_study)])


def build_sr(result: ResultLike, src: Source, seg: Dataset, report_in_study: bool | None = None) -> Dataset:
    """The measurement report over ``src`` and its SEG ``seg`` (both are its evidence; the SEG first:
    highdicom copies the patient and study from the first, and the SEG has every one of them)."""
    import warnings

    import highdicom as hd

    with warnings.catch_warnings():  # highdicom's warning about an odd PatientName quotes the name
        warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
        sr = hd.sr.Comprehensive3DSR(
            evidence=[seg, *src.datasets], content=_report(result, src, seg, report_in_study),
            series_instance_uid=derived_uid("sr series", src, result.model_sha256, result.model), series_number=902,
            sop_instance_uid=derived_uid("sr", src, result.model_sha256, result.model), instance_number=1,
            manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
            coding_schemes=[_scheme()])
    sr.SeriesDescription = "BoneScan lesions (SR)"
    sr.SoftwareVersions = algorithm_version(result)
    return sr


__all__ = ["REASONS", "SCHEME", "SCHEME_NAME", "SCHEME_ORGANIZATION", "build_sr"]
