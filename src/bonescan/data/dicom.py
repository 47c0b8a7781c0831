"""A study from a PACS: whole-body NM scans and report SRs in, realistic synthetic studies out.

A PACS gives a study as loose instances (any file names, any order): the NM whole-body scan,
either one two-frame instance or two single-frame ones (anterior, posterior), and the report as
a structured report (Basic Text, Enhanced or Comprehensive SR). :func:`read_dicom_study` turns
them into the same :class:`bonescan.data.io.Scan` every other reader gives, plus the report text,
so the client and the DICOM node (``bonescan.client.dicom.node``) need no DICOM logic of their own.

The writers make synthetic cases look like what a hospital sends (patient and study attributes,
Tc-99m MDP, view codes of CID 26), so the readers, the node and the DICOM outputs are tested
against realistic input; their output passes dicom3tools' ``dciodvfy`` without errors.

Needs pydicom and numpy only (no torch). Errors are :class:`CaseError` naming the file or field
and the problem, never a report's text or a patient's name.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bonescan.contract import DEFAULT_PIXEL_SPACING_MM
from bonescan.data.io import (
    CaseError,
    Scan,
    _dicom_pixels,
    _spacing,
    check_view,
    find_scan_files,
    read_png,
    read_report_file,
)
from bonescan.data.nmimage import NM_IMAGE_STORAGE, VIEWS, NMStudy, nm_dataset
from bonescan.data.nmimage import VIEW_CODE as VIEW_CODE  # re-exported: the codes written
from bonescan.data.nmimage import code as _code
from bonescan.data.nmimage import file_meta as _file_meta
from bonescan.study import study_ids

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
#: the SR classes a report may come in (what a RIS writes: text, maybe with image references)
REPORT_SR_CLASSES = (BASIC_TEXT_SR, ENHANCED_SR, COMPREHENSIVE_SR)
#: instances that belong to a study but are no input: segmentations, key-object selections,
#: presentation states (the node's own SEG may come back into the study it was sent to)
_IGNORED_MODALITIES = ("SEG", "KO", "PR", "REG", "RWV")
#: TID 1500 (measurement report): what this project writes, never a diagnostic report
_MEASUREMENT_TEMPLATE = "1500"

# View codes read: those written (VIEW_CODE, CID 26 "Nuclear Medicine Projection", bonescan.data.nmimage)
# and others cameras write. The X-ray codes 399488007 "Anterior-Posterior" / 399075003 "Posterior-
# Anterior" (CID 4010) name a beam direction, not an emission view; some cameras use them, so
# they are read too. SRT G-A117 / G-A11A are the retired SNOMED-RT forms older cameras write.
_CODE_VIEWS = {"399321004": "anterior", "399488007": "anterior", "G-A117": "anterior",
               "399001007": "posterior", "399075003": "posterior", "G-A11A": "posterior"}
_ANT_RE = re.compile(r"(?<![a-z])(anterior|ant|前位|前面)(?![a-z])|前", re.IGNORECASE)
_POST_RE = re.compile(r"(?<![a-z])(posterior|post|后位|后面|後位)(?![a-z])|后|後", re.IGNORECASE)
#: file names a study folder may hold that are no DICOM (read or skipped, never an error)
_NOT_DICOM_SUFFIXES = (".txt", ".json", ".png", ".jpg", ".jpeg", ".md", ".xml", ".html", ".pdf", ".csv", ".log")
SIDECAR_REPORT = "report.txt"


# ----------------------------------------------------------------------------- what an instance is


def classify(ds: Any) -> str | None:
    """"nm" (a whole-body NM image), "report" (an SR with text) or None (anything else).

    The node files each arriving instance by this; NM spot or SPECT images and this project's
    own measurement SRs are None, so they neither count as a second scan nor as a report."""
    sop = str(getattr(ds, "SOPClassUID", "") or "")
    if sop == NM_IMAGE_STORAGE:
        image_type = [str(v).upper() for v in (getattr(ds, "ImageType", None) or [])]
        return "nm" if len(image_type) < 3 or image_type[2] == "WHOLE BODY" else None
    if sop in REPORT_SR_CLASSES:
        templates = [str(getattr(t, "TemplateIdentifier", "")) for t in getattr(ds, "ContentTemplateSequence", []) or []]
        if _MEASUREMENT_TEMPLATE in templates:
            return None
        return "report" if _has_text(ds) else None
    return None


def _has_text(item: Any) -> bool:
    for child in getattr(item, "ContentSequence", []) or []:
        if str(getattr(child, "ValueType", "")) == "TEXT" or _has_text(child):
            return True
    return False


def report_text_from_sr(ds: Any) -> str:
    """The TEXT content items of a report SR in document order (findings, then impression),
    joined with newlines: what the report's writer typed, without the SR's headings."""
    texts: list[str] = []

    def walk(item: Any) -> None:
        for child in getattr(item, "ContentSequence", []) or []:
            if str(getattr(child, "ValueType", "")) == "TEXT":
                value = str(getattr(child, "TextValue", "") or "").replace("\r\n", "\n")
                if value.strip():
                    texts.append(value.strip("\n"))
            walk(child)

    walk(ds)
    return "\n".join(texts)


def view_label(item: Any) -> str | None:
    """"anterior" / "posterior" from an item's ViewCodeSequence (the code, else its meaning), else
    its ImageID, SeriesDescription or ImageComments when one names exactly one view; None when
    nothing says (a description such as "WB ANT/POST" names both, and so neither)."""
    for code in getattr(item, "ViewCodeSequence", []) or []:
        value = str(getattr(code, "CodeValue", "") or "")
        if value in _CODE_VIEWS:
            return _CODE_VIEWS[value]
        found = _text_view(str(getattr(code, "CodeMeaning", "") or ""))
        if found:
            return found
    for attr in ("ImageID", "SeriesDescription", "ImageComments"):
        found = _text_view(str(getattr(item, attr, "") or ""))
        if found:
            return found
    return None


def _text_view(text: str) -> str | None:
    ant, post = bool(_ANT_RE.search(text)), bool(_POST_RE.search(text))
    return "anterior" if ant and not post else "posterior" if post and not ant else None


# ----------------------------------------------------------------------------- reading a study


@dataclass
class DicomStudy:
    """One study's scan and report, as read from its instances."""

    study_instance_uid: str
    accession_number: str | None
    scan: Scan
    report: str | None  # None: the study holds no report
    report_source: str | None  # "sr <SOPInstanceUID>" or "sidecar report.txt", never the text
    sources: list = field(default_factory=list)  # the NM Dataset(s) the scan came from
    #: view -> (SOPClassUID, SOPInstanceUID, 1-based frame number): what the output writers reference
    frames: dict[str, tuple[str, str, int]] = field(default_factory=dict)

    def complete(self) -> bool:
        """Scan and report both there: what the node waits for before it segments."""
        return self.report is not None and set(self.frames) == set(VIEWS)

    def view_sources(self) -> list:
        """The NM instance(s) in view order, as the SEG / SR writers take them: one two-frame
        instance, or (anterior, posterior) single-frame ones."""
        by_uid = {str(ds.SOPInstanceUID): ds for ds in self.sources}
        order = [by_uid[self.frames[v][1]] for v in VIEWS if v in self.frames and self.frames[v][1] in by_uid]
        unique = list({id(ds): ds for ds in order}.values()) or list(self.sources)
        return unique if len(unique) > 1 else unique[:1]


