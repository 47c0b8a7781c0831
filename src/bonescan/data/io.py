"""Reading and writing scans, masks and reports: the one place files become arrays.

Used by the data set (training, evaluation, benchmarks) and by the client, so a hospital's DICOM,
a 16-bit PNG pair or an NPY array all turn into the same arrays. Needs numpy, Pillow and pydicom
only (no torch).

Conventions (see the README's "Bring your own data"):

* views are 1024 x 256 (rows x columns) non-negative counts;
* the posterior view is stored **as acquired** (seen from behind, the patient's left on the
  image's left); :func:`bonescan.contract.to_model_frame` mirrors it into the anterior frame;
* masks are in the anterior frame; any non-zero pixel is lesion;
* reports are text files, UTF-8 (else GB18030, Big5 or UTF-16, detected); a missing report is an empty
  report.

Every failure is a :class:`CaseError` naming the file and the problem, never the file's content.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from bonescan.contract import DEFAULT_PIXEL_SPACING_MM, IMAGE_HEIGHT, IMAGE_WIDTH, MAX_COUNT, TOKENIZER
from bonescan.data.nmimage import NM_IMAGE_STORAGE as NM_IMAGE_STORAGE  # re-exported (readers, client.dicom)
from bonescan.data.nmimage import NMStudy, nm_dataset
from bonescan.errors import BonescanError
from bonescan.study import study_ids
from bonescan.tokenize import ReportError, decode_report

#: write_dicom_scan's patient, and the Manufacturer it writes
ANONYMOUS = "Anonymous^"  # family name only (without the "^" dciodvfy calls the name form retired)
WRITER = "BoneScan-Triton"
#: the problem of a case folder without a scan file
NO_SCAN = "no scan found (expected scan.dcm, anterior.png + posterior.png, anterior.dcm + posterior.dcm or scan.npy)"


class CaseError(BonescanError):
    """A case (or one of its files) cannot be used. ``str()`` names the path and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        self.case_id: str | None = None  # set by the data set that skipped the case
        super().__init__(f"{self.path}: {problem}")


#: Where a scan's pixel spacing came from, in the order :func:`decide_spacing` trusts them:
#: given explicitly ("command line": ``--pixel-spacing``, or the ``pixel_spacing`` argument of the
#: readers and the client), the DICOM's own PixelSpacing, the case folder's meta.json, or none
#: known ("default": DEFAULT_PIXEL_SPACING_MM is used, and no area in mm² may be shown as measured).
SPACING_SOURCES = ("command line", "dicom", "meta.json", "default")


@dataclass
class Scan:
    """Two views as acquired plus where they came from."""

    anterior: np.ndarray  # [H, W] counts
    posterior: np.ndarray  # [H, W] counts, as acquired (not mirrored)
    pixel_spacing: tuple[float, float] = DEFAULT_PIXEL_SPACING_MM
    source: str = ""
    notes: list[str] = field(default_factory=list)
    spacing_source: str = "default"  # one of SPACING_SOURCES; a Scan built by hand with a known spacing says so
    #: the study it belongs to: {"accession_number", "study_instance_uid"}, only those known (from the
    #: DICOM, else the case folder's meta.json); empty when the input names none (bonescan.study)
    study: dict[str, str] = field(default_factory=dict)

    @property
    def spacing_known(self) -> bool:
        return self.spacing_source != "default"


def check_view(arr: np.ndarray, path: str | Path, what: str) -> np.ndarray:
    """Validate one view's shape and values; returns it as float32-safe numbers."""
    if arr.ndim != 2:
        raise CaseError(path, f"{what} must be a 2-D image, got {arr.ndim} dimensions {tuple(arr.shape)}")
    if arr.shape != (IMAGE_HEIGHT, IMAGE_WIDTH):
        raise CaseError(
            path, f"{what} is {arr.shape[0]}x{arr.shape[1]} (rows x columns); expected {IMAGE_HEIGHT}x{IMAGE_WIDTH}"
        )
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise CaseError(path, f"{what} contains NaN or infinite values")
    elif arr.dtype.kind not in "ui":
        raise CaseError(path, f"{what} has unsupported pixel type {arr.dtype}")
    if arr.size and float(arr.min()) < 0:
        raise CaseError(path, f"{what} contains negative counts")
    if arr.size and float(arr.max()) > MAX_COUNT:
        raise CaseError(path, f"{what} has counts above {MAX_COUNT}")
    if arr.size and float(arr.max()) == 0:
        raise CaseError(path, f"{what} is empty (all pixels are zero)")
    return arr


