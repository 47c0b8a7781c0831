"""The GPU benchmark script cannot run here: check its syntax and that every `bonescan` command in it parses."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from bonescan.cli import build_parser

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_benchmark.sh"


def test_gpu_benchmark_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def bonescan_commands() -> list[list[str]]:
    cmds = []
    for line in SCRIPT.read_text().splitlines():
        line = line.strip()
        if line.startswith("bonescan "):
            # the script's shell variables -> sample values
            line = re.sub(r"\\?\$\{?([A-Za-z_]+)\}?", lambda m: {"p": "fp16", "PRECISIONS": "fp16 int8", "MAX_BATCH": "8"}.get(m.group(1), "x"), line)
            cmds.append(shlex.split(line)[1:])
    return cmds


def test_gpu_benchmark_script_uses_real_commands():
    cmds = bonescan_commands()
    assert len(cmds) >= 4
    parser = build_parser()
    for argv in cmds:
        try:
            parser.parse_args(argv)
        except SystemExit as e:  # argparse exits on unknown commands or flags
            pytest.fail(f"`bonescan {' '.join(argv)}` does not parse ({e.code})")