@dataclass
class _Instance:
    ds: Any
    where: str  # the file's path, or "<dataset SOPInstanceUID>": what messages name


def dicom_files(folder: Path) -> list[Path]:
    """The files of a folder (and its subfolders, as a PACS export nests them) that may be DICOM
    instances: all but hidden files, DICOMDIR and known non-DICOM suffixes (report.txt, ...)."""
    out = []
    for p in sorted(Path(folder).rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue
        if p.name.upper() == "DICOMDIR" or p.suffix.lower() in _NOT_DICOM_SUFFIXES:
            continue
        out.append(p)
    return out


def _read(path: Path, header_only: bool = False) -> Any:
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only)
    except Exception as e:  # pydicom raises many types for what is not DICOM
        raise CaseError(path, f"not a readable DICOM file ({type(e).__name__})") from None


def _instances(items: Iterable[Any], header_only: bool = False) -> tuple[list[_Instance], list[Path]]:
    """(the instances, the folders given): Paths are read (a folder: every DICOM file in it),
    Datasets taken as they are; the same SOPInstanceUID twice counts once (a PACS resends)."""
    out: list[_Instance] = []
    folders: list[Path] = []
    seen: set[str] = set()
    if isinstance(items, (str, Path)) or hasattr(items, "SOPClassUID"):
        items = [items]
    for item in items:
        if isinstance(item, (str, Path)):
            p = Path(item)
            if p.is_dir():
                folders.append(p)
                found = [_Instance(_read(f, header_only), str(f)) for f in dicom_files(p)]
            elif p.is_file():
                found = [_Instance(_read(p, header_only), str(p))]
            else:
                raise CaseError(p, "file or folder does not exist")
        else:
            found = [_Instance(item, f"<dataset {getattr(item, 'SOPInstanceUID', '?')}>")]
        for inst in found:
            uid = str(getattr(inst.ds, "SOPInstanceUID", "") or "")
            if uid and uid in seen:
                continue
            seen.add(uid)
            out.append(inst)
    return out, folders


