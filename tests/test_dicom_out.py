"""DICOM output: the SEG and SR of a result, checked with dciodvfy and read back with highdicom."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from bonescan.client import InputError, OutputExistsError, SegmentationResult, write_dicom
from bonescan.client.dicom import to_dicom
from bonescan.data.io import write_dicom_scan

H, W = 1024, 256
DCIODVFY = Path(sys.executable).parent / "dciodvfy"
SHA = "0123456789abcdef"


def _mask() -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[100:120, 30:50] = 1  # patient's right, asymmetric so a missing mirror shows
    m[500:510, 200:230] = 1
    return m


def _result(spacing_known: bool = True, sha: str | None = SHA, mask: np.ndarray | None = None) -> SegmentationResult:
    lesions = [
        {"id": 0, "area_px": 400, "area_mm2": 2304.0 if spacing_known else None, "mean_probability": 0.81,
         "max_probability": 0.97, "side": "right", "bbox": [100, 30, 119, 49]},
        {"id": 1, "area_px": 300, "area_mm2": 1728.0 if spacing_known else None, "mean_probability": 0.7,
         "max_probability": 0.9, "side": "left", "bbox": [500, 200, 509, 229],
         "site": {"region": "femur_L_proximal", "share": 0.9, "name_en": "left proximal femur", "side": "left"}},
    ]
    return SegmentationResult(
        mask=_mask() if mask is None else mask, probability=None, lesions=lesions, model="bonescan_ensemble",
        source="scan.dcm", pixel_spacing=(2.4, 2.4), pixel_spacing_source="dicom" if spacing_known else "default",
        answered_by="dualpath", reason="report read and consistent with the image", model_sha256=sha, stem="case1")


def _views() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 200, (H, W)).astype(np.uint16), rng.integers(0, 200, (H, W)).astype(np.uint16)


@pytest.fixture
def nm(tmp_path: Path) -> Path:
    path = tmp_path / "scan.dcm"
    write_dicom_scan(path, *_views(), (2.4, 2.4), accession_number="ACC7")
    return path


@pytest.fixture
def nm_pair(nm: Path, tmp_path: Path) -> list[Path]:
    """The two-frame scan split into two single-frame NM instances (one per view, one series)."""
    src = pydicom.dcmread(nm)
    frames = src.pixel_array
    out = []
    for i, view in enumerate(("anterior", "posterior")):
        ds = pydicom.dcmread(nm)
        ds.NumberOfFrames = 1
        ds.DetectorVector = [1]
        ds.NumberOfDetectors = 1
        ds.DetectorInformationSequence = pydicom.Sequence([src.DetectorInformationSequence[i]])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[view])
        ds.PixelData = frames[i].tobytes()
        out.append(tmp_path / f"{view}.dcm")
        ds.save_as(out[-1], enforce_file_format=True)
    return out


def dciodvfy_errors(path: Path) -> tuple[list[str], list[str]]:
    """dciodvfy's (errors, warnings) for one file."""
    run = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=120)
    lines = (run.stdout + run.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]


needs_dciodvfy = pytest.mark.skipif(not DCIODVFY.exists(), reason="dicom3tools (dciodvfy) not installed in the venv")


