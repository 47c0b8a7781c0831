"""A local Orthanc PACS for the DICOM node's tests, benchmark and ``make demo-pacs``.

Debian's ``Orthanc`` (1.10) is started as a child process with a config generated into a run folder
(its storage, index and log inside that folder; no system service), on free loopback ports, with the
DICOMweb plugin at ``/dicom-web/``, as :class:`bonescan.serving.cluster.NginxBalancer` starts nginx.
:meth:`Orthanc.stop` and :meth:`Orthanc.start` again on the same ports and storage are the "PACS
down, then back" fault. Orthanc has no HTTP bind address: ``RemoteAccessAllowed: false`` makes it
refuse every HTTP client that is not on this machine; its DICOM port answers any host (as a PACS
does) but stores only what is sent to it.

    with Orthanc(run_dir, modalities={"BONESCAN": ("BONESCAN", "127.0.0.1", 11112)}) as pacs:
        pacs.store_files(paths)                      # C-STORE into Orthanc (its DICOM port)
        pacs.forward_study(study_uid, "BONESCAN")    # Orthanc C-STOREs the study to the node
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bonescan.errors import BonescanError

#: where Debian's packages (orthanc, orthanc-dicomweb; tools/apt.sh) put the server and the plugin
ORTHANC_BIN = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def find_orthanc() -> str:
    path = shutil.which("Orthanc") or (ORTHANC_BIN if os.access(ORTHANC_BIN, os.X_OK) else None)
    if path is None:
        raise BonescanError("Orthanc is not installed: the local PACS is Debian's orthanc + orthanc-dicomweb "
                            "(apt-get install orthanc orthanc-dicomweb; tools/apt.sh installs them)")
    return path


def orthanc_config(rundir: Path, http_port: int, dicom_port: int, aet: str = "ORTHANC",
                   modalities: dict[str, tuple[str, str, int]] | None = None) -> dict[str, Any]:
    """Orthanc's configuration: every file it writes inside ``rundir``; loopback HTTP only, no
    authentication (a test PACS), DICOMweb on, resent instances replace the stored ones (the node's
    deterministic SEG / SR UIDs rely on it), a study forwarded to a modality over one association
    that is closed right after (no 5 s keep-open delay)."""
    rundir = Path(rundir).resolve()
    plugins = [DICOMWEB_PLUGIN] if Path(DICOMWEB_PLUGIN).is_file() else []
    return {
        "Name": "bonescan-pacs",
        "StorageDirectory": str(rundir / "storage"),
        "IndexDirectory": str(rundir / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": plugins,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado", "Ssl": False},
        "DicomModalities": {name: list(m) for name, m in (modalities or {}).items()},
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "OverwriteInstances": True,
        "DicomAssociationCloseDelay": 0,
        "DicomScuTimeout": 30,
        "SaveJobs": False,
        "StableAge": 2,
        "HttpThreadsCount": 8,
        "DicomThreadsCount": 4,
        "OrthancExplorerEnabled": True,
        "WebDavEnabled": False,
        "DeidentifyLogs": True,
    }


@dataclass
class Orthanc:
    """An Orthanc process with a generated config in ``rundir``; ports chosen free unless given."""

    rundir: Path
    modalities: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    http_port: int = 0
    dicom_port: int = 0
    aet: str = "ORTHANC"
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        from bonescan.serving.server import free_ports

        self.rundir = Path(self.rundir).resolve()  # Orthanc runs in it: its paths must not be relative
        if not self.http_port or not self.dicom_port:
            self.http_port, self.dicom_port = free_ports(2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def destination(self) -> str:
        """Where the node sends its results: ``HOST:PORT:AET`` (``dicom-node --send-to``)."""
        return f"127.0.0.1:{self.dicom_port}:{self.aet}"

    @property
    def log_file(self) -> Path:
        return self.rundir / "orthanc.log"

    def start(self, timeout: float = 30.0) -> Orthanc:
        """Write the config and start Orthanc; returns when ``GET /system`` answers."""
        from bonescan.serving.server import port_free

        for name, port in (("HTTP", self.http_port), ("DICOM", self.dicom_port)):
            if not port_free(port):
                raise BonescanError(f"Orthanc's {name} port {port} is already in use")
        self.rundir.mkdir(parents=True, exist_ok=True)
        conf = self.rundir / "orthanc.json"
        cfg = orthanc_config(self.rundir, self.http_port, self.dicom_port, self.aet, self.modalities)
        conf.write_text(json.dumps(cfg, indent=1), encoding="utf-8")
        with open(self.rundir / "orthanc_stderr.log", "ab") as err:
            self.proc = subprocess.Popen([find_orthanc(), f"--logfile={self.log_file}", "--no-jobs", str(conf)],
                                         stdout=subprocess.DEVNULL, stderr=err, cwd=self.rundir, start_new_session=True)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BonescanError(f"Orthanc exited with code {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                self.get("/system", timeout=1)
                return
            except (OSError, BonescanError):
                time.sleep(0.1)
        self.stop()
        raise BonescanError(f"Orthanc did not answer GET /system within {timeout:.0f} s:\n{self.log_tail()}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (Orthanc closes its database cleanly), then SIGKILL of its process group."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        return self.proc.returncode

    def restart(self, timeout: float = 30.0) -> Orthanc:
        """Stopped and started again on the same ports, with the same storage."""
        self.stop()
        return self.start(timeout)

    def log_tail(self, n: int = 20) -> str:
        if not self.log_file.exists():
            return "(no Orthanc log)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- REST
    def _request(self, method: str, path: str, body: Any = None, timeout: float = 60.0) -> Any:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raise BonescanError(f"Orthanc {method} {path}: HTTP {e.code} {e.read()[:300]!r}") from None
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw

    def get(self, path: str, timeout: float = 30.0) -> Any:
        return self._request("GET", path, timeout=timeout)

    def post(self, path: str, body: Any = None, timeout: float = 120.0) -> Any:
        return self._request("POST", path, body if body is not None else b"", timeout)

    def upload(self, paths: list[Path]) -> list[str]:
        """Instances into Orthanc over REST (``POST /instances``); their Orthanc instance IDs."""
        return [self.post("/instances", Path(p).read_bytes())["ID"] for p in paths]

    def study_id(self, study_uid: str) -> str | None:
        """Orthanc's ID of a study, by its StudyInstanceUID (None: not stored)."""
        found = self.post("/tools/lookup", study_uid.encode())
        return next((f["ID"] for f in found or [] if f.get("Type") == "Study"), None)

    def forward_study(self, study_uid: str, modality: str, timeout: float = 120.0) -> None:
        """Orthanc C-STOREs a whole study to a registered modality (synchronous: returns when sent)."""
        sid = self.study_id(study_uid)
        if sid is None:
            raise BonescanError(f"study {study_uid} is not in Orthanc")
        self.post(f"/modalities/{modality}/store", {"Resources": [sid], "Synchronous": True}, timeout)

    def instances(self, study_uid: str) -> list[dict[str, Any]]:
        """The study's instances: {"sop_instance_uid", "sop_class_uid", "modality", "id"} each."""
        sid = self.study_id(study_uid)
        if sid is None:
            return []
        out = []
        for inst in self.get(f"/studies/{sid}/instances?expand"):
            tags = self.get(f"/instances/{inst['ID']}/simplified-tags")
            out.append({"id": inst["ID"], "sop_instance_uid": tags.get("SOPInstanceUID"),
                        "sop_class_uid": tags.get("SOPClassUID"), "modality": tags.get("Modality")})
        return out

    def count_modality(self, study_uid: str, modality: str) -> int:
        return sum(1 for i in self.instances(study_uid) if i["modality"] == modality)

    def has_series(self, study_uid: str, modality: str) -> bool:
        """Whether the study has a series of that modality (one request: what a benchmark polls)."""
        found = self.post("/tools/find", {"Level": "Series", "Query": {"StudyInstanceUID": study_uid, "Modality": modality}})
        return bool(found)