def _study_uid(instances: list[_Instance]) -> str:
    """The one StudyInstanceUID all instances share (refused: none, or instances of two studies)."""
    uids: dict[str, str] = {}  # uid -> the first instance naming it
    for inst in instances:
        uid = str(getattr(inst.ds, "StudyInstanceUID", "") or "").strip()
        if not uid:
            raise CaseError(inst.where, "StudyInstanceUID is missing; every instance of a study must name it")
        uids.setdefault(uid, inst.where)
    if len(uids) > 1:
        raise CaseError(", ".join(list(uids.values())[:2]),
                        f"StudyInstanceUID: the instances belong to {len(uids)} different studies; give one study at a time")
    if not uids:
        raise CaseError("<study>", "no DICOM instance given")
    return next(iter(uids))


def _sort(instances: list[_Instance]) -> tuple[list[_Instance], list[_Instance], list[str]]:
    """(NM scans, report SRs, notes on the instances left out). Another image is refused: a CT or
    an MR in the folder means the wrong study was exported, not a bone scan to segment."""
    nm, reports, notes = [], [], []
    for inst in instances:
        kind = classify(inst.ds)
        modality = str(getattr(inst.ds, "Modality", "") or "?")
        if kind == "nm":
            nm.append(inst)
        elif kind == "report":
            reports.append(inst)
        elif "PixelData" in inst.ds and modality not in _IGNORED_MODALITIES and modality != "NM":
            sop = str(getattr(inst.ds, "SOPClassUID", "") or "?")
            raise CaseError(inst.where, f"SOPClassUID {sop} (Modality {modality}) is not an NM image; a study given "
                                        "for segmentation holds the whole-body NM scan and its report only")
        else:
            notes.append(f"{inst.where}: left out (Modality {modality}, not a whole-body NM scan or a report SR)")
    return nm, reports, notes


def _frame_views(inst: _Instance, n_frames: int) -> tuple[list[str], list[str]]:
    """The view of each frame of one NM instance, and notes. A frame's detector is DetectorVector[i]
    (1-based into DetectorInformationSequence); one label known gives the other frame the other view."""
    ds = inst.ds
    det = list(getattr(ds, "DetectorInformationSequence", []) or [])
    vector = _as_list(getattr(ds, "DetectorVector", None)) or list(range(1, n_frames + 1))
    if n_frames == 1:
        label = view_label(det[vector[0] - 1]) if 0 < vector[0] <= len(det) else view_label(det[0]) if det else None
        label = label or view_label(ds)
        return ([label] if label else []), []
    labels = [view_label(det[v - 1]) if 0 < v <= len(det) else None for v in vector[:n_frames]]
    if labels[0] and labels[0] == labels[1]:
        raise CaseError(inst.where, f"DetectorInformationSequence: both frames are labelled as the {labels[0]} view")
    if labels.count(None) == 1:
        known = next(v for v in labels if v)
        labels = [v or next(x for x in VIEWS if x != known) for v in labels]
    if None in labels:
        return list(VIEWS), [f"{inst.where}: frame views not labelled; assumed frame 1 = anterior, frame 2 = posterior"]
    return [str(v) for v in labels], []