def _check_seg(path: Path, mask: np.ndarray, sources: list[tuple[str, int | None]]) -> None:
    """highdicom reads back frame 1 == mask over the anterior source, frame 2 == mirrored mask over the posterior."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    px = seg.pixel_array
    assert px.shape == (2, H, W)
    assert (px[0] == mask).all() and (px[1] == mask[:, ::-1]).all()
    for i, (uid, frame) in enumerate(sources):
        ref = seg.PerFrameFunctionalGroupsSequence[i].DerivationImageSequence[0].SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == uid and ref.get("ReferencedFrameNumber") == frame


@needs_dciodvfy
def test_two_frame_source_seg_and_sr(nm: Path, tmp_path: Path) -> None:
    paths = write_dicom(_result(), nm, tmp_path / "out")
    assert {p.name for p in paths.values()} == {"case1_seg.dcm", "case1_sr.dcm"}
    for p in paths.values():
        errors, _ = dciodvfy_errors(p)
        assert errors == [], errors
    src = pydicom.dcmread(nm)
    _check_seg(paths["seg"], _mask(), [(src.SOPInstanceUID, 1), (src.SOPInstanceUID, 2)])
    seg = pydicom.dcmread(paths["seg"])
    assert seg.StudyInstanceUID == src.StudyInstanceUID and seg.SeriesInstanceUID != src.SeriesInstanceUID
    assert seg.AccessionNumber == "ACC7"
    assert [float(v) for v in seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing] == [2.4, 2.4]
    segment = seg.SegmentSequence[0]
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "14799000"
    assert SHA in segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion


def _sr_numbers(path: Path) -> list[dict[str, tuple[float, str]]]:
    import highdicom as hd

    report: Any = hd.sr.srread(path).content  # a MeasurementReport (typed as its ContentSequence)
    groups = report.get_planar_roi_measurement_groups()
    return [{f"{m.name.meaning}/{m.unit.value}/{m.derivation.meaning if m.derivation else ''}": m.value
             for m in g.get_measurements()} for g in groups]


@needs_dciodvfy
def test_sr_reads_back(nm: Path, tmp_path: Path) -> None:
    import highdicom as hd

    paths = write_dicom(_result(), nm, tmp_path)
    numbers = _sr_numbers(paths["sr"])
    assert len(numbers) == 2
    assert numbers[0] == {"Area/mm2/": 2304.0, "Area/{pixels}/": 400.0, "Probability/1/Mean": 0.81,
                          "Probability/1/Maximum": 0.97}
    report: Any = hd.sr.srread(paths["sr"]).content
    group = report.get_planar_roi_measurement_groups()[1]
    assert group.tracking_identifier == "lesion 2"
    site = group.finding_sites[0]  # the named bone as SNOMED CT, its side, the exact region as a modifier
    assert (site.value.value, site.value.scheme_designator, site.value.meaning) == ("71341001", "SCT", "Femur")
    assert site.laterality.meaning == "Left" and site.laterality.value == "7771000"
    assert site.topographical_modifier.value == "FEMUR_L_PROXIMAL" and site.topographical_modifier.meaning == "left proximal femur"
    unnamed = report.get_planar_roi_measurement_groups()[0].finding_sites[0]  # no site: Bone, the image half's side
    assert unnamed.value.meaning == "Bone" and unnamed.laterality.meaning == "Right"
    ref = group.referenced_segmentation_frame
    assert ref.referenced_sop_instance_uid == pydicom.dcmread(paths["seg"]).SOPInstanceUID
    assert ref.referenced_frame_numbers == [1]
    assert ref.source_image_for_segmentation.referenced_sop_instance_uid == pydicom.dcmread(nm).SOPInstanceUID
    study = report.get_image_measurement_groups()[0]
    values = {m.name.meaning: m.value for m in study.get_measurements() if m.derivation is None}
    assert values["Number of lesions (observable entity)"] == 2
    # the project's private scheme is declared (dciodvfy still warns on "99" designators: its list is fixed)
    declared = pydicom.dcmread(paths["sr"]).CodingSchemeIdentificationSequence
    assert [(d.CodingSchemeDesignator, bool(d.CodingSchemeName), bool(d.CodingSchemeResponsibleOrganization))
            for d in declared] == [("99BONESCAN", True, True)]


@needs_dciodvfy
def test_unknown_spacing_has_no_mm2(tmp_path: Path) -> None:
    path = tmp_path / "scan.dcm"
    write_dicom_scan(path, *_views(), None)
    paths = write_dicom(_result(spacing_known=False), path, tmp_path / "out")
    for p in paths.values():
        assert dciodvfy_errors(p)[0] == []
    assert all(not any("mm2" in k for k in g) for g in _sr_numbers(paths["sr"]))


@needs_dciodvfy
def test_two_single_frame_sources(nm_pair: list[Path], tmp_path: Path) -> None:
    paths = write_dicom(_result(), nm_pair, tmp_path / "out")
    for p in paths.values():
        errors, _ = dciodvfy_errors(p)
        assert errors == [], errors
    uids = [pydicom.dcmread(p).SOPInstanceUID for p in nm_pair]
    _check_seg(paths["seg"], _mask(), [(uids[0], 1), (uids[1], 1)])
    # given in the other order, the views are found by their labels, not their place
    seg, _ = to_dicom(_result(), list(reversed(nm_pair)))
    assert seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]\
        .ReferencedSOPInstanceUID == uids[0]


def test_posterior_frame_is_mirrored(nm: Path) -> None:
    """Geometry: frame 2 lies over the posterior view as acquired, so a right-side lesion is on its right."""
    seg, _ = to_dicom(_result(), nm)
    frames = np.asarray(pydicom.pixels.unpack_bits(seg.PixelData, as_array=True))[: 2 * H * W].reshape(2, H, W)
    assert frames[0, 110, 40] == 1 and frames[0, 110, W - 1 - 40] == 0
    assert frames[1, 110, W - 1 - 40] == 1 and frames[1, 110, 40] == 0


def test_uids_deterministic_and_follow_the_checkpoint(nm: Path) -> None:
    seg1, sr1 = to_dicom(_result(), nm)
    seg2, sr2 = to_dicom(_result(), nm)
    seg3, sr3 = to_dicom(_result(sha="fedcba9876543210"), nm)
    for a, b, c in ((seg1, seg2, seg3), (sr1, sr2, sr3)):
        assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
        assert a.SOPInstanceUID != c.SOPInstanceUID and a.SeriesInstanceUID != c.SeriesInstanceUID
    assert seg1.SOPInstanceUID != sr1.SOPInstanceUID


def test_refuses_other_geometry_and_non_nm(nm: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="Rows x Columns"):
        to_dicom(_result(mask=np.zeros((512, 256), np.uint8)), nm)
    ds = pydicom.dcmread(nm)
    ds.Modality, ds.SOPClassUID = "CT", "1.2.840.10008.5.1.4.1.1.2"
    with pytest.raises(InputError, match="not an NM image"):
        to_dicom(_result(), ds)
    png = tmp_path / "anterior.png"
    png.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(InputError, match="not a readable DICOM"):
        to_dicom(_result(), png)


def test_no_overwrite_without_asking(nm: Path, tmp_path: Path) -> None:
    write_dicom(_result(), nm, tmp_path)
    with pytest.raises(OutputExistsError):
        write_dicom(_result(), nm, tmp_path)
    assert write_dicom(_result(), nm, tmp_path, overwrite=True)["seg"].exists()


def test_result_to_dicom_delegates(nm: Path) -> None:
    seg, sr = _result().to_dicom(nm)
    assert seg.Modality == "SEG" and sr.Modality == "SR"


@pytest.mark.server
@needs_dciodvfy
def test_infer_dicom_out(server, dataset: Path, tmp_path: Path) -> None:
    """`bonescan infer --dicom-out` on a DICOM case: valid SEG / SR whose mask is the client's own."""
    from bonescan.cli import main
    from bonescan.client import BoneScanClient
    from bonescan.data.io import read_scan

    case = sorted((dataset / "cases").iterdir())[0]
    scan = read_scan(case)
    dcm = tmp_path / "scan.dcm"
    write_dicom_scan(dcm, scan.anterior, scan.posterior, scan.pixel_spacing)
    out = tmp_path / "dicom"
    code = main(["infer", str(dcm), "--server", server.grpc_url, "--out", str(tmp_path / "out"), "--dicom-out", str(out),
                 "--stem", "c1"])
    assert code == 0
    for p in (out / "c1_seg.dcm", out / "c1_sr.dcm"):
        errors, _ = dciodvfy_errors(p)
        assert errors == [], errors
    with BoneScanClient(server.grpc_url, timeout_s=60) as client:
        mine = client.segment(dcm)
    assert mine.model_sha256 and mine.model_sha256 in pydicom.dcmread(out / "c1_seg.dcm").SoftwareVersions
    src = pydicom.dcmread(dcm)
    _check_seg(out / "c1_seg.dcm", mine.mask, [(src.SOPInstanceUID, 1), (src.SOPInstanceUID, 2)])


