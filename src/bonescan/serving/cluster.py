"""Several tritonserver replicas behind a real gRPC load balancer (Debian's nginx), on one machine.

``bonescan serve --repo REPO --replicas N`` starts N :class:`~bonescan.serving.server.TritonServer`
processes (each with the restrictions and the admin-key handling of ``bonescan serve``), listening
on free loopback ports only, and one ``nginx`` in front of them: ``grpc_pass`` to an upstream of the
replicas, started as a child process with a config generated into a run folder (``-p RUNDIR -c
nginx.conf``, ``daemon off``, its pid, logs and temp folders inside the run folder; no system
service). Clients use the balancer's address as they use one server's.

Failover, two mechanisms:

* passive (nginx itself): a replica that refuses a connection or fails before the request was sent
  is marked failed (``max_fails=1``) for ``fail_timeout`` seconds and the request goes to the next
  replica (``grpc_next_upstream error timeout``); a request already sent to a replica that dies is
  *not* re-sent by nginx (gRPC requests are POSTs, non-idempotent): the client gets UNAVAILABLE and
  the client library retries it, counted.
* active (:class:`Cluster`'s health monitor): every ``health_interval_s`` each replica's HTTP
  ``/v2/health/ready`` is asked; a replica that is not ready is written ``down`` into the config and
  nginx reloads it (SIGHUP: running requests finish on the old workers); when it is ready again it is
  written back. Open-source nginx has no active health checks of its own.

With a certificate the balancer terminates TLS (and, with a CA certificate of the clients, mutual
TLS); the replicas behind it speak plain gRPC on 127.0.0.1. The nginx config names certificate
files, never the admin key: that goes to each replica as ``bonescan serve`` gives it to one.

Fault tools for the benchmarks: :meth:`Cluster.kill` (SIGKILL a replica), :meth:`Cluster.restart`
(on the same ports), :class:`Throttle` (a slow replica: SIGSTOP / SIGCONT of its process group, as
``cpulimit`` does).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bonescan.errors import BonescanError
from bonescan.serving.server import TritonServer, free_ports, key_shim, port_free, triton_dist

#: the access log's format: only timings, addresses and status codes (a gRPC request's URI is its
#: method, e.g. /inference.GRPCInferenceService/ModelInfer; never any content)
ACCESS_FORMAT = ('$msec $status "$upstream_addr" "$upstream_status" "$upstream_trailer_grpc_status" '
                 '"$sent_trailer_grpc_status" $request_time "$upstream_response_time" $request_uri')
ACCESS_RE = re.compile(r'^(?P<t>[\d.]+) (?P<status>\d+) "(?P<addr>[^"]*)" "(?P<ustatus>[^"]*)" "(?P<ugrpc>[^"]*)" '
                       r'"(?P<grpc>[^"]*)" (?P<rt>[\d.]+) "(?P<urt>[^"]*)" (?P<uri>\S+)')


def find_nginx() -> str:
    path = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
    if path is None:
        raise BonescanError("nginx is not installed: the replicas' load balancer is Debian's nginx (grpc_pass); "
                            "apt-get install nginx (tools/apt.sh installs it)")
    return path


@dataclass(frozen=True)
class BalancerTLS:
    """The balancer's TLS: its certificate and key; with ``root``, mutual TLS (clients need a certificate it signed)."""

    cert: Path
    key: Path
    root: Path | None = None

    def check(self) -> BalancerTLS:
        for flag, path in (("--tls-cert", self.cert), ("--tls-key", self.key), ("--tls-root", self.root)):
            if path is not None and not Path(path).is_file():
                raise BonescanError(f"{flag} {path}: file does not exist")
        return BalancerTLS(Path(self.cert).resolve(), Path(self.key).resolve(),
                           Path(self.root).resolve() if self.root else None)


def _q(value: object) -> str:
    """A value in an nginx config (quoted: paths may hold spaces)."""
    text = str(value)
    if any(c in text for c in '"\\\n'):
        raise BonescanError(f"{text!r}: cannot be written into the nginx config")
    return f'"{text}"'


