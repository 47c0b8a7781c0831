"""What a segmentation returns, and how it is written to disk (Pillow only: no matplotlib needed)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from bonescan.errors import BonescanError


class OutputExistsError(BonescanError):
    """save() found results of the same name and was not told to overwrite them."""


@dataclass
class SegmentationResult:
    """mask / probability are in the anterior frame (patient's right on the image's left)."""

    mask: np.ndarray  # uint8 [H, W], 1 = lesion
    probability: np.ndarray | None  # float32 [H, W]
    lesions: list[dict[str, Any]]
    model: str
    source: str
    pixel_spacing: tuple[float, float]
    timings_ms: dict[str, float] = field(default_factory=dict)
    anterior: np.ndarray | None = None  # for the overlay
    #: which path answered ("dualpath" or "unet", the image-only answer) and why (bonescan.failsafe)
    answered_by: str | None = None
    reason: str | None = None
    signals: dict[str, Any] | None = None
    #: where pixel_spacing came from (bonescan.data.io.SPACING_SOURCES); "default": not known, so
    #: the lesions carry no area in mm² (area_mm2 is None) and only pixels are reported
    pixel_spacing_source: str = "command line"
    #: what the model read besides the image: "given" (a report), "no report" (the dual-path model
    #: was sent an empty one: it segments on the image alone) or "image only" (the U-Net ensemble)
    report: str = "given"
    notes: list[str] = field(default_factory=list)  # warnings about the input files
    #: the scan's study identifiers ({"accession_number", "study_instance_uid"}, the known ones)
    study: dict[str, str] = field(default_factory=dict)
    #: the name save() writes under by default (bonescan.client.inputs.result_stem: from the input)
    stem: str | None = None
    #: the encoding the report file was read in (None: given as text, or no report)
    report_encoding: str | None = None
    #: where the report came from, never its text (bonescan.client.inputs.Request.report_source)
    report_source: str | None = None
    #: the served checkpoint's sha256, 16 hex digits (the ensemble config's bonescan_model_sha256; None:
    #: the client did not read the config). A DICOM SEG / SR names it and derives its UIDs from it
    model_sha256: str | None = None
    #: the scan's Bone Scan Index, Soloway grade and hot spots per region (postprocess's ``anatomy``; None:
    #: the server has no anatomy output). Each lesion's ``site`` names its bone
    anatomy: dict[str, Any] | None = None
    #: the second reader (bonescan.report_sites, run by the client on the report it sent): each site the
    #: report names as a metastasis, ``found`` on the scan or ``not_found``; each lesion carries
    #: ``in_report`` / ``called_benign`` / ``uncertain`` / ``not_in_report`` (client.second_reader). None: no
    #: report, or no anatomy output
    report_sites: list[dict[str, str]] | None = None
    #: the second reader's image-only evidence: the bundled image-only U-Net's confident lesions that the
    #: report-guided answer does not hold (postprocess ``image_only``), named by bone and flagged like the
    #: lesions; they are not in ``mask``. None: the server does not list them (U-Net ensemble, no anatomy)
    image_only: list[dict[str, Any]] | None = None

    @property
    def spacing_known(self) -> bool:
        return self.pixel_spacing_source != "default"

    @property
    def lesion_area_px(self) -> int:
        return int(sum(les["area_px"] for les in self.lesions))

    @property
    def lesion_area_mm2(self) -> float | None:
        """Total lesion area in mm², None when the pixel spacing is not known."""
        if not self.spacing_known:
            return None
        return float(sum(les["area_mm2"] for les in self.lesions))

    def summary(self) -> str:
        if self.lesion_area_mm2 is not None:
            area = f"{self.lesion_area_mm2:.0f} mm²"
        else:
            area = f"{self.lesion_area_px} px (pixel spacing unknown: no mm²; give pixel_spacing=(row, col))"
        extra = ", no report" if self.report == "no report" else ""
        if self.answered_by == "unet" and self.model != "bonescan_unet" and self.report != "no report":
            extra += f", image-only answer ({self.reason})"
        where = ""
        named = [les["site"]["name_en"] for les in self.lesions if les.get("site") and les["site"]["name_en"]]
        if named:
            more = f" +{len(named) - 3}" if len(named) > 3 else ""
            where = f" ({', '.join(named[:3])}{more})"
        burden = ""
        if self.anatomy is not None:
            burden = f", BSI {self.anatomy['bsi']:.2f} %, Soloway grade {self.anatomy['eod']}"
            if self.anatomy.get("bsi_left_out"):  # lesions at bones the report calls benign: not counted in the BSI
                burden += f" ({self.anatomy['bsi_left_out']} lesion(s) the report calls benign not counted)"
        flags = ""
        if self.report_sites is not None:
            every = self.lesions + (self.image_only or [])
            missed = sum(1 for les in every if les.get("second_reader") == "not_in_report")
            benign = sum(1 for les in every if les.get("second_reader") == "called_benign")
            unseen = sum(1 for s in self.report_sites if s["flag"] == "not_found")
            if missed or unseen or benign:
                flags = f", second reader: {missed} lesion(s) not in the report, {unseen} report site(s) not found"
                flags += f", {benign} at place(s) the report calls benign" if benign else ""
        return (f"{Path(self.source).name or self.source}: {len(self.lesions)} lesion(s){where}, {area}{burden}{extra}{flags}, "
                f"{self.timings_ms.get('request', 0):.0f} ms")

    def overlay(self) -> Image.Image:
        """Anterior view in the readers' inverted grey, window on bone, lesion outlines in red, numbers."""
        if self.anterior is None:
            raise ValueError("no image kept for the overlay")
        a = self.anterior.astype(np.float32)
        body = a[a > max(2.0, float(a.mean()) * 0.2)]
        hi = float(np.percentile(body, 95)) * 1.4 + 1.0 if body.size else float(a.max() or 1.0)
        grey = (255 - np.clip(a / hi, 0, 1) * 255).astype(np.uint8)
        rgb = np.stack([grey] * 3, axis=-1)
        m = self.mask.astype(bool)
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        rgb[edge] = (220, 20, 20)
        scale = 2
        img = Image.fromarray(rgb).resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.Resampling.NEAREST)
        draw = ImageDraw.Draw(img)
        for les in self.lesions:
            y0, x0, y1, x1 = les["bbox"]
            site = les.get("site") or {}
            # the region's short name (T7, rib_R5_posterior, femur_L_proximal): Pillow's default font has no CJK
            label = f"{les['id'] + 1} {site['region']}" if site.get("region") and site["region"] != "background" else str(les["id"] + 1)
            if les.get("second_reader") in ("not_in_report", "called_benign"):
                label += " (not in report)" if les["second_reader"] == "not_in_report" else " (report: benign)"
            draw.text((x1 * scale + 4, y0 * scale), label, fill=(200, 0, 0))
        title = f"{self.model}: {len(self.lesions)} lesion(s)"
        if self.anatomy is not None:
            title += f", BSI {self.anatomy['bsi']:.2f} %, grade {self.anatomy['eod']}"
        draw.text((4, 4), title, fill=(0, 0, 160))
        draw.text((4, 18), "R", fill=(0, 0, 160))
        draw.text((img.width - 12, 18), "L", fill=(0, 0, 160))
        return img

    def to_dicom(self, source: Any) -> tuple[Any, Any]:
        """(SEG, SR) pydicom Datasets over ``source``, the NM scan this result was computed from: a
        DICOM file, a Dataset, or the two single-frame views. See :func:`bonescan.client.dicom.to_dicom`;
        imported here on use, so the client needs pydicom / highdicom only for DICOM output."""
        from bonescan.client.dicom import to_dicom

        return to_dicom(self, source)

    @staticmethod
    def check_outputs(paths: dict[str, Path], stem: str, overwrite: bool) -> None:
        """Refuse to write over existing results (OutputExistsError) unless told to: one check for
        save() and for bonescan.client.dicom.write_dicom, which reaches it through the result."""
        existing = [p for p in paths.values() if p.exists()]
        if existing and not overwrite:
            raise OutputExistsError(f"{existing[0]}: a result named {stem!r} exists already ({len(existing)} file(s)); "
                                    "give another stem= or overwrite=True")

    def save(self, out_dir: str | Path, stem: str | None = None, overwrite: bool = False) -> dict[str, Path]:
        """mask PNG (0/255) and NPY, overlay PNG, lesions JSON: ``out_dir/<stem>_mask.png`` etc.

        Args:
            stem: the files' common name (default: :attr:`stem`, derived from the input: the file's
                stem, a view pair's common name, the case folder's name, a DICOM's accession number).
            overwrite: replace existing results of that name; without it an existing one is an
                error (OutputExistsError) and nothing is written.
        """
        out = Path(out_dir)
        stem = stem or self.stem or Path(self.source).stem or "scan"
        paths = {
            "mask_png": out / f"{stem}_mask.png",
            "mask_npy": out / f"{stem}_mask.npy",
            "lesions": out / f"{stem}_lesions.json",
        }
        if self.anterior is not None:
            paths["overlay"] = out / f"{stem}_overlay.png"
        self.check_outputs(paths, stem, overwrite)
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(self.mask.astype(np.uint8) * 255).save(paths["mask_png"])
        np.save(paths["mask_npy"], self.mask.astype(np.uint8))
        body: dict[str, Any] = {
            "source": self.source, "model": self.model, "report": self.report,
            "pixel_spacing_mm": list(self.pixel_spacing), "pixel_spacing_source": self.pixel_spacing_source,
        }
        study = {k: self.study[k] for k in ("accession_number", "study_instance_uid") if self.study.get(k)}
        if study:
            body["study"] = study
        if not self.spacing_known:
            body["pixel_spacing_note"] = ("no pixel spacing in the input: the server was sent the default "
                                          f"{list(self.pixel_spacing)} mm; areas in mm² are not given")
        body.update({"lesions": self.lesions, "timings_ms": self.timings_ms})
        if self.report_encoding:
            body["report_encoding"] = self.report_encoding
        if self.report_source:
            body["report_source"] = self.report_source
        if self.notes:
            body["notes"] = self.notes
        body.update({"answered_by": self.answered_by, "reason": self.reason, "signals": self.signals})
        if self.anatomy is not None:
            body["anatomy"] = self.anatomy
        if self.report_sites is not None:
            body["report_sites"] = self.report_sites
        paths["lesions"].write_text(json.dumps(body, indent=1, ensure_ascii=False) + "\n")
        if "overlay" in paths:
            self.overlay().save(paths["overlay"])
        return paths
