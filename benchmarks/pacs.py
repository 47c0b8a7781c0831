"""``bonescan bench pacs``: how long a PACS waits for the SEG, next to how long the ensemble takes.

A real Orthanc, the DICOM node (in this process) and a tritonserver (started on ``--repo``, or a running
one given with ``--server``). Each of N synthetic studies (scan + report SR) is C-STOREd into Orthanc,
then Orthanc forwards it to the node (REST ``/modalities/BONESCAN/store``, synchronous: it returns
after its last C-STORE into the node). Measured per study: from that return to the SEG's series
being visible in Orthanc (polled every 20 ms). Measured in the same run on the same scans: the
ensemble's own latency, the client's round trip (``BoneScanClient.segment``, timings_ms["request"]).
The difference is the node's share: waking up, reading the study, building SEG + SR, durable writes,
and the C-STORE back. One warm-up study goes first and is not counted (the node's first request
connects to Triton).
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from bonescan.benchmarks.latency import cpu_info, run_info
from bonescan.errors import BonescanError

MODALITY = "BONESCAN"


def study_files(data: Path, out: Path, n: int, seed: int = 1000) -> list[tuple[str, list[Path]]]:
    """N synthetic studies (StudyInstanceUID, files) from the data set's test split (cycled), each
    with its own seed so each is a study of its own."""
    import pydicom

    from bonescan.data.dataset import BoneScanDataset
    from bonescan.data.dicom import write_synthetic_study

    refs = BoneScanDataset(data, "test").refs or BoneScanDataset(data, "train").refs
    if not refs:
        raise BonescanError(f"{data}: no case to write a study from")
    out_studies = []
    for i in range(n):
        files = write_synthetic_study(refs[i % len(refs)].path, out / f"study_{i:03d}", seed=seed + i)
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        out_studies.append((uid, files))
    return out_studies


class PacsRig:
    """Orthanc + the DICOM node (+ a tritonserver on ``repo``), on free loopback ports, in ``run``."""

    def __init__(self, run: Path, repo: Path | None = None, server: str | None = None, wait_report_s: float = 10.0):
        if (repo is None) == (server is None):
            raise BonescanError("give a model repository to serve (--repo) or a running server (--server), one of them")
        self.run, self.repo, self.server_url, self.wait_report_s = Path(run), repo, server, wait_report_s
        self._stack = ExitStack()
        self.orthanc: Any = None
        self.node: Any = None

    def __enter__(self) -> PacsRig:
        from bonescan.client.dicom.node import Destination, DicomNode, NodeConfig
        from bonescan.client.dicom.orthanc import Orthanc
        from bonescan.serving.server import TritonServer, free_ports

        self.run.mkdir(parents=True, exist_ok=True)
        try:
            if self.repo is not None:
                g, h, m = free_ports(3)
                srv = TritonServer(Path(self.repo), g, h, m, log_file=self.run / "tritonserver.log")
                self._stack.enter_context(srv)
                self.server_url = srv.grpc_url
            node_port = free_ports(1)[0]
            self.orthanc = self._stack.enter_context(
                Orthanc(self.run / "orthanc", modalities={MODALITY: ("BONESCAN", "127.0.0.1", node_port)}))
            cfg = NodeConfig(spool=self.run / "spool", server=str(self.server_url), bind="127.0.0.1", port=node_port,
                             send_to=Destination.parse(self.orthanc.destination), wait_report_s=self.wait_report_s)
            self.node = self._stack.enter_context(DicomNode(cfg))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def store_in_pacs(self, files: list[Path]) -> None:
        """C-STORE a study's files into Orthanc, as a modality would."""
        import pydicom

        from bonescan.client.dicom.node import Destination, c_store

        c_store([pydicom.dcmread(f) for f in files], Destination.parse(self.orthanc.destination), "MODALITY")

    def forward_and_wait(self, study: str, timeout: float = 120.0) -> tuple[float, float]:
        """Orthanc forwards the study to the node; (seconds the forward took, seconds from its end to the SEG in Orthanc)."""
        t0 = time.perf_counter()
        self.orthanc.forward_study(study, MODALITY)
        t1 = time.perf_counter()
        deadline = t1 + timeout
        while not self.orthanc.has_series(study, "SEG"):
            if time.perf_counter() > deadline:
                raise BonescanError(f"study {study}: no SEG in Orthanc {timeout:.0f} s after the forward")
            time.sleep(0.02)
        return t1 - t0, time.perf_counter() - t1


