"""How this project starts tritonserver, wherever it does: the restrictions, defined once.

Every tritonserver the project starts carries :func:`restriction_args`: model control off (no remote
load / unload), the model-repository, shared-memory, trace and logging endpoints behind a key, the
configs used as generated (no auto-completion), strict readiness. Three places start one:

* :class:`bonescan.serving.server.TritonServer`: ``bonescan serve``, the tests and the benchmarks on the CPU;
* the launcher ``tritonserver.sh`` that ``bonescan repo build`` writes into a repository of a GPU flavor:
  the entrypoint of the NGC container image that the repository's ``Dockerfile`` builds;
* ``benchmarks/gpu_benchmark.sh``, which starts its servers through that launcher.

The image installs the python steps' packages, pinned (``ngc_requirements.txt``), when it is built:
a container start installs nothing and needs no network (an air-gapped host gets the image with
``docker save`` / ``docker load``).
"""

from __future__ import annotations

import re
import shlex
from importlib import resources
from pathlib import Path

NGC_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"  # Triton 2.51.0, TensorRT 10.5, Python 3.10
#: the image a repository's Dockerfile builds: the NGC image + the python steps' pinned packages + the launcher
IMAGE = "bonescan-triton:" + NGC_IMAGE.rsplit(":", 1)[1]
#: endpoints that need the admin header (gRPC protocols / HTTP APIs of the same names)
ADMIN_ENDPOINTS = "model-repository,shared-memory,trace,logging"
ADMIN_HEADER = "bonescan-admin-key"  # the HTTP header; over gRPC Triton expects it with a prefix:
ADMIN_HEADER_GRPC = "triton-grpc-protocol-" + ADMIN_HEADER
MIN_ADMIN_KEY_CHARS = 16
SECRETS = "/run/secrets"  # where the container sees the files it is given
KEY_FILE_IN_CONTAINER = f"{SECRETS}/bonescan-admin-key"
LAUNCHER = "tritonserver.sh"
DOCKERFILE = "Dockerfile"
REQUIREMENTS_FILE = "ngc_requirements.txt"

#: the flags :func:`restriction_args` sets, and those that would undo them: neither ``bonescan serve
#: -- FLAGS`` nor the launcher passes them on (an abbreviation neither: tritonserver's getopt_long
#: reads ``--model-control=`` as ``--model-control-mode=``)
RESTRICTION_FLAGS = {
    "--model-control-mode": "model control stays off (no remote load / unload)",
    "--load-model": "model control stays off (no remote load / unload)",
    "--repository-poll-secs": "model control stays off (no remote load / unload)",
    "--grpc-restricted-protocol": "the admin endpoints stay restricted; give the key with --admin-key-file",
    "--http-restricted-api": "the admin endpoints stay restricted; give the key with --admin-key-file",
    "--disable-auto-complete-config": "the configs are served as repo build generated them",
    "--strict-readiness": "the server is ready only when every model is",
    "--allow-sagemaker": "it opens an endpoint the admin key does not guard",
    "--allow-vertex-ai": "it opens an endpoint the admin key does not guard",
}


def restriction_args(key: str) -> list[str]:
    """The restrictions every tritonserver of this project is started with; ``key`` opens the admin endpoints."""
    restricted = f"{ADMIN_ENDPOINTS}:{ADMIN_HEADER}={key}"
    return ["--model-control-mode=none", f"--grpc-restricted-protocol={restricted}", f"--http-restricted-api={restricted}",
            "--disable-auto-complete-config", "--strict-readiness=true"]


def missing_restrictions(argv: list[str]) -> list[str]:
    """The restrictions a tritonserver command line lacks, or overrides later on (any non-empty key counts);
    flags that undo one (e.g. ``--load-model``) are named too. Empty: it carries them all."""
    def name(arg: str) -> str:
        return arg.split("=", 1)[0]

    missing = []
    for want in restriction_args("KEY"):
        given = [a for a in argv if name(a) == name(want)]
        pattern = re.escape(want).replace("KEY", ".+")
        if not given or not re.fullmatch(pattern, given[-1]):
            missing.append(want.replace("=KEY", "=<key>"))
    set_here = {name(w) for w in restriction_args("KEY")}
    missing += [a for a in argv if name(a) in RESTRICTION_FLAGS and name(a) not in set_here]
    return missing


def container_requirements() -> list[str]:
    """The python steps' packages in the NGC container, pinned (``ngc_requirements.txt``)."""
    text = (resources.files("bonescan.serving") / REQUIREMENTS_FILE).read_text(encoding="utf-8")
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]


