#!/usr/bin/env bash
# The GPU benchmark: TensorRT FP16 / INT8 engines served by Triton on an NVIDIA GPU, the same
# tables as the CPU benchmark (`bonescan bench latency` and `bonescan bench parity`).
#
# It cannot run on the CPU machines this project is built on. Run it on a host with an NVIDIA GPU,
# Docker and the NVIDIA container toolkit, from a clone of this repository:
#
#   bash benchmarks/gpu_benchmark.sh CKPT DATA [OUT]
#
#   CKPT  a dual-path checkpoint (`bonescan train ... --config paper` or the demo's demo_out/dualpath.pt)
#   DATA  a data set with a test split (`bonescan data synth --out DATA --n 1000`)
#   OUT   results (default gpu_bench/): per precision, latency_<p>/ and parity_<p>/ (JSON + Markdown)
#
# What it does, all inside the Triton container whose TensorRT the engines are built for
# (engines only load in the TensorRT version that built them):
#   1. installs this package with the [train,gpu] extras (TensorRT 10.5 = Triton 24.10);
#   2. `bonescan export verify-gpu`: ONNX export, TensorRT lint, engines per precision, polygraphy
#      TRT-vs-onnxruntime comparison and DSC parity against PyTorch;
#   3. per precision (fp16, int8): `bonescan repo build --flavor tensorrt` from those engines, starts tritonserver
#      through the repository's launcher (tritonserver.sh: the restrictions of `bonescan serve`),
#      `bonescan bench latency --server` (concurrency 1..16, perf_analyzer, per-member times) and
#      `bonescan bench parity --server`, then stops the server.
#
# What to expect (paper configuration, U-Net width 64 + MacBERT-base): the image path is ~385 GFLOP
# per scan, so an FP16 engine on a datacenter GPU (tens of dense FP16 TFLOP/s) should answer in
# tens of milliseconds, against seconds on the 2-core CPU; FP16 DSC within 0.005 of PyTorch, INT8
# within 0.02 (the targets verify-gpu prints). The in-process PyTorch / onnxruntime rows of the
# latency table run on the container's CPU, so they are a reference, not a like-for-like ratio.
set -euo pipefail

CKPT=${1:?usage: gpu_benchmark.sh CKPT DATA [OUT]}
DATA=${2:?usage: gpu_benchmark.sh CKPT DATA [OUT]}
OUT=${3:-gpu_bench}
IMAGE=${TRITON_IMAGE:-nvcr.io/nvidia/tritonserver:24.10-py3}
PRECISIONS=${PRECISIONS:-"fp16 int8"}
MAX_BATCH=${MAX_BATCH:-8}

command -v docker >/dev/null || { echo "docker is needed (with the NVIDIA container toolkit)" >&2; exit 1; }
command -v nvidia-smi >/dev/null || { echo "no NVIDIA GPU driver here (nvidia-smi not found): this script is for a GPU host" >&2; exit 1; }
[ -f "$CKPT" ] || { echo "checkpoint not found: $CKPT" >&2; exit 1; }
[ -f "$DATA/manifest.json" ] || { echo "not a data set (no manifest.json): $DATA" >&2; exit 1; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
abs() { (cd "$(dirname "$1")" && echo "$(pwd)/$(basename "$1")"); }
CKPT_ABS=$(abs "$CKPT"); DATA_ABS=$(cd "$DATA" && pwd); OUT_ABS=$(cd "$OUT" && pwd)

# the steps that run inside the container
read -r -d '' INNER <<EOF || true
set -euo pipefail
cp -r /src /tmp/bonescan-src && pip install -q '/tmp/bonescan-src[train,serve,gpu]'
cd /out
bonescan export verify-gpu --checkpoint /ckpt.pt --data /data --work /out/verify_gpu --precisions fp32 $PRECISIONS --max-batch $MAX_BATCH
for p in $PRECISIONS; do
  # verify-gpu built the engines (with model.json and the tokenizer) into /out/verify_gpu/trt_<precision>
  bonescan repo build --from /out/verify_gpu/trt_\$p --flavor tensorrt --max-batch-size $MAX_BATCH --out /out/repo_\$p
  # the repository's launcher: tritonserver with the restrictions of bonescan serve (model control off,
  # admin endpoints behind a random key), as the NGC image built from its Dockerfile starts it
  bash /out/repo_\$p/tritonserver.sh --log-file=/out/tritonserver_\$p.log &
  server=\$!
  for _ in \$(seq 1 300); do curl -sf localhost:8000/v2/health/ready >/dev/null && break; sleep 1; done
  bonescan bench latency --checkpoint /ckpt.pt --data /data --export /out/verify_gpu/onnx --server localhost:8001 --out /out/latency_\$p
  bonescan bench parity --checkpoint /ckpt.pt --export /out/verify_gpu/onnx --data /data --server localhost:8001 --out /out/parity_\$p
  kill \$server; wait \$server || true
done
EOF

docker run --rm --gpus all --shm-size=1g \
  -v "$ROOT":/src:ro -v "$CKPT_ABS":/ckpt.pt:ro -v "$DATA_ABS":/data:ro -v "$OUT_ABS":/out \
  "$IMAGE" bash -c "$INNER"

echo "results in $OUT: verify_gpu/verify_gpu.json, latency_<precision>/latency.md, parity_<precision>/"