def _as_list(value: Any) -> list[int]:
    """A multi-valued integer attribute as a list (pydicom gives a single value as an int)."""
    if value is None or value == "":
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") else [int(value)]


def _view_map(nm: list[_Instance]) -> tuple[dict[str, tuple[_Instance, int]], list[str]]:
    """view -> (instance, 1-based frame) from one two-frame NM or two single-frame ones, and notes.
    Headers only: the node asks this of every instance that arrives (study_state)."""
    if not nm:
        raise CaseError("<study>", "no whole-body NM scan in the study (SOPClassUID NM Image Storage, ImageType WHOLE BODY)")
    n_frames = {id(i): int(getattr(i.ds, "NumberOfFrames", 1) or 1) for i in nm}
    multi = [i for i in nm if n_frames[id(i)] > 1]
    if multi and len(nm) > 1 or len(nm) > 2:
        raise CaseError(", ".join(i.where for i in nm[:3]),
                        f"the study holds {len(nm)} NM whole-body instances ({len(multi)} multi-frame): more than one "
                        "scan; give one scan (a two-frame instance, or one anterior and one posterior instance)")
    out: dict[str, tuple[_Instance, int]] = {}
    notes: list[str] = []
    for inst in nm:
        if n_frames[id(inst)] > 2:
            raise CaseError(inst.where, f"NumberOfFrames is {n_frames[id(inst)]}; a whole-body scan has 1 or 2 frames "
                                        "(anterior, posterior)")
        views, more = _frame_views(inst, n_frames[id(inst)])
        notes += more
        if not views:
            raise CaseError(inst.where, "ViewCodeSequence: the single-frame NM instance names no view (no view code, "
                                        "ImageID or SeriesDescription saying anterior or posterior)")
        for k, view in enumerate(views):
            if view in out:
                raise CaseError(inst.where, f"ViewCodeSequence: two NM frames are labelled as the {view} view")
            out[view] = (inst, k + 1)
    missing = [v for v in VIEWS if v not in out]
    if missing:
        raise CaseError(nm[0].where, f"the {missing[0]} view is missing: the study holds one single-frame NM instance "
                                     f"({', '.join(out)}); both views are needed")
    return out, notes


def _frame_pixels(inst: _Instance, frame: int, view: str) -> np.ndarray:
    """One frame's counts, checked as every reader checks a view (bonescan.data.io.check_view)."""
    arr = _dicom_pixels(inst.ds, Path(inst.where))
    arr = arr[None] if arr.ndim == 2 else arr
    if arr.ndim != 3 or arr.shape[0] < frame:
        raise CaseError(inst.where, f"pixel data of shape {tuple(arr.shape)} does not match NumberOfFrames")
    return check_view(arr[frame - 1], inst.where, f"{view} view")


def _scan_spacing(views: dict[str, tuple[_Instance, int]]) -> tuple[float, float] | None:
    found = {v: _spacing(inst.ds) for v, (inst, _) in views.items()}
    known = {v: s for v, s in found.items() if s is not None}
    if len(set(known.values())) > 1:
        raise CaseError(views["posterior"][0].where, "PixelSpacing: the anterior and posterior instances differ")
    return next(iter(known.values()), None)


def _pick_report(reports: list[_Instance]) -> tuple[_Instance | None, list[str]]:
    """The report SR to use: a final one before a preliminary one, then the latest written
    (an amended report is a new SR in the same study)."""
    if not reports:
        return None, []

    def rank(inst: _Instance) -> tuple:
        ds = inst.ds
        return (str(getattr(ds, "CompletionFlag", "")) == "COMPLETE", str(getattr(ds, "VerificationFlag", "")) == "VERIFIED",
                str(getattr(ds, "ContentDate", "") or ""), str(getattr(ds, "ContentTime", "") or ""))

    best = max(reports, key=rank)
    notes = [f"{len(reports)} report SRs in the study; used SR {best.ds.SOPInstanceUID} (final, latest)"] if len(reports) > 1 else []
    return best, notes


def _sidecar(folders: list[Path]) -> tuple[str | None, str | None]:
    """(text, source) of a report.txt beside the instances, (None, None) without one."""
    for folder in folders:
        path = folder / SIDECAR_REPORT
        if path.is_file():
            text, _ = read_report_file(path)
            return text, f"sidecar {SIDECAR_REPORT}"
    return None, None


