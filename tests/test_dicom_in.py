"""A study from a PACS (issue 24, item 2): synthetic cases written as realistic DICOM studies,
read back through bonescan.data.dicom and the client's prepare; no server needed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest

from bonescan.data.dicom import (
    BASIC_TEXT_SR,
    NM_IMAGE_STORAGE,
    classify,
    read_dicom_study,
    report_text_from_sr,
    study_state,
    write_synthetic_study,
)
from bonescan.data.io import CaseError, read_json, read_report, read_scan, write_dicom_scan

DCIODVFY = Path(sys.executable).parent / "dciodvfy"


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    from bonescan.data.generate import generate_dataset

    root = tmp_path_factory.mktemp("dicom_in")
    generate_dataset(root, 2, seed=5, workers=1, progress=False)
    return root / "cases"


@pytest.fixture(scope="module")
def studies(cases: Path, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("studies")
    return {layout: write_synthetic_study(cases / "case_00000", out / layout, layout=layout)[0].parent
            for layout in ("multiframe", "single")}


def _datasets(folder: Path) -> list:
    import pydicom

    return [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]


@pytest.mark.parametrize("layout", ["multiframe", "single"])
def test_round_trip_gives_the_case_back(cases: Path, studies: dict[str, Path], layout: str):
    study = read_dicom_study(studies[layout])
    case = read_scan(cases / "case_00000")
    assert study.scan.anterior.dtype == np.uint16
    assert np.array_equal(study.scan.anterior, case.anterior) and np.array_equal(study.scan.posterior, case.posterior)
    assert study.scan.pixel_spacing == pytest.approx(tuple(read_json(cases / "case_00000" / "meta.json")["pixel_spacing_mm"]))
    assert study.scan.spacing_source == "dicom"
    assert study.report == read_report(cases / "case_00000" / "report.txt").strip()
    assert study.report_source is not None and study.report_source.startswith("sr ")
    assert study.scan.study == {"accession_number": study.accession_number, "study_instance_uid": study.study_instance_uid}
    assert study.complete() and study_state(studies[layout]) == "scan+report"
    frames = {v: f[2] for v, f in study.frames.items()}
    assert frames == ({"anterior": 1, "posterior": 2} if layout == "multiframe" else {"anterior": 1, "posterior": 1})
    assert len(study.sources) == (1 if layout == "multiframe" else 2)
    assert not study.scan.notes


def test_datasets_in_any_order_and_resent_twice_read_alike(studies: dict[str, Path]):
    ds = _datasets(studies["single"])
    study = read_dicom_study(list(reversed(ds)) + ds)  # the node hands over Datasets; a PACS may resend
    assert np.array_equal(study.scan.anterior, read_dicom_study(studies["single"]).scan.anterior)
    assert [classify(d) for d in ds].count("nm") == 2 and [classify(d) for d in ds].count("report") == 1


def test_written_study_is_deterministic(cases: Path, tmp_path: Path):
    a = write_synthetic_study(cases / "case_00001", tmp_path / "a")
    b = write_synthetic_study(cases / "case_00001", tmp_path / "b")
    assert [p.name for p in a] == [p.name for p in b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))


def test_realistic_attributes(studies: dict[str, Path]):
    nm, sr = (next(d for d in _datasets(studies["multiframe"]) if d.SOPClassUID == uid)
              for uid in (NM_IMAGE_STORAGE, BASIC_TEXT_SR))
    views = [item.ViewCodeSequence[0].CodeValue for item in nm.DetectorInformationSequence]
    assert views == ["399321004", "399001007"]  # SCT anterior / posterior projection (CID 26)
    drug = nm.RadiopharmaceuticalInformationSequence[0]
    assert drug.RadiopharmaceuticalCodeSequence[0].CodeValue == "96390006"  # Tc-99m medronate
    assert nm.ImageType[2] == "WHOLE BODY" and nm.AccessionNumber and nm.PatientID and nm.PatientBirthDate
    assert sr.StudyInstanceUID == nm.StudyInstanceUID and sr.SeriesInstanceUID != nm.SeriesInstanceUID
    assert sr.ConceptNameCodeSequence[0].CodeValue == "18748-4" and sr.CompletionFlag == "COMPLETE"
    assert report_text_from_sr(sr)


@pytest.mark.skipif(not DCIODVFY.exists(), reason="dicom3tools not installed")
@pytest.mark.parametrize("layout", ["multiframe", "single"])
def test_dciodvfy_finds_no_error(studies: dict[str, Path], layout: str):
    for path in sorted(studies[layout].glob("*.dcm")):
        run = subprocess.run([str(DCIODVFY), "-new", str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
        assert not errors, (path.name, errors)
    run = subprocess.run([str(DCIODVFY.parent / "dcentvfy"), *map(str, sorted(studies[layout].glob("*.dcm")))],
                         capture_output=True, text=True, timeout=60)  # the instances agree on patient, study, series
    assert not [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.skipif(not DCIODVFY.exists(), reason="dicom3tools not installed")
@pytest.mark.parametrize("spacing", [(2.4, 2.4), None])
def test_write_dicom_scan_passes_dciodvfy(cases: Path, tmp_path: Path, spacing: tuple[float, float] | None):
    """write_dicom_scan (data to-dicom, the client's tests) writes a valid NM whole-body instance,
    PixelSpacing empty when the spacing is not known, and reads back as the views it was given."""
    case = read_scan(cases / "case_00000")
    path = tmp_path / "scan.dcm"
    write_dicom_scan(path, case.anterior, case.posterior, spacing, accession_number="ACC1")
    for flags in ([], ["-new"]):
        run = subprocess.run([str(DCIODVFY), *flags, str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], (flags, errors)
    back = read_scan(path)
    assert np.array_equal(back.anterior, case.anterior) and np.array_equal(back.posterior, case.posterior)
    assert back.spacing_source == ("dicom" if spacing else "default")
    assert back.study["accession_number"] == "ACC1" and back.study["study_instance_uid"]
    study = read_dicom_study(path)  # the study reader takes it too, by its view codes
    assert np.array_equal(study.scan.posterior, case.posterior) and not study.scan.notes


def _no_secrets(err: CaseError, folder: Path) -> None:
    """A message names the field and the problem, never the report's text or the patient's name."""
    sr = next(d for d in _datasets(folder) if classify(d) == "report")
    text = str(err)
    assert str(sr.PatientName) not in text and str(sr.PatientName).split("^")[0] not in text
    assert not any(line.strip() and line.strip() in text for line in report_text_from_sr(sr).splitlines())


def test_two_studies_are_refused(studies: dict[str, Path], cases: Path, tmp_path: Path):
    other = write_synthetic_study(cases / "case_00001", tmp_path / "other")
    with pytest.raises(CaseError, match="StudyInstanceUID.*2 different studies") as e:
        read_dicom_study([studies["multiframe"], *other])
    _no_secrets(e.value, studies["multiframe"])


def test_a_missing_view_is_named(studies: dict[str, Path], tmp_path: Path):
    folder = tmp_path / "half"
    shutil.copytree(studies["single"], folder)
    for d in _datasets(folder):
        if classify(d) == "nm" and d.DetectorInformationSequence[0].ViewCodeSequence[0].CodeValue == "399001007":
            (folder / f"{d.SOPInstanceUID}.dcm").unlink()
    with pytest.raises(CaseError, match="posterior view is missing") as e:
        read_dicom_study(folder)
    _no_secrets(e.value, folder)
    assert study_state(folder) == "report"


def test_a_ct_instance_is_refused(studies: dict[str, Path], tmp_path: Path):
    folder = tmp_path / "ct"
    shutil.copytree(studies["multiframe"], folder)
    ct = next(d for d in _datasets(folder) if classify(d) == "nm")
    ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    ct.Modality = "CT"
    ct.save_as(folder / "ct.dcm")
    with pytest.raises(CaseError, match=r"SOPClassUID 1\.2\.840\.10008\.5\.1\.4\.1\.1\.2 \(Modality CT\) is not an NM image") as e:
        read_dicom_study(folder)
    _no_secrets(e.value, folder)


def test_a_corrupt_file_is_named(studies: dict[str, Path], tmp_path: Path):
    folder = tmp_path / "corrupt"
    shutil.copytree(studies["multiframe"], folder)
    (folder / "IM0003").write_bytes(b"\x00" * 64 + b"not dicom at all")
    with pytest.raises(CaseError, match="IM0003: not a readable DICOM file"):
        read_dicom_study(folder)


def test_two_scans_are_refused(studies: dict[str, Path]):
    with pytest.raises(CaseError, match="more than one scan"):
        read_dicom_study(_two_scans(studies))


def _two_scans(studies: dict[str, Path]) -> list:
    """The multi-frame scan twice under two SOPInstanceUIDs (one study, two scans)."""
    nm = next(d for d in _datasets(studies["multiframe"]) if classify(d) == "nm")
    copy = deepcopy(nm)
    copy.SOPInstanceUID = "1.2.3.4.6"
    return [nm, copy]


def test_prepare_reads_a_study_folder(studies: dict[str, Path], tmp_path: Path):
    from bonescan.client.inputs import find_cases, prepare

    study = read_dicom_study(studies["single"])
    req = prepare(studies["single"])
    assert req.report == study.report and req.report_source == study.report_source
    assert req.study == study.scan.study and req.pixel_spacing_source == "dicom"
    assert req.stem == study.accession_number
    assert find_cases(studies["single"]) == ([studies["single"]], [])
    given = prepare(studies["single"], report="骨显像未见明显异常。")
    assert given.report_source == "given" and any("was not used" in n for n in given.notes)
    folder = tmp_path / "sidecar"  # no SR, a report.txt beside the scan
    folder.mkdir()
    for p in studies["multiframe"].glob("*.dcm"):
        if classify(_datasets_one(p)) == "nm":
            shutil.copy(p, folder / "IMG00001")
    (folder / "IMG00002").write_bytes((folder / "IMG00001").read_bytes())  # resent: counted once
    (folder / "report.txt").write_text("骨显像未见明显异常。", encoding="utf-8")
    req = prepare(folder)
    assert req.report_source == "sidecar report.txt" and req.report


def _datasets_one(path: Path):
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True)


def test_cli_synth_dicom_writes_both_layouts(tmp_path: Path):
    from bonescan.cli import main

    assert main(["data", "synth", "--out", str(tmp_path / "d"), "--n", "4", "--seed", "2", "--workers", "1", "--quiet",
                 "--dicom"]) == 0
    case_dirs = sorted((tmp_path / "d" / "cases").iterdir())
    counts = [len(list((c / "dicom").glob("*.dcm"))) for c in case_dirs]
    assert counts == [2, 2, 2, 3]  # every 4th case: two single-frame NM + the SR
    for c in case_dirs:  # the data set reads the PNGs as before, and the DICOM study gives the same views
        png, dcm = read_scan(c), read_dicom_study(c / "dicom").scan
        assert png.source == str(c) and np.array_equal(png.anterior, dcm.anterior)
        assert np.array_equal(png.posterior, dcm.posterior)


def test_views_from_top_level_codes_image_id_or_description(studies: dict[str, Path]):
    """Cameras label single-frame views in different places; all of them are read."""
    from pydicom.sequence import Sequence

    ref = read_dicom_study(studies["single"])
    nms = [d for d in _datasets(studies["single"]) if classify(d) == "nm"]
    for where in ("top", "ImageID", "SeriesDescription"):
        given = deepcopy(nms)
        for d in given:
            view = d.DetectorInformationSequence[0].ViewCodeSequence
            del d.DetectorInformationSequence[0].ViewCodeSequence
            label = "ANT" if view[0].CodeValue == "399321004" else "POST"
            d.ImageID, d.SeriesDescription = "", "WB Bone"
            if where == "top":
                d.ViewCodeSequence = Sequence(list(view))
            else:
                setattr(d, where, f"WB {label}")
        study = read_dicom_study(list(reversed(given)))
        assert np.array_equal(study.scan.anterior, ref.scan.anterior), where
        assert np.array_equal(study.scan.posterior, ref.scan.posterior), where


def test_unlabelled_frames_are_assumed_in_order_and_said(studies: dict[str, Path]):
    nm = deepcopy(next(d for d in _datasets(studies["multiframe"]) if classify(d) == "nm"))
    for item in nm.DetectorInformationSequence:
        del item.ViewCodeSequence
    study = read_dicom_study([nm])
    assert study.report is None and study.report_source is None and not study.complete()
    assert any("frame views not labelled" in n for n in study.scan.notes)


def test_classify_reads_every_report_sr_class_and_leaves_out_measurements(studies: dict[str, Path]):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from bonescan.data.dicom import COMPREHENSIVE_SR, ENHANCED_SR

    sr = next(d for d in _datasets(studies["multiframe"]) if classify(d) == "report")
    for uid in (ENHANCED_SR, COMPREHENSIVE_SR):
        sr.SOPClassUID = uid
        assert classify(sr) == "report"
    template = Dataset()
    template.MappingResource, template.TemplateIdentifier = "DCMR", "1500"
    sr.ContentTemplateSequence = Sequence([template])
    assert classify(sr) is None  # a TID 1500 measurement report (this project's own output) is no report


def test_infer_finds_nested_exports_and_one_study_per_subfolder(studies: dict[str, Path], cases: Path, tmp_path: Path):
    """A PACS export nests series folders; a folder of exports holds one study per subfolder."""
    from bonescan.client.inputs import find_cases, prepare

    nested = tmp_path / "export" / "study1"
    for k, p in enumerate(sorted(studies["single"].glob("*.dcm"))):
        (nested / f"SE{k}").mkdir(parents=True)
        shutil.copy(p, nested / f"SE{k}" / f"IM{k}")
    write_synthetic_study(cases / "case_00001", tmp_path / "export" / "study2")
    assert find_cases(nested) == ([nested], [])
    assert find_cases(tmp_path / "export") == ([nested, tmp_path / "export" / "study2"], [])
    assert prepare(nested).report_source == read_dicom_study(studies["single"]).report_source
