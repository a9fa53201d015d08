"""Installed size of the runtime-only nfdseg against the full one ([all]).

Runtime only: a fresh virtual environment, `pip install '<checkout>[cpu]'` (the CPU runtime, no other extra), and the size of its
site-packages on disk (pip and setuptools, which every virtual environment has, are counted apart).
Full: the dependency closure of `nfdseg[all]` as installed in the current environment (the README's
install), summed over each distribution's recorded files. Writes benchmarks/results/install_size_<machine>.json.

    python benchmarks/install_size.py
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import venv
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, git_rev, machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VENV_BASELINE = {"pip", "setuptools", "wheel"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_size(dist: metadata.Distribution) -> int:
    total = 0
    for f in dist.files or []:
        try:
            total += Path(dist.locate_file(f)).stat().st_size
        except OSError:
            pass
    return total


def closure(requirement: str) -> dict[str, int]:
    """{distribution: bytes} for `requirement` and everything it requires, in this environment."""
    sizes: dict[str, int] = {}
    todo = [requirement]
    while todo:
        req = todo.pop()
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(\[([^\]]+)\])?", req)
        name = _norm(m.group(1))
        extras = {e.strip() for e in m.group(3).split(",")} if m.group(3) else set()
        key = f"{name}[{','.join(sorted(extras))}]"
        if key in sizes or name in sizes and not extras:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        sizes.setdefault(name, dist_size(dist))
        if extras:
            sizes[key] = 0  # mark the extras as visited
        for r in dist.requires or []:
            marker = r.split(";", 1)[1] if ";" in r else ""
            wanted = [e for e in extras if re.search(rf"extra\s*==\s*['\"]{e}['\"]", marker)]
            if "extra ==" in marker and not wanted:
                continue
            todo.append(r.split(";", 1)[0].strip())
    return {k: v for k, v in sizes.items() if "[" not in k}


def runtime_only_venv() -> tuple[dict[str, int], int]:
    with tempfile.TemporaryDirectory() as tmp:
        venv.EnvBuilder(with_pip=True).create(tmp)
        py = Path(tmp) / "bin" / "python"
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{ROOT}[cpu]"],
                       check=True)
        code = ("import json, importlib.metadata as m, pathlib\n"
                "out = {}\n"
                "for d in m.distributions():\n"
                "    s = 0\n"
                "    for f in d.files or []:\n"
                "        p = pathlib.Path(d.locate_file(f))\n"
                "        s += p.stat().st_size if p.exists() else 0\n"
                "    out[d.metadata['Name']] = s\n"
                "print(json.dumps(out))")
        sizes = json.loads(subprocess.check_output([str(py), "-c", code], text=True))
        has_torch = subprocess.run([str(py), "-c", "import torch"], capture_output=True).returncode == 0
    sizes = {_norm(k): v for k, v in sizes.items() if _norm(k) not in VENV_BASELINE}
    return sizes, has_torch


def main() -> int:
    runtime, has_torch = runtime_only_venv()
    full = closure("nfdseg[all]")
    mb = lambda d: round(sum(d.values()) / 2**20, 1)  # noqa: E731
    result = {
        "benchmark": "install_size", "machine": machine(), "git": git_rev(),
        "runtime_only": {"install": "pip install 'nfdseg[cpu]'", "size_mb": mb(runtime), "torch_installed": has_torch,
                         "distributions": {k: round(v / 2**20, 2) for k, v in sorted(runtime.items())}},
        "full": {"install": "pip install 'nfdseg[all]' (closure measured in the development environment)",
                 "size_mb": mb(full),
                 "largest": {k: round(v / 2**20, 1) for k, v in sorted(full.items(), key=lambda kv: -kv[1])[:12]}},
    }
    result["ratio_full_to_runtime"] = round(result["full"]["size_mb"] / max(result["runtime_only"]["size_mb"], 1e-9), 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"install_size_{result['machine']['tag']}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"runtime only: {result['runtime_only']['size_mb']} MB (torch installed: {has_torch}); "
          f"full [all]: {result['full']['size_mb']} MB -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
