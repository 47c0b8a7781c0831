"""Turn what scanners and PACS produce into one request: scan, report, pixel spacing.

Reading files is ``bonescan.data.io`` (the same code the training data goes through); the view
layout is ``bonescan.contract.to_model_frame``; the checks are ``bonescan.validate``. Nothing is
re-implemented here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bonescan.contract import ENS_REPORT, to_model_frame
from bonescan.data.dicom import DicomStudy, dicom_files, is_study_folder, read_dicom_study
from bonescan.data.io import (
    NO_SCAN,
    CaseError,
    Scan,
    decide_spacing,
    find_scan_files,
    read_report_file,
    read_scan,
)
from bonescan.errors import BonescanError
from bonescan.study import ACCESSION, check_report_study
from bonescan.tokenize import ReportError, decode_report
from bonescan.validate import image_problem, spacing_implausible, spacing_problem

#: The errors of bad input: the input file or argument and the problem (bonescan.data.io.CaseError)
InputError = CaseError

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
    #: the name its results are saved under (result_stem): the file's stem, the case folder's name,
    #: a view pair's common prefix, or a DICOM's accession number / SOP Instance UID
    stem: str = "scan"
    #: the encoding the report file was read in (None: the report was given as text, or none)
    report_encoding: str | None = None
    #: where the report came from, never its text: "given" (text), "file <name>", "report.txt" (the
    #: case folder's), "sr <SOPInstanceUID>" (a DICOM study's report SR), "sidecar report.txt"; None: no report
    report_source: str | None = None


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
    if isinstance(scan, list):
        raise CaseError("scan", f"a list of {len(scan)} item(s); give a view pair as a tuple (anterior, posterior), "
                                "one scan per call (segment_many takes many)")
    if isinstance(scan, tuple):
        if len(scan) != 2:
            raise CaseError("scan", f"a view pair is a tuple of 2 files (anterior, posterior); got {len(scan)}")
        if not all(isinstance(v, (str, Path)) for v in scan):
            raise CaseError("scan", "a view pair is a tuple of 2 file paths (anterior, posterior)")
        return read_scan({"anterior": Path(scan[0]), "posterior": Path(scan[1])}, pixel_spacing)
    if not isinstance(scan, (str, Path)):
        raise CaseError("scan", f"cannot read a {type(scan).__name__}: give a DICOM / NPY file, a case folder, a tuple "
                                "(anterior, posterior) of view files, an array [2, H, W] or a Scan")
    p = Path(scan)
    if not p.exists():
        raise CaseError(p, "file or folder does not exist")
    if dicom_study_folder(p):
        return decide_spacing(read_dicom_study(p).scan, pixel_spacing)
    return read_scan(p, pixel_spacing)


def dicom_study_folder(p: Path) -> bool:
    """A folder that is one DICOM study as a PACS exports it (instances under any names, maybe in
    subfolders), not a case folder (scan.dcm, anterior.png + posterior.png, ...)."""
    return p.is_dir() and not find_scan_files(p) and not (p / "cases").is_dir() and bool(dicom_files(p))


#: a report given as text that is a single line ending like a file name: most likely a path
_FILE_SUFFIXES = (".txt", ".rtf", ".doc", ".docx", ".pdf", ".htm", ".html", ".xml", ".json", ".csv")


def _report_text(report: str, field: str = "report") -> str:
    """A report given as a ``str`` is the report's text; a ``str`` that is an existing file's path (or
    one line ending in .txt, .doc, ...) is refused: a file is passed as a ``Path``. The message never
    repeats the string."""
    line = report.strip()
    if line and "\n" not in line and len(line) < 4096:
        try:
            is_file = Path(line).expanduser().is_file()
        except (OSError, ValueError):
            is_file = False
        if is_file:
            raise CaseError(field, "the str given is the path of an existing file, and a str is sent as the report's "
                                   "text; pass the file as a Path (report=Path(...)) to read it")
        if line.lower().endswith(_FILE_SUFFIXES) and " " not in line:
            raise CaseError(field, "the str given looks like a file name (it ends like one), and a str is sent as the "
                                   "report's text; pass a file as a Path (report=Path(...)), or give the text")
    return report if line else ""  # whitespace only is no report


def read_report_input(report: str | Path | None, case_dir: Path | None = None,
                      encoding: str | None = None) -> tuple[str, str | None]:
    """(report text, the encoding its file was read in, None for text) from a ``str`` (the text), a
    ``Path`` (a file: UTF-8, else GB18030 / Big5 / UTF-16 detected, or ``encoding``), or None (the case
    folder's report.txt; missing = no report). Whitespace only is no report ("")."""
    if report is None:
        if case_dir is None:
            return "", None
        text, used = read_report_file(case_dir / "report.txt", encoding)
    elif isinstance(report, Path):
        if not report.is_file():
            raise CaseError(report, "report file is missing")
        text, used = read_report_file(report, encoding)
    elif isinstance(report, str):
        return _report_text(report), None
    else:
        raise CaseError("report", f"cannot read a {type(report).__name__}: give the text (str), a file (Path) or None")
    return (text, used) if text.strip() else ("", used)


def load_report(report: str | Path | None, case_dir: Path | None = None, encoding: str | None = None) -> str:
    """Report text from a ``str`` (the text itself), a ``Path`` (a file), or None (the case folder's
    report.txt; missing = no report). See :func:`read_report_input`."""
    return read_report_input(report, case_dir, encoding)[0]


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: what a view file's name says about its view: left out to find a pair's common name
_VIEW = re.compile(r"anterior|posterior|ant|post|ap|pa|front|back|view", re.IGNORECASE)
_SEP = re.compile(r"[_\-. ]+")


def _safe(name: str) -> str:
    return _UNSAFE.sub("_", name).strip("._-")[:120]


def result_stem(scan: ScanLike, s: Scan | None = None) -> str:
    """The name one scan's results are saved under, derived from the input so that two scans never
    share it by accident: a DICOM file's accession number (else its SOP Instance UID, else its file
    stem); a view pair's common name (PAT1_ANT.png + PAT1_POST.png -> PAT1; else the anterior's
    stem); a case folder's name; an NPY's stem; "scan" for an array."""
    if isinstance(scan, Scan):
        scan = scan.source or "scan"
    if isinstance(scan, tuple) and len(scan) == 2:
        a, b = Path(scan[0]).stem, Path(scan[1]).stem
        if s is not None and s.study.get(ACCESSION) and all(Path(v).suffix.lower() in (".dcm", ".dicom") for v in scan):
            return _safe(s.study[ACCESSION]) or "scan"
        ta, tb = ([t for t in _SEP.split(x) if t and not _VIEW.fullmatch(t)] for x in (a, b))
        common = [x for x, y in zip(ta, tb) if x == y] if len(ta) == len(tb) else []
        for name in ("_".join(common), _safe(a)):
            name = _safe(name)
            if name and not _VIEW.fullmatch(name):
                return name
        return _safe(Path(scan[0]).resolve().parent.name) or "scan"
    if isinstance(scan, (str, Path)):
        p = Path(scan)
        if p.is_file() and p.suffix.lower() not in (".npy",):
            if s is not None and s.study.get(ACCESSION):
                return _safe(s.study[ACCESSION]) or "scan"
            try:
                import pydicom

                uid = str(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).get("SOPInstanceUID", ""))
            except Exception:  # noqa: BLE001 - not DICOM after all: the file name will do
                uid = ""
            if uid:
                return _safe(uid)
        if p.is_dir() and s is not None and s.study.get(ACCESSION) and dicom_study_folder(p):
            return _safe(s.study[ACCESSION]) or "scan"  # a PACS export's folder name says nothing
        return _safe(p.stem if p.is_file() else p.name) or "scan"
    return "scan"