def read_png(path: str | Path, what: str = "view") -> np.ndarray:
    """A 16-bit (or 8-bit) grey PNG as an integer array."""
    path = Path(path)
    if not path.is_file():
        raise CaseError(path, f"{what} file is missing")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("I;16", "I;16B", "I", "L"):
                raise CaseError(path, f"{what} must be a grey-scale PNG, got mode {im.mode}")
            arr = np.array(im)
    except CaseError:
        raise
    except Exception as e:  # PIL raises many types for corrupt files
        raise CaseError(path, f"{what} is not a readable image ({type(e).__name__})") from None
    if arr.dtype == np.int32:  # mode "I"
        arr = arr.astype(np.int64)
    return arr


#: zlib level of the PNGs this project writes (lossless at any level)
PNG_LEVEL = 1


def write_png16(path: str | Path, arr: np.ndarray) -> None:
    """Write a uint16 array as a 16-bit grey PNG (deterministic bytes; zlib level 1: files ~15 %
    larger than level 6, written four times faster, which was 40 % of synthesising a case)."""
    a = np.ascontiguousarray(arr, dtype=np.uint16)
    Image.fromarray(a).save(path, format="PNG", compress_level=PNG_LEVEL)


def read_mask(path: str | Path) -> np.ndarray:
    """Mask PNG -> uint8 [H, W] with 1 = lesion (any non-zero pixel)."""
    arr = read_png(path, "mask")
    if arr.shape != (IMAGE_HEIGHT, IMAGE_WIDTH):
        raise CaseError(path, f"mask is {arr.shape[0]}x{arr.shape[1]}; expected {IMAGE_HEIGHT}x{IMAGE_WIDTH}")
    return (arr > 0).astype(np.uint8)


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255).save(path, format="PNG", compress_level=PNG_LEVEL)


#: the skeleton's region label map beside the mask (``bonescan.anatomy``): one 8-bit PNG of 2H x W, the
#: anterior view's labels on top of the posterior view's (both in the model frame), values = class indices
REGIONS_FILE = "regions.png"


def write_regions(path: str | Path, regions: np.ndarray) -> None:
    """uint8 [2, H, W] label map -> an 8-bit grey PNG of [2H, W] (views stacked top to bottom)."""
    r = np.asarray(regions)
    if r.ndim != 3 or r.shape[0] != 2 or r.dtype != np.uint8:
        raise ValueError(f"regions must be uint8 [2, H, W], got {r.dtype} {r.shape}")
    Image.fromarray(np.ascontiguousarray(r.reshape(2 * r.shape[1], r.shape[2]))).save(path, format="PNG", compress_level=PNG_LEVEL)


def read_regions(path: str | Path) -> np.ndarray:
    """regions.png -> uint8 [2, H, W] class indices (checked against the class count)."""
    from bonescan.anatomy import N_REGION_CLASSES

    arr = read_png(path, "region label map")
    if arr.shape != (2 * IMAGE_HEIGHT, IMAGE_WIDTH):
        raise CaseError(path, f"region label map is {arr.shape[0]}x{arr.shape[1]}; expected {2 * IMAGE_HEIGHT}x{IMAGE_WIDTH} "
                              "(anterior above posterior)")
    if arr.size and int(arr.max()) >= N_REGION_CLASSES:
        raise CaseError(path, f"region label map holds class {int(arr.max())}; there are {N_REGION_CLASSES} "
                              "(written by another version of bonescan.anatomy?)")
    return arr.astype(np.uint8).reshape(2, IMAGE_HEIGHT, IMAGE_WIDTH)