def nginx_config(rundir: Path, host: str, port: int, upstreams: list[tuple[str, int]], down: frozenset[int] = frozenset(),
                 tls: BalancerTLS | None = None, max_fails: int = 1, fail_timeout_s: float = 2.0,
                 request_timeout_s: float = 600.0, balance: str = "least_conn") -> str:
    """nginx.conf of the balancer: gRPC (HTTP/2) on host:port -> the upstreams; ``down``: indexes of
    upstreams the health monitor found not ready. Every file nginx writes is inside ``rundir``."""
    rundir = Path(rundir).resolve()
    user = "user nobody nogroup;\n" if os.geteuid() == 0 else ""  # workers never run as root
    servers = "\n".join(f"        server {h}:{p} max_fails={max_fails} fail_timeout={fail_timeout_s:g}s"
                        + (" down" if i in down else "") + ";" for i, (h, p) in enumerate(upstreams))
    listen = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    if tls is None:
        tls_lines = f"        listen {listen} http2;"
    else:
        tls_lines = "\n".join([
            f"        listen {listen} ssl http2;",
            f"        ssl_certificate {_q(tls.cert)};",
            f"        ssl_certificate_key {_q(tls.key)};",
            "        ssl_protocols TLSv1.2 TLSv1.3;",
            *([f"        ssl_client_certificate {_q(tls.root)};", "        ssl_verify_client on;"] if tls.root else []),
        ])
    tmp = rundir / "tmp"
    return f"""# generated by bonescan.serving.cluster: gRPC load balancer in front of {len(upstreams)} tritonserver replicas
{user}worker_processes 1;
daemon off;
master_process on;
pid {_q(rundir / 'nginx.pid')};
error_log {_q(rundir / 'nginx_error.log')} warn;
worker_shutdown_timeout {request_timeout_s:g}s;
events {{
    worker_connections 1024;
}}
http {{
    log_format bonescan '{ACCESS_FORMAT}';
    access_log {_q(rundir / 'nginx_access.log')} bonescan;
    client_body_temp_path {_q(tmp / 'client_body')};
    proxy_temp_path {_q(tmp / 'proxy')};
    fastcgi_temp_path {_q(tmp / 'fastcgi')};
    uwsgi_temp_path {_q(tmp / 'uwsgi')};
    scgi_temp_path {_q(tmp / 'scgi')};
    client_max_body_size 0;
    client_body_buffer_size 1m;
    keepalive_requests 1000000;
    keepalive_timeout 600s;
    upstream bonescan_replicas {{
        {balance};
{servers}
        keepalive 32;
        keepalive_requests 1000000;
        keepalive_timeout 600s;
    }}
    server {{
{tls_lines}
        location / {{
            grpc_pass grpc://bonescan_replicas;
            grpc_next_upstream error timeout;
            grpc_next_upstream_tries {max(2, len(upstreams))};
            grpc_connect_timeout 2s;
            grpc_read_timeout {request_timeout_s:g}s;
            grpc_send_timeout {request_timeout_s:g}s;
        }}
    }}
}}
"""


