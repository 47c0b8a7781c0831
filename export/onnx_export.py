"""``bonescan export onnx``: a checkpoint -> text_encoder.onnx + segmenter.onnx + description.

Output folder::

    model.json            # every input/output (name, dtype, shape with symbolic dims), config, versions
    text_encoder.onnx     # dualpath only: (input_ids, attention_mask) -> text_features
    segmenter.onnx        # (image[, text_features, attention_mask, report_regions]) -> logits, ...; see the contract
    tokenizer/            # tokenizer.json (+ vocab.txt, configs), dualpath only

Names and dynamic axes (batch, and tokens for text) come from the contract's graph declarations
(:data:`bonescan.contract.GRAPHS`). Graphs are simplified with onnxslim (constant folding,
dead-node removal), and pass ``onnx.checker`` and strict shape inference. The Triton configs and
the client are generated from model.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from bonescan import contract as C
from bonescan.errors import BonescanError

log = logging.getLogger("bonescan.export")

FORMAT = "bonescan-export/1"
OPSET = 17
DESCRIPTION = "model.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dims(vi) -> list[str | int]:
    out: list[str | int] = []
    for d in vi.type.tensor_type.shape.dim:
        out.append(d.dim_param if d.dim_param else int(d.dim_value))
    return out


def describe_graph(path: Path) -> dict[str, Any]:
    """Inputs / outputs of an ONNX file as plain data."""
    import onnx
    from onnx import helper

    m = onnx.load(str(path), load_external_data=False)

    def io(vis) -> list[dict[str, Any]]:
        return [
            {"name": v.name, "dtype": str(helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)), "shape": _dims(v)}
            for v in vis
        ]

    return {"file": path.name, "sha256": sha256(path), "inputs": io(m.graph.input), "outputs": io(m.graph.output),
            "opset": int(next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))), "nodes": len(m.graph.node)}


def check_against_contract(graph: dict[str, Any], spec: C.GraphSpec) -> None:
    """The exported graph's tensors must be the contract's: names, dtypes, static dims."""
    for kind, got, want in (("input", graph["inputs"], spec.inputs), ("output", graph["outputs"], spec.outputs)):
        if [g["name"] for g in got] != [w.name for w in want]:
            raise BonescanError(f"{graph['file']}: {kind}s {[g['name'] for g in got]} != contract {[w.name for w in want]}")
        for g, w in zip(got, want):
            if g["dtype"] != w.dtype:
                raise BonescanError(f"{graph['file']}: {kind} {g['name']} is {g['dtype']}, the contract says {w.dtype}")
            dims = g["shape"][1:]  # without batch
            if len(dims) != len(w.dims):
                raise BonescanError(f"{graph['file']}: {kind} {g['name']} has rank {len(g['shape'])}, expected {len(w.dims) + 1}")
            for d, wd in zip(dims, w.dims):
                if wd != C.DYN and d != wd:
                    raise BonescanError(f"{graph['file']}: {kind} {g['name']} dims {g['shape']} do not match {w.dims}")


def simplify(path: Path) -> None:
    """Constant folding and clean-up with onnxslim, then checker + strict shape inference."""
    import onnx
    import onnxslim

    model = onnx.load(str(path))
    slim = onnxslim.slim(model)
    onnx.save(slim, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    onnx.shape_inference.infer_shapes_path(str(path), strict_mode=True)


def _export(module, args: tuple, path: Path, spec: C.GraphSpec) -> None:
    import warnings

    import torch

    with torch.no_grad(), warnings.catch_warnings():
        # the tracer warns about Python-side branches on shapes that are constant in our graphs
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*aten::index.*")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(spec.input_names),
            output_names=list(spec.output_names),
            dynamic_axes=spec.onnx_dynamic_axes(),
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _export_graph(module, args: tuple, out: Path, spec: C.GraphSpec, simplify_graph: bool) -> dict[str, Any]:
    """Export one graph as the contract declares it, simplify it, check it; returns its description."""
    path = out / spec.onnx_file
    _export(module, args, path, spec)
    if simplify_graph:
        simplify(path)
    desc = describe_graph(path)
    check_against_contract(desc, spec)
    return desc


def export_onnx(checkpoint: str | Path, out: str | Path, simplify_graphs: bool = True, anatomy: bool = True) -> dict[str, Any]:
    """Export both graphs of a checkpoint; returns the description written to model.json.

    ``anatomy=False`` leaves the anatomy network out of the segmenter graph: ``region_labels`` is then
    background everywhere (the same contract), so postprocess names no lesion and gives no Bone Scan Index.
    For deployments that do not need them, and to measure what the anatomy output costs (A/B). A dual-path
    model whose decoder reads the named bones (NamedPlaces) keeps the network, which locates them for the
    lesion path too, and leaves out the labels alone."""
    import onnx
    import onnxruntime
    import torch

    from bonescan.model.checkpoint import load_checkpoint, write_tokenizer_files
    from bonescan.model.network import DeployedSegmenter

    t0 = time.perf_counter()
    ckpt = load_checkpoint(checkpoint)
    net = ckpt.net.eval()
    has_anatomy = any(getattr(m, "anatomy", None) is not None for m in (net.segmenter, net.fallback))
    deployed = net.deployed_segmenter()
    if not anatomy and isinstance(deployed, DeployedSegmenter) and deployed.segmenter.named is not None:
        deployed.region_labels_out = False
    elif not anatomy:
        for m in (net.segmenter, net.fallback):
            if m is not None and hasattr(m, "anatomy"):
                m.anatomy = None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    graphs: dict[str, Any] = {}
    batch = 2
    image = torch.rand(batch, *C.IMAGE_DIMS) * 50
    if net.text_encoder is not None:
        tok = ckpt.report_tokenizer()
        texts = ["检查所见：T7椎体见放射性浓聚。诊断意见：骨转移。", ""]  # a report naming a bone, and none
        ids, mask = tok(texts)
        ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
        te, seg = C.TEXT_ENCODER_GRAPH, C.SEGMENTER_GRAPH
        graphs[te.export_name] = _export_graph(net.text_encoder, (ids_t, mask_t), out, te, simplify_graphs)
        with torch.no_grad():
            feats = net.text_encoder(ids_t, mask_t)
        # the segmenter graph bundles the fallback U-Net and the report's maps (model.network.DeployedSegmenter)
        regions = torch.from_numpy(tok.report_regions(texts))
        graphs[seg.export_name] = _export_graph(deployed, (image, feats, mask_t, regions), out, seg, simplify_graphs)
        write_tokenizer_files(ckpt.tokenizer_files, out / "tokenizer")
    else:
        seg = C.SEGMENTER_UNET_GRAPH
        # the U-Net's logits and its anatomy output (model.network.DeployedUNet)
        graphs[seg.export_name] = _export_graph(deployed, (image,), out, seg, simplify_graphs)
    desc = {
        "format": FORMAT,
        "model": ckpt.cfg.model,
        "config": ckpt.cfg.to_dict(),
        "text_hidden": net.text_encoder.hidden if net.text_encoder is not None else None,
        # the fixed dims of the report's maps (text_map), and the fail-safe's calibrated thresholds
        "text_map_hw": [C.IMAGE_HEIGHT // net.segmenter.map_stride, C.IMAGE_WIDTH // net.segmenter.map_stride]
        if net.text_encoder is not None else None,
        "failsafe": ckpt.metadata.get("failsafe"),
        "fallback": ckpt.metadata.get("fallback"),
        # does region_labels carry the anatomy output (False: background everywhere, left out or never trained)
        "anatomy": bool(anatomy and has_anatomy),
        "graphs": graphs,
        "contract": C.spec_table(),
        "checkpoint": {
            "file": str(Path(checkpoint).resolve()),
            "sha256": sha256(Path(checkpoint)),
            "seed": ckpt.metadata.get("seed"),
            "config_name": ckpt.metadata.get("config_name"),
            "steps_done": ckpt.metadata.get("steps_done"),
            "validation_dsc": (ckpt.metadata.get("validation") or {}).get("dsc", {}).get("mean"),
        },
        "versions": {"torch": str(torch.__version__), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "opset": OPSET},
        "export_seconds": round(time.perf_counter() - t0, 1),
    }
    (out / DESCRIPTION).write_text(json.dumps(desc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    log.info("exported %s to %s in %.1f s", ckpt.cfg.model, out, desc["export_seconds"])
    return desc


def read_description(export_dir: str | Path) -> dict[str, Any]:
    p = Path(export_dir) / DESCRIPTION
    if not p.is_file():
        raise BonescanError(f"{p}: missing; run `bonescan export onnx` first")
    d = json.loads(p.read_text(encoding="utf-8"))
    if d.get("format") != FORMAT:
        raise BonescanError(f"{p}: not a {FORMAT} description")
    version = (d.get("contract") or {}).get("contract_version")
    if version != C.CONTRACT_VERSION:
        raise BonescanError(f"{p}: exported under contract version {version}, this code speaks version {C.CONTRACT_VERSION} "
                            "(the graphs' inputs differ); export again with `bonescan export onnx`")
    return d