#: the encodings a report file is tried in when it has no byte-order mark and is not UTF-8 (Chinese
#: hospital systems write GBK / GB18030 (mainland) or Big5 (Taiwan, Hong Kong)); charset-normalizer
#: picks the likelier. UTF-16 (Windows "Unicode" text) and UTF-32 are known by their byte-order mark.
REPORT_ENCODINGS = ("gb18030", "big5")
#: characters of bone-scan reports, simplified and traditional: when a file decodes in both
#: encodings (short texts often do), the decoding with more of them is the report; charset-normalizer
#: decides only a tie (its statistics need longer texts than "骨转移")
REPORT_HINT_CHARS = frozenset("骨椎肋髂胸腰颈頸盆肩膝股胫脛颅顱转轉移放射性浓濃聚显顯像异異常未见見考虑慮左右侧側第节節"
                              "摄攝取增高灶多发發处處病变變报報告检檢查诊診断斷意")
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def decode_report_bytes(raw: bytes, encoding: str | None = None, field: str = "report") -> tuple[str, str]:
    """A report file's bytes -> (text, the encoding it was read in). ``encoding`` given: that one,
    strictly. Else a BOM, else UTF-8, else the likeliest of :data:`REPORT_ENCODINGS`. What none of
    them decodes is refused naming the encodings tried, never the bytes."""
    if encoding:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ReportError(f"{field} encoding {encoding!r} is not an encoding Python knows") from None
        try:
            return raw.decode(encoding), encoding
        except UnicodeDecodeError as e:
            raise ReportError(f"{field} is not valid {encoding} (bad byte at offset {e.start})") from None
    for bom, enc in _BOMS:
        if raw.startswith(bom):
            try:
                return raw[len(bom):].decode(enc if enc == "utf-8" else enc + ("-le" if bom[0] == 0xFF else "-be")), enc
            except UnicodeDecodeError as e:
                raise ReportError(f"{field} starts with a {enc} byte-order mark but is not valid {enc} "
                                  f"(bad byte at offset {e.start + len(bom)})") from None
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as e:
        first_bad = e.start
    decoded = {}
    for enc in REPORT_ENCODINGS:
        try:
            decoded[enc] = raw.decode(enc)
        except UnicodeDecodeError:
            continue
    if len(decoded) > 1:  # both decode: the one that reads like a bone-scan report, else charset-normalizer's pick
        score = {enc: sum(ch in REPORT_HINT_CHARS for ch in text) for enc, text in decoded.items()}
        top = max(score.values())
        decoded = {enc: text for enc, text in decoded.items() if score[enc] == top}
    if len(decoded) > 1:
        import charset_normalizer

        best = charset_normalizer.from_bytes(raw, cp_isolation=list(decoded)).best()
        decoded = {best.encoding: decoded[best.encoding]} if best is not None and best.encoding in decoded else {}
    if not decoded:
        raise ReportError(f"{field} is not valid UTF-8 (bad byte at offset {first_bad}), GB18030 or Big5, and has no "
                          "UTF-16 / UTF-32 byte-order mark; give its encoding (report_encoding=)")
    enc, text = next(iter(decoded.items()))
    return text, enc


def read_report_file(path: str | Path | None, encoding: str | None = None) -> tuple[str, str | None]:
    """(report text, the encoding its file was read in); a missing file is an empty report (None).
    Never echoes the content. The limits are :func:`bonescan.tokenize.decode_report`'s, the check
    Triton runs."""
    if path is None:
        return "", None
    path = Path(path)
    if not path.exists():
        return "", None
    # Checked by its size before it is read: no encoding here needs more than 4 bytes per character,
    # so a larger file cannot hold a report within the limit, and a stray huge file (an image or an
    # archive named report.txt) is refused without being read into memory. The character limit
    # itself is decode_report's.
    size = path.stat().st_size
    if size > TOKENIZER.max_report_chars * 4:
        raise CaseError(path, f"report is {size} bytes; the limit is {TOKENIZER.max_report_chars} characters")
    try:
        text, used = decode_report_bytes(path.read_bytes(), encoding)
        return decode_report(text, field="report"), used
    except ReportError as e:
        raise CaseError(path, str(e)) from None


def read_report(path: str | Path | None, encoding: str | None = None) -> str:
    """Report text (UTF-8, or see :func:`read_report_file`); a missing file is an empty report."""
    return read_report_file(path, encoding)[0]