def prepare(scan: ScanLike, report: str | Path | None = None, pixel_spacing: tuple[float, float] | None = None,
            *, report_encoding: str | None = None, allow_unusual_spacing: bool = False) -> Request:
    """Read and check everything for one request (image, pixel spacing, report: the checks the
    server's preprocess step runs); errors name the input, the field and the problem, never the
    report's text. A report that names another study (accession number or StudyInstanceUID) than
    the scan's is refused here, before anything is sent (bonescan.study).

    Args:
        scan: a DICOM / NPY file or a case folder (str or Path), a tuple (anterior, posterior) of
            view files, an array [2, H, W] (anterior, posterior as acquired), or a Scan.
        report: the report's text (a ``str``), its file (a ``Path``), or None (the case folder's
            report.txt, else no report). A ``str`` that is the path of an existing file is refused.
        pixel_spacing: (row, column) mm, overriding what the files say.
        report_encoding: the report file's encoding (default: UTF-8, else GB18030 / Big5 / UTF-16 detected).
        allow_unusual_spacing: send a pixel spacing outside what whole-body gamma cameras produce
            (bonescan.validate.PLAUSIBLE_SPACING_MM, square within MAX_SPACING_ASPECT) anyway.
    """
    s, text, encoding, report_source = _scan_and_report(scan, report, pixel_spacing, report_encoding)
    image = to_model_frame(s.anterior, s.posterior)
    problem = image_problem(image, "scan")
    if problem:
        raise CaseError(s.source or "<scan>", problem)
    spacing = tuple(float(v) for v in s.pixel_spacing)
    problem = spacing_problem(np.array(spacing), "pixel spacing")
    if problem:
        raise CaseError(s.source or "<scan>", problem)
    given = {"command line": "given", "dicom": "from the DICOM"}.get(s.spacing_source, f"from {s.spacing_source}")
    problem = None if allow_unusual_spacing else spacing_implausible(spacing, f"pixel spacing ({given})")
    if problem:
        raise CaseError(s.source or "<scan>", f"{problem}; check it, or give allow_unusual_spacing=True if it is right")
    try:  # the server's check, on the bytes that will be sent (a str can hold what UTF-8 cannot)
        decode_report(text.encode("utf-8", "surrogatepass"), ENS_REPORT.name)
    except ReportError as e:
        raise CaseError(s.source or "<scan>", str(e)) from None
    try:
        check_report_study(text, s.study)
    except BonescanError as e:
        raise CaseError(s.source or "<scan>", str(e)) from None
    notes = list(s.notes)
    if encoding not in (None, "utf-8"):
        notes.append(f"report file read as {encoding} (not UTF-8)")
    return Request(image, text, spacing, s.source or str(scan), s.spacing_source, notes,  # type: ignore[arg-type]
                   dict(s.study), result_stem(scan, s), encoding, report_source if text else None)


