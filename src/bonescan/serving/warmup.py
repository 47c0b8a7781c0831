"""``model_warmup`` for the generated configs: a replica is ready only when it is warm.

Triton runs each ``model_warmup`` sample through every instance of a model while loading it, before
the model (and, with ``--strict-readiness``, the server) reports ready; a sample that fails fails the
load. Ensembles cannot have warm-up (Triton refuses it), so every composing model gets its own: the
python steps and the graphs of whichever flavor.

The inputs are a synthetic scan and its report (``bonescan.data.synth.synth_case``: no patient's
data) and what the steps before would make of them (the report's tokens from the export's tokenizer,
logits drawn from the scan's lesion mask), written by ``bonescan repo build`` into each model's
``warmup/`` folder as raw row-major data (``input_data_file``; BYTES as a 4-byte little-endian length
and the bytes). They pass every check of preprocess (a zero image would be refused: an empty view).
Tensors a step does not check and whose values do not change the work (``text_features``,
``text_map``) are ``zero_data``. A model with optional inputs gets a second sample without them
(preprocess and postprocess as the U-Net ensemble calls them).

The python steps leave warm-up requests out of their metrics and request log
(``telemetry.warmup_executions`` counts them from the config).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bonescan import contract as C

WARMUP_DIR = "warmup"  # Triton's folder name (kWarmupDataFolder)
#: the synthetic case the samples are made of (seed, index of bonescan.data.synth.synth_case)
WARMUP_CASE = (20261203, 0)
#: runs of each sample per instance: a graph's first onnxruntime run plans its memory, the second is steady
GRAPH_RUNS = 2
STEP_RUNS = 1


@dataclass
class WarmupData:
    """Named arrays for the warm-up samples: numpy arrays (one row, no batch dim) or None for zero_data."""

    arrays: dict[str, np.ndarray | None]

    @classmethod
    def synthetic(cls, tokenizer_json: Path | None) -> WarmupData:
        from bonescan.data.synth import synth_case

        case = synth_case(*WARMUP_CASE)
        image = C.to_model_frame(case.anterior, case.posterior).astype(np.float32)
        spacing = np.asarray(case.meta.get("pixel_spacing_mm", C.DEFAULT_PIXEL_SPACING_MM), dtype=np.float32).reshape(2)
        report = np.array([case.report.encode("utf-8")], dtype=np.object_)
        logits = np.where(case.mask[None] > 0, 6.0, -6.0).astype(np.float32)  # [1, H, W], anterior frame = model frame
        arrays: dict[str, np.ndarray | None] = {
            C.ENS_IMAGE.name: image, C.IMAGE.name: image,
            C.ENS_PIXEL_SPACING.name: spacing, C.PIXEL_SPACING.name: spacing,
            C.ENS_REPORT.name: report, C.REPORT.name: report,
            C.LOGITS.name: logits, C.FALLBACK_LOGITS.name: logits,
            C.TEXT_FEATURES.name: None, C.TEXT_MAP.name: None,
        }
        if case.regions is not None:  # the anatomy output as the U-Net gives it: one class per REGION_STRIDE cell
            r = C.REGION_STRIDE
            arrays[C.REGION_LABELS.name] = np.ascontiguousarray(case.regions[:, r // 2 :: r, r // 2 :: r]).astype(np.int32)
        if tokenizer_json is not None and Path(tokenizer_json).is_file():
            from bonescan.tokenize import ReportTokenizer

            tok = ReportTokenizer(tokenizer_json)
            ids, mask = tok([case.report])
            arrays[C.INPUT_IDS.name] = ids[0].astype(np.int32)
            arrays[C.ATTENTION_MASK.name] = mask[0].astype(np.int32)
            arrays[C.TEXT_STATS.name] = tok.text_stats(ids, mask, [case.report])[0].astype(np.int32)
            arrays.update({name: flags[0] for name, flags in tok.report_places([case.report]).items()})
        return cls(arrays)


def _raw(a: np.ndarray) -> bytes:
    if a.dtype == np.object_:
        out = b""
        for v in a.reshape(-1):
            b = v if isinstance(v, bytes) else str(v).encode("utf-8")
            out += struct.pack("<I", len(b)) + b
        return out
    return np.ascontiguousarray(a).tobytes()


def _dims(spec: C.TensorSpec, overrides: dict[str, tuple[int, ...]], tokens: int) -> tuple[int, ...]:
    """A tensor's warm-up dims: its config dims with the token axis at the tokenizer's fixed length."""
    dims = overrides.get(spec.name, spec.dims)
    return tuple(tokens if d == C.DYN else int(d) for d in dims)


def warmup_block(model_dir: Path, spec: C.ModelSpec, data: WarmupData, overrides: dict[str, tuple[int, ...]],
                 runs: int) -> str:
    """Write the warm-up files of one model into ``model_dir/warmup`` and return its ``model_warmup``
    block. Samples: every input the data has (optional ones too), then, when that left optional
    inputs in, one with the required inputs only."""
    tokens = C.TOKENIZER.max_tokens
    full = [t for t in spec.inputs if t.name in data.arrays]
    missing = [t.name for t in spec.inputs if not t.optional and t.name not in data.arrays]
    if missing:
        raise ValueError(f"{spec.name}: no warm-up data for {missing}")
    samples = [("synthetic_scan", full)]
    required = [t for t in full if not t.optional]
    if len(required) < len(full):
        samples.append(("synthetic_scan_required_inputs", required))
    folder = model_dir / WARMUP_DIR
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, tensors in samples:
        rows = [f'    name: "{name}"', "    batch_size: 1", f"    count: {runs}"]
        for t in tensors:
            arr = data.arrays[t.name]
            if arr is None:
                dims = _dims(t, overrides, tokens)
                source = "zero_data: true"
            else:
                dims = tuple(arr.shape)
                (folder / t.name).write_bytes(_raw(arr))
                source = f'input_data_file: "{t.name}"'
            rows.append(f'    inputs {{ key: "{t.name}" value: {{ data_type: {t.config_dtype} dims: [ '
                        f'{", ".join(str(d) for d in dims)} ] {source} }} }}')
        out.append("  {\n" + "\n".join(rows) + "\n  }")
    return "# warm-up: a synthetic scan and report, run by every instance before the model is ready " \
           "(bonescan.serving.warmup)\nmodel_warmup [\n" + ",\n".join(out) + "\n]\n"


def add_warmup(model_dir: Path, spec: C.ModelSpec, data: WarmupData, overrides: dict[str, tuple[int, ...]]) -> None:
    """Append ``model_warmup`` to a generated model's config.pbtxt (files into its ``warmup/``)."""
    runs = GRAPH_RUNS if isinstance(spec, C.GraphSpec) else STEP_RUNS
    cfg = model_dir / "config.pbtxt"
    cfg.write_text(cfg.read_text(encoding="utf-8") + warmup_block(model_dir, spec, data, overrides, runs), encoding="utf-8")