def read_dicom_study(items: Any) -> DicomStudy:
    """One study's instances -> its scan and report.

    Args:
        items: Paths (files, or folders read recursively) and / or pydicom Datasets of ONE study:
            a two-frame NM whole-body instance, or two single-frame ones (one anterior, one
            posterior), plus optionally a report SR; a report.txt in a folder given is the report
            when no SR holds one. Other instances that are no image (SEG, KO, PR) are left out
            with a note.

    Returns:
        The :class:`DicomStudy`; its scan's spacing comes from the DICOM ("dicom"), else "default".

    Raises:
        CaseError: naming the field and the problem (instances of two studies, two scans, a view
            missing, an image that is not NM, an unreadable file); never text or names.
    """
    instances, folders = _instances(items)
    uid = _study_uid(instances)
    nm, reports, notes = _sort(instances)
    views, more = _view_map(nm)
    spacing = _scan_spacing(views)
    first = views["anterior"][0].ds
    acc = str(getattr(first, "AccessionNumber", "") or "").strip() or None
    where = str(folders[0]) if len(folders) == 1 else views["anterior"][0].where
    scan = Scan(_frame_pixels(*views["anterior"], "anterior"), _frame_pixels(*views["posterior"], "posterior"),
                spacing or DEFAULT_PIXEL_SPACING_MM, where, notes + more, "dicom" if spacing else "default",
                study_ids(acc, uid))
    sr, sr_notes = _pick_report(reports)
    scan.notes += sr_notes
    report, report_source = (report_text_from_sr(sr.ds), f"sr {sr.ds.SOPInstanceUID}") if sr else _sidecar(folders)
    if sr and _sidecar(folders)[0] is not None:
        scan.notes.append(f"{SIDECAR_REPORT} beside the instances not used: the study's report SR was")
    sources = list({id(i.ds): i.ds for i, _ in views.values()}.values())
    frames = {v: (str(i.ds.SOPClassUID), str(i.ds.SOPInstanceUID), k) for v, (i, k) in views.items()}
    return DicomStudy(uid, acc, scan, report, report_source, sources, frames)


def study_state(items: Any) -> str:
    """What of a study has arrived: "scan+report", "scan", "report" or "empty" (the node waits for
    both). A scan counts once both views are there; unreadable or foreign instances count as nothing."""
    try:
        instances, folders = _instances(items, header_only=True)
    except CaseError:
        return "empty"
    kinds = [classify(i.ds) for i in instances]
    nm = [i for i, k in zip(instances, kinds) if k == "nm"]
    try:
        _view_map(nm)
        has_scan = True
    except CaseError:
        has_scan = False
    has_report = "report" in kinds or any((f / SIDECAR_REPORT).is_file() for f in folders)
    return {(True, True): "scan+report", (True, False): "scan", (False, True): "report"}.get((has_scan, has_report), "empty")


def is_study_folder(folder: Path) -> bool:
    """Whether a folder (with its subfolders, as a PACS export nests them) holds the instances of
    one DICOM study, two or more (a scan and its report, or two single-frame views): not a case
    folder, not a folder of case folders or of independent scans. Reads headers, and stops at the
    second study it sees."""
    import pydicom

    folder = Path(folder)
    if not folder.is_dir() or (folder / "cases").is_dir():
        return False
    files = dicom_files(folder)
    if len(files) < 2 or any(find_scan_files(d) for d in {f.parent for f in files}):
        return False
    studies = set()
    for p in files:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        except Exception:  # noqa: BLE001 - not DICOM: read_dicom_study names it if asked
            continue
        studies.add(str(ds.get("StudyInstanceUID", "")))
        if len(studies) > 1:
            return False
    return len(studies) == 1


# ----------------------------------------------------------------------------- writing


#: pinyin names of the synthetic patients (family^given), by sex; fake, deterministic per case
_NAMES = {"F": ("Wang^Fang", "Li^Na", "Zhang^Min", "Liu^Jing", "Chen^Xiuying", "Yang^Li", "Zhao^Yan", "Huang^Mei"),
          "M": ("Wang^Wei", "Li^Qiang", "Zhang^Lei", "Liu^Yang", "Chen^Jie", "Yang^Jun", "Zhao^Gang", "Zhou^Hao")}