def _scan_and_report(scan: ScanLike, report: str | Path | None, pixel_spacing: tuple[float, float] | None,
                     encoding: str | None) -> tuple[Scan, str, str | None, str | None]:
    """(scan, report text, the encoding its file was read in, where the report came from). The
    caller's report wins; else a DICOM study folder's report SR, else the folder's report.txt."""
    folder = Path(scan) if isinstance(scan, (str, Path)) and Path(scan).is_dir() else None
    if folder is not None and dicom_study_folder(folder):
        study = read_dicom_study(folder)
        s = decide_spacing(study.scan, pixel_spacing)
        if report is None and study.report_source and study.report_source.startswith("sr "):
            return s, _sr_text(study), None, study.report_source
        if report is not None and study.report_source:
            s.notes.append(f"the study's report ({study.report_source}) was not used: a report was given")
        text, used = read_report_input(report, folder, encoding)
        return s, text, used, _report_source(report, "sidecar report.txt")
    s = load_scan(scan, pixel_spacing)
    text, used = read_report_input(report, folder, encoding)
    return s, text, used, _report_source(report, "report.txt")


def _sr_text(study: DicomStudy) -> str:
    """The report SR's text under the limits a report file has (bonescan.tokenize.decode_report)."""
    try:
        text = decode_report(study.report or "", field="report SR")
    except ReportError as e:
        raise CaseError(study.scan.source or "<study>", f"{study.report_source}: {e}") from None
    return text if text.strip() else ""


def _report_source(report: str | Path | None, folder_file: str) -> str:
    """Where a report came from, for the result (never the text)."""
    if isinstance(report, Path):
        return f"file {report.name}"
    return "given" if report is not None else folder_file


def find_cases(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The scans under a folder, for batch processing: (case folders or scan files, [(folder, why
    it was skipped)]). A folder that holds a scan itself is one case."""
    folder = Path(folder)
    if find_scan_files(folder) or is_study_folder(folder):
        return [folder], []
    root = folder / "cases" if (folder / "cases").is_dir() else folder
    items, skipped = [], []
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            if find_scan_files(p) or is_study_folder(p):
                items.append(p)
            else:
                skipped.append((p, NO_SCAN))
    items += [p for p in sorted(root.iterdir()) if p.is_file() and p.suffix.lower() in (".dcm", ".npy")]
    return items, skipped
