"""The exported graphs run in-process with onnxruntime, the way Triton's embedded flavor runs them.

Parity checks (``export check``), INT8 calibration, the benchmarks and the tests compare against
this pipeline: tokenize -> text_encoder -> segmenter, with the same onnxruntime session settings
as the served models (:func:`bonescan.serving.onnx_runner.cpu_session`) and the tensor names of
the contract's graph declarations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bonescan import contract as C
from bonescan.serving.onnx_runner import cpu_session


class OrtPipeline:
    """In-process onnxruntime running an export folder's graphs (dual-path or U-Net)."""

    def __init__(self, export_dir: str | Path, threads: int = 2):
        from bonescan.export.onnx_export import read_description
        from bonescan.tokenize import ReportTokenizer

        self.dir = Path(export_dir)
        self.desc = read_description(self.dir)
        self.text_guided = C.TEXT_ENCODER_GRAPH.export_name in self.desc["graphs"]
        seg = C.SEGMENTER_GRAPH if self.text_guided else C.SEGMENTER_UNET_GRAPH
        self.seg = cpu_session(self.dir / seg.onnx_file, threads)
        self.text = cpu_session(self.dir / C.TEXT_ENCODER_GRAPH.onnx_file, threads) if self.text_guided else None
        self.tokenizer = ReportTokenizer(self.dir / "tokenizer" / "tokenizer.json") if self.text_guided else None

    def outputs(self, images: np.ndarray, reports: list[str] | None = None) -> dict[str, np.ndarray]:
        """Every output of the segmenter graph by name (logits, region_labels; the dual-path one also
        gives the fail-safe's inputs: text_map, fallback_logits) and the tokenizer's text_stats and places (contract.REPORT_PLACES)."""
        images = np.ascontiguousarray(images, dtype=np.dtype(C.IMAGE.dtype))
        if not self.text_guided:
            names = [t.name for t in C.SEGMENTER_UNET_OUTPUTS]
            return dict(zip(names, self.seg.run(names, {C.IMAGE.name: images})))
        assert self.tokenizer is not None and self.text is not None
        texts = list(reports) if reports is not None else [""] * len(images)
        ids, mask = self.tokenizer(texts)
        feats = self.text.run([C.TEXT_FEATURES.name], {C.INPUT_IDS.name: ids, C.ATTENTION_MASK.name: mask})[0]
        names = [t.name for t in C.SEGMENTER_OUTPUTS]
        places = self.tokenizer.report_places(texts)
        out = self.seg.run(names, {C.IMAGE.name: images, C.TEXT_FEATURES.name: feats, C.ATTENTION_MASK.name: mask,
                                   C.REPORT_REGIONS.name: places[C.REPORT_REGIONS.name]})
        return {**dict(zip(names, out)), C.TEXT_STATS.name: self.tokenizer.text_stats(ids, mask, texts), **places}

    def logits(self, images: np.ndarray, reports: list[str] | None = None) -> np.ndarray:
        """The model's own logits (for the dual-path model: before the fail-safe's choice)."""
        return self.outputs(images, reports)[C.LOGITS.name]

    def answer(self, images: np.ndarray, spacing: np.ndarray, reports: list[str] | None = None, settings=None):
        """What the served ensemble answers: postprocess (with the fail-safe for the dual-path model)
        -> (mask uint8 [B, 1, H, W], probability, lesion JSON strings)."""
        from bonescan.failsafe import FailSafeSettings
        from bonescan.postprocess import postprocess, served_failsafe

        out = self.outputs(images, reports)
        if not self.text_guided:
            return postprocess(out[C.LOGITS.name], spacing, extra={"answered_by": "unet", "reason": "image-only ensemble"},
                               regions=out[C.REGION_LABELS.name], images=images)
        if settings is None:
            settings = FailSafeSettings.from_dict((self.desc.get("failsafe") or {}).get("settings"))
        masks, prob, lesions, _ = served_failsafe(out, spacing, settings, images=images)
        return masks, prob, lesions


#: the runtimes an export's graphs can run with in-process: the embedded flavor's and the openvino flavor's
RUNTIMES = ("onnxruntime", "openvino")


def runtime_pipeline(export_dir: str | Path, runtime: str = "onnxruntime", threads: int = 2) -> OrtPipeline:
    """An :class:`OrtPipeline` over ``export_dir`` whose graphs run by ``runtime``: ``onnxruntime`` (the embedded
    flavor's) or ``openvino`` (the openvino flavor's ``OpenVinoSession``, what the served steps run)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    pipe = OrtPipeline(export_dir, threads)
    if runtime == "openvino":
        from bonescan.serving.openvino_runner import OpenVinoSession

        seg = C.SEGMENTER_GRAPH if pipe.text_guided else C.SEGMENTER_UNET_GRAPH
        pipe.seg = OpenVinoSession(pipe.dir / seg.onnx_file, threads)
        if pipe.text is not None:
            pipe.text = OpenVinoSession(pipe.dir / C.TEXT_ENCODER_GRAPH.onnx_file, threads)
    return pipe
