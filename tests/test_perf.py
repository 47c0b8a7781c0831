"""perf_analyzer as a user runs it (issue 22, item 7): the README's two lines, run as written against
the session's tritonserver (only the data folder, the file and the server's port put in)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bonescan import contract as C

ROOT = Path(__file__).resolve().parents[1]


def readme_perf_lines() -> list[str]:
    """The code block of the README's "perf_analyzer on its own" paragraph."""
    m = re.search(r"\*\*`perf_analyzer` on its own\*\*.*?```\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert m, "README: no standalone perf_analyzer command"
    return m.group(1).strip().splitlines()


def bonescan() -> str:
    exe = Path(sys.executable).parent / "bonescan"
    return str(exe) if exe.exists() else shutil.which("bonescan") or "bonescan"


@pytest.mark.server
def test_the_readme_perf_analyzer_lines_run_against_a_server(server, dataset, tmp_path):
    data_line, perf_line = readme_perf_lines()
    assert data_line.startswith("bonescan bench perf-analyzer-data ") and perf_line.startswith("bonescan perf -- ")
    data_json = tmp_path / "input.json"

    def fill(line: str) -> list[str]:
        argv = shlex.split(line)
        subst = {"DATA": str(dataset), "input.json": str(data_json), "localhost:8001": server.grpc_url}
        return [bonescan(), *(subst.get(a, a) for a in argv[1:])]

    done = subprocess.run(fill(data_line), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads(data_json.read_text())["data"]
    assert len(rows) == 4 and {C.ENS_IMAGE.name, C.ENS_PIXEL_SPACING.name, C.ENS_REPORT.name} <= set(rows[0])
    assert rows[0][C.ENS_IMAGE.name]["shape"] == list(C.IMAGE_DIMS)
    assert rows[0][C.ENS_REPORT.name]["content"][0] not in done.stdout + done.stderr  # report text is never printed

    argv = fill(perf_line)
    assert "--input-data" in argv and server.grpc_url in argv
    done = subprocess.run(argv, capture_output=True, text=True, timeout=540)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "libcudart" not in out and "Thread [0] had error" not in out
    levels = [int(c) for c in re.findall(r"^Concurrency: (\d+), throughput: [0-9.]+ infer/sec", done.stdout, re.M)]
    assert levels == [1, 2], done.stdout[-2000:]


def test_perf_says_why_perf_analyzers_own_data_fails(tmp_path):
    """Without --input-data (perf_analyzer's random data) or with zero data the ensemble's preprocess
    refuses every request: `bonescan perf` says so and what to give it instead."""
    from bonescan.benchmarks.latency import perf_analyzer_command

    for args in (["-m", "bonescan"], ["-m", "bonescan", "--input-data", "zero"], ["-m", "bonescan", "--input-data=random"]):
        argv, env, note = perf_analyzer_command(args)
        assert argv[1:] == args and Path(argv[0]).name == "perf_analyzer"
        assert note and "bonescan bench perf-analyzer-data" in note and "preprocess" in note
    argv, env, note = perf_analyzer_command(["-m", "bonescan", "--input-data", str(tmp_path / "input.json")])
    assert note is None
    libs = env["LD_LIBRARY_PATH"].split(":")
    assert (Path(libs[0]) / "libcudart.so.12").exists()  # the link perf_analyzer looks for, to the wheel's copy
    done = subprocess.run([bonescan(), "perf", "--", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Perf Analyzer Version" in done.stdout + done.stderr, done.stderr