def launcher_script() -> str:
    """``tritonserver.sh``: tritonserver on the repository it sits in (or ``$BONESCAN_REPO``) with
    :func:`restriction_args`; the key from ``/run/secrets/bonescan-admin-key`` (mounted read-only),
    else a random one nobody knows (admin endpoints closed). Further flags are passed on unless they
    would undo a restriction."""
    args = restriction_args("$KEY")
    for a in args:  # each is double-quoted below: nothing in it may expand but $KEY
        assert not set(a.replace("$KEY", "")) & set('"$`\\'), a
    refused = " ".join(RESTRICTION_FLAGS) + " --model-repository --model-store"
    quoted = " ".join(f'"{a}"' for a in args)
    return f"""#!/usr/bin/env bash
# tritonserver with the restrictions of `bonescan serve`: the entrypoint of the NGC container image that
# this repository's Dockerfile builds, and how benchmarks/gpu_benchmark.sh starts its servers.
# Generated by `bonescan repo build` from bonescan.serving.launch (edit that, not this file).
#
#   model control off; the {ADMIN_ENDPOINTS} endpoints need the header
#   {ADMIN_HEADER} (gRPC: {ADMIN_HEADER_GRPC}) with the key in {KEY_FILE_IN_CONTAINER}
#   (mount it read-only), else a random key nobody knows: those endpoints closed.
#   Further tritonserver flags (--flag=value) are passed on, except those that would undo this.
set -euo pipefail
export LC_ALL=C
REPO=${{BONESCAN_REPO:-$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)}}
if [ ! -f "$REPO/bonescan_repo.json" ]; then
  echo "bonescan: no model repository at $REPO: mount the one \\`bonescan repo build\\` wrote (-v REPO:/models:ro)" >&2
  exit 2
fi
KEY_FILE=${{BONESCAN_ADMIN_KEY_FILE:-{KEY_FILE_IN_CONTAINER}}}
if [ -f "$KEY_FILE" ]; then
  KEY=$(cat "$KEY_FILE")
  KEY=${{KEY#"${{KEY%%[![:space:]]*}}"}}
  KEY=${{KEY%"${{KEY##*[![:space:]]}}"}}
  if [ ${{#KEY}} -lt {MIN_ADMIN_KEY_CHARS} ] || [[ ! $KEY =~ ^[!-~]+$ ]] || [[ $KEY == *[,:=]* ]]; then
    echo "bonescan: $KEY_FILE: the admin key must have at least {MIN_ADMIN_KEY_CHARS} printable ASCII characters, without spaces, ',', ':' or '='" >&2
    exit 2
  fi
else
  KEY=$(head -c 48 /dev/urandom | base64 | tr -dc A-Za-z0-9)
fi
for arg in "$@"; do
  name=${{arg%%=*}}
  if [[ $name != --?* ]]; then
    echo "bonescan: tritonserver flag '$arg': write tritonserver flags as --flag=value" >&2
    exit 2
  fi
  for flag in {refused}; do
    if [[ $flag == "$name"* ]]; then
      echo "bonescan: tritonserver flag $name is not passed on: it would undo the restrictions (this launcher sets $flag)" >&2
      exit 2
    fi
  done
done
exec tritonserver --model-repository="$REPO" {quoted} "$@"
"""


def dockerfile() -> str:
    """The NGC Triton image with the python steps' packages pinned and installed at build time, the
    launcher as its entrypoint; the repository itself is mounted at run time (``-v REPO:/models:ro``)."""
    pins = container_requirements()
    modules = {"scipy": "scipy.ndimage"}
    imports = ", ".join(modules.get(p.split("==")[0], p.split("==")[0]) for p in pins)
    return f"""# The NGC Triton container for a bonescan model repository. Generated by `bonescan repo build`
# (bonescan.serving.launch): the python steps' packages are pinned and installed here, when the image
# is built, so a container start installs nothing and needs no network. From the repository folder:
#   docker build -t {IMAGE} REPO
#   docker run --rm --gpus all --shm-size=1g -p 8000:8000 -p 8001:8001 -p 8002:8002 -v $PWD/REPO:/models:ro {IMAGE}
# (an air-gapped host: `docker save {IMAGE} | gzip > bonescan-triton.tar.gz` where the image was built,
# `docker load < bonescan-triton.tar.gz` there)
FROM {NGC_IMAGE}
RUN python3 -m pip install --no-cache-dir --no-deps {" ".join(pins)} \\
 && python3 -c "import {imports}"
COPY {LAUNCHER} /opt/bonescan/{LAUNCHER}
ENV BONESCAN_REPO=/models
ENTRYPOINT ["bash", "/opt/bonescan/{LAUNCHER}"]
"""


#: the build context is the repository: send the launcher only, not the models (they are mounted)
DOCKERIGNORE = f"*\n!{LAUNCHER}\n"


def write_container_files(repo: Path) -> None:
    """The Dockerfile, its .dockerignore and the launcher, into a repository of a GPU flavor."""
    (repo / DOCKERFILE).write_text(dockerfile(), encoding="utf-8")
    (repo / ".dockerignore").write_text(DOCKERIGNORE, encoding="utf-8")
    (repo / LAUNCHER).write_text(launcher_script(), encoding="utf-8")
    (repo / LAUNCHER).chmod(0o755)


def docker_build_line(repo: str) -> str:
    return f"docker build -t {IMAGE} {repo}"


def quote(path: str) -> str:
    """A path for a printed shell command (``$PWD/...`` stays expandable)."""
    return path if path.startswith("$PWD/") and re.fullmatch(r"[\w$/.-]+", path) else shlex.quote(path)