_PHYSICIANS = ("Sun^Hong", "Ma^Lin", "Hu^Jian", "Guo^Ping")
_INSTITUTION = "Bonescan Synthetic Hospital"
_MANUFACTURER = "BoneScan-Triton synthetic"
_UID_ROOT = "bonescan-synthetic"


def _uid(*parts: object) -> str:
    """A UID that is the same for the same parts (a case re-written gives the same study)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[_UID_ROOT, *map(str, parts)]))


def _case_facts(case_dir: Path, seed: int) -> dict[str, Any]:
    """Fake but stable patient and study attributes of one synthetic case (from its id and meta.json)."""
    meta = json.loads((case_dir / "meta.json").read_text(encoding="utf-8"))
    case_id = str(meta.get("case_id") or case_dir.name)
    h = int.from_bytes(hashlib.sha256(f"{seed}:{case_id}".encode()).digest()[:8], "big")
    patient = meta.get("patient", {})
    sex = "F" if patient.get("sex") == "F" else "M"
    age = int(patient.get("age", 60))
    when = dt.datetime(2024, 1, 2, 8, 0) + dt.timedelta(days=h % 700, minutes=(h >> 10) % 540)
    born = dt.date(when.year - age, 1 + (h >> 20) % 12, 1 + (h >> 24) % 28)
    if (born.month, born.day) > (when.month, when.day):  # keep the stated age at the study date
        born = born.replace(year=born.year + 1)
    spacing = meta.get("pixel_spacing_mm") or list(DEFAULT_PIXEL_SPACING_MM)
    return {"case_id": case_id, "name": _NAMES[sex][h % len(_NAMES[sex])], "sex": sex, "age": age, "born": born,
            "when": when, "patient_id": f"P{h % 10**8:08d}", "accession": f"A{when:%Y%m%d}{h % 10**4:04d}",
            "study_id": f"{h % 10**6:06d}", "referrer": _PHYSICIANS[h % len(_PHYSICIANS)],
            "reader": _PHYSICIANS[(h >> 3) % len(_PHYSICIANS)], "spacing": [float(v) for v in spacing],
            "study_uid": str(meta.get("study_instance_uid") or _uid(seed, case_id, "study")),
            "seed": seed}


def _study(f: dict[str, Any]) -> NMStudy:
    """The patient, study and equipment of a synthetic case's facts (:func:`_case_facts`)."""
    return NMStudy(study_instance_uid=f["study_uid"], patient_id=f["patient_id"], patient_name=f["name"],
                   issuer_of_patient_id="BONESCAN", birth_date=f"{f['born']:%Y%m%d}", sex=f["sex"],
                   age=f"{f['age']:03d}Y", study_date=f"{f['when']:%Y%m%d}", study_time=f"{f['when']:%H%M%S}",
                   accession_number=f["accession"], referring_physician=f["referrer"], study_id=f["study_id"],
                   study_description="NM Whole Body Bone Scan", manufacturer=_MANUFACTURER, institution=_INSTITUTION,
                   station="GAMMA1")


def _nm_dataset(f: dict[str, Any], views: tuple[str, ...], pixels: np.ndarray, number: int) -> Any:
    """One NM whole-body instance holding ``views`` (one frame each), in the case's study."""
    series = "multiframe" if len(views) == 2 else views[0]  # single-frame: one series per view, as cameras do
    return nm_dataset(_study(f), views, pixels, sop_instance_uid=_uid(f["seed"], f["case_id"], "nm", *views),
                      series_instance_uid=_uid(f["seed"], f["case_id"], "nm series", series),
                      frame_of_reference_uid=_uid(f["seed"], f["case_id"], "frame of reference"),
                      series_number=number, spacing=f["spacing"], camera=True)


def _split_report(report: str) -> tuple[list[str], list[str]]:
    """(findings paragraphs, impression paragraphs): the report cut at its impression heading
    (诊断意见, 印象, 结论, Impression...); without one, all of it is findings. Joined with
    newlines, the two give the report back."""
    lines = report.strip("\n").split("\n")
    cut = next((i for i, line in enumerate(lines) if i and _IMPRESSION_RE.match(line.strip())), len(lines))
    findings = "\n".join(lines[:cut]).strip("\n")
    impression = "\n".join(lines[cut:]).strip("\n")
    return ([findings] if findings.strip() else []), ([impression] if impression.strip() else [])


