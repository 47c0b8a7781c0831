"""Run the real ``tritonserver`` (2.51.0, from the nvidia-pytriton wheel) on a model repository.

The wheel ships the server binary, its libraries, the python backend and python-backend stubs for
several Python versions. To run it on our own repository (as PyTriton does internally):

1. copy ``pytriton/tritonserver`` once to a writable cache, keeping only the stub of this Python
   as ``backends/python/triton_python_backend_stub``;
2. ``LD_LIBRARY_PATH=<site-packages>/nvidia_pytriton.libs``;
3. this venv's ``bin`` first on ``PATH``: the stub locates the venv (numpy, onnxruntime,
   tokenizers, scipy) through the ``python3`` it finds there.

Model control is off (``--model-control-mode=none``): no remote load / unload. The admin endpoints
need a key that never appears on a command line (``argv_key.c``, an LD_PRELOAD shim built here).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from bonescan.errors import BonescanError

#: the restrictions every tritonserver of the project carries, and the names they go by, are defined once
#: in bonescan.serving.launch (also used by the NGC container's launcher and benchmarks/gpu_benchmark.sh)
from bonescan.serving.launch import (  # noqa: F401 - some re-exported: the names bonescan serve's users know
    ADMIN_ENDPOINTS,
    ADMIN_HEADER,
    ADMIN_HEADER_GRPC,
    IMAGE,
    KEY_FILE_IN_CONTAINER,
    LAUNCHER,
    MIN_ADMIN_KEY_CHARS,
    NGC_IMAGE,
    RESTRICTION_FLAGS,
    SECRETS,
    docker_build_line,
    quote,
    restriction_args,
)

#: environment variables the shim reads in the child (and unsets before tritonserver's main())
KEY_VAR, PLACEHOLDER_VAR = "BONESCAN_ADMIN_KEY", "BONESCAN_ADMIN_KEY_PLACEHOLDER"
SHIM_SOURCE = Path(__file__).with_name("argv_key.c")

#: tritonserver flags ``bonescan serve`` does not pass through (after ``--``), and why. tritonserver
#: reads its flags with getopt_long, which takes any unambiguous abbreviation (``--model-control=``
#: is ``--model-control-mode=``), so a flag is refused when it is a prefix of one of these.
REFUSED_FLAGS = {
    **RESTRICTION_FLAGS,
    "--model-repository": "the repository is --repo",
    "--model-store": "the repository is --repo",
    "--backend-directory": "the backends are those of the copied tritonserver",
    "--allow-http": "bonescan serve checks readiness over HTTP; keep it local with --bind 127.0.0.1",
    "--grpc-port": "use --grpc-port",
    "--http-port": "use --http-port",
    "--metrics-port": "use --metrics-port",
    "--grpc-address": "use --bind",
    "--http-address": "use --bind",
    "--log-verbose": "use --log-verbose",
    "--log-file": "use --log-file",
    "--grpc-use-ssl": "use --tls-cert / --tls-key (and --tls-root for mutual TLS)",
    "--grpc-use-ssl-mutual": "use --tls-root",
    "--grpc-server-cert": "use --tls-cert",
    "--grpc-server-key": "use --tls-key",
    "--grpc-root-cert": "use --tls-root",
}

#: tritonserver's messages about the GPU it looks for at start: expected on a machine without one
GPU_NOISE = re.compile(r"CudaDriverHelper has not been initialized|CUDA driver version is insufficient|"
                       r"failed to allocate pinned system memory")
GPU_NOISE_WHAT = ("tritonserver's CUDA messages (CudaDriverHelper has not been initialized, unable to create stream, "
                  "no pinned memory)")
GPU_NOISE_WHY = "expected on a machine without an NVIDIA GPU: every model runs on the CPU"
#: the terminal's one line in place of those messages
GPU_NOISE_NOTE = f"bonescan: {GPU_NOISE_WHAT} are {GPU_NOISE_WHY}"


def _site_packages() -> Path:
    import pytriton

    return Path(pytriton.__file__).resolve().parent.parent


def cache_dir() -> Path:
    base = os.environ.get("BONESCAN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "bonescan")
    return Path(base)


def triton_dist() -> Path:
    """A runnable copy of the wheel's tritonserver folder (made once per pytriton version and Python)."""
    try:
        import pytriton
    except ImportError:
        raise BonescanError("nvidia-pytriton is not installed (it provides the tritonserver binary); run `make install`") from None
    version = getattr(pytriton, "__version__", "unknown")
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    dest = cache_dir() / f"tritonserver-pytriton{version}-py{py}"
    binary = dest / "bin" / "tritonserver"
    stub = dest / "backends" / "python" / "triton_python_backend_stub"
    if binary.is_file() and stub.is_file():
        return dest
    src = _site_packages() / "pytriton" / "tritonserver"
    src_stub = src / "python_backend_stubs" / py / "triton_python_backend_stub"
    if not src_stub.is_file():
        raise BonescanError(f"the nvidia-pytriton wheel has no python-backend stub for Python {py}")
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("python_backend_stubs"), symlinks=True)
    shutil.copy2(src_stub, tmp / "backends" / "python" / "triton_python_backend_stub")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def key_shim() -> Path:
    """The LD_PRELOAD shim that puts the admin key into tritonserver's argv (``argv_key.c``), built
    once with the system C compiler into the cache folder of the copied tritonserver."""
    source = SHIM_SOURCE.read_bytes()
    dest = triton_dist() / f"bonescan_argv_key-{hashlib.sha256(source).hexdigest()[:12]}.so"
    if dest.is_file():
        return dest
    cc = next((c for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c and shutil.which(c)), None)
    if cc is None:
        raise BonescanError("no C compiler found: bonescan serve builds a tiny LD_PRELOAD shim with one so that the admin "
                            "key (given with --admin-key-file, or the random one that keeps the admin endpoints closed) "
                            "never appears on tritonserver's command line, where any local user could read it with ps. "
                            "Install one: apt-get install gcc")
    tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
    done = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(SHIM_SOURCE)], capture_output=True, text=True)
    if done.returncode != 0:
        raise BonescanError(f"{cc} could not build {SHIM_SOURCE.name}:\n{done.stderr.strip()}")
    tmp.rename(dest)
    return dest