def load_reports(folder: str | Path) -> dict[str, str]:
    """case_id -> report text for every ``<case_id>.txt`` in a folder (reports written elsewhere,
    e.g. by a hospital, or benchmarks/handwritten_reports)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CaseError(folder, "reports folder does not exist")
    out = {p.stem: read_report(p) for p in sorted(folder.glob("*.txt"))}
    if not out:
        raise CaseError(folder, "no <case_id>.txt report in the folder")
    return out


# ----------------------------------------------------------------------------- DICOM


def _view_of(item, fallback: str) -> str:
    """'anterior' / 'posterior' from a DICOM item's view code, image ID or description."""
    texts = []
    for seq_name in ("ViewCodeSequence",):
        for code in getattr(item, seq_name, []) or []:
            texts.append(str(getattr(code, "CodeMeaning", "")))
            texts.append(str(getattr(code, "CodeValue", "")))
    for attr in ("ImageID", "SeriesDescription", "ImageComments"):
        texts.append(str(getattr(item, attr, "")))
    t = " ".join(texts).lower()
    if "post" in t:
        return "posterior"
    if "ant" in t:
        return "anterior"
    return fallback


def _dicom_pixels(ds, path: Path) -> np.ndarray:
    try:
        arr = ds.pixel_array
    except Exception as e:
        raise CaseError(path, f"DICOM pixel data cannot be decoded ({type(e).__name__})") from None
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    if slope != 1 or intercept != 0:
        arr = arr.astype(np.float64) * slope + intercept
    return np.asarray(arr)


def _spacing(ds) -> tuple[float, float] | None:
    ps = getattr(ds, "PixelSpacing", None)
    if ps is None:
        for item in getattr(ds, "DetectorInformationSequence", []) or []:
            ps = getattr(item, "PixelSpacing", None)
            if ps is not None:
                break
    if not ps or len(ps) != 2:
        return None
    return float(ps[0]), float(ps[1])


def _read_dicom(path: Path):
    import pydicom

    if not path.is_file():
        raise CaseError(path, "DICOM file is missing")
    try:
        return pydicom.dcmread(path)
    except Exception as e:
        raise CaseError(path, f"not a readable DICOM file ({type(e).__name__})") from None


def read_dicom_scan(path: str | Path) -> Scan:
    """A whole-body NM DICOM with two frames (anterior + posterior) -> Scan.

    Frames are identified by DetectorInformationSequence[i].ViewCodeSequence (or ImageID);
    without those, frame 0 is anterior and frame 1 posterior.
    """
    path = Path(path)
    ds = _read_dicom(path)
    arr = _dicom_pixels(ds, path)
    notes = []
    if arr.ndim != 3 or arr.shape[0] != 2:
        raise CaseError(path, f"expected a two-frame whole-body image (anterior + posterior), got pixel data of shape {tuple(arr.shape)}")
    det = list(getattr(ds, "DetectorInformationSequence", []) or [])
    views = [_view_of(det[i], f) if i < len(det) else f for i, f in enumerate(("anterior", "posterior"))]
    if sorted(views) != ["anterior", "posterior"]:
        notes.append(f"{path}: frame views not labelled; assumed frame 0 = anterior, frame 1 = posterior")
        views = ["anterior", "posterior"]
    frames = dict(zip(views, arr))
    spacing = _spacing(ds)
    return Scan(
        check_view(frames["anterior"], path, "anterior frame"),
        check_view(frames["posterior"], path, "posterior frame"),
        spacing or DEFAULT_PIXEL_SPACING_MM,
        str(path),
        notes,
        "dicom" if spacing else "default",
        _dicom_study(ds),
    )


def _dicom_study(ds) -> dict[str, str]:
    """The DICOM's AccessionNumber and StudyInstanceUID, the ones it has."""
    return study_ids(getattr(ds, "AccessionNumber", None), getattr(ds, "StudyInstanceUID", None))


def read_dicom_view(path: str | Path, expect: str) -> tuple[np.ndarray, tuple[float, float] | None]:
    """One single-frame DICOM view file; checks its view label when it has one."""
    path = Path(path)
    ds = _read_dicom(path)
    arr = _dicom_pixels(ds, path)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    det = list(getattr(ds, "DetectorInformationSequence", []) or [])
    label = _view_of(det[0] if det else ds, expect)
    if label != expect:
        raise CaseError(path, f"file is labelled as the {label} view, expected the {expect} view")
    return check_view(arr, path, f"{expect} view"), _spacing(ds)