@pytest.mark.server
@needs_dciodvfy
def test_infer_dicom_out_from_a_study_folder(server, dataset: Path, tmp_path: Path) -> None:
    """A PACS export (two single-frame views + the report SR, files named by UID): `infer --dicom-out`
    finds the views among the study's files and references each in its SEG frame."""
    from bonescan.cli import main
    from bonescan.client import BoneScanClient
    from bonescan.data.dicom import read_dicom_study, write_synthetic_study

    case = sorted((dataset / "cases").iterdir())[1]
    study = tmp_path / "study"
    write_synthetic_study(case, study, layout="single")
    out = tmp_path / "dicom"
    code = main(["infer", str(study), "--server", server.grpc_url, "--out", str(tmp_path / "out"), "--dicom-out", str(out),
                 "--stem", "s1"])
    assert code == 0
    for p in (out / "s1_seg.dcm", out / "s1_sr.dcm"):
        errors, _ = dciodvfy_errors(p)
        assert errors == [], errors
    st = read_dicom_study([study])
    with BoneScanClient(server.grpc_url, timeout_s=60) as client:
        mine = client.segment(study)
    # NM instances are multi-frame by IOD (NumberOfFrames 1 here): each view is frame 1 of its instance
    _check_seg(out / "s1_seg.dcm", mine.mask, [(st.frames[v][1], 1) for v in ("anterior", "posterior")])
