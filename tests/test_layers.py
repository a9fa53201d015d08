"""The import contract of docs/architecture.md: no import runs upward across the layers.

What is read, and from where (so the doc, the install and this check cannot drift apart):
- the layers, their packages and folders, what each may import (nfdseg layers and third-party modules) come from
  the first table of docs/architecture.md;
- where a package lives comes from Python's import system (the install applied pyproject's package-dir; nothing
  here parses it);
- which third-party packages are heavy comes from pyproject's extras: a distribution named by an extra and not by
  the core dependencies.

What counts as an import: `import` / `from ... import` statements anywhere, and `importlib.import_module("...")` /
`__import__("...")` with a constant name. What counts as import time: everything outside a function body (a
`try:`, `if` or `with` block at module level, a class body, a decorator or a default value all run on import);
only an `if TYPE_CHECKING:` block is exempt, since it never runs.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import pkgutil
import re
import sys
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What `pip install nfdseg` (no extra) must be able to import: these layers may import only core dependencies at
# import time, and none of the layers above them (docs/architecture.md says the same).
BASE_INSTALL = ("contract", "data", "runtime")


@dataclass(frozen=True)
class Layer:
    rank: int
    name: str
    packages: tuple[str, ...]
    folders: tuple[str, ...]
    may_import: dict[str, tuple[str, ...] | None]  # layer -> None (any module) or the only modules allowed
    third_party: frozenset[str]  # import names allowed at import time
    third_party_lazy: frozenset[str]  # import names allowed only inside functions


def _cell_names(cell: str) -> list[str]:
    return re.findall(r"`([\w.]+)`", cell)


@lru_cache(maxsize=1)
def layer_table() -> dict[str, Layer]:
    """{layer name: Layer} from the first table of docs/architecture.md."""
    rows = []
    for line in (ROOT / "docs/architecture.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].isdigit():
            rows.append(cells)
    names = [r[1] for r in rows]
    table = {}
    for rank, name, packages, may, third in rows:
        allowed: dict[str, tuple[str, ...] | None] = {}
        for part in re.split(r",(?![^(]*\))", may):  # commas outside parentheses
            m = re.match(r"\s*(\w+)\s*(\((.*)\))?", part)
            if m and m.group(1) in names:
                only = tuple(n for n in _cell_names(m.group(3) or "") if n.startswith("nfdseg"))
                allowed[m.group(1)] = only or None
        eager, _, lazy = third.partition("lazily:")
        pkgs = [n for n in _cell_names(packages) if n.startswith("nfdseg")]
        folders = [n.rstrip("/") for n in re.findall(r"`([\w/]+/)`", packages)]
        table[name] = Layer(int(rank), name, tuple(pkgs), tuple(folders), allowed, frozenset(_cell_names(eager)),
                            frozenset(_cell_names(lazy)))
    return table


def package_folder(package: str) -> Path:
    """Where the import system finds `package` (as installed: `pip install -e .` maps it to a checkout folder)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LookupError(f"{package} (docs/architecture.md) is not an importable package: pip install -e .")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def module_files() -> dict[str, Path]:
    """{dotted module name: file} for every module of every package the layer table names."""
    out: dict[str, Path] = {}
    for layer in layer_table().values():
        for pkg in layer.packages:
            folder = package_folder(pkg)
            out[pkg] = folder / "__init__.py"
            recurse = pkg != "nfdseg"  # the contract is nfdseg's own modules; its subpackages are other layers
            for info in pkgutil.walk_packages([str(folder)], prefix=pkg + ".") if recurse else \
                    pkgutil.iter_modules([str(folder)], prefix=pkg + "."):
                sub = folder.joinpath(*info.name[len(pkg) + 1:].split("."))
                out[info.name] = sub / "__init__.py" if info.ispkg else sub.with_suffix(".py")
    return out


def layer_of(module: str) -> Layer:
    best, best_len = None, -1
    for layer in layer_table().values():
        for p in layer.packages:
            # "`nfdseg` top-level modules": the bare package name stands for its own modules only
            hit = module == p or module.startswith(p + ".") and (p != "nfdseg" or module.count(".") == 1)
            if hit and len(p) > best_len:
                best, best_len = layer, len(p)
    if best is None:
        raise LookupError(f"module {module} is in no layer of docs/architecture.md")
    return best


