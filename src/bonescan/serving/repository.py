"""``bonescan repo build``: fill the model-repository templates with artifacts and configs.

Flavors of the two network graphs (the python steps are the same in all of them):

* ``embedded``: python-backend models running the ONNX files with onnxruntime on the CPU, for the
  Triton that ships in the ``nvidia-pytriton`` wheel (python backend only). Served and tested here.
* ``onnxruntime``: ``onnxruntime_onnx`` models for the NGC Triton container (CPU or GPU).
* ``tensorrt``: ``tensorrt_plan`` engines from ``bonescan export trt`` for the NGC container on a
  GPU; each engine's TensorRT version is checked against the container's.
* ``openvino``: python-backend models running the same ONNX files with the OpenVINO runtime on the CPU
  (``serving/openvino_runner.py``; latency hint, compiled models cached on disk). Served and tested here.
* ``openvino-ngc``: Triton's own ``openvino`` backend reading model.onnx, for the NGC container on a CPU
  (generated and parsed in the tests; the wheel's tritonserver has no such backend).

Every tensor block of every config.pbtxt is generated from :mod:`bonescan.contract` (and the text
width from the export's model.json), so configs, graphs, python models and client agree. The two
ensembles are generated whole from the contract's chains (``contract.ENSEMBLES``): which models a
repository holds, and how their tensors connect, is declared there; the other models' templates
(``config.pbtxt.in``) hold only their runtime settings.
"""

from __future__ import annotations

import json
import os
import shutil
import string
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from bonescan import contract as C
from bonescan.errors import BonescanError
from bonescan.serving.launch import container_requirements, write_container_files

FLAVORS = ("embedded", "onnxruntime", "tensorrt", "openvino", "openvino-ngc")
#: flavors whose graphs run inside python-backend models: served by the wheel's tritonserver here
PYTHON_FLAVORS = ("embedded", "openvino")
#: flavors on the CPU, where waiting to grow a batch costs every request more than a batch saves
CPU_FLAVORS = ("embedded", "openvino", "openvino-ngc")
REPO_MANIFEST = "bonescan_repo.json"
#: modules copied next to every python model: the runtime half of the package (numpy, scipy, tokenizers, onnxruntime)
RUNTIME_MODULES = ("__init__.py", "contract.py", "errors.py", "tokenize.py", "report_text.py", "postprocess.py", "components.py", "failsafe.py", "validate.py",
                   "study.py", "anatomy.py", "serving/__init__.py", "serving/pybackend.py", "serving/onnx_runner.py", "serving/openvino_runner.py",
                   "serving/telemetry.py")

#: files a python model needs beside model.py: model -> {name there: path in the export folder}
#: (files that an export may lack, such as trained_tokens.json of a pretrained MacBERT's tokenizer, are skipped)
PYTHON_MODEL_FILES = {C.TOKENIZER_MODEL: {"tokenizer.json": "tokenizer/tokenizer.json",
                                          "trained_tokens.json": "tokenizer/trained_tokens.json"}}
OPTIONAL_MODEL_FILES = {"trained_tokens.json"}

FLAVOR_NOTES = {
    "embedded": "python backend running model.onnx with onnxruntime on the CPU (pip-installed Triton)",
    "onnxruntime": "onnxruntime_onnx backend (NGC Triton container)",
    "tensorrt": "tensorrt_plan engine (NGC Triton container on a GPU; the engine's TensorRT must match the container's)",
    "openvino": "python backend running model.onnx with the OpenVINO runtime on the CPU (compiled model cached on disk)",
    "openvino-ngc": "openvino backend (NGC Triton container, CPU): Triton's own OpenVINO backend reading model.onnx",
}


