"""Issue 13: the study a report names is the scan's (accession number / StudyInstanceUID); light,
no torch, no server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bonescan.data.io import read_scan, write_dicom_scan, write_png16
from bonescan.errors import BonescanError
from bonescan.study import check_report_study, report_study_ids

UID = "1.2.826.0.1.3680043.8.498.12345678901234567890"
OTHER_UID = "1.2.826.0.1.3680043.8.498.99999999999999999999"
FINDINGS = "全身骨显像：右侧第5前肋见放射性浓聚灶。"


def _views() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ant = rng.integers(0, 400, (1024, 256)).astype(np.uint16)
    return ant, ant[:, ::-1].copy()


@pytest.mark.parametrize("report, accession, uid", [
    (f"检查号：A2024-0012 {FINDINGS}", "A2024-0012", None),
    (f"检查编号: 778899\n{FINDINGS}", "778899", None),
    (f"影像号 NM.20240501.7 {FINDINGS}", "NM.20240501.7", None),
    (f"登记号：１２３４５６。{FINDINGS}", "123456", None),  # full-width digits and colon
    (f"Accession No.: ACC-42\n{FINDINGS}", "ACC-42", None),
    (f"Accession Number 00042 {FINDINGS}", "00042", None),
    (f"accession: x9 {FINDINGS}", "x9", None),
    (f"ACC: 555 StudyInstanceUID: {UID}\n{FINDINGS}", "555", UID),
    (f"Study UID：{UID}。{FINDINGS}", None, UID),
    (f"检查UID {UID} {FINDINGS}", None, UID),
    (FINDINGS, None, None),
    ("", None, None),
    ("Accurate uptake; accession pending. 检查号：待定", None, None),  # no value with a digit
])
def test_report_study_ids(report: str, accession: str | None, uid: str | None) -> None:
    assert report_study_ids(report) == {"accession": accession, "study_uid": uid}


def test_mismatch_refused_naming_the_field_only() -> None:
    report = f"检查号：A2024-0012 {FINDINGS}"
    with pytest.raises(BonescanError) as e:
        check_report_study(report, {"accession_number": "B7"})
    msg = str(e.value)
    assert "accession number" in msg and "another study" in msg
    assert "A2024-0012" not in msg and "B7" not in msg and FINDINGS[:6] not in msg

    with pytest.raises(BonescanError) as e:
        check_report_study(f"StudyInstanceUID: {UID} {FINDINGS}", {"study_instance_uid": OTHER_UID})
    msg = str(e.value)
    assert "StudyInstanceUID" in msg and UID not in msg and OTHER_UID not in msg


def test_report_contradicting_itself_is_refused() -> None:
    with pytest.raises(BonescanError):
        check_report_study("检查号: 111 … 检查号: 222", {"accession_number": "111"})


def test_match_and_nothing_to_compare_accepted() -> None:
    check_report_study(f"检查号：A2024-0012 {FINDINGS}", {"accession_number": " a2024-0012 "})  # case, spaces
    check_report_study(f"Study UID: {UID}", {"study_instance_uid": UID, "accession_number": "X1"})
    check_report_study(f"检查号：A2024-0012 {FINDINGS}", {})  # the scan has none
    check_report_study(f"检查号：A2024-0012 {FINDINGS}", {"study_instance_uid": UID})  # nothing in common
    check_report_study(FINDINGS, {"accession_number": "B7", "study_instance_uid": UID})  # report names none
    check_report_study("", {"accession_number": "B7"})


def test_dicom_round_trip(tmp_path) -> None:
    ant, post = _views()
    write_dicom_scan(tmp_path / "scan.dcm", ant, post, accession_number="A2024-0012", study_instance_uid=UID)
    scan = read_scan(tmp_path / "scan.dcm")
    assert scan.study == {"accession_number": "A2024-0012", "study_instance_uid": UID}
    check_report_study(f"检查号：a2024-0012 {FINDINGS}", scan.study)
    with pytest.raises(BonescanError):
        check_report_study(f"StudyInstanceUID: {OTHER_UID}", scan.study)

    write_dicom_scan(tmp_path / "plain.dcm", ant, post)  # no AccessionNumber: only the UID is known
    assert set(read_scan(tmp_path / "plain.dcm").study) == {"study_instance_uid"}


def test_meta_json_identifiers(tmp_path) -> None:
    ant, post = _views()
    write_png16(tmp_path / "anterior.png", ant)
    write_png16(tmp_path / "posterior.png", post)
    assert read_scan(tmp_path).study == {}
    (tmp_path / "meta.json").write_text(json.dumps({"accession_number": "M-1", "study_instance_uid": UID}))
    assert read_scan(tmp_path).study == {"accession_number": "M-1", "study_instance_uid": UID}
    # `data to-dicom` carries them into the DICOM (without them a converted case would lose its study)
    from bonescan.cli import main

    assert main(["data", "to-dicom", str(tmp_path), "--out", str(tmp_path / "scan.dcm")]) == 0
    assert read_scan(tmp_path / "scan.dcm").study == {"accession_number": "M-1", "study_instance_uid": UID}


def test_prepare_refuses_and_carries_the_study(tmp_path) -> None:
    from bonescan.client import inputs
    from bonescan.client.result import SegmentationResult

    ant, post = _views()
    write_dicom_scan(tmp_path / "scan.dcm", ant, post, accession_number="A2024-0012", study_instance_uid=UID)
    with pytest.raises(BonescanError) as e:
        inputs.prepare(tmp_path / "scan.dcm", "检查号：B7 " + FINDINGS)
    assert "B7" not in str(e.value) and "A2024-0012" not in str(e.value)
    req = inputs.prepare(tmp_path / "scan.dcm", "检查号：A2024-0012 " + FINDINGS)
    assert req.study == {"accession_number": "A2024-0012", "study_instance_uid": UID}

    res = SegmentationResult(np.zeros((4, 4), np.uint8), None, [], "m", str(tmp_path / "scan.dcm"), (2.0, 2.0),
                             study=req.study)
    doc = json.loads(res.save(tmp_path / "out")["lesions"].read_text())
    assert doc["study"] == {"accession_number": "A2024-0012", "study_instance_uid": UID}
    res.study = {}
    assert "study" not in json.loads(res.save(tmp_path / "out2")["lesions"].read_text())


def test_preprocess_check_refuses_another_study_naming_fields_only() -> None:
    """The server's check (validate.study_problem, run by the Triton preprocess model): per report
    row, the request's ACCESSION_NUMBER / STUDY_INSTANCE_UID against what the report names."""
    from bonescan.validate import study_problem

    def col(*values: str | bytes) -> np.ndarray:
        return np.array([[v if isinstance(v, bytes) else v.encode("utf-8")] for v in values], dtype=np.object_)

    reports = col("检查号：A2024-0012 " + FINDINGS, FINDINGS)
    assert study_problem(reports, col("A2024-0012", "B7"), None) is None  # second report names no study
    assert study_problem(reports, None, None) is None and study_problem(reports, col("", ""), col("", "")) is None
    msg = study_problem(reports, col("B7", ""), None)
    assert msg is not None and "ACCESSION_NUMBER" in msg and "another study" in msg
    assert "A2024-0012" not in msg and "B7" not in msg and FINDINGS[:6] not in msg
    msg = study_problem(col(f"StudyInstanceUID: {UID}"), None, col(OTHER_UID))
    assert msg is not None and "STUDY_INSTANCE_UID" in msg and UID not in msg and OTHER_UID not in msg
    assert "row(s)" in (study_problem(reports, col("A2024-0012"), None) or "")
    assert "UTF-8" in (study_problem(reports, col(b"\xff", b""), None) or "")
    assert "longer" in (study_problem(reports, col("1" * 65, ""), None) or "")
    assert study_problem(None, col("A1"), None) is not None  # identifiers without a report row for them


def test_client_sends_the_study_with_the_report() -> None:
    """The client puts the study's identifiers beside REPORT (empty for a scan without them), and
    none for the image-only ensemble."""
    import tritonclient.grpc as grpcclient

    from bonescan import contract as C
    from bonescan.client.core import _build_inputs
    from bonescan.client.inputs import Request

    img = np.ones((2, 1024, 256), np.float32)
    reqs = [Request(img, FINDINGS, (2.0, 2.0), "a", study={"accession_number": "A1"}), Request(img, FINDINGS, (2.0, 2.0), "b")]
    ins = {t.name(): t for t in _build_inputs(grpcclient, reqs, text_guided=True)}
    assert C.ENS_ACCESSION.name in ins and C.ENS_STUDY_UID.name not in ins
    assert ins[C.ENS_ACCESSION.name].shape() == [2, 1]
    assert C.ENS_ACCESSION.name not in {t.name() for t in _build_inputs(grpcclient, reqs, text_guided=False)}
    assert C.ENS_ACCESSION.name not in {t.name() for t in _build_inputs(grpcclient, reqs[1:], text_guided=True)}