@lru_cache(maxsize=1)
def heavy_modules() -> frozenset[str]:
    """Import names of the distributions pyproject's extras add to the core install."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def dist(req: str) -> str:
        return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")

    core = {dist(r) for r in project["dependencies"]}
    extra = {dist(r) for reqs in project["optional-dependencies"].values() for r in reqs} - core - {"nfdseg"}
    by_dist: dict[str, set[str]] = {}
    for top, dists in importlib.metadata.packages_distributions().items():
        for d in dists:
            by_dist.setdefault(d.lower().replace("_", "-"), set()).add(top)
    return frozenset(m for d in extra for m in by_dist.get(d, {d.replace("-", "_")}))


class _Imports(ast.NodeVisitor):
    """(imported module, line, at import time?) for every import of a module's source."""

    def __init__(self, module: str, is_pkg: bool):
        self.module, self.is_pkg, self.depth, self.found = module, is_pkg, 0, []

    def _add(self, name: str, node: ast.AST) -> None:
        self.found.append((name, node.lineno, self.depth == 0))

    def _in_function(self, node) -> None:
        for d in node.decorator_list:
            self.visit(d)
        self.visit(node.args)  # defaults run at import time
        self.depth += 1
        for stmt in node.body:
            self.visit(stmt)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = _in_function

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    def visit_If(self, node: ast.If) -> None:
        if isinstance(node.test, (ast.Name, ast.Attribute)) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            for stmt in node.orelse:
                self.visit(stmt)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.module.split(".") if self.is_pkg else self.module.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        self._add(target, node)
        for alias in node.names:  # `from nfdseg.serve import backends` imports a module too
            self._add(f"{target}.{alias.name}", node)

    def visit_Call(self, node: ast.Call) -> None:
        name = ast.unparse(node.func)
        if name in ("importlib.import_module", "import_module", "__import__") and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            self._add(node.args[0].value, node)
        self.generic_visit(node)


def imports_of(module: str, path: Path) -> list[tuple[str, int, bool]]:
    visitor = _Imports(module, path.stem == "__init__")
    visitor.visit(ast.parse(path.read_text(), str(path)))
    return visitor.found


def resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The nfdseg module an import lands in (the longest known prefix), or None for a name outside nfdseg."""
    parts = target.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in modules:
            return name
    return None


def allowed_third_party(layer: Layer) -> tuple[set[str], set[str]]:
    """(at import time, lazily) third-party names a layer may use: its own and those of the layers it imports."""
    table = layer_table()
    eager, lazy = set(layer.third_party), set(layer.third_party_lazy)
    for below, only in layer.may_import.items():
        if only is None:
            eager |= table[below].third_party
            lazy |= table[below].third_party_lazy
    return eager, lazy | eager


def violations(modules: dict[str, Path] | None = None) -> list[str]:
    modules = module_files() if modules is None else modules
    heavy = heavy_modules()
    out = []
    for mod, path in sorted(modules.items()):
        src = layer_of(mod)
        eager_ok, lazy_ok = allowed_third_party(src)
        for target, line, at_import in imports_of(mod, path):
            where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}"
            when = "at import time" if at_import else "inside a function"
            dst = resolve(target, modules)
            if dst is None:
                top = target.split(".")[0]
                if not top or top in sys.stdlib_module_names or top == "nfdseg" or top == "__future__":
                    continue
                if top not in (eager_ok if at_import else lazy_ok):
                    out.append(f"{where}: {mod} ({src.name}) imports {top} {when}; docs/architecture.md does not "
                               f"allow it for the {src.name} layer")
                elif at_import and src.name in BASE_INSTALL and top in heavy:
                    out.append(f"{where}: {mod} ({src.name}) imports {top} at import time, which only an extra "
                               f"installs (pyproject.toml)")
                continue
            dst_layer = layer_of(dst)
            if dst_layer.name == src.name:
                continue
            if dst_layer.name not in src.may_import:
                direction = "a layer above" if dst_layer.rank > src.rank else "a layer it may not import"
                out.append(f"{where}: {mod} ({src.name}) imports {dst} ({dst_layer.name}), {direction}")
                continue
            only = src.may_import[dst_layer.name]
            if only is not None and mod not in only:
                out.append(f"{where}: {mod} ({src.name}) imports {dst} ({dst_layer.name}); only "
                           f"{', '.join(only)} may")
            elif only is not None and at_import:
                out.append(f"{where}: {mod} ({src.name}) imports {dst} ({dst_layer.name}) at import time; only "
                           "lazily, inside a function")
            elif at_import and src.name in BASE_INSTALL and dst_layer.name not in BASE_INSTALL:
                out.append(f"{where}: {mod} ({src.name}) imports {dst} ({dst_layer.name}) at import time")
    return out


# ----------------------------------------------------------------------------------------------------- the checks
def test_layer_table_matches_the_folders():
    table = layer_table()
    assert [layer.name for layer in sorted(table.values(), key=lambda l: l.rank)] == [
        "contract", "data", "models", "runtime", "training", "export", "demo", "app"]
    for layer in table.values():
        assert [package_folder(p) for p in layer.packages] == [(ROOT / f).resolve() for f in layer.folders], \
            f"docs/architecture.md names other folders for the {layer.name} layer than the install maps"
        assert all(table[b].rank < layer.rank for b in layer.may_import), f"{layer.name} may import upward"
    modules = module_files()
    for mod in modules:
        layer_of(mod)  # raises for a module no layer claims
    # every Python package folder in the checkout belongs to some layer
    claimed = {p.parent.resolve() for p in modules.values()}
    for init in ROOT.glob("*/__init__.py"):
        assert init.parent.resolve() in claimed, f"{init.parent.name}/ is a package no layer claims"


def test_heavy_packages_come_from_the_extras():
    heavy = heavy_modules()
    assert {"torch", "torchvision", "onnx", "matplotlib", "gradio"} <= heavy
    assert not {"numpy", "PIL", "yaml"} & heavy


def test_no_import_runs_upward():
    found = violations()
    assert not found, "imports against docs/architecture.md:\n" + "\n".join(found)


def _planted(target: str, source: str, tmp_path: Path, append: bool = True) -> dict[str, Path]:
    modules = module_files()
    planted = tmp_path / modules[target].name
    planted.write_text((modules[target].read_text() + "\n" if append else "") + source)
    return {**modules, target: planted}


# The violations a review planted in a clone of the older check, which passed them all, and the classic ones.
PLANTED = [
    ("nfdseg.serve.segmenter", "try:\n    import torch\nexcept ImportError:\n    torch = None\n",
     "imports torch at import time"),
    ("nfdseg.serve.batcher", "import importlib\n_run = importlib.import_module('nfdseg.export.run')\n",
     "imports nfdseg.export.run (export), a layer above"),
    ("nfdseg.data.config", "import matplotlib\n", "imports matplotlib at import time; docs/architecture.md"),
    ("nfdseg.serve.segmenter", "for _m in ('x',):\n    __import__('nfdseg.app.pipeline')\n",
     "imports nfdseg.app.pipeline (app), a layer above"),
    ("nfdseg.manifest", "def _versions():\n    import torch\n    return torch.__version__\n",
     "(contract) imports torch inside a function"),
    ("nfdseg.manifest", "def _versions():\n    import tensorrt\n", "(contract) imports tensorrt inside a function"),
    ("nfdseg.serve.segmenter", "class X:\n    import onnx\n", "imports onnx at import time"),
    ("nfdseg.serve.segmenter", "with open(__file__):\n    from nfdseg.distill import trainer\n",
     "imports nfdseg.distill.trainer (training), a layer above"),
    ("nfdseg.serve.segmenter", "def f():\n    from nfdseg.export import run\n",
     "imports nfdseg.export.run (export), a layer above"),
    ("nfdseg.serve.segmenter", "def f():\n    from nfdseg.models import build_model\n",
     "only nfdseg.serve.backends.torch_backend may"),
    ("nfdseg.serve.backends.torch_backend", "from nfdseg.models import build_model\n",
     "at import time; only lazily"),
    ("nfdseg.data.sources", "from ..serve import segmenter\n",
     "imports nfdseg.serve.segmenter (runtime), a layer above"),
    ("nfdseg.demo.app", "def f():\n    from nfdseg.distill import trainer\n",
     "imports nfdseg.distill.trainer (training), a layer it may not import"),
]


@pytest.mark.parametrize("target, source, expected", PLANTED, ids=[f"{t}:{e[:30]}" for t, _, e in PLANTED])
def test_the_check_catches_a_planted_violation(tmp_path, target, source, expected):
    """Each planted import must be reported (so the check above can fail)."""
    found = violations(_planted(target, source, tmp_path))
    assert any(expected in v for v in found), found


def test_type_checking_blocks_and_clean_plants_pass(tmp_path):
    """What never runs, or runs lazily where the table allows it, is not a violation."""
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n"
              "def f():\n    import onnxruntime\n    from nfdseg.data import build_source\n")
    assert violations(_planted("nfdseg.serve.segmenter", source, tmp_path)) == []


# ------------------------------------------------------------------------------ no import circle inside a folder
def all_imports(module: str, path: Path) -> set[str]:
    """Every module name `module` imports anywhere: at import time, inside functions, and under `if
    TYPE_CHECKING:` too (a circle that only type checkers see is still a circle in the design)."""
    package = module if path.stem == "__init__" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from . import stream` names a module
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("importlib.import_module", "import_module",
                                                                      "__import__") \
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            found.add(node.args[0].value)
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """{module: the modules of its own layer it imports}. A package's __init__ is left out as a target: importing
    `nfdseg.serve.x` runs `nfdseg.serve/__init__` first, but the package re-exporting its modules is not a circle
    between them."""
    graph = {}
    for mod, path in modules.items():
        layer = layer_of(mod).name
        targets = {resolve(t, modules) for t in all_imports(mod, path)}
        graph[mod] = {t for t in targets if t and t != mod and layer_of(t).name == layer
                      and modules[t].name != "__init__.py"}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_circle_inside_a_folder():
    cycle = find_cycle(import_graph(module_files()))
    assert cycle is None, "import circle (lazy and TYPE_CHECKING imports count): " + " -> ".join(cycle)


def test_the_circle_check_catches_a_planted_circle(tmp_path):
    """The serve circle issue 29 found, planted back: stream.py importing the batcher under TYPE_CHECKING."""
    planted = _planted("nfdseg.serve.stream", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                              "    from .batcher import MicroBatcher\n", tmp_path)
    cycle = find_cycle(import_graph(planted))
    assert cycle is not None and "nfdseg.serve.stream" in cycle and "nfdseg.serve.batcher" in cycle, cycle
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