@dataclass
class RepoOptions:
    flavor: str = "embedded"
    max_batch_size: int = C.MAX_BATCH_SIZE  # TensorRT engines must be built for at least this batch
    instances: int = 1  # instances of text_encoder / segmenter
    python_instances: int = 1  # instances of preprocess / tokenizer / postprocess
    #: text_encoder / segmenter: wait this long to grow a batch. Default: 2000 on a GPU, where a batch
    #: pays off; 0 for the embedded CPU flavor, where a batch saves little and the wait costs every request
    #: (requests that queue while an instance is busy are still batched)
    queue_delay_us: int | None = None
    #: python steps: per-request work, a batch saves nothing, so no waiting
    python_queue_delay_us: int = 0
    intra_op_threads: int = 2
    run_batch: int = 1  # embedded flavor: rows per onnxruntime run (0: the whole dynamic batch); see onnx_runner.py
    device: str = "gpu"  # for onnxruntime / tensorrt flavors: KIND_GPU (or cpu for onnxruntime)
    #: model_warmup on every composing model (a synthetic scan and report, serving/warmup.py): ready = warm
    warmup: bool = True
    #: openvino flavors: OpenVINO's PERFORMANCE_HINT (LATENCY: one stream per instance, what Triton's one request at a time needs)
    performance_hint: str = "LATENCY"
    #: openvino flavor: where compiled models are cached (relative to each model's folder, or absolute; a
    #: read-only repository needs an absolute writable one)
    ov_cache_dir: str = "ov_cache"

    def network_queue_delay_us(self) -> int:
        if self.queue_delay_us is not None:
            return self.queue_delay_us
        return 0 if self.flavor in CPU_FLAVORS else 2000


#: the openvino flavor's model.py (the same three lines for every graph: the runner does the work)
OPENVINO_MODEL_PY = '''"""{model} (openvino flavor, written by `bonescan repo build`): runs model.onnx with the OpenVINO
runtime inside Triton's python backend; the runner is bonescan/serving/openvino_runner.py.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the bonescan runtime copied here by `bonescan repo build`

from bonescan.serving.openvino_runner import OpenVinoRunnerModel  # noqa: E402


class TritonPythonModel(OpenVinoRunnerModel):
    pass
'''


def templates() -> Path:
    return Path(str(resources.files("bonescan.model_repository")))


def _dims(d: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(x) for x in d) + " ]"


def tensor_block(kind: str, specs: tuple[C.TensorSpec, ...], overrides: dict[str, tuple[int, ...]] | None = None) -> str:
    overrides = overrides or {}
    rows = []
    for s in specs:
        dims = overrides.get(s.name, s.dims)
        optional = " optional: true" if s.optional else ""
        rows.append(f'  {{ name: "{s.name}" data_type: {s.config_dtype} dims: {_dims(dims)}{optional} }}')
    return f"{kind} [\n" + ",\n".join(rows) + "\n]"


def _render(model: str, values: dict[str, Any]) -> str:
    text = (templates() / model / "config.pbtxt.in").read_text(encoding="utf-8")
    out = string.Template(text).substitute({k: str(v) for k, v in values.items()})
    return "\n".join(line for line in out.splitlines() if line.strip() != "") + "\n"


def _copy_runtime(dest: Path) -> None:
    src_root = Path(str(resources.files("bonescan")))
    for rel in RUNTIME_MODULES:
        target = dest / "bonescan" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src_root / rel, target)


