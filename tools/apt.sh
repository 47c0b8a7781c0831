#!/usr/bin/env bash
# Install the Debian packages BoneScan-Triton needs, only those missing. Idempotent.
#   libpython3.11       the Triton python-backend stub links Debian's libpython3.11
#   libb64-0d           perf_analyzer (Triton's benchmark client) needs libb64.so.0d
#   fonts-wqy-microhei  a CJK font so pictures can show Chinese report text
#   gcc                 builds the LD_PRELOAD shim that keeps the admin key off tritonserver's command line
#   prometheus          ships promtool: make test checks and unit-tests deploy/prometheus's rules
#   nginx               the gRPC load balancer of `bonescan serve --replicas N` (started by bonescan with its own config, not as a service)
#   orthanc orthanc-dicomweb  a real PACS for the DICOM node's tests and demo (started with its own config, not as a service)
set -euo pipefail
PKGS=(libpython3.11 libb64-0d fonts-wqy-microhei gcc prometheus nginx orthanc orthanc-dicomweb)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "apt.sh: need root to install: ${missing[*]}" >&2; exit 1; fi
fi
echo "apt.sh: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