_IMPRESSION_RE = re.compile(r"(诊断意见|诊断|印象|影像诊断|检查结论|结论|意见|impression|conclusion)", re.IGNORECASE)


def _text_container(concept: tuple[str, str, str], item_concept: tuple[str, str, str], texts: list[str]) -> Any:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    box = Dataset()
    box.RelationshipType = "CONTAINS"
    box.ValueType = "CONTAINER"
    box.ConceptNameCodeSequence = Sequence([_code(*concept)])
    box.ContinuityOfContent = "SEPARATE"
    items = []
    for text in texts:
        item = Dataset()
        item.RelationshipType = "CONTAINS"
        item.ValueType = "TEXT"
        item.ConceptNameCodeSequence = Sequence([_code(*item_concept)])
        item.TextValue = text
        items.append(item)
    box.ContentSequence = Sequence(items)
    return box


def write_basic_text_sr(report: str, nm: Any, path: str | Path | None = None) -> Any:
    """A Basic Text SR holding ``report`` in the study of ``nm`` (a Dataset or a list of them: the
    NM instance(s) it reports on), as a RIS sends it: same patient and study, its own series,
    root "Diagnostic imaging report" (LOINC 18748-4) with a Findings and an Impressions container.
    UIDs follow from the study's, so writing it twice gives the same instance. Saved to ``path``
    when given."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    nms = list(nm) if isinstance(nm, (list, tuple)) else [nm]
    ref = nms[0]
    study_uid = str(ref.StudyInstanceUID)
    sop_uid = _uid(study_uid, "report sr")
    ds = Dataset()
    ds.file_meta = _file_meta(BASIC_TEXT_SR, sop_uid)
    ds.SOPClassUID, ds.SOPInstanceUID = BASIC_TEXT_SR, sop_uid
    ds.SpecificCharacterSet = "ISO_IR 192"
    for kw in ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
               "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyID",
               "StudyDescription", "InstitutionName"):
        if kw in ref:
            setattr(ds, kw, ref.data_element(kw).value)
    ds.Manufacturer = getattr(ref, "Manufacturer", "") or ""
    ds.Modality = "SR"
    ds.SeriesInstanceUID = _uid(study_uid, "report series")
    ds.SeriesNumber = 900
    ds.SeriesDescription = "Report"
    ds.InstanceNumber = 1
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.PerformedProcedureCodeSequence = Sequence()
    when = _report_time(ref)
    ds.ContentDate, ds.ContentTime = f"{when:%Y%m%d}", f"{when:%H%M%S}"
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "VERIFIED"
    ds.VerifyingObserverSequence = Sequence([_verifier(study_uid, when, str(getattr(ref, "InstitutionName", "") or "Hospital"))])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([_evidence(nms)])
    _report_content(ds, report)
    if path is not None:
        ds.save_as(path, enforce_file_format=True)
    return ds


def _report_time(ref: Any) -> dt.datetime:
    """The report is written two hours after the scan (or at a fixed time when the scan has no date)."""
    try:
        start = dt.datetime.strptime(f"{ref.StudyDate}{str(ref.StudyTime)[:6]}", "%Y%m%d%H%M%S")
    except (AttributeError, ValueError):
        start = dt.datetime(2024, 1, 1, 8, 0)
    return start + dt.timedelta(hours=2)


def _verifier(study_uid: str, when: dt.datetime, institution: str) -> Any:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    h = int.from_bytes(hashlib.sha256(study_uid.encode()).digest()[:4], "big")
    item = Dataset()
    item.VerifyingObserverName = _PHYSICIANS[h % len(_PHYSICIANS)]
    item.VerifyingObserverIdentificationCodeSequence = Sequence()
    item.VerifyingOrganization = institution
    item.VerificationDateTime = f"{when:%Y%m%d%H%M%S}"
    return item


def _evidence(nms: list[Any]) -> Any:
    """CurrentRequestedProcedureEvidenceSequence: the NM instances the report is about, by series."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    series: dict[str, list[Any]] = {}
    for ds in nms:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        series.setdefault(str(ds.SeriesInstanceUID), []).append(ref)
    item = Dataset()
    item.StudyInstanceUID = nms[0].StudyInstanceUID
    seq = []
    for uid, refs in series.items():
        s = Dataset()
        s.SeriesInstanceUID = uid
        s.ReferencedSOPSequence = Sequence(refs)
        seq.append(s)
    item.ReferencedSeriesSequence = Sequence(seq)
    return item


