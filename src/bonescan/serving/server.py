"""Run the real ``tritonserver`` (2.51.0, from the nvidia-pytriton wheel) on a model repository.

The wheel ships the server binary, its libraries, the python backend and python-backend stubs for
several Python versions. To run it on our own repository (as PyTriton does internally):

1. copy ``pytriton/tritonserver`` once to a writable cache, keeping only the stub of this Python
   as ``backends/python/triton_python_backend_stub``;
2. ``LD_LIBRARY_PATH=<site-packages>/nvidia_pytriton.libs``;
3. this venv's ``bin`` first on ``PATH``: the stub locates the venv (numpy, onnxruntime,
   tokenizers, scipy) through the ``python3`` it finds there.

Model control is off (``--model-control-mode=none``): no remote load / unload.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bonescan.errors import BonescanError

NGC_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"  # Triton 2.51.0, TensorRT 10.5
#: endpoints that need the admin header (gRPC protocols / HTTP APIs of the same names)
ADMIN_ENDPOINTS = "model-repository,shared-memory,trace,logging"
ADMIN_HEADER = "bonescan-admin-key"  # the HTTP header; over gRPC Triton expects it with a prefix:
ADMIN_HEADER_GRPC = "triton-grpc-protocol-" + ADMIN_HEADER


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

    def command(self) -> list[str]:
        import secrets

        dist = triton_dist()
        if self.admin_key is None:
            self.admin_key = secrets.token_urlsafe(24)
        restricted = f"{ADMIN_ENDPOINTS}:{ADMIN_HEADER}={self.admin_key}"
        return [
            str(dist / "bin" / "tritonserver"),
            f"--model-repository={Path(self.repo).resolve()}",
            f"--backend-directory={dist / 'backends'}",
            f"--grpc-port={self.grpc_port}",
            f"--http-port={self.http_port}",
            f"--metrics-port={self.metrics_port}",
            f"--grpc-address={self.bind}",
            f"--http-address={self.bind}",
            "--model-control-mode=none",
            f"--grpc-restricted-protocol={restricted}",
            f"--http-restricted-api={restricted}",
            "--disable-auto-complete-config",
            "--strict-readiness=true",
            f"--exit-timeout-secs={self.exit_timeout}",
            f"--log-verbose={self.log_verbose}",
            "--log-info=true",
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
        out = open(self.log_file, "ab") if self.log_file else None  # noqa: SIM115 - None: the terminal
        self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, env=server_env(),
                                     start_new_session=True)
        self.wait_ready(timeout)
        return self

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
                return
            time.sleep(0.5)
        self.stop()
        raise BonescanError(f"tritonserver was not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 25) -> str:
        if self.log_file and Path(self.log_file).exists():
            return "\n".join(Path(self.log_file).read_text(errors="replace").splitlines()[-n:])
        return "(no log file)"

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
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the server and its python-backend stubs (fault injection)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def docker_command(repo: Path, grpc_port: int = 8001, http_port: int = 8000, metrics_port: int = 8002) -> str:
    """The command that serves the same repository (onnxruntime / tensorrt flavor) in the NGC container."""
    return (
        f"docker run --rm --gpus all --shm-size=1g -p {http_port}:8000 -p {grpc_port}:8001 -p {metrics_port}:8002 "
        f"-v {Path(repo).resolve()}:/models {NGC_IMAGE} "
        "bash -c 'pip install -q -r /models/requirements.txt && "
        "tritonserver --model-repository=/models --model-control-mode=none'"
    )


def serve(repo: Path, grpc_port: int, http_port: int, metrics_port: int, log_file: Path | None = None,
          admin_key_file: Path | None = None, bind: str = "0.0.0.0") -> int:
    """Foreground server for `bonescan serve`: ready message, then wait for Ctrl-C / SIGTERM."""
    from bonescan.serving.repository import read_manifest

    manifest = read_manifest(repo)
    admin_key = None
    if admin_key_file is not None:
        admin_key = Path(admin_key_file).read_text().strip()
        if len(admin_key) < 16:
            raise BonescanError(f"{admin_key_file}: the admin key must have at least 16 characters")
    server = TritonServer(Path(repo), grpc_port, http_port, metrics_port, log_file=log_file, admin_key=admin_key, bind=bind)
    stop = {"now": False}

    def _handler(signum, frame):  # noqa: ARG001
        stop["now"] = True

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    print(f"starting tritonserver on {repo} ({manifest['flavor']} flavor) ...", flush=True)
    server.start()
    print(f"ready: gRPC localhost:{grpc_port}  HTTP localhost:{http_port}  metrics localhost:{metrics_port}/metrics", flush=True)
    print(f"models: {', '.join(manifest['models'])}", flush=True)
    print(f"model control: off; {ADMIN_ENDPOINTS} endpoints need the header {ADMIN_HEADER_GRPC} (gRPC) / {ADMIN_HEADER} (HTTP) "
          f"({'from ' + str(admin_key_file) if admin_key_file else 'no key given: closed'})", flush=True)
    if log_file:
        print(f"server log: {log_file}", flush=True)
    print("same repository on a GPU (onnxruntime / tensorrt flavor), in the NGC container:\n  " + docker_command(repo, grpc_port, http_port, metrics_port), flush=True)
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
