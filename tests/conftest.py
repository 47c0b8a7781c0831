"""Session fixtures: a small synthetic data set, tiny trained models, their exports, a model
repository and a real tritonserver on free ports (started once, stopped at the end)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bonescan")


@pytest.fixture(scope="session")
def dataset(work: Path) -> Path:
    from bonescan.data.generate import generate_dataset

    root = work / "data"
    generate_dataset(root, 30, seed=21, workers=2, progress=False)
    return root


def _train(dataset: Path, out: Path, model: str, fallback: Path | None = None) -> Path:
    from bonescan.model.config import preset
    from bonescan.train import train

    mcfg, tcfg = preset("tiny", model)
    tcfg.steps = 12
    return train(dataset, out, mcfg, tcfg, seed=0, progress=False, command="tests", config_name="tiny",
                 init_from=fallback, fallback=fallback)


@pytest.fixture(scope="session")
def checkpoints(dataset: Path, work: Path) -> dict[str, Path]:
    """The U-Net, then the dual-path model carrying it as its fail-safe's answer (as make demo trains them)."""
    unet = _train(dataset, work / "unet.pt", "unet")
    return {"dualpath": _train(dataset, work / "dualpath.pt", "dualpath", fallback=unet), "unet": unet}


@pytest.fixture(scope="session")
def exports(checkpoints: dict[str, Path], work: Path) -> dict[str, Path]:
    from bonescan.export.onnx_export import export_onnx

    out = {}
    for m, ck in checkpoints.items():
        export_onnx(ck, work / f"export_{m}")
        out[m] = work / f"export_{m}"
    return out


@pytest.fixture(scope="session")
def repo(exports: dict[str, Path], work: Path) -> Path:
    from bonescan.serving.repository import RepoOptions, build_repository

    out = work / "repo"
    build_repository(exports["dualpath"], out, RepoOptions(max_batch_size=4, queue_delay_us=20000), baseline=exports["unet"])
    return out


@pytest.fixture(scope="session")
def server(repo: Path, work: Path):
    from bonescan.serving.server import TritonServer, free_ports

    grpc, http, metrics = free_ports(3)
    srv = TritonServer(repo, grpc, http, metrics, log_file=work / "tritonserver.log")
    srv.start(timeout=240)
    yield srv
    srv.stop()
