"""``make demo-cluster`` (``bonescan demo-cluster``): the demo's Triton stage on replicas behind nginx.

After ``make demo``: its model repository served by N replicas behind Debian's nginx
(bonescan.serving.cluster), a real Prometheus scraping each replica's metrics port
(bonescan.serving.prometheus), the held-out scans sent through the balancer with the client library,
and the Prometheus query that shows which replica answered how many, checked against the count sent.
Kept out of ``make demo`` so that its 20-minute budget holds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bonescan import contract as C
from bonescan.errors import BonescanError

#: the query printed: successful ensemble requests per replica
QUERY = f'sum by (replica) (nv_inference_request_success{{model="{C.ENSEMBLE_MODEL}"}})'


def run_demo_cluster(out: str | Path, replicas: int = 2, scans: int | None = None, concurrency: int = 4,
                     progress: bool = True, timeout_s: float = 60.0) -> dict[str, Any]:
    """Serve ``out/model_repository`` with ``replicas`` replicas, send ``out/data``'s test scans (the
    first ``scans``) through nginx, and read from Prometheus how many each replica answered."""
    from bonescan.client import BoneScanClient
    from bonescan.data.dataset import BoneScanDataset
    from bonescan.serving.cluster import Cluster
    from bonescan.serving.prometheus import Prometheus
    from bonescan.serving.server import free_ports

    out = Path(out)
    repo, data = out / "model_repository", out / "data"
    if not repo.is_dir() or not (data / "manifest.json").is_file():
        raise BonescanError(f"{out}: no model_repository and data of `make demo` there; run `make demo` first "
                            "(or give the folder of a `bonescan demo --out`)")
    if replicas < 2:
        raise BonescanError("--replicas: give 2 or more (one replica needs no balancer)")
    refs = BoneScanDataset(data, "test").refs[:scans]
    if not refs:
        raise BonescanError(f"{data}: no case in the test split")
    run = out / "cluster"
    print(f"==> {replicas} replicas of {repo} behind nginx, a Prometheus scraping them, {len(refs)} held-out scans")
    with Cluster(repo, replicas, rundir=run) as cluster:
        prom = Prometheus(run / "prometheus", free_ports(1)[0],
                          [f"127.0.0.1:{s.metrics_port}" for s in cluster.servers]).start()
        try:
            deadline = time.monotonic() + timeout_s
            while sum(prom.targets_up().values()) < replicas and time.monotonic() < deadline:
                time.sleep(0.5)
            print(f"    balancer {cluster.address}; replicas {', '.join(cluster.replica_addresses)}; "
                  f"Prometheus {prom.url}")
            with BoneScanClient(cluster.address, timeout_s=120) as client:
                results = client.segment_many([(r.path, None) for r in refs], concurrency=concurrency, progress=progress)
            failed = [r for r in results if isinstance(r, BonescanError)]
            answered = len(results) - len(failed)
            per: dict[str, float] = {}
            while time.monotonic() < deadline:  # until a scrape after the last answer
                per = prom.values(QUERY, by="replica")
                if sum(per.values()) >= answered:
                    break
                time.sleep(0.5)
        finally:
            prom.stop()
    counts = {f"replica {k}": int(v) for k, v in sorted(per.items())}
    print(f"    {answered} of {len(results)} scans answered through nginx" + (f", {len(failed)} failed" if failed else ""))
    print(f"    Prometheus query: {QUERY}")
    for name, n in counts.items():
        print(f"      {name}: {n}")
    problems = []
    if failed:
        problems.append(f"{len(failed)} request(s) failed, the first: {failed[0]}")
    if sum(counts.values()) != answered:
        problems.append(f"Prometheus counts {sum(counts.values())} answers, the client got {answered}")
    if len([n for n in counts.values() if n > 0]) < replicas:
        problems.append(f"not every replica answered: {counts}")
    for p in problems:
        print(f"FAILED: {p}")
    if not problems:
        print(f"all {replicas} replicas answered; the run's logs and configs are in {run}")
    return {"answered": answered, "failed": len(failed), "per_replica": counts, "query": QUERY, "ok": not problems}
