"""A real Prometheus (Debian's ``prometheus`` 2.42, installed by tools/apt.sh) for the tests and
``make demo-cluster``: a generated scrape config over the tritonserver replicas' metrics ports, on a
free loopback port, its TSDB in a folder of the run, stopped afterwards. Queried through its HTTP
API, as a dashboard or an alert rule would."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

JOB = "bonescan-triton"


def scrape_config(targets: Sequence[str], interval_s: float = 1.0) -> str:
    """prometheus.yml (JSON is YAML) scraping each ``host:port`` as one replica (label ``replica``)."""
    cfg = {
        "global": {"scrape_interval": f"{interval_s:g}s", "scrape_timeout": f"{interval_s:g}s",
                   "evaluation_interval": f"{interval_s:g}s"},
        "scrape_configs": [{
            "job_name": JOB,
            "metrics_path": "/metrics",
            "static_configs": [{"targets": [t], "labels": {"replica": str(i)}} for i, t in enumerate(targets)],
        }],
    }
    return json.dumps(cfg, indent=1) + "\n"


@dataclass
class Prometheus:
    folder: Path
    port: int
    targets: Sequence[str]
    binary: str = field(default_factory=lambda: shutil.which("prometheus") or "prometheus")
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.folder / "prometheus.yml"

    def start(self, timeout: float = 60.0) -> Prometheus:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(scrape_config(self.targets), encoding="utf-8")
        log = open(self.folder / "prometheus.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.config_file}", f"--web.listen-address=127.0.0.1:{self.port}",
             f"--storage.tsdb.path={self.folder / 'tsdb'}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}: "
                                   + (self.folder / "prometheus.log").read_text(errors="replace")[-2000:])
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"prometheus was not ready after {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def query(self, promql: str) -> list[dict]:
        """An instant query through the HTTP API: its vector ([{metric: labels, value: [t, "v"]}])."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise RuntimeError(f"{promql}: {body}")
        return body["data"]["result"]

    def values(self, promql: str, by: str | None = None) -> dict[str, float]:
        """``promql``'s samples as {value of label ``by`` (or ""): float}."""
        return {(s["metric"].get(by, "") if by else ""): float(s["value"][1]) for s in self.query(promql)}

    def targets_up(self) -> dict[str, float]:
        return self.values(f'up{{job="{JOB}"}}', by="instance")