def read_admin_key(path: Path) -> str:
    """The key in ``path`` (surrounding whitespace dropped); errors name the file and the problem, never the key."""
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise BonescanError(f"{path}: admin key file does not exist") from None
    except UnicodeDecodeError:
        raise BonescanError(f"{path}: the admin key must be printable ASCII") from None
    if len(key) < MIN_ADMIN_KEY_CHARS:
        raise BonescanError(f"{path}: the admin key must have at least {MIN_ADMIN_KEY_CHARS} characters")
    if not all(33 <= ord(c) <= 126 for c in key) or set(key) & set(",:="):
        raise BonescanError(f"{path}: the admin key must be printable ASCII without spaces, ',', ':' or '=' "
                            "(it is sent as a header value)")
    return key


def check_passthrough(args: list[str]) -> list[str]:
    """tritonserver flags given after ``--``: each must be ``--flag`` or ``--flag=value`` and must not
    undo a restriction of ``bonescan serve`` (REFUSED_FLAGS, abbreviations included)."""
    for arg in args:
        if not arg.startswith("--") or arg == "--":
            raise BonescanError(f"tritonserver flag {arg!r}: write tritonserver flags as --flag=value after `--`")
        name = arg.split("=", 1)[0]
        refused = [f for f in REFUSED_FLAGS if f.startswith(name)]
        if refused:
            raise BonescanError(f"tritonserver flag {name} is not passed through: {REFUSED_FLAGS[refused[0]]}"
                                + (f" (tritonserver would read it as {refused[0]})" if name != refused[0] else ""))
    return list(args)


def tls_args(cert: Path | None, key: Path | None, root: Path | None = None) -> list[str]:
    """tritonserver's gRPC TLS flags: server certificate and key; with a root (CA) certificate,
    mutual TLS (clients must present a certificate it signed)."""
    if cert is None and key is None and root is None:
        return []
    if cert is None or key is None:
        raise BonescanError("TLS needs both --tls-cert and --tls-key")
    for flag, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-root", root)):
        if path is not None and not Path(path).is_file():
            raise BonescanError(f"{flag} {path}: file does not exist")
    args = ["--grpc-use-ssl=true", f"--grpc-server-cert={Path(cert).resolve()}", f"--grpc-server-key={Path(key).resolve()}"]
    if root is not None:
        args += [f"--grpc-root-cert={Path(root).resolve()}", "--grpc-use-ssl-mutual=true"]
    return args


