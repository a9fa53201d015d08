"""The import contract of docs/architecture.md: no import runs upward across the layers.

The layer table is read from docs/architecture.md and the folder of each package from pyproject.toml, so the
doc, the install and this check cannot drift apart. Every import is checked, top-level or inside a function.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH_FREE = {"contract", "data", "runtime"}
HEAVY_THIRD_PARTY = ("torch", "torchvision", "onnx")
# The one runtime module that may reach the models layer (lazily): the torch backend serves a checkpoint.
RUNTIME_TO_MODELS = {"nfdseg.serve.backends.torch_backend"}


def layer_table() -> dict[str, tuple[int, list[str]]]:
    """{layer name: (rank, [package prefixes])} from the first table of docs/architecture.md."""
    table: dict[str, tuple[int, list[str]]] = {}
    for line in (ROOT / "docs/architecture.md").read_text().splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|\s*(\w+)\s*\|([^|]*)\|", line)
        if m:
            prefixes = [p for p in re.findall(r"`(nfdseg[\w.]*)`", m.group(3))]
            table[m.group(2)] = (int(m.group(1)), prefixes)
    return table


def package_dirs() -> dict[str, Path]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return {name: ROOT / folder for name, folder in cfg.items()}


def module_files() -> dict[str, Path]:
    """{dotted module name: file} for every module of the package, as installed."""
    out: dict[str, Path] = {}
    for pkg, folder in package_dirs().items():
        for f in folder.glob("*.py"):
            out[pkg if f.stem == "__init__" else f"{pkg}.{f.stem}"] = f
    return out


def layer_of(module: str, table) -> str:
    best, best_len = None, -1
    for name, (_, prefixes) in table.items():
        for p in prefixes:
            # "`nfdseg` top-level modules": the bare package name stands for its own modules only
            hit = module == p or module.startswith(p + ".") and (p != "nfdseg" or module.count(".") == 1)
            if hit and len(p) > best_len:
                best, best_len = name, len(p)
    if best is None:
        raise LookupError(f"module {module} is in no layer of docs/architecture.md")
    return best


def imports_of(module: str, path: Path):
    """(imported module, line, at module level?) for every import statement in the file."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.stem == "__init__"
    top_level = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) in top_level
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, node.lineno, id(node) in top_level
            for alias in node.names:  # `from nfdseg.serve import backends` imports a module too
                yield f"{target}.{alias.name}", node.lineno, id(node) in top_level


def resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The nfdseg module an import lands in (the longest known prefix), or None for third-party names."""
    parts = target.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in modules:
            return name
    return None


def violations() -> list[str]:
    table, modules = layer_table(), module_files()
    out = []
    for mod, path in sorted(modules.items()):
        src_layer = layer_of(mod, table)
        src_rank = table[src_layer][0]
        for target, line, top in imports_of(mod, path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if target.split(".")[0] in HEAVY_THIRD_PARTY and top and src_layer in TORCH_FREE:
                out.append(f"{where}: {src_layer} module imports {target} at module level")
            dst = resolve(target, modules)
            if dst is None:
                continue
            dst_layer = layer_of(dst, table)
            dst_rank = table[dst_layer][0]
            if dst_rank > src_rank:
                out.append(f"{where}: {mod} ({src_layer}) imports {dst} ({dst_layer}), a layer above")
            elif src_layer == "runtime" and dst_layer == "models" and mod not in RUNTIME_TO_MODELS:
                out.append(f"{where}: {mod} (runtime) imports {dst} (models); only the torch backend may")
            elif top and src_layer in TORCH_FREE and dst_layer not in TORCH_FREE:
                out.append(f"{where}: {mod} ({src_layer}) imports {dst} ({dst_layer}) at module level")
    return out


def test_layer_table_covers_every_module():
    table, modules = layer_table(), module_files()
    assert [name for name, _ in sorted(table.items(), key=lambda kv: kv[1][0])] == [
        "contract", "data", "models", "runtime", "training", "export", "app"]
    for mod in modules:
        layer_of(mod, table)  # raises for a module no layer claims


def test_no_import_runs_upward():
    found = violations()
    assert not found, "imports against docs/architecture.md:\n" + "\n".join(found)


@pytest.mark.parametrize("source, expected", [
    ("from nfdseg.app.pipeline import run_pipeline\n", "(runtime) imports nfdseg.app.pipeline (app)"),
    ("def f():\n    from nfdseg.export import run\n", "(runtime) imports nfdseg.export.run (export)"),
    ("import torch\n", "runtime module imports torch at module level"),
    ("from ..distill import trainer\n", "(runtime) imports nfdseg.distill.trainer (training)"),
    ("def f():\n    from nfdseg.distill.models import build_model\n", "only the torch backend may"),
])
def test_the_check_catches_an_upward_import(tmp_path, monkeypatch, source, expected):
    """A planted upward import in a runtime module must be reported (so the check above can fail)."""
    planted = tmp_path / "planted.py"
    planted.write_text(source)
    real = module_files()
    monkeypatch.setitem(globals(), "module_files", lambda: {**real, "nfdseg.serve.planted": planted})
    monkeypatch.setattr(Path, "relative_to", lambda self, other: self)
    assert any(expected in v for v in violations()), violations()