def write_dicom_scan(
    path: str | Path,
    anterior: np.ndarray,
    posterior: np.ndarray,
    pixel_spacing: tuple[float, float] | None = DEFAULT_PIXEL_SPACING_MM,
    patient_id: str = "ANON",
    accession_number: str | None = None,
    study_instance_uid: str | None = None,
) -> None:
    """Write a two-frame NM whole-body DICOM (for tests, demos and converting synthetic data).

    ``pixel_spacing=None`` (not known) leaves PixelSpacing empty (it is type 2 in the NM image
    module) rather than writing a default as if it had been measured. ``study_instance_uid`` None:
    one derived from the path; ``accession_number`` None: AccessionNumber left empty (type 2).
    The patient is anonymous (PatientName "Anonymous^", PatientID ``patient_id``); what nothing says (the
    patient's birth date and sex, the study's date, the camera) is written empty or left out.
    The attributes are :func:`bonescan.data.nmimage.nm_dataset`'s, as in the synthetic studies,
    so the file passes dciodvfy without errors."""
    from pydicom.uid import generate_uid

    study = NMStudy(study_instance_uid=study_instance_uid or generate_uid(entropy_srcs=[str(path), "study"]),
                    patient_id=patient_id, patient_name=ANONYMOUS, accession_number=accession_number or "",
                    manufacturer=WRITER)
    frames = np.stack([np.asarray(anterior, np.uint16), np.asarray(posterior, np.uint16)])
    ds = nm_dataset(study, ("anterior", "posterior"), frames,
                    sop_instance_uid=generate_uid(entropy_srcs=[str(path), patient_id]),
                    series_instance_uid=generate_uid(entropy_srcs=[str(path), "series"]),
                    frame_of_reference_uid=generate_uid(entropy_srcs=[str(path), "frame of reference"]),
                    series_number=1, spacing=pixel_spacing, camera=False)
    ds.save_as(path, enforce_file_format=True)


# ----------------------------------------------------------------------------- scans in any form


def read_npy_scan(path: str | Path) -> Scan:
    """[2, H, W] array: the anterior and posterior views as acquired, in that order."""
    path = Path(path)
    if not path.is_file():
        raise CaseError(path, "NPY file is missing")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:
        raise CaseError(path, f"not a readable NPY array ({type(e).__name__})") from None
    if arr.ndim != 3 or arr.shape[0] != 2:
        raise CaseError(path, f"expected an array of shape [2, {IMAGE_HEIGHT}, {IMAGE_WIDTH}] (anterior, posterior), got {tuple(arr.shape)}")
    return Scan(check_view(arr[0], path, "anterior view"), check_view(arr[1], path, "posterior view"), source=str(path))


def find_scan_files(case_dir: Path) -> dict[str, Path]:
    """Which scan files a case folder has: {'dicom': p} | {'anterior': p, 'posterior': p} | {'npy': p}."""
    for name in ("scan.dcm", "scan.dicom"):
        if (case_dir / name).is_file():
            return {"dicom": case_dir / name}
    pair: dict[str, Path] = {}
    for view in ("anterior", "posterior"):
        for ext in (".png", ".dcm"):
            if (case_dir / f"{view}{ext}").is_file():
                pair[view] = case_dir / f"{view}{ext}"
                break
    if pair:
        return pair
    if (case_dir / "scan.npy").is_file():
        return {"npy": case_dir / "scan.npy"}
    return {}


def read_scan(files: dict[str, Path] | str | Path, spacing: tuple[float, float] | None = None,
              meta: dict | None = None) -> Scan:
    """Read a scan from a case folder, a DICOM file, an NPY file, or {'anterior', 'posterior'} paths.

    Args:
        files: what to read; a case folder's meta.json (if any) is read for its pixel spacing and
            its study identifiers ("accession_number", "study_instance_uid") the scan files lack.
        spacing: (row, column) mm given by the caller; overrides what the files say.
        meta: the case's meta.json, already read (the data set reads it for its ground truth).

    Returns:
        The Scan, its pixel spacing decided by :func:`decide_spacing`.
    """
    case_dir = None
    if isinstance(files, (str, Path)):
        p = Path(files)
        if p.is_dir():
            found = find_scan_files(p)
            if not found:
                raise CaseError(p, NO_SCAN)
            files, case_dir = found, p
        elif p.suffix.lower() == ".npy":
            files = {"npy": p}
        else:
            files = {"dicom": p}
    if "dicom" in files:
        scan = read_dicom_scan(files["dicom"])
    elif "npy" in files:
        scan = read_npy_scan(files["npy"])
    else:
        scan = _read_view_pair(files)
    if "dicom" not in files:  # a DICOM pair's own identifiers
        scan = replace(scan, study=_pair_study(files))
    scan = decide_spacing(scan, spacing, case_dir, meta)
    return _meta_study(scan, case_dir, meta)


