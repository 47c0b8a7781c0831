"""The README says what a new user needs in the first hour (issue 14, section 4), and its numbers are the
code's: read from the parser, the Makefile, the demo and the client, not copied into the test.

Cheap: no torch, no server; the parser is built (argparse only) and the rest is read as text or AST."""

from __future__ import annotations

import argparse
import ast
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
FLAT = " ".join(README.split())  # the README's words with its line breaks folded


def command(*names: str) -> argparse.ArgumentParser:
    from bonescan.cli import build_parser

    p = build_parser()
    for name in names:
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        p = sub.choices[name]
    return p


def option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings)


def make_var(name: str) -> str:
    m = re.search(rf"^{name}\s*\??=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert m, f"Makefile: {name} not set"
    return m.group(1)


def call_keywords(path: Path, func: str) -> list[dict[str, object]]:
    """Constant keyword arguments of every call of ``func`` in ``path``."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == func:
            calls.append({k.arg: k.value.value for k in node.keywords if isinstance(k.value, ast.Constant)})
    return calls


def test_readme_says_how_to_get_bonescan_on_the_path():
    venv = make_var("VENV")
    assert f"`source {venv}/bin/activate`" in README
    assert f"`{venv}/bin/bonescan`" in README


def test_readme_says_where_make_demo_writes_its_report():
    out = make_var("DEMO_OUT")
    assert f"its report to `{out}/report.md`" in FLAT
    assert 'out / "report.md"' in (ROOT / "benchmarks" / "demo_report.py").read_text()


def test_readme_says_how_to_install_the_client_alone_from_a_clone():
    assert "Install it alone from a clone with `pip install '.[client]'`" in FLAT
    assert re.search(r"^client = \[", (ROOT / "pyproject.toml").read_text(), re.M)  # the extra exists


def test_readme_gives_segment_many_its_item_format():
    assert "takes `(scan, report)` pairs" in FLAT
    assert "a view pair is one scan, so its item is `((anterior, posterior), report)`" in FLAT
    # the signature the README quotes is the client's (read from the source: no tritonclient import)
    tree = ast.parse((ROOT / "client" / "core.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "BoneScanClient")
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "segment_many")
    names = [a.arg for a in fn.args.args]
    assert names[:3] == ["self", "items", "concurrency"]
    default = fn.args.defaults[names.index("concurrency") - (len(names) - len(fn.args.defaults))]
    assert f"`segment_many(items, concurrency={ast.literal_eval(default)})` takes" in FLAT


def test_readme_names_train_config_tiny_and_its_commands_parse():
    assert "tiny" in option(command("train"), "--config").choices
    assert "`--config tiny`" in FLAT
    lines = re.findall(r"`?(bonescan train [^`\n]*)", README)
    assert any("--config tiny" in line for line in lines)
    for line in lines:  # every train command the README shows is one the parser takes
        command().parse_args(shlex.split(line)[1:])


def test_readme_parity_paragraph_counts_the_scans_the_code_checks():
    m = re.search(r"`bonescan export check` on (\d+) held-out scans as `make demo` runs it "
                  r"\(the command's default is `--n (\d+)`\)", FLAT)
    assert m, "README: the parity paragraph no longer says how many held-out scans"
    demo_n = [kw["n"] for kw in call_keywords(ROOT / "benchmarks" / "demo.py", "check_parity")]
    assert demo_n and set(demo_n) == {int(m.group(1))}
    default = option(command("export", "check"), "--n").default
    assert int(m.group(2)) == default
    assert f"(`--n {default}` by default;" in FLAT  # the export check bullet says the same



def test_readme_token_lengths_are_the_contracts():
    """Every token length the README states is the contract's (it said 256 where the tokenizer, the
    TensorRT profiles and the server use 384): "N tokens", the tokenizer's row of the repository table
    and the TensorRT profile's token range."""
    from bonescan import contract as C

    n = C.TOKENIZER.max_tokens
    # the tokenizer's length as the README states it: "padded to N tokens", "cells x N tokens", "(N tokens)"
    stated = [int(x) for x in re.findall(r"(?:padded to|x|\() ?(\d+) tokens\b", FLAT)]
    assert len(stated) >= 2 and set(stated) == {n}, f"README states {sorted(set(stated))} tokens; the contract has {n}"
    row = re.search(r"^\| `tokenizer` \|.*?input_ids, attention_mask \((\w+), (\d+)\)", README, re.M)
    assert row and (row.group(1), int(row.group(2))) == (C.INPUT_IDS.config_dtype.removeprefix("TYPE_"), n)
    lo, opt, hi = C.axis_range(C.TOKENS)
    ranges = re.findall(r"tokens (\d+)\.\.(\d+), optimum (\d+)", FLAT)
    assert ranges and all(tuple(map(int, r)) == (lo, hi, opt) for r in ranges)


def test_readme_shows_the_gpu_commands_bonescan_serve_prints():
    """The NGC container block of the README is what `bonescan serve` prints for a copied embedded
    repository (its `#` lines aside): docker build of the repository's image, docker run of it."""
    from bonescan.serving.server import docker_command

    printed = docker_command({"flavor": "embedded", "path": "/nonexistent/REPO", "dualpath": {"export": "../gone"},
                              "baseline": {"export": "../gone_unet"}})
    commands = [line for line in printed.splitlines() if not line.startswith("#")]
    block = re.search(r"\*\*On a GPU \(NGC container\)\*\*.*?```\n(.*?)```", README, re.S)
    assert block, "README: the NGC container section has no command block"
    assert block.group(1).splitlines() == commands
    assert "pip install" not in block.group(1)
