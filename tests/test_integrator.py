"""What a hospital developer hits in the first hour with the client library and `bonescan infer`
(issue 22, items 1-6): result names, report arguments, pixel spacing, the errors to catch,
whitespace reports, an HTTP port, report files in Chinese encodings."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

import bonescan.client as client_pkg
from bonescan.client import (
    BoneScanClient,
    BonescanError,
    InputError,
    OutputExistsError,
    SegmentationResult,
    prepare,
    result_stem,
)
from bonescan.data.io import read_scan, write_dicom_scan, write_png16

REPORT = "全身骨显像：胸骨、第5腰椎及左侧第5肋骨见异常放射性浓聚。诊断意见：多发骨转移可能。"


@pytest.fixture(scope="module")
def case_dir(dataset) -> Path:
    from bonescan.data.dataset import BoneScanDataset

    return BoneScanDataset(dataset, "test").refs[0].path


@pytest.fixture(scope="module")
def views(case_dir):
    s = read_scan(case_dir)
    return s.anterior, s.posterior


def _npy(tmp_path: Path, views) -> Path:
    p = tmp_path / "scan.npy"
    np.save(p, np.stack(views))
    return p


# -- 1. results of different patients never overwrite each other


def test_two_png_pairs_in_one_folder_keep_their_own_results(server, views, tmp_path, capsys):
    from bonescan.cli import main

    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for pat in ("PAT1", "PAT2"):
        write_png16(pngs / f"{pat}_ANT.png", views[0])
        write_png16(pngs / f"{pat}_POST.png", views[1])
    out = tmp_path / "out"
    base = ["--server", server.grpc_url, "--out", str(out), "--pixel-spacing", "2.4", "2.4"]
    for pat in ("PAT1", "PAT2"):
        assert main(["infer", "--views", str(pngs / f"{pat}_ANT.png"), str(pngs / f"{pat}_POST.png"), *base]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{pat}_{kind}" for pat in ("PAT1", "PAT2")
                           for kind in ("mask.png", "mask.npy", "lesions.json", "overlay.png"))
    before = (out / "PAT1_lesions.json").stat().st_mtime_ns
    capsys.readouterr()
    again = ["infer", "--views", str(pngs / "PAT1_ANT.png"), str(pngs / "PAT1_POST.png"), *base]
    assert main(again) == 1  # an existing result is not replaced silently
    said = capsys.readouterr().out
    assert "FAILED" in said and "exists already" in said and "--overwrite" in said and "overwrite=True" not in said
    assert (out / "PAT1_lesions.json").stat().st_mtime_ns == before
    assert main([*again, "--overwrite"]) == 0
    assert (out / "PAT1_lesions.json").stat().st_mtime_ns != before


def test_the_library_names_results_after_the_input_and_refuses_to_overwrite(views, tmp_path):
    assert result_stem(("d/PAT1_ANT.png", "d/PAT1_POST.png")) == "PAT1"
    assert result_stem(("d/2024-001 anterior.png", "d/2024-001 posterior.png")) == "2024_001"
    assert result_stem(("case_7/anterior.png", "case_7/posterior.png")) == "case_7"
    write_dicom_scan(tmp_path / "scan.dcm", *views, (2.4, 2.4), accession_number="A2024/0012")
    req = prepare(tmp_path / "scan.dcm", REPORT)
    assert req.stem == "A2024_0012"  # the accession number, made a safe file name
    (tmp_path / "b").mkdir()
    write_dicom_scan(tmp_path / "b" / "scan.dcm", *views, (2.4, 2.4))
    uid_stem = prepare(tmp_path / "b" / "scan.dcm").stem
    assert uid_stem.startswith("1.2.") and uid_stem != "scan"  # no accession number: the SOP Instance UID
    res = SegmentationResult(np.zeros((4, 4), np.uint8), None, [], "m", req.source, (2.4, 2.4), stem=req.stem)
    assert res.save(tmp_path / "out")["lesions"].name == "A2024_0012_lesions.json"
    with pytest.raises(OutputExistsError, match=r"overwrite=True"):
        res.save(tmp_path / "out")
    assert res.save(tmp_path / "out", overwrite=True)["lesions"].is_file()
    assert res.save(tmp_path / "out", stem="other")["lesions"].name == "other_lesions.json"


# -- 2. a str is the report's text, a Path its file


def test_a_str_that_is_a_file_path_is_refused(views, tmp_path):
    npy = _npy(tmp_path, views)
    report = tmp_path / "patient_report.txt"
    report.write_text(REPORT, encoding="utf-8")
    with pytest.raises(InputError) as e:
        prepare(npy, str(report), (2.4, 2.4))
    assert "pass the file as a Path" in str(e.value) and str(report) not in str(e.value)
    with pytest.raises(InputError, match="looks like a file name"):
        prepare(npy, "report_of_patient_7.txt", (2.4, 2.4))  # a typo'd path is no report either
    assert prepare(npy, report, (2.4, 2.4)).report == REPORT  # a Path is read
    assert prepare(npy, REPORT, (2.4, 2.4)).report == REPORT  # a str is the text


# -- 3. pixel spacing no whole-body gamma camera produces


@pytest.mark.parametrize("spacing, problem", [((0.2, 0.2), "outside 1-4 mm"), ((2.2, 20.0), "outside 1-4 mm"),
                                              ((2.0, 2.6), "not square"), ((6.0, 6.0), "outside 1-4 mm")])
def test_implausible_pixel_spacing_is_refused_unless_forced(views, tmp_path, spacing, problem):
    npy = _npy(tmp_path, views)
    with pytest.raises(InputError) as e:
        prepare(npy, REPORT, spacing)
    assert problem in str(e.value) and "allow_unusual_spacing=True" in str(e.value) and "--" not in str(e.value)
    assert prepare(npy, REPORT, spacing, allow_unusual_spacing=True).pixel_spacing == spacing


def test_implausible_spacing_in_a_dicom_is_refused_too(server, views, tmp_path, capsys):
    from bonescan.cli import main

    write_dicom_scan(tmp_path / "scan.dcm", *views, (0.5, 0.5))
    with pytest.raises(InputError, match=r"pixel spacing \(from the DICOM\) \(0.5, 0.5\) mm is outside"):
        prepare(tmp_path / "scan.dcm")
    assert prepare(tmp_path / "scan.dcm", pixel_spacing=(2.4, 2.4)).pixel_spacing == (2.4, 2.4)
    capsys.readouterr()
    assert main(["infer", str(tmp_path / "scan.dcm"), "--server", server.grpc_url, "--out", str(tmp_path / "o")]) == 1
    said = capsys.readouterr().out  # the command line names its flag, not the library's argument
    assert "FAILED" in said and "--allow-unusual-spacing" in said and "allow_unusual_spacing" not in said
    assert main(["infer", str(tmp_path / "scan.dcm"), "--allow-unusual-spacing", "--server", server.grpc_url,
                 "--out", str(tmp_path / "o")]) == 0


# -- 4. one family of errors, exported; clear errors for wrong types; library words


def test_the_client_exports_the_errors_to_catch(tmp_path):
    assert {"BonescanError", "InputError", "ClientError", "OutputExistsError"} <= set(client_pkg.__all__)
    assert issubclass(InputError, BonescanError) and issubclass(client_pkg.ClientError, BonescanError)
    assert issubclass(OutputExistsError, BonescanError)
    with pytest.raises(InputError, match="does not exist"):
        prepare(tmp_path / "nothing.dcm")
    with pytest.raises(InputError, match=r"give a view pair as a tuple \(anterior, posterior\)"):
        prepare([tmp_path / "a.png", tmp_path / "b.png"])
    with pytest.raises(InputError, match="cannot read a int"):
        prepare(7)
    with pytest.raises(InputError, match="cannot read a bytes"):
        prepare(np.ones((2, 1024, 256), np.float32), REPORT.encode(), (2.4, 2.4))


def test_library_messages_name_arguments_and_the_command_line_its_flags(views, tmp_path):
    from bonescan.errors import cli_wording

    res = SegmentationResult(np.zeros((4, 4), np.uint8), None, [], "m", "scan.npy", (2.4, 2.4),
                             pixel_spacing_source="default")
    line = res.summary()
    assert "pixel_spacing=(row, col)" in line and "--pixel-spacing" not in line
    assert "--pixel-spacing ROW COL" in cli_wording(line)


# -- 5. whitespace is no report; an HTTP port is not retried; one install line


def test_a_whitespace_report_is_no_report_everywhere(server, views, tmp_path):
    npy = _npy(tmp_path, views)
    assert prepare(npy, " \n\t\u3000 ", (2.4, 2.4)).report == ""
    with BoneScanClient(server.grpc_url) as c:
        r = c.segment(npy, " \n\t ", (2.4, 2.4))
    assert r.report == "no report" and ", no report" in r.summary()
    assert r.answered_by == "unet" and r.reason.startswith("no report")  # the server says the same
    saved = json.loads(r.save(tmp_path / "out")["lesions"].read_text())
    assert saved["report"] == "no report"


def test_an_http_port_is_not_retried(server, caplog):
    caplog.set_level(logging.INFO, logger="bonescan.client")
    with pytest.raises(client_pkg.ClientError) as e:
        BoneScanClient(f"localhost:{server.http_port}", retries=3, backoff_s=0.5)
    assert "after 1 attempt(s)" in str(e.value) and "answers HTTP/1" in str(e.value)
    assert not [r for r in caplog.records if "retry" in r.getMessage()]


def test_one_install_line_for_the_client():
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert f"`{client_pkg.INSTALL}`" in readme and client_pkg.INSTALL in (client_pkg.__doc__ or "")
    for p in [root / "README.md", *sorted((root / "client").glob("*.py"))]:
        assert "bonescan-triton[client]" not in p.read_text(encoding="utf-8"), p


# -- 6. report files in GB18030 / Big5 / UTF-16


@pytest.mark.parametrize("encoding, written", [("utf-8", "utf-8"), ("utf-8-sig", "utf-8"), ("gb18030", "gb18030"),
                                               ("gbk", "gb18030"), ("big5", "big5"), ("utf-16", "utf-16")])
def test_report_files_in_chinese_hospital_encodings_are_read(views, tmp_path, encoding, written):
    import opencc

    text = opencc.OpenCC("s2t").convert(REPORT) if encoding == "big5" else REPORT
    p = tmp_path / "report.txt"
    p.write_bytes(text.encode(encoding))
    req = prepare(_npy(tmp_path, views), p, (2.4, 2.4))
    assert req.report == text and req.report_encoding == written
    assert any(f"read as {written}" in n for n in req.notes) == (written != "utf-8")


@pytest.mark.parametrize("text", ["骨转移", "待复查", "全身骨显像未见明显异常。", "T7 椎体浓聚"])
def test_short_reports_are_told_apart_in_gb18030_and_big5(text):
    """Short texts decode in both encodings; the one that reads like a report wins."""
    import opencc

    from bonescan.data.io import decode_report_bytes

    assert decode_report_bytes(text.encode("gbk")) == (text, "gb18030")
    trad = opencc.OpenCC("s2t").convert(text)
    assert decode_report_bytes(trad.encode("big5")) == (trad, "big5")


def test_a_report_no_encoding_reads_is_refused_naming_what_was_tried(views, tmp_path):
    p = tmp_path / "report.txt"
    secret = "患者张三"
    p.write_bytes(bytes(range(128, 256)) * 3 + secret.encode("gbk"))
    with pytest.raises(InputError) as e:
        prepare(_npy(tmp_path, views), p, (2.4, 2.4))
    msg = str(e.value)
    assert "not valid UTF-8" in msg and "GB18030 or Big5" in msg and "report_encoding=" in msg and secret not in msg
    q = tmp_path / "r2.txt"
    q.write_bytes(REPORT.encode("utf-16-le"))  # no BOM: only an explicit encoding reads it
    assert prepare(_npy(tmp_path, views), q, (2.4, 2.4), report_encoding="utf-16-le").report == REPORT
    with pytest.raises(InputError, match="not an encoding Python knows"):
        prepare(_npy(tmp_path, views), q, (2.4, 2.4), report_encoding="klingon")


def test_infer_says_which_encoding_it_read(server, case_dir, views, tmp_path, capsys):
    from bonescan.cli import main

    report = tmp_path / "gbk.txt"
    report.write_bytes(REPORT.encode("gbk"))
    out = tmp_path / "out"
    assert main(["infer", str(_npy(tmp_path, views)), "--report", str(report), "--pixel-spacing", "2.4", "2.4",
                 "--server", server.grpc_url, "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "report file read as gb18030" in said
    doc = json.loads((out / "scan_lesions.json").read_text())
    assert doc["report_encoding"] == "gb18030" and doc["report"] == "given"
