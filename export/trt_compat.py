"""A TensorRT-compatibility check that runs on a CPU (``bonescan export lint``).

It reads the ONNX graph and checks what TensorRT's ONNX parser (onnx-tensorrt, TensorRT 10.x,
docs/operators.md) documents, so a problem shows up in CI instead of on the GPU machine:

* every node's op type is supported (ops marked N in the support matrix fail, by node name);
* the documented restrictions that can be checked statically: ``axes`` of Reduce*/Squeeze/
  Unsqueeze/Slice are constants, Resize uses a supported mode / coordinate transform and no
  antialiasing, LayerNormalization uses only its first output, Dropout is not in training mode,
  MaxPool has no Indices output, pooling / ConvTranspose are 2-D or 3-D, TopK's K < 3840;
* no tensor uses a type TensorRT lacks (strings, complex, uint16/32/64, int16);
* the opset is in TensorRT's range (9-24 for TensorRT 10.x);
* only the contract's dynamic axes are symbolic (batch, and tokens for text tensors:
  :attr:`bonescan.contract.GraphSpec.dynamic_axes`).

Each finding names the node (or tensor) and the rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bonescan import contract as C

#: Ops with "Y" in onnx-tensorrt's support matrix for TensorRT 10.x (default ONNX domain).
SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish
Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization RNN
RoiAlign Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign
Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

OPSET_RANGE = (9, 24)
RESIZE_MODES = {"nearest", "linear"}
RESIZE_COORDS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
# ONNX TensorProto data types TensorRT cannot hold (network I/O or internal)
UNSUPPORTED_TYPES = {4: "UINT16", 5: "INT16", 8: "STRING", 12: "UINT32", 13: "UINT64", 14: "COMPLEX64", 15: "COMPLEX128"}


@dataclass
class Finding:
    node: str
    op: str
    rule: str

    def __str__(self) -> str:
        return f"node {self.node!r} ({self.op}): {self.rule}"


def _attr(node, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def check_model(model, allowed_dynamic: dict[str, set[int]] | None = None) -> list[Finding]:
    """All findings for an onnx.ModelProto (empty list = TensorRT can parse it, as far as documented).

    allowed_dynamic: graph input/output name -> dims that may be symbolic (default: {0} for all).
    """
    from onnx import shape_inference

    findings: list[Finding] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        findings.append(Finding("<model>", "opset", f"opset {opset} is outside TensorRT 10's range {OPSET_RANGE}"))
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - a graph that cannot be inferred is still linted node by node
        inferred = model
    g = inferred.graph
    constants = {i.name for i in g.initializer}
    constants |= {o for n in g.node if n.op_type == "Constant" for o in n.output}
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}

    for n in g.node:
        name = n.name or (n.output[0] if n.output else "?")
        if n.domain not in ("", "ai.onnx"):
            findings.append(Finding(name, f"{n.domain}.{n.op_type}", "custom-domain op: needs a TensorRT plugin"))
            continue
        if n.op_type not in SUPPORTED_OPS:
            findings.append(Finding(name, n.op_type, "op is not supported by the TensorRT ONNX parser"))
            continue
        op = n.op_type
        if op.startswith("Reduce") and len(n.input) > 1 and n.input[1] and n.input[1] not in constants:
            findings.append(Finding(name, op, "`axes` must be an initializer"))
        if op in ("Squeeze", "Unsqueeze") and len(n.input) > 1 and n.input[1] not in constants:
            findings.append(Finding(name, op, "`axes` must be resolvable to a constant"))
        if op == "Slice" and len(n.input) > 3 and n.input[3] and n.input[3] not in constants:
            findings.append(Finding(name, op, "`axes` must be an initializer"))
        if op == "Resize":
            mode = _attr(n, "mode", "nearest")
            coord = _attr(n, "coordinate_transformation_mode", "half_pixel")
            if mode not in RESIZE_MODES:
                findings.append(Finding(name, op, f"mode {mode!r} unsupported (nearest / linear only)"))
            if coord not in RESIZE_COORDS:
                findings.append(Finding(name, op, f"coordinate_transformation_mode {coord!r} unsupported"))
            if mode == "nearest" and _attr(n, "nearest_mode", "round_prefer_floor") not in RESIZE_NEAREST:
                findings.append(Finding(name, op, "nearest_mode unsupported"))
            if int(_attr(n, "antialias", 0)):
                findings.append(Finding(name, op, "antialiasing is not supported"))
            if _attr(n, "keep_aspect_ratio_policy", "stretch") != "stretch":
                findings.append(Finding(name, op, "only keep_aspect_ratio_policy 'stretch' is supported"))
        if op == "LayerNormalization" and any(o and o in used for o in n.output[1:]):
            findings.append(Finding(name, op, "only the first output `Y` is supported"))
        if op == "MaxPool" and len(n.output) > 1 and n.output[1] in used:
            findings.append(Finding(name, op, "the `Indices` output is unsupported"))
        if op == "Dropout" and len(n.input) > 2 and n.input[2] and n.input[2] not in constants:
            findings.append(Finding(name, op, "`training_mode` must be an initializer evaluating to False"))
        if op in ("MaxPool", "AveragePool", "ConvTranspose", "Conv"):
            ks = _attr(n, "kernel_shape")
            if ks is not None and len(ks) not in (1, 2, 3):
                findings.append(Finding(name, op, f"{len(ks)}-D kernels are unsupported"))
            if op in ("MaxPool", "AveragePool") and ks is not None and len(ks) == 1:
                findings.append(Finding(name, op, "2-D or 3-D pooling only"))
            if op in ("MaxPool", "AveragePool") and any(d != 1 for d in (_attr(n, "dilations") or [])):
                findings.append(Finding(name, op, "`dilations` must be empty or all ones"))
        if op == "TopK":
            k_name = n.input[1] if len(n.input) > 1 else ""
            k = next((i for i in g.initializer if i.name == k_name), None)
            if k is not None:
                from onnx import numpy_helper

                if int(numpy_helper.to_array(k).reshape(-1)[0]) >= 3840:
                    findings.append(Finding(name, op, "`K` must be less than 3840"))
            if int(_attr(n, "sorted", 1)) != 1:
                findings.append(Finding(name, op, "`sorted` must be 1"))

    for vi in list(g.value_info) + list(g.input) + list(g.output):
        t = vi.type.tensor_type.elem_type
        if t in UNSUPPORTED_TYPES:
            findings.append(Finding(vi.name, "tensor", f"type {UNSUPPORTED_TYPES[t]} is not supported by TensorRT"))
    for init in g.initializer:
        if init.data_type in UNSUPPORTED_TYPES:
            findings.append(Finding(init.name, "initializer", f"type {UNSUPPORTED_TYPES[init.data_type]} is not supported by TensorRT"))

    allowed_dynamic = allowed_dynamic or {}
    for vi in list(g.input) + list(g.output):
        ok = allowed_dynamic.get(vi.name, {0})
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            dynamic = bool(d.dim_param) or d.dim_value <= 0
            if dynamic and k not in ok:
                findings.append(Finding(vi.name, "graph I/O", f"dimension {k} is dynamic; only {sorted(ok)} may be"))
    return findings


def contract_graph(path: Path, model) -> C.GraphSpec | None:
    """The contract's graph an ONNX file holds: by its file name and, where graphs share one (the
    U-Net's ``segmenter.onnx`` is ``segmenter_unet``), by its input names. None: not one of ours."""
    candidates = [g for g in C.GRAPHS.values() if g.onnx_file == path.name]
    names = tuple(i.name for i in model.graph.input)
    return next((g for g in candidates if g.input_names == names), candidates[0] if candidates else None)


def check_file(path: str | Path) -> list[Finding]:
    """Lint one ONNX file; its dims may be symbolic only where the contract's graph says so
    (batch only for a graph the contract does not know)."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    graph = contract_graph(path, model)
    return check_model(model, graph.dynamic_dims() if graph else None)


def check_export(export_dir: str | Path) -> dict[str, Any]:
    """Lint every graph of an export folder; returns {graph: [finding strings]} plus a verdict."""
    export_dir = Path(export_dir)
    result: dict[str, Any] = {"tensorrt_parser": "onnx-tensorrt 10.x operator matrix", "graphs": {}}
    for p in sorted(export_dir.glob("*.onnx")):
        result["graphs"][p.name] = [str(f) for f in check_file(p)]
    result["ok"] = bool(result["graphs"]) and not any(result["graphs"].values())
    return result
