"""The data set: one class that training, evaluation and benchmarks all read.

Layout (synthetic and hospital data alike)::

    DATA/
      manifest.json          # optional for hospital data: {"cases": [{"id", "split"}, ...]}
      cases/<case_id>/
        scan.dcm             # two-frame NM whole-body DICOM, or
        anterior.png + posterior.png   # 16-bit PNG views (or anterior.dcm + posterior.dcm), or
        scan.npy             # [2, 1024, 256] anterior, posterior
        mask.png             # metastasis mask, anterior frame, non-zero = lesion (needed to train / evaluate)
        regions.png          # optional: skeleton region classes per view (bonescan.anatomy; synthetic data has them,
                             # hospital data does not)
        report.txt           # UTF-8 report (optional: missing = no report)
        meta.json            # optional (synthetic cases carry their ground truth here)

A case that cannot be read is reported (file + problem) and skipped; the others load.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bonescan.contract import to_model_frame
from bonescan.data.io import (
    NO_SCAN,
    REGIONS_FILE,
    CaseError,
    find_scan_files,
    read_json,
    read_mask,
    read_regions,
    read_report,
    read_scan,
)

log = logging.getLogger("bonescan.data")

MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")


@dataclass
class Sample:
    case_id: str
    image: np.ndarray  # float32 [2, H, W], model frame (see contract.to_model_frame)
    mask: np.ndarray | None  # uint8 [H, W], 1 = lesion
    report: str
    pixel_spacing: tuple[float, float]
    meta: dict[str, Any] | None = None
    spacing_source: str = "default"  # see bonescan.data.io.SPACING_SOURCES
    notes: list[str] = field(default_factory=list)  # warnings about the files (e.g. an 8-bit PNG)
    regions: np.ndarray | None = None  # uint8 [2, H, W] region classes per view, model frame (regions.png), if any


def findings_mask(mask: np.ndarray | None, meta: dict[str, Any] | None, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 [H, W]: every place a report describes a finding: the metastases (the mask) and, when
    the case carries its ground truth (meta.json of synthetic data), the boxes of benign findings
    and artefacts. Trains the report's ``mention`` map (model.fusion.TextPrior)."""
    out = np.zeros(shape, np.uint8) if mask is None else (np.asarray(mask) > 0).astype(np.uint8)
    if not meta:
        return out
    for b in meta.get("benign", []):
        for f in b.get("foci", []):
            y0, x0, y1, x1 = f["bbox"]
            out[y0 : y1 + 1, x0 : x1 + 1] = 1
    for a in meta.get("artefacts", []):
        cy, cx = (int(round(v)) for v in a["center"])
        out[max(cy - 4, 0) : cy + 5, max(cx - 4, 0) : cx + 5] = 1
    return out


@dataclass
class CaseRef:
    case_id: str
    split: str
    path: Path


