"""Turn what scanners and PACS produce into one request: scan, report, pixel spacing.

Reading files is ``bonescan.data.io`` (the same code the training data goes through); the view
layout is ``bonescan.contract.to_model_frame``; the checks are ``bonescan.validate``. Nothing is
re-implemented here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bonescan.contract import ENS_REPORT, to_model_frame
from bonescan.data.io import NO_SCAN, CaseError, Scan, decide_spacing, find_scan_files, read_report, read_scan
from bonescan.errors import BonescanError
from bonescan.study import check_report_study
from bonescan.tokenize import ReportError, decode_report
from bonescan.validate import image_problem, spacing_problem

ScanLike = Scan | str | Path | tuple | np.ndarray


@dataclass
class Request:
    """One scan, ready to send: model-frame image, report text, spacing, where it came from."""

    image: np.ndarray  # float32 [2, H, W]
    report: str
    pixel_spacing: tuple[float, float]
    source: str
    pixel_spacing_source: str = "command line"  # see bonescan.data.io.SPACING_SOURCES
    notes: list[str] = field(default_factory=list)  # warnings about the input files
    #: the study the scan belongs to ({"accession_number", "study_instance_uid"}, the known ones);
    #: sent with the report (ACCESSION_NUMBER / STUDY_INSTANCE_UID: the server refuses a report naming
    #: another study too) and written to the result's _lesions.json so the answer stays linked to its study
    study: dict[str, str] = field(default_factory=dict)


def load_scan(scan: ScanLike, pixel_spacing: tuple[float, float] | None = None) -> Scan:
    """A Scan from a Scan, a path (DICOM, NPY, case folder), an (anterior, posterior) pair of paths,
    or an array [2, H, W] holding the anterior and posterior views as acquired."""
    if isinstance(scan, Scan):  # its spacing_source says what its builder knew
        return decide_spacing(scan, pixel_spacing) if pixel_spacing is not None else scan
    if isinstance(scan, np.ndarray):
        if scan.ndim != 3 or scan.shape[0] != 2:
            raise CaseError("<array>", f"expected [2, H, W] (anterior, posterior), got shape {list(scan.shape)}")
        from bonescan.data.io import check_view

        s = Scan(check_view(scan[0], "<array>", "anterior view"), check_view(scan[1], "<array>", "posterior view"), source="<array>")
        return decide_spacing(s, pixel_spacing)
    if isinstance(scan, tuple):
        if len(scan) != 2:
            raise CaseError("<pair>", "give the anterior and the posterior view files")
        return read_scan({"anterior": Path(scan[0]), "posterior": Path(scan[1])}, pixel_spacing)
    p = Path(scan)
    if not p.exists():
        raise CaseError(p, "file or folder does not exist")
    return read_scan(p, pixel_spacing)


def load_report(report: str | Path | None, case_dir: Path | None = None) -> str:
    """Report text from a string, a UTF-8 file, or the case folder's report.txt (missing = no report)."""
    if report is None:
        return read_report(case_dir / "report.txt") if case_dir is not None else ""
    if isinstance(report, Path):
        if not report.is_file():
            raise CaseError(report, "report file is missing")
        return read_report(report)
    return report


def prepare(scan: ScanLike, report: str | Path | None = None, pixel_spacing: tuple[float, float] | None = None) -> Request:
    """Read and check everything for one request (image, pixel spacing, report: the checks the
    server's preprocess step runs); errors name the input, the field and the problem, never the
    report's text. A report that names another study (accession number or StudyInstanceUID) than
    the scan's is refused here, before anything is sent (bonescan.study)."""
    s = load_scan(scan, pixel_spacing)
    case_dir = Path(scan) if isinstance(scan, (str, Path)) and Path(scan).is_dir() else None
    text = load_report(report, case_dir)
    image = to_model_frame(s.anterior, s.posterior)
    problem = image_problem(image, "scan")
    if problem:
        raise CaseError(s.source or "<scan>", problem)
    spacing = tuple(float(v) for v in s.pixel_spacing)
    problem = spacing_problem(np.array(spacing), "pixel spacing")
    if problem:
        raise CaseError(s.source or "<scan>", problem)
    try:  # the server's check, on the bytes that will be sent (a str can hold what UTF-8 cannot)
        decode_report(text.encode("utf-8", "surrogatepass"), ENS_REPORT.name)
    except ReportError as e:
        raise CaseError(s.source or "<scan>", str(e)) from None
    try:
        check_report_study(text, s.study)
    except BonescanError as e:
        raise CaseError(s.source or "<scan>", str(e)) from None
    return Request(image, text, spacing, s.source or str(scan), s.spacing_source, list(s.notes),  # type: ignore[arg-type]
                   dict(s.study))


def find_cases(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The scans under a folder, for batch processing: (case folders or scan files, [(folder, why
    it was skipped)]). A folder that holds a scan itself is one case."""
    folder = Path(folder)
    if find_scan_files(folder):
        return [folder], []
    root = folder / "cases" if (folder / "cases").is_dir() else folder
    items, skipped = [], []
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            if find_scan_files(p):
                items.append(p)
            else:
                skipped.append((p, NO_SCAN))
    items += [p for p in sorted(root.iterdir()) if p.is_file() and p.suffix.lower() in (".dcm", ".npy")]
    return items, skipped