def has_gpu() -> bool:
    return Path("/dev/nvidiactl").exists()


def log_file_note(log_file: Path) -> str | None:
    """With a log file, its CUDA messages stay in it; the terminal gets one line saying they are expected."""
    if has_gpu() or not Path(log_file).is_file() or not GPU_NOISE.search(Path(log_file).read_text(errors="replace")):
        return None
    return f"note: {log_file} holds {GPU_NOISE_WHAT}; they are {GPU_NOISE_WHY}"


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    libs = _site_packages() / "nvidia_pytriton.libs"
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def port_free(port: int, host: str = "0.0.0.0") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def free_ports(n: int) -> list[int]:
    """n distinct currently-free TCP ports."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


@dataclass
class TritonServer:
    """A tritonserver process on a repository. Use as a context manager, or start() / stop()."""

    repo: Path
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    log_file: Path | None = None
    log_verbose: int = 0
    exit_timeout: int = 15
    extra_args: list[str] = field(default_factory=list)
    admin_key: str | None = None  # None: a random key nobody knows, i.e. admin endpoints closed
    bind: str = "0.0.0.0"
    proc: subprocess.Popen | None = None
    #: with no log file: where tritonserver's output goes, without the CUDA messages of a machine
    #: that has no GPU (None: sys.stdout)
    terminal: TextIO | None = None
    placeholder: str = field(default_factory=lambda: "BONESCAN-ADMIN-KEY-PLACEHOLDER-" + secrets.token_hex(8))
    #: the python backend's /dev/shm regions this server mapped (removed after a SIGKILL)
    shm_regions: list[Path] = field(default_factory=list, repr=False)
    #: environment variables of this server alone, over os.environ (e.g. one $BONESCAN_REQUEST_LOG per replica)
    environment: dict[str, str] = field(default_factory=dict)
    _tail: deque = field(default_factory=lambda: deque(maxlen=25), repr=False)

    def command(self) -> list[str]:
        """tritonserver's argv: the admin key is a placeholder here (the shim replaces it in the child)."""
        dist = triton_dist()
        if self.admin_key is None:
            self.admin_key = secrets.token_urlsafe(24)
        return [
            str(dist / "bin" / "tritonserver"),
            f"--model-repository={Path(self.repo).resolve()}",
            f"--backend-directory={dist / 'backends'}",
            f"--grpc-port={self.grpc_port}",
            f"--http-port={self.http_port}",
            f"--metrics-port={self.metrics_port}",
            f"--grpc-address={self.bind}",
            f"--http-address={self.bind}",
            *restriction_args(self.placeholder),
            f"--exit-timeout-secs={self.exit_timeout}",
            f"--log-verbose={self.log_verbose}",
            "--log-info=true",
            # Triton 2.51 has no JSON log format (default | ISO8601): its own lines get full UTC timestamps; the
            # python steps write one JSON line per request themselves (serving/telemetry.py)
            "--log-format=ISO8601",
            "--allow-gpu-metrics=false",
            f"--cache-directory={dist / 'caches'}",
            *self.extra_args,
        ]

    @property
    def grpc_url(self) -> str:
        return f"localhost:{self.grpc_port}"

    def start(self, timeout: float = 180.0) -> TritonServer:
        for name, port in (("gRPC", self.grpc_port), ("HTTP", self.http_port), ("metrics", self.metrics_port)):
            if not port_free(port):
                raise BonescanError(f"the {name} port {port} is already in use (another tritonserver?); choose another with --{name.lower()}-port")
        if not Path(self.repo).is_dir():
            raise BonescanError(f"{self.repo}: model repository not found")
        command = self.command()
        env = {**server_env(), **self.environment}
        env["LD_PRELOAD"] = " ".join(p for p in (str(key_shim()), env.get("LD_PRELOAD", "")) if p)
        env[KEY_VAR], env[PLACEHOLDER_VAR] = str(self.admin_key), self.placeholder
        out = open(self.log_file, "ab") if self.log_file else subprocess.PIPE  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        if self.log_file is None:
            threading.Thread(target=self._relay, daemon=True, name="tritonserver-output").start()
        self.wait_ready(timeout)
        self.check_admin_key()
        return self

    def _relay(self) -> None:
        """tritonserver's output -> the terminal, without the CUDA messages of a machine with no GPU
        (one line says why they are missing)."""
        assert self.proc is not None and self.proc.stdout is not None
        term = self.terminal or sys.stdout
        gpu = has_gpu()
        noted = False
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace")
            self._tail.append(line.rstrip("\n"))
            if not gpu and GPU_NOISE.search(line):
                if not noted:
                    term.write(GPU_NOISE_NOTE + "\n")
                    noted = True
                continue
            term.write(line)
            term.flush()

    def check_admin_key(self) -> None:
        """The admin endpoints open with the key and stay shut to the placeholder on the command line:
        proof that the shim put the key in. Otherwise the server is stopped (never left open)."""
        import urllib.error
        import urllib.request

        def status(key: str) -> int:
            req = urllib.request.Request(f"http://localhost:{self.http_port}/v2/repository/index", data=b"{}",
                                         headers={ADMIN_HEADER: key}, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        if status(self.placeholder) == 200 or status(str(self.admin_key)) != 200:
            self.stop()
            raise BonescanError("tritonserver did not receive the admin key from the LD_PRELOAD shim; stopped it rather "
                                "than serve admin endpoints that the placeholder on its command line would open")

    def is_ready(self) -> bool:
        """HTTP /v2/health/ready (works whether or not gRPC uses TLS)."""
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://localhost:{self.http_port}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                tail = self.log_tail()
                raise BonescanError(f"tritonserver exited with code {self.proc.returncode} while starting:\n{tail}")
            if self.is_ready():
                self.shm_regions = self._mapped_shm_regions()
                return
            time.sleep(0.5)
        self.stop()
        raise BonescanError(f"tritonserver was not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 25) -> str:
        if self.log_file and Path(self.log_file).exists():
            return "\n".join(Path(self.log_file).read_text(errors="replace").splitlines()[-n:])
        return "\n".join(list(self._tail)[-n:]) or "(no output)"

    def _mapped_shm_regions(self) -> list[Path]:
        """The python backend's shared-memory regions this server has mapped (``/proc/PID/maps``):
        one per model instance, all created while the models load, so known once it is ready."""
        try:
            maps = Path(f"/proc/{self.proc.pid}/maps").read_text() if self.proc is not None else ""
        except OSError:
            return []
        return sorted({Path(line.split(maxsplit=5)[5].removesuffix(" (deleted)")) for line in maps.splitlines()
                       if "/dev/shm/triton_python_backend_shm_region" in line})

    def _remove_shm_regions(self) -> None:
        """A server that ends by SIGKILL cannot unlink its regions (a clean exit does): remove them."""
        for region in self.shm_regions:
            region.unlink(missing_ok=True)
        self.shm_regions = []

    def stop(self) -> int | None:
        """SIGINT (Triton unloads models and exits), then SIGKILL after exit_timeout + 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(self.exit_timeout + 10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            self._remove_shm_regions()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the server and its python-backend stubs (fault injection), and remove the
        shared-memory regions they can no longer remove."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            self._remove_shm_regions()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()



#: the Triton backend that runs each flavor's text_encoder / segmenter
FLAVOR_BACKENDS = {"embedded": "python", "openvino": "python", "onnxruntime": "onnxruntime", "tensorrt": "tensorrt",
                   "openvino-ngc": "openvino"}


def export_arg(manifest: dict, which: str, placeholder: str) -> str | None:
    """An export folder the repository was built from (``manifest[which]["export"]``), as a path valid
    here: the manifest records it relative to the repository; shown relative to the current folder when
    it exists on this machine, else as ``placeholder``: a copied repository names no folder of the
    machine it was built on. None: the repository has no such model."""
    entry = manifest.get(which)
    if not entry:
        return None
    recorded, repo = entry.get("export"), manifest.get("path")
    if recorded and repo and (Path(repo) / recorded).is_dir():  # an absolute (older) record joins as itself
        return quote(os.path.relpath((Path(repo) / recorded).resolve()))
    return placeholder


def docker_command(manifest: dict, grpc_port: int = 8001, http_port: int = 8000, metrics_port: int = 8002,
                   admin_key_file: Path | None = None, bind: str = "0.0.0.0", tls: list[str] | None = None) -> str:
    """How to serve the same models on a GPU in the NGC container, with the restrictions of ``bonescan
    serve``: a repository of a GPU flavor first (the embedded one runs onnxruntime inside the python
    backend on the CPU), ``docker build`` of its Dockerfile (the python steps' packages pinned and
    installed then, not at every start), then ``docker run`` mounting it read-only; the image's
    entrypoint (the repository's ``tritonserver.sh``) starts tritonserver with model control off and
    the admin endpoints restricted by a key read from a mounted file (``admin_key_file``) or made at
    random, never written on the host's command line. Lines starting with ``#`` say why.
    """
    lines = []
    if FLAVOR_BACKENDS.get(manifest.get("flavor", "")) == "python":  # served here: the container needs another flavor
        src = export_arg(manifest, "dualpath", "EXPORT")
        base = export_arg(manifest, "baseline", "EXPORT_UNET")
        lines += ["# 1. a repository of a GPU flavor (onnxruntime here; for TensorRT: engines from `bonescan export trt` "
                  "inside the container, then --flavor tensorrt --from ENGINES):",
                  f"bonescan repo build --flavor onnxruntime --from {src}" + (f" --baseline {base}" if base else "")
                  + " --out REPO_GPU"]
        context, mount, step = "REPO_GPU", "$PWD/REPO_GPU", 2
    else:
        here = Path(manifest["path"]).resolve() if manifest.get("path") else None
        context = mount = quote(str(here)) if here else "$PWD/REPO_GPU"
        step = 1
        if here is not None and not (here / "Dockerfile").is_file():
            lines.append(f"# {here} has no Dockerfile or {LAUNCHER} (an older bonescan repo build made it): build it again")
    lines += [f"# {step}. its image: the NGC Triton container with the python steps' packages pinned and installed now, at "
              "build time (REPO/Dockerfile); a container start installs nothing and needs no network (for an air-gapped "
              "host: docker save where it was built, docker load there):",
              docker_build_line(context),
              f"# {step + 1}. serve the repository in it; the image's entrypoint (REPO/{LAUNCHER}) starts tritonserver with "
              "model control off and the admin endpoints restricted:"]
    mounts = [f"-v {mount}:/models:ro"]
    if admin_key_file is not None:
        mounts.append(f"-v {quote(str(Path(admin_key_file).resolve()))}:{KEY_FILE_IN_CONTAINER}:ro")
    triton_tls = []
    for arg in tls or []:
        flag, _, value = arg.partition("=")
        if flag in ("--grpc-server-cert", "--grpc-server-key", "--grpc-root-cert"):
            inside = f"{SECRETS}/tls/{flag.removeprefix('--grpc-')}.pem"
            mounts.append(f"-v {quote(value)}:{inside}:ro")
            arg = f"{flag}={inside}"
        triton_tls.append(arg)
    publish = "" if bind == "0.0.0.0" else f"{bind}:"
    lines.append(
        f"docker run --rm --gpus all --shm-size=1g -p {publish}{http_port}:8000 -p {publish}{grpc_port}:8001 "
        f"-p {publish}{metrics_port}:8002 {' '.join(mounts)} {IMAGE}" + "".join(f" {a}" for a in triton_tls))
    lines.append("# the key stays off the host's command line, but it is on the command line of tritonserver inside the "
                 "container, which `ps` on the host also shows: on a shared host, build the LD_PRELOAD shim of "
                 "src/bonescan/serving/argv_key.c in the container and start tritonserver through it as bonescan serve does")
    return "\n".join(lines)


def check_backends(repo: Path, manifest: dict, docker: str) -> None:
    """A repository whose flavor needs a backend the wheel's tritonserver lacks (onnxruntime, tensorrt):
    say where it runs, and how, before starting a server that could only fail."""
    flavor = manifest.get("flavor", "embedded")
    backend = FLAVOR_BACKENDS.get(flavor, flavor)
    if (triton_dist() / "backends" / backend).is_dir():
        return
    here = {**manifest, "path": str(repo)}
    raise BonescanError(
        f"{repo} is a repository of the {flavor} flavor: its text_encoder / segmenter run on Triton's {backend} backend, "
        "which the tritonserver here (from the nvidia-pytriton wheel: python backend only) does not have. This flavor runs in "
        f"the NGC Triton container ({NGC_IMAGE}) on a host with an NVIDIA GPU, Docker and the NVIDIA container toolkit:\n  "
        + docker.replace("\n", "\n  ")
        + "\nOn this machine, serve a repository of the embedded flavor: bonescan repo build --flavor embedded --from "
        + f"{export_arg(here, 'dualpath', 'EXPORT')} "
        + (f"--baseline {export_arg(here, 'baseline', 'EXPORT_UNET')} " if here.get("baseline") else "")
        + "--out REPO, then bonescan serve --repo REPO")


def serve(repo: Path, grpc_port: int, http_port: int, metrics_port: int, log_file: Path | None = None,
          admin_key_file: Path | None = None, bind: str = "0.0.0.0", log_verbose: int = 0,
          tls: list[str] | None = None, triton_args: list[str] | None = None) -> int:
    """Foreground server for `bonescan serve`: ready message, then wait for Ctrl-C / SIGTERM.

    Args:
        tls: tritonserver's TLS flags (:func:`tls_args`).
        triton_args: further tritonserver flags, checked by :func:`check_passthrough`.
    """
    from bonescan.serving.repository import read_manifest

    extra = check_passthrough(triton_args or [])
    if not Path(repo).exists():
        raise BonescanError(f"{repo}: folder does not exist (build a repository with `bonescan repo build`)")
    if not Path(repo).is_dir():
        raise BonescanError(f"{repo}: not a folder (give the repository folder `bonescan repo build` wrote)")
    manifest = read_manifest(repo)
    docker = docker_command({**manifest, "path": str(repo)}, grpc_port, http_port, metrics_port, admin_key_file, bind, tls)
    check_backends(repo, manifest, docker)
    admin_key = read_admin_key(admin_key_file) if admin_key_file is not None else None
    server = TritonServer(Path(repo), grpc_port, http_port, metrics_port, log_file=log_file, admin_key=admin_key, bind=bind,
                          log_verbose=log_verbose, extra_args=[*(tls or []), *extra])
    stop = {"now": False}

    def _handler(signum, frame):  # noqa: ARG001
        stop["now"] = True

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    print(f"starting tritonserver on {repo} ({manifest['flavor']} flavor) ...", flush=True)
    server.start()
    scheme = "gRPC"
    if tls:
        scheme += " over TLS" + (" (mutual: clients need a certificate)" if any("mutual" in a for a in tls) else "")
    print(f"ready: {scheme} localhost:{grpc_port}  HTTP localhost:{http_port}  metrics localhost:{metrics_port}/metrics", flush=True)
    print(f"models: {', '.join(manifest['models'])}", flush=True)
    print(f"model control: off; {ADMIN_ENDPOINTS} endpoints need the header {ADMIN_HEADER_GRPC} (gRPC) / {ADMIN_HEADER} (HTTP) "
          f"({'key from ' + str(admin_key_file) if admin_key_file else 'no key given: closed'}; the key is not on any command line)",
          flush=True)
    if log_file:
        print(f"server log: {log_file}", flush=True)
        note = log_file_note(log_file)
        if note:
            print(note, flush=True)
    print("the same models on a GPU, in the NGC container:\n  " + docker.replace("\n", "\n  "), flush=True)
    print("Ctrl-C or SIGTERM stops it.", flush=True)
    try:
        while not stop["now"]:
            if server.proc is not None and server.proc.poll() is not None:
                print(f"tritonserver exited unexpectedly with code {server.proc.returncode}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    finally:
        print("stopping tritonserver ...", flush=True)
        code = server.stop()
        print(f"stopped (exit code {code})", flush=True)
    return 0