def _report_content(ds: Any, report: str) -> None:
    """SR Document Content: the root container, Findings (DCM 121070) and Impressions (DCM 121072)."""
    from pydicom.sequence import Sequence

    findings, impression = _split_report(report)
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "LN", "Diagnostic imaging report")])
    ds.ContinuityOfContent = "SEPARATE"
    boxes = []
    if findings:
        boxes.append(_text_container(("121070", "DCM", "Findings"), ("121071", "DCM", "Finding"), findings))
    if impression:
        boxes.append(_text_container(("121072", "DCM", "Impressions"), ("121073", "DCM", "Impression"), impression))
    ds.ContentSequence = Sequence(boxes)


def write_synthetic_study(case_dir: str | Path, out_dir: str | Path, layout: str = "multiframe",
                          with_report: bool = True, seed: int = 0) -> list[Path]:
    """A synthetic case folder (anterior.png, posterior.png, report.txt, meta.json) as the study a
    PACS would export: NM whole-body instance(s) plus a Basic Text SR, files named by their
    SOPInstanceUID. Same case and seed -> same bytes.

    Args:
        layout: "multiframe" (one two-frame instance) or "single" (one instance per view).
        with_report: write the report SR (the case's report.txt; an empty report writes none).

    Returns:
        The files written, NM first.
    """
    if layout not in ("multiframe", "single"):
        raise ValueError(f"layout must be 'multiframe' or 'single', got {layout!r}")
    case_dir, out_dir = Path(case_dir), Path(out_dir)
    f = _case_facts(case_dir, seed)
    views = {v: read_png(case_dir / f"{v}.png", f"{v} view") for v in VIEWS}
    if layout == "multiframe":
        nms = [_nm_dataset(f, VIEWS, np.stack([views["anterior"], views["posterior"]]), 1)]
    else:
        nms = [_nm_dataset(f, (v,), views[v][None], k + 1) for k, v in enumerate(VIEWS)]
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for ds in nms:
        written.append(out_dir / f"{ds.SOPInstanceUID}.dcm")
        ds.save_as(written[-1], enforce_file_format=True)
    report, _ = read_report_file(case_dir / "report.txt")
    if with_report and report.strip():
        sr = write_basic_text_sr(report, nms)
        written.append(out_dir / f"{sr.SOPInstanceUID}.dcm")
        sr.save_as(written[-1], enforce_file_format=True)
    return written


#: every how-many-th case ``data synth --dicom`` writes as two single-frame instances (the rest
#: as one two-frame instance), so a data set exercises both layouts a PACS may send
SINGLE_FRAME_EVERY = 4
#: the subfolder of a case folder that holds its DICOM study (the data set readers never look in it)
DICOM_SUBFOLDER = "dicom"


def layout_of(index: int) -> str:
    """The layout ``data synth --dicom`` gives case ``index``: every 4th single-frame."""
    return "single" if index % SINGLE_FRAME_EVERY == SINGLE_FRAME_EVERY - 1 else "multiframe"


def write_synthetic_studies(root: str | Path, seed: int = 0) -> dict[str, int]:
    """Every case of a synthetic data set also as ``cases/<id>/dicom/`` (NM + report SR), beside
    the PNGs, masks and meta.json the data set reads, which stay as they were. Returns how many
    cases got each layout."""
    cases = Path(root) / "cases"
    counts = {"multiframe": 0, "single": 0}
    for index, case_dir in enumerate(sorted(p for p in cases.iterdir() if p.is_dir() and not p.name.startswith("."))):
        layout = layout_of(index)
        write_synthetic_study(case_dir, case_dir / DICOM_SUBFOLDER, layout=layout, seed=seed)
        counts[layout] += 1
    return counts