def read_manifest(root: Path) -> list[CaseRef]:
    """Cases listed by manifest.json, or (hospital data without one) every folder under cases/."""
    root = Path(root)
    mpath = root / MANIFEST
    cases_dir = root / "cases" if (root / "cases").is_dir() else root
    if mpath.exists():
        m = read_json(mpath)
        if not isinstance(m.get("cases"), list):
            raise CaseError(mpath, "manifest has no 'cases' list")
        refs = []
        for i, c in enumerate(m["cases"]):
            if not isinstance(c, dict) or "id" not in c:
                raise CaseError(mpath, f"manifest entry {i} has no 'id'")
            split = c.get("split", "test")
            if split not in SPLITS:
                raise CaseError(mpath, f"manifest entry {i} has unknown split {split!r}; use one of {SPLITS}")
            refs.append(CaseRef(str(c["id"]), split, cases_dir / str(c["id"])))
        return refs
    if not root.is_dir():
        raise CaseError(root, "data folder does not exist")
    dirs = sorted(p for p in cases_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise CaseError(root, "no manifest.json and no case folders")
    log.warning("%s has no %s: every case is in the 'test' split (write one with `bonescan data manifest`)", root, MANIFEST)
    return [CaseRef(d.name, "test", d) for d in dirs]


def write_manifest(root: Path, refs: list[CaseRef], extra: dict[str, Any] | None = None) -> Path:
    body = dict(extra or {})
    body["cases"] = [{"id": r.case_id, "split": r.split} for r in refs]
    path = Path(root) / MANIFEST
    path.write_text(json.dumps(body, ensure_ascii=False, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


def assign_splits(ids: list[str], seed: int, val: float = 0.1, test: float = 0.2) -> dict[str, str]:
    """A fixed random split: the same ids and seed always give the same split."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B17]))
    order = rng.permutation(len(ids))
    n_test = int(round(test * len(ids)))
    n_val = int(round(val * len(ids)))
    out = {}
    for rank, i in enumerate(order):
        out[ids[i]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return out


class BoneScanDataset:
    """Cases of one split (or all) of a data folder, loaded on demand.

    ``require_mask``: a case without mask.png is an error (training, evaluation).
    ``with_regions``: also read regions.png where a case has one (off by default: nothing that trains or
    serves today reads the label maps, and decoding them adds a few ms per case).
    """

    def __init__(self, root: str | Path, split: str | None = None, require_mask: bool = True, with_regions: bool = False):
        self.root = Path(root)
        refs = read_manifest(self.root)
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.refs = [r for r in refs if split is None or r.split == split]
        self.split = split
        self.require_mask = require_mask
        self.with_regions = with_regions
        self.errors: list[CaseError] = []

    @classmethod
    def of_folders(cls, root: str | Path, folders: list[Path], require_mask: bool = True) -> BoneScanDataset:
        """The case folders given, whatever a manifest says (``bonescan data manifest`` reads them
        all before it splits them); their split is "test" until one is assigned."""
        ds = cls.__new__(cls)
        ds.root, ds.split, ds.require_mask, ds.errors, ds.with_regions = Path(root), None, require_mask, [], False
        ds.refs = [CaseRef(f.name, "test", f) for f in folders]
        return ds

    def __len__(self) -> int:
        return len(self.refs)

    @property
    def ids(self) -> list[str]:
        return [r.case_id for r in self.refs]

    def load(self, i: int) -> Sample:
        """Read case i; raises CaseError naming the file and the problem."""
        ref = self.refs[i]
        if not ref.path.is_dir():
            raise CaseError(ref.path, "case folder is missing")
        files = find_scan_files(ref.path)
        if not files:
            raise CaseError(ref.path, NO_SCAN)
        meta = read_json(ref.path / "meta.json") if (ref.path / "meta.json").exists() else None
        scan = read_scan(files, meta=meta)
        mask = None
        mpath = ref.path / "mask.png"
        if mpath.exists():
            mask = read_mask(mpath)
        elif self.require_mask:
            raise CaseError(mpath, "mask file is missing")
        report = read_report(ref.path / "report.txt")
        rpath = ref.path / REGIONS_FILE
        regions = read_regions(rpath) if self.with_regions and rpath.exists() else None
        return Sample(ref.case_id, to_model_frame(scan.anterior, scan.posterior), mask, report, scan.pixel_spacing, meta,
                      scan.spacing_source, scan.notes, regions)

    def __getitem__(self, i: int) -> Sample:
        return self.load(i)

    def samples(self, progress: bool = False, desc: str = "loading", log_skipped: bool = True) -> Iterator[Sample]:
        """Every readable case; unreadable ones are kept in .errors, skipped and (``log_skipped``)
        logged with the file and the problem."""
        it: Any = range(len(self))
        if progress:
            from tqdm import tqdm

            it = tqdm(it, desc=desc, unit="case", leave=False)
        for i in it:
            try:
                yield self.load(i)
            except CaseError as e:
                e.case_id = self.refs[i].case_id  # which case it made unusable (the path may name one of its files)
                self.errors.append(e)
                if log_skipped:
                    log.warning("skipping case %s: %s", self.refs[i].case_id, e)

    def load_all(self, progress: bool = False, desc: str = "loading") -> list[Sample]:
        return list(self.samples(progress, desc))