def ensemble_latency(url: str, studies: list[tuple[str, list[Path]]]) -> list[float]:
    """The client's round trip (ms) for each study's scan and report, straight to Triton."""
    from bonescan.client import BoneScanClient
    from bonescan.data.dicom import read_dicom_study

    out = []
    with BoneScanClient(url) as client:
        for _, files in studies:
            st = read_dicom_study(files)
            out.append(float(client.segment(st.scan, report=st.report or "").timings_ms["request"]))
    return out


def _p(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)), 1) if values else float("nan")


def bench_pacs(data: Path, out: Path, repo: Path | None = None, server: str | None = None, n: int = 20) -> dict[str, Any]:
    """N studies through Orthanc and the node; writes OUT/pacs.json and prints the figures."""
    out = Path(out)
    studies = study_files(data, out / "studies", n + 1)
    warm, measured = studies[0], studies[1:]
    with PacsRig(out / "run", repo, server) as rig:
        for _, files in studies:
            rig.store_in_pacs(files)
        rig.forward_and_wait(warm[0])
        forward_ms, seg_ms = [], []
        for study, _ in measured:
            f, s = rig.forward_and_wait(study)
            forward_ms.append(f * 1000)
            seg_ms.append(s * 1000)
        ensemble_ms = ensemble_latency(str(rig.server_url), measured)
        counters = rig.node.status()["counters"]
    res = {"machine": cpu_info(), "run": run_info(), "studies": len(measured),
           "forward_to_seg_ms": {"p50": _p(seg_ms, 50), "p90": _p(seg_ms, 90), "max": round(max(seg_ms), 1),
                                 "all": [round(v, 1) for v in seg_ms]},
           "forward_ms": {"p50": _p(forward_ms, 50)},
           "ensemble_round_trip_ms": {"p50": _p(ensemble_ms, 50), "p90": _p(ensemble_ms, 90)},
           "node_counters": counters}
    res["node_share_ms_p50"] = round(res["forward_to_seg_ms"]["p50"] - res["ensemble_round_trip_ms"]["p50"], 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pacs.json").write_text(json.dumps(res, indent=1) + "\n")
    print(summarize(res))
    print(f"wrote {out / 'pacs.json'}")
    return res


def summarize(res: dict[str, Any]) -> str:
    m = res["machine"]
    isa = ", ".join(m.get("simd", [])) or "none of the AVX2 / AVX-512 / AMX flags"
    s, e = res["forward_to_seg_ms"], res["ensemble_round_trip_ms"]
    return "\n".join([
        f"CPU: {m['cpu']} ({m['cores']} cores; {isa})",
        f"{res['studies']} studies, Orthanc -> node -> Triton -> SEG + SR -> Orthanc, one at a time:",
        f"  last C-STORE into the node -> SEG visible in Orthanc: p50 {s['p50']:.0f} ms, p90 {s['p90']:.0f} ms, max {s['max']:.0f} ms",
        f"  Orthanc's forward itself (C-STORE of NM + report SR): p50 {res['forward_ms']['p50']:.0f} ms",
        f"  ensemble alone (client round trip, same scans): p50 {e['p50']:.0f} ms, p90 {e['p90']:.0f} ms",
        f"  the node's share (p50 difference): {res['node_share_ms_p50']:.0f} ms",
    ])