def parameters_block(params: dict[str, Any]) -> str:
    """A config's ``parameters`` (string values), empty when there are none."""
    if not params:
        return ""
    rows = [f'{{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()]
    return "parameters [ " + ", ".join(rows) + " ]"


def _python_model(out: Path, spec: C.ModelSpec, opts: RepoOptions, extra_files: dict[str, Path] | None = None,
                  overrides: dict[str, tuple[int, ...]] | None = None, params: dict[str, Any] | None = None) -> None:
    model = spec.name
    d = out / model
    (d / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy(templates() / model / "1" / "model.py", d / "1" / "model.py")
    _copy_runtime(d / "1")
    for name, src in (extra_files or {}).items():
        if name in OPTIONAL_MODEL_FILES and not src.is_file():
            continue
        shutil.copy(src, d / "1" / name)
    cfg = _render(model, {
        "max_batch_size": opts.max_batch_size,
        "inputs": tensor_block("input", spec.inputs, overrides),
        "outputs": tensor_block("output", spec.outputs, overrides),
        "python_queue_delay_us": opts.python_queue_delay_us,
        "python_instances": opts.python_instances,
        "parameters": parameters_block(params or {}),
    })
    (d / "config.pbtxt").write_text(cfg, encoding="utf-8")


def _network_model(out: Path, graph: C.GraphSpec, opts: RepoOptions, src_dir: Path,
                   overrides: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """text_encoder / segmenter / segmenter_unet in the chosen flavor (the graph's name is its model's)."""
    model, inputs, outputs = graph.name, graph.inputs, graph.outputs
    d = out / model
    (d / "1").mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {}
    params = ""
    optimization = ""
    if opts.flavor == "embedded":
        runtime = 'backend: "python"'
        shutil.copy(src_dir / graph.onnx_file, d / "1" / "model.onnx")
        shutil.copy(templates() / model / "1" / "model.py", d / "1" / "model.py")
        _copy_runtime(d / "1")
        kind = "KIND_CPU"
        params = (f'parameters [ {{ key: "intra_op_threads" value: {{ string_value: "{opts.intra_op_threads}" }} }}, '
                  f'{{ key: "run_batch" value: {{ string_value: "{opts.run_batch}" }} }} ]')
    elif opts.flavor == "openvino":
        runtime = 'backend: "python"'
        shutil.copy(src_dir / graph.onnx_file, d / "1" / "model.onnx")
        (d / "1" / "model.py").write_text(OPENVINO_MODEL_PY.format(model=model), encoding="utf-8")
        _copy_runtime(d / "1")
        kind = "KIND_CPU"
        params = parameters_block({"inference_num_threads": opts.intra_op_threads, "performance_hint": opts.performance_hint,
                                   "inference_precision": "f32", "cache_dir": opts.ov_cache_dir, "run_batch": opts.run_batch})
    elif opts.flavor == "openvino-ngc":
        runtime = 'backend: "openvino"\ndefault_model_filename: "model.onnx"'
        shutil.copy(src_dir / graph.onnx_file, d / "1" / "model.onnx")
        kind = "KIND_CPU"
        params = parameters_block({"PERFORMANCE_HINT": opts.performance_hint, "INFERENCE_NUM_THREADS": opts.intra_op_threads})
    elif opts.flavor == "onnxruntime":
        runtime = 'platform: "onnxruntime_onnx"'
        shutil.copy(src_dir / graph.onnx_file, d / "1" / "model.onnx")
        kind = "KIND_GPU" if opts.device == "gpu" else "KIND_CPU"
    else:
        from bonescan.export.trt import check_engine_version

        plan = src_dir / f"{graph.export_name}.plan"
        if not plan.is_file():
            raise BonescanError(f"{plan}: missing; build engines with `bonescan export trt` first")
        info = check_engine_version(plan)
        engine_batch = info["profile"][inputs[0].name]["max"][0]
        if engine_batch < opts.max_batch_size:
            raise BonescanError(f"{plan}: the engine's profile allows batch <= {engine_batch}, "
                                f"but max_batch_size is {opts.max_batch_size}; rebuild with --max-batch {opts.max_batch_size}")
        runtime = 'platform: "tensorrt_plan"'
        shutil.copy(plan, d / "1" / "model.plan")
        shutil.copy(plan.with_name(plan.name + ".json"), d / "1" / "model.plan.json")
        kind = "KIND_GPU"
        optimization = "optimization { cuda { graphs: true } }"
    cfg = _render(model, {
        "flavor": opts.flavor,
        "flavor_note": FLAVOR_NOTES[opts.flavor],
        "runtime": runtime,
        "max_batch_size": opts.max_batch_size,
        "inputs": tensor_block("input", inputs, overrides),
        "outputs": tensor_block("output", outputs, overrides),
        "queue_delay_us": opts.network_queue_delay_us(),
        "instance_kind": kind,
        "instances": opts.instances,
        "parameters": params,
        "optimization": optimization,
    })
    (d / "config.pbtxt").write_text(cfg, encoding="utf-8")
    return info


def ensemble_config(chain: C.EnsembleSpec, max_batch_size: int, parameters: dict[str, str] | None = None) -> str:
    """An ensemble's config.pbtxt, generated from its chain in the contract (no template)."""
    lines = [
        f"# {chain.name}: {chain.doc}. {', '.join(t.name for t in chain.inputs)} -> {', '.join(t.name for t in chain.outputs)}.",
        f"#   {' -> '.join(chain.models)}",
        f"#   one chain: {chain.models[0]} checks every input first, so a refused request never has another step in flight.",
        "# Generated from bonescan.contract.ENSEMBLES by `bonescan repo build`.",
        f'name: "{chain.name}"',
        'platform: "ensemble"',
        f"max_batch_size: {max_batch_size}",
        tensor_block("input", chain.inputs),
        tensor_block("output", chain.outputs),
        "ensemble_scheduling {",
        "  step [",
    ]
    steps = []
    for s in chain.steps:
        rows = ["    {", f'      model_name: "{s.model.name}"', "      model_version: -1"]
        rows += [f'      input_map {{ key: "{k}" value: "{v}" }}' for k, v in s.input_map]
        rows += [f'      output_map {{ key: "{k}" value: "{v}" }}' for k, v in s.output_map]
        steps.append("\n".join(rows + ["    }"]))
    lines += [",\n".join(steps), "  ]", "}"]
    lines += [f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in (parameters or {}).items()]
    return "\n".join(lines) + "\n"


def _ensemble(out: Path, chain: C.EnsembleSpec, opts: RepoOptions, desc: dict[str, Any]) -> None:
    d = out / chain.name
    (d / "1").mkdir(parents=True, exist_ok=True)  # ensembles need an (empty) version folder
    params = {
        "bonescan_contract_version": str(C.CONTRACT_VERSION),
        "bonescan_model_sha256": desc["checkpoint"]["sha256"][:16],
        "bonescan_flavor": opts.flavor,
    }
    (d / "config.pbtxt").write_text(ensemble_config(chain, opts.max_batch_size, params), encoding="utf-8")


def failsafe_parameters(desc: dict[str, Any]) -> dict[str, str]:
    """The fail-safe's calibrated thresholds (model.json's ``failsafe.settings``) as postprocess parameters."""
    from bonescan.failsafe import FailSafeSettings

    settings = FailSafeSettings.from_dict((desc.get("failsafe") or {}).get("settings"))
    return {f"failsafe_{k}": str(v).lower() if isinstance(v, bool) else str(v) for k, v in settings.to_dict().items()}


def _chain(out: Path, chain: C.EnsembleSpec, opts: RepoOptions, src: Path, desc: dict[str, Any],
           overrides: dict[str, tuple[int, ...]], models: list[str], engines: dict[str, Any], warmup=None) -> None:
    """Every model of a chain not built yet (graphs from ``src``), then the ensemble itself; with
    ``warmup`` (serving.warmup.WarmupData) each model's config gets its model_warmup."""
    from bonescan.serving.warmup import add_warmup

    for s in chain.steps:
        if s.model.name in models:
            continue
        if isinstance(s.model, C.GraphSpec):
            engines[s.model.name] = _network_model(out, s.model, opts, src, overrides)
        else:
            params = failsafe_parameters(desc) if s.model.name == C.POSTPROCESS_MODEL else None
            _python_model(out, s.model, opts, {n: src / f for n, f in PYTHON_MODEL_FILES.get(s.model.name, {}).items()},
                          overrides, params)
        if warmup is not None:
            add_warmup(out / s.model.name, s.model, warmup, overrides)
        models.append(s.model.name)
    _ensemble(out, chain, opts, desc)
    models.append(chain.name)


def build_repository(src: str | Path, out: str | Path, opts: RepoOptions, baseline: str | Path | None = None) -> dict[str, Any]:
    """src: an ONNX export folder (embedded / onnxruntime) or a TensorRT engine folder (tensorrt) of
    the dual-path model; baseline: the same for the U-Net (adds segmenter_unet + bonescan_unet)."""
    from bonescan.export.onnx_export import read_description

    if opts.flavor not in FLAVORS:
        raise BonescanError(f"--flavor must be one of {FLAVORS}")
    if opts.max_batch_size < 1:
        raise BonescanError("--max-batch-size must be at least 1")
    src, out = Path(src), Path(out)
    desc = read_description(src)
    if desc["model"] != "dualpath":
        raise BonescanError(f"{src}: holds a {desc['model']} export; --from takes the dual-path model (use --baseline for the U-Net)")
    if out.exists() and any(out.iterdir()) and not (out / REPO_MANIFEST).exists():
        raise BonescanError(f"{out}: exists and is not a bonescan repository; refusing to overwrite it")
    final, out = out, out.with_name(out.name + ".partial")  # built aside, moved in place when complete
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    try:
        manifest = _build(src, out, opts, desc, baseline)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    out.rename(final)
    return manifest


def _build(src: Path, out: Path, opts: RepoOptions, desc: dict[str, Any], baseline: str | Path | None) -> dict[str, Any]:
    from bonescan.export.onnx_export import read_description

    hidden = int(desc["text_hidden"])
    # the text width and the report maps' grid are fixed per model
    overrides = {C.TEXT_FEATURES.name: (C.DYN, hidden), C.TEXT_MAP.name: (2, *desc["text_map_hw"])}
    engines: dict[str, Any] = {}
    models: list[str] = []
    warmup = None
    if opts.warmup:
        from bonescan.serving.warmup import WarmupData

        warmup = WarmupData.synthetic(src / PYTHON_MODEL_FILES[C.TOKENIZER_MODEL]["tokenizer.json"])
    _chain(out, C.ENSEMBLE_CHAIN, opts, src, desc, overrides, models, engines, warmup)
    base_desc = None
    if baseline is not None:
        base_desc = read_description(baseline)
        if base_desc["model"] != "unet":
            raise BonescanError(f"{baseline}: holds a {base_desc['model']} export; --baseline takes the U-Net")
        _chain(out, C.ENSEMBLE_UNET_CHAIN, opts, Path(baseline), base_desc, overrides, models, engines, warmup)
    manifest: dict[str, Any] = {
        "format": "bonescan-repository/1",
        "flavor": opts.flavor,
        "options": opts.__dict__,
        "models": models,
        "contract": C.spec_table(),
        "text_hidden": hidden,
        # export folders relative to the repository: a copied repository names no folder of the machine it was built on
        "dualpath": {"export": _relative_to_repo(src, out), "checkpoint": desc["checkpoint"]},
        "baseline": {"export": _relative_to_repo(Path(baseline), out), "checkpoint": base_desc["checkpoint"]}
        if baseline is not None and base_desc else None,
        "engines": {k: v for k, v in engines.items() if v},
        "python_requirements": python_requirements(opts.flavor),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / REPO_MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (out / "requirements.txt").write_text("\n".join(manifest["python_requirements"]) + "\n", encoding="utf-8")
    if opts.flavor not in PYTHON_FLAVORS:  # the NGC container's image (pinned packages, installed at build time) and launcher
        write_container_files(out)
    return manifest


def _relative_to_repo(path: Path, out: Path) -> str:
    """``path`` relative to the repository ``out`` builds (``out`` is built aside as ``NAME.partial``, same parent)."""
    final = out.with_name(out.name.removesuffix(".partial"))
    return os.path.relpath(Path(path).resolve(), final.resolve())


#: what the python steps import beyond the standard library (the embedded flavor's graphs: onnxruntime too)
RUNTIME_PACKAGES = ("numpy", "scipy", "tokenizers", "opencc")


def python_requirements(flavor: str) -> list[str]:
    """The python steps' packages, pinned: for the NGC container (GPU flavors) its pins, installed when
    the repository's image is built; for the embedded flavor, the versions of the environment that
    builds (and serves) it."""
    if flavor not in PYTHON_FLAVORS:
        return container_requirements()
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in (*RUNTIME_PACKAGES, "openvino" if flavor == "openvino" else "onnxruntime")]


def read_manifest(repo: str | Path) -> dict[str, Any]:
    p = Path(repo) / REPO_MANIFEST
    if not p.is_file():
        raise BonescanError(f"{repo}: not a repository built by `bonescan repo build` ({REPO_MANIFEST} missing)")
    return json.loads(p.read_text(encoding="utf-8"))


def parse_config(path: str | Path):
    """config.pbtxt -> Triton's ModelConfig protobuf (raises on anything Triton would not parse)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(Path(path).read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
