"""Make tensorrt-stubs usable by mypy: copy them to a folder for MYPYPATH and fix their syntax errors.

tensorrt-stubs 10.13.0.35.1 ships .pyi files without a py.typed marker (so mypy would silently
treat `tensorrt` as Any) and with a few generated signatures that are not valid Python (a parameter
named `in`; parameters without defaults after ones with defaults). This copies them and repairs
exactly those lines, so `mypy` checks our TensorRT calls for real.

usage: python tools/trt_stubs.py OUT_DIR
"""

from __future__ import annotations

import keyword
import re
import shutil
import sys
from pathlib import Path


def fix_signature(line: str) -> str:
    m = re.match(r"^(\s*def \w+\()(.*)(\)\s*->.*:\s*)$", line)
    if not m:
        return line
    head, params, tail = m.groups()
    parts = [p.strip() for p in re.split(r",(?![^\[]*\])", params)]
    out, seen_default = [], False
    for p in parts:
        name = re.split(r"[:=]", p, maxsplit=1)[0].strip().lstrip("*")
        if keyword.iskeyword(name):
            p = p.replace(name, name + "_", 1)
        if "=" in p:
            seen_default = True
        elif seen_default and p and not p.startswith("*"):
            p = p + " = ..."
        out.append(p)
    return head + ", ".join(out) + tail


def main(out_dir: str) -> int:
    import importlib.util

    out = Path(out_dir)
    for pkg in ("tensorrt", "tensorrt_bindings"):
        spec = importlib.util.find_spec(pkg) if pkg != "tensorrt" else None
        src = None
        for base in map(Path, sys.path):
            if (base / pkg / "__init__.pyi").is_file():
                src = base / pkg
                break
        if src is None:
            print(f"trt_stubs: {pkg} stubs not found (pip install --no-deps tensorrt-stubs)", file=sys.stderr)
            return 1
        del spec
        shutil.rmtree(out / pkg, ignore_errors=True)
        shutil.copytree(src, out / pkg, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    for pyi in out.rglob("*.pyi"):
        text = pyi.read_text()
        lines = text.splitlines()
        for _ in range(200):
            try:
                compile("\n".join(lines), str(pyi), "exec")
                break
            except SyntaxError as e:
                i = (e.lineno or 1) - 1
                fixed = fix_signature(lines[i])
                if fixed == lines[i]:
                    print(f"trt_stubs: cannot repair {pyi}:{e.lineno}: {e.msg}", file=sys.stderr)
                    return 1
                lines[i] = fixed
        pyi.write_text("\n".join(lines) + "\n")
    print(f"trt_stubs: checked stubs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".venv/typings"))