def _pair_study(files: dict[str, Path]) -> dict[str, str]:
    """The identifiers of a view pair's DICOM files (the anterior's first); {} for PNG / NPY."""
    found: dict[str, str] = {}
    for p in files.values():
        if Path(p).suffix.lower() in (".dcm", ".dicom"):
            import pydicom

            try:
                ds = pydicom.dcmread(p, stop_before_pixels=True)
            except Exception:  # already read once by the view reader; nothing more to learn here
                continue
            found = {**_dicom_study(ds), **found}
    return found


def _meta_study(scan: Scan, case_dir: Path | None, meta: dict | None) -> Scan:
    """Fill the study identifiers the scan files lack from the case folder's meta.json."""
    if meta is None and case_dir is not None and (Path(case_dir) / "meta.json").is_file():
        meta = read_json(Path(case_dir) / "meta.json")
    if not meta:
        return scan
    found = study_ids(meta.get("accession_number"), meta.get("study_instance_uid"))
    return replace(scan, study={**found, **scan.study}) if found else scan


def _read_view_pair(files: dict[str, Path]) -> Scan:
    views, notes = {}, []
    found_spacing = None
    for view in ("anterior", "posterior"):
        if view not in files:
            other = next(iter(files.values()))
            raise CaseError(Path(other).parent / f"{view}.png", f"{view} view file is missing")
        p = Path(files[view])
        if p.suffix.lower() in (".dcm", ".dicom"):
            views[view], sp = read_dicom_view(p, view)
            found_spacing = found_spacing or sp
        else:
            views[view] = check_view(read_png(p, f"{view} view"), p, f"{view} view")
            if views[view].dtype == np.uint8:
                notes.append(f"{p}: 8-bit PNG; views must be 16-bit counts (counts above 255 were lost, "
                             "or the image was scaled for display)")
    return Scan(views["anterior"], views["posterior"], found_spacing or DEFAULT_PIXEL_SPACING_MM,
                str(Path(files["anterior"]).parent), notes, "dicom" if found_spacing else "default")


def meta_spacing(meta: dict, path: Path | str = "meta.json") -> tuple[float, float] | None:
    """meta.json's ``pixel_spacing_mm`` (row, column), None when it has none."""
    value = meta.get("pixel_spacing_mm")
    if value is None:
        return None
    try:
        row, col = (float(v) for v in value)
    except (TypeError, ValueError):
        raise CaseError(path, "pixel_spacing_mm must be two numbers (row, column) in mm") from None
    if not (0 < row < 100 and 0 < col < 100):
        raise CaseError(path, "pixel_spacing_mm must be two positive numbers (row, column) in mm, under 100")
    return row, col


def decide_spacing(scan: Scan, given: tuple[float, float] | None = None, case_dir: Path | None = None,
                   meta: dict | None = None) -> Scan:
    """The one place that decides a scan's pixel spacing and records where it came from.

    The caller's value wins, then the file's own (DICOM PixelSpacing, already in ``scan``), then
    the case folder's meta.json (``meta`` or ``case_dir/meta.json``). With none of them the
    spacing is DEFAULT_PIXEL_SPACING_MM and the source "default": the area of a lesion in mm²
    is then not known, and nothing may print it as if it had been measured.
    """
    if given is not None:
        return replace(scan, pixel_spacing=(float(given[0]), float(given[1])), spacing_source="command line")
    if scan.spacing_source != "default":
        return scan
    meta_path = Path(case_dir) / "meta.json" if case_dir is not None else Path("meta.json")
    if meta is None and case_dir is not None and meta_path.is_file():
        meta = read_json(meta_path)
    found = meta_spacing(meta, meta_path) if meta else None
    if found is not None:
        return replace(scan, pixel_spacing=found, spacing_source="meta.json")
    return replace(scan, pixel_spacing=DEFAULT_PIXEL_SPACING_MM, spacing_source="default")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CaseError(path, "file is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CaseError(path, f"not valid JSON ({type(e).__name__})") from None