def make_rundir(rundir: Path) -> Path:
    """The run folder with the temp folders the config names (nginx creates only their last level)."""
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (Path(rundir) / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    return Path(rundir)


@dataclass
class NginxBalancer:
    """An nginx process with a generated config in ``rundir``; ``reconfigure`` rewrites it and reloads."""

    rundir: Path
    host: str
    port: int
    upstreams: list[tuple[str, int]]
    tls: BalancerTLS | None = None
    max_fails: int = 1
    fail_timeout_s: float = 2.0
    request_timeout_s: float = 600.0
    proc: subprocess.Popen | None = None
    down: frozenset[int] = frozenset()

    @property
    def conf(self) -> Path:
        return Path(self.rundir) / "nginx.conf"

    @property
    def access_log(self) -> Path:
        return Path(self.rundir) / "nginx_access.log"

    @property
    def error_log(self) -> Path:
        return Path(self.rundir) / "nginx_error.log"

    def _write(self) -> None:
        self.conf.write_text(nginx_config(self.rundir, self.host, self.port, self.upstreams, self.down, self.tls,
                                          self.max_fails, self.fail_timeout_s, self.request_timeout_s), encoding="utf-8")

    def _argv(self, *extra: str) -> list[str]:
        return [find_nginx(), "-p", str(Path(self.rundir).resolve()), "-c", str(self.conf.resolve()),
                "-e", str(self.error_log.resolve()), *extra]

    def start(self, timeout: float = 20.0) -> NginxBalancer:
        if not port_free(self.port, self.host if self.host != "0.0.0.0" else "0.0.0.0"):
            raise BonescanError(f"the balancer's port {self.port} is already in use; choose another with --grpc-port")
        make_rundir(self.rundir)
        self._write()
        test = subprocess.run(self._argv("-t", "-q"), capture_output=True, text=True)
        if test.returncode != 0:
            raise BonescanError(f"nginx refused the generated config {self.conf}:\n{(test.stderr or test.stdout).strip()}")
        stderr = Path(self.rundir) / "nginx_stderr.log"
        with open(stderr, "ab") as err:  # a file, not a pipe nobody reads
            self.proc = subprocess.Popen(self._argv(), stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BonescanError(f"nginx exited with code {self.proc.returncode} while starting:\n"
                                    f"{stderr.read_text(errors='replace').strip()}\n{self.log_tail()}")
            try:
                with socket.create_connection((self.client_host, self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BonescanError(f"nginx did not listen on port {self.port} within {timeout:.0f} s:\n{self.log_tail()}")

    @property
    def client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else ("::1" if self.host == "::" else self.host)

    @property
    def address(self) -> str:
        return f"{self.client_host}:{self.port}"

    def reconfigure(self, down: frozenset[int]) -> None:
        """Mark these upstreams ``down`` (the others up) and reload nginx (SIGHUP: graceful)."""
        if down == self.down:
            return
        self.down = frozenset(down)
        self._write()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    def log_tail(self, n: int = 15) -> str:
        if not self.error_log.exists():
            return "(no nginx error log)"
        return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-n:])

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGQUIT (graceful: running requests finish), then SIGTERM, then SIGKILL of its process group."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        for sig, wait in ((signal.SIGQUIT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                if sig == signal.SIGKILL:
                    os.killpg(self.proc.pid, sig)
                else:
                    self.proc.send_signal(sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        return self.proc.returncode

    def entries(self) -> list[dict]:
        """The access log: one dict per request (time, status, upstream attempts as (address, status))."""
        out: list[dict] = []
        if not self.access_log.exists():
            return out
        for line in self.access_log.read_text(errors="replace").splitlines():
            m = ACCESS_RE.match(line)
            if not m:
                continue
            addrs = [a.strip() for a in re.split(r"[,:] (?=\d|\[|u)", m["addr"]) if a.strip() and a.strip() != "-"]
            stats = [s.strip() for s in re.split(r"[,:] ", m["ustatus"]) if s.strip()]
            out.append({"t": float(m["t"]), "status": int(m["status"]), "attempts": list(zip(addrs, stats + [""] * len(addrs))),
                        "grpc_status": m["grpc"] if m["grpc"] != "-" else m["ugrpc"], "uri": m["uri"],
                        "request_time": float(m["rt"])})
        return out


class Throttle:
    """A slow replica: its process group (tritonserver and its python-backend stubs) is stopped
    (SIGSTOP) ``stopped`` of every ``period`` seconds and continued (SIGCONT) for the rest, as
    ``cpulimit`` does; it then runs at about ``1 - stopped`` of its speed. ``stop()`` continues it."""

    def __init__(self, pid: int, stopped: float = 0.75, period: float = 0.2):
        if not 0 < stopped < 1:
            raise BonescanError("Throttle: stopped must be between 0 and 1")
        self.pid, self.stopped, self.period = pid, stopped, period
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"throttle-{pid}")
        self.cycles = 0

    def _signal(self, sig: int) -> bool:
        try:
            os.killpg(self.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def _run(self) -> None:
        while not self._done.is_set():
            if not self._signal(signal.SIGSTOP):
                return
            self._done.wait(self.period * self.stopped)
            self._signal(signal.SIGCONT)
            self.cycles += 1
            self._done.wait(self.period * (1 - self.stopped))
        self._signal(signal.SIGCONT)

    def start(self) -> Throttle:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)
        self._signal(signal.SIGCONT)

    def __enter__(self) -> Throttle:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def replica_metric(server: TritonServer, name: str = "nv_inference_request_success", model: str = "bonescan") -> float | None:
    """One counter of a replica's Prometheus metrics (its metrics port) for ``model``; None when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode("utf-8", "replace")
    except OSError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and f'model="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@dataclass
class Cluster:
    """N tritonserver replicas on free loopback ports and an nginx in front (``host:port``).

    Use as a context manager, or start() / stop(). ``environment(i)``: environment variables of
    replica i alone (the benchmark gives each its own request log)."""

    repo: Path
    replicas: int = 2
    host: str = "127.0.0.1"
    port: int | None = None
    rundir: Path | None = None
    admin_key: str | None = None
    tls: BalancerTLS | None = None
    extra_args: list[str] = field(default_factory=list)
    log_verbose: int = 0
    max_fails: int = 1
    fail_timeout_s: float = 2.0
    health_interval_s: float = 0.5
    request_timeout_s: float = 600.0
    environment: dict[int, dict[str, str]] = field(default_factory=dict)
    servers: list[TritonServer] = field(default_factory=list)
    balancer: NginxBalancer | None = None
    #: (wall-clock time, as nginx's access log has it; event) of the health monitor and the fault tools
    events: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _monitor: threading.Thread | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise BonescanError("--replicas must be 1 or more")
        if self.rundir is None:
            import tempfile

            self.rundir = Path(tempfile.mkdtemp(prefix="bonescan-cluster-"))
        self.rundir = Path(self.rundir).resolve()
        self.rundir.mkdir(parents=True, exist_ok=True)

    @property
    def address(self) -> str:
        assert self.balancer is not None
        return self.balancer.address

    @property
    def folder(self) -> Path:
        """The run folder: replicas' logs, nginx's config, pid, logs and temp folders."""
        assert self.rundir is not None
        return self.rundir

    @property
    def replica_addresses(self) -> list[str]:
        return [f"127.0.0.1:{s.grpc_port}" for s in self.servers]

    def note(self, what: str) -> None:
        with self._lock:
            self.events.append((time.time(), what))

    def start(self, timeout: float = 300.0) -> Cluster:
        if not Path(self.repo).is_dir():
            raise BonescanError(f"{self.repo}: model repository not found")
        find_nginx()
        triton_dist()  # copied once, before the replicas start side by side
        key_shim()
        ports = free_ports(3 * self.replicas + (0 if self.port else 1))
        if self.port is None:
            self.port = ports.pop()
        rundir = self.folder
        self.servers = [
            TritonServer(Path(self.repo), grpc_port=ports[3 * i], http_port=ports[3 * i + 1], metrics_port=ports[3 * i + 2],
                         log_file=rundir / f"replica{i}.log",
                         admin_key=self.admin_key, bind="127.0.0.1", log_verbose=self.log_verbose,
                         extra_args=list(self.extra_args), environment=dict(self.environment.get(i, {})))
            for i in range(self.replicas)]
        try:
            with ThreadPoolExecutor(self.replicas) as ex:
                list(ex.map(lambda s: s.start(timeout), self.servers))
            self.balancer = NginxBalancer(rundir, self.host, self.port, [("127.0.0.1", s.grpc_port) for s in self.servers],
                                          self.tls, self.max_fails, self.fail_timeout_s, self.request_timeout_s)
            self.balancer.start()
        except BaseException:
            self.stop()
            raise
        self.note("started")
        if self.health_interval_s > 0:
            self._stop.clear()
            self._monitor = threading.Thread(target=self._watch, daemon=True, name="cluster-health")
            self._monitor.start()
        return self

    def _watch(self) -> None:
        """The active health check: not ready -> ``down`` in nginx's config, ready again -> back."""
        fails = [0] * len(self.servers)
        while not self._stop.wait(self.health_interval_s):
            assert self.balancer is not None
            down = set(self.balancer.down)
            for i, s in enumerate(self.servers):
                alive = s.proc is not None and s.proc.poll() is None
                ready = alive and s.is_ready()
                fails[i] = 0 if ready else fails[i] + 1
                if ready and i in down:
                    down.discard(i)
                    self.note(f"replica {i} ready: back in nginx")
                elif not ready and i not in down and (fails[i] >= 2 or not alive):
                    down.add(i)
                    self.note(f"replica {i} not ready: down in nginx")
            if self._stop.is_set():
                return
            self.balancer.reconfigure(frozenset(down))

    def kill(self, i: int) -> None:
        """SIGKILL replica i (tritonserver and its stubs)."""
        self.note(f"replica {i} SIGKILL")
        self.servers[i].kill()

    def restart(self, i: int, timeout: float = 300.0) -> None:
        """Start replica i again on its ports (after kill())."""
        self.note(f"replica {i} restarting")
        self.servers[i].start(timeout)
        self.note(f"replica {i} restarted (ready)")

    def slow(self, i: int, stopped: float = 0.75, period: float = 0.2) -> Throttle:
        proc = self.servers[i].proc
        assert proc is not None
        self.note(f"replica {i} slowed (stopped {stopped:.0%} of every {period:g} s)")
        return Throttle(proc.pid, stopped, period)

    def successes(self, model: str = "bonescan") -> list[float | None]:
        """nv_inference_request_success of each replica for ``model`` (since its last start)."""
        return [replica_metric(s, model=model) if s.proc is not None and s.proc.poll() is None else None for s in self.servers]

    def replica_of(self, address: str) -> int | None:
        port = address.rsplit(":", 1)[-1]
        return next((i for i, s in enumerate(self.servers) if str(s.grpc_port) == port), None)

    def stop(self) -> None:
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=10)
        if self.balancer is not None:
            self.balancer.stop()
        with ThreadPoolExecutor(max(1, len(self.servers))) as ex:
            list(ex.map(lambda s: s.stop(), self.servers))
        self.note("stopped")

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_cluster(repo: Path, replicas: int, port: int, bind: str = "0.0.0.0", admin_key_file: Path | None = None,
                  tls: BalancerTLS | None = None, log_dir: Path | None = None, log_verbose: int = 0,
                  triton_args: list[str] | None = None) -> int:
    """Foreground cluster for ``bonescan serve --replicas N``: the balancer's address and each replica's
    ports, then wait for Ctrl-C / SIGTERM, which stops all."""
    from bonescan.serving.repository import read_manifest
    from bonescan.serving.server import (
        ADMIN_ENDPOINTS,
        check_backends,
        check_passthrough,
        docker_command,
        read_admin_key,
    )

    extra = check_passthrough(triton_args or [])
    if not Path(repo).is_dir():
        raise BonescanError(f"{repo}: folder does not exist (build a repository with `bonescan repo build`)")
    manifest = read_manifest(repo)
    check_backends(repo, manifest, docker_command({**manifest, "path": str(repo)}))
    admin_key = read_admin_key(admin_key_file) if admin_key_file is not None else None
    tls = tls.check() if tls is not None else None
    rundir = Path(log_dir) if log_dir else None
    cluster = Cluster(Path(repo), replicas, bind, port, rundir, admin_key, tls, extra, log_verbose)
    stop = {"now": False}

    def _handler(signum, frame):  # noqa: ARG001
        stop["now"] = True

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    print(f"starting {replicas} tritonserver replicas on {repo} ({manifest['flavor']} flavor) and nginx in front ...", flush=True)
    cluster.start()
    scheme = "gRPC" + ("" if tls is None else " over TLS" + (" (mutual: clients need a certificate)" if tls.root else ""))
    lb = cluster.balancer
    assert lb is not None and lb.proc is not None
    print(f"ready: {scheme} {lb.host}:{cluster.port} (nginx, pid {lb.proc.pid}; config {lb.conf})", flush=True)
    for i, s in enumerate(cluster.servers):
        print(f"  replica {i}: gRPC 127.0.0.1:{s.grpc_port}  HTTP 127.0.0.1:{s.http_port}  "
              f"metrics 127.0.0.1:{s.metrics_port}/metrics  log {s.log_file}", flush=True)
    print(f"failover: a replica that refuses connections is skipped for {cluster.fail_timeout_s:g} s (nginx max_fails=1); "
          f"a replica not ready for {2 * cluster.health_interval_s:g} s is marked down and nginx reloaded, taken back "
          f"once ready (checked every {cluster.health_interval_s:g} s)", flush=True)
    print(f"model control: off; {ADMIN_ENDPOINTS} endpoints need the admin key header "
          f"({'key from ' + str(admin_key_file) if admin_key_file else 'no key given: closed'}; the key is on no command "
          "line and not in nginx's config)", flush=True)
    print(f"logs and nginx's config: {cluster.rundir}", flush=True)
    print("Ctrl-C or SIGTERM stops all.", flush=True)
    try:
        while not stop["now"]:
            if cluster.balancer is not None and cluster.balancer.proc is not None and cluster.balancer.proc.poll() is not None:
                print(f"nginx exited unexpectedly with code {cluster.balancer.proc.returncode}:\n{cluster.balancer.log_tail()}",
                      file=sys.stderr)
                return 1
            time.sleep(0.5)
    finally:
        print("stopping nginx and the replicas ...", flush=True)
        cluster.stop()
        print("stopped", flush=True)
    return 0
