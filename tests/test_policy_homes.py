"""Each policy and value has one home: distill/ imports in one direction (no module of it imports, even from
inside a function, a module that imports it back), build_loss reads exactly the config fields LOSS_FIELDS
names (the fields a student's run key holds), and the package version is written once."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
from test_layers import find_cycle  # one cycle finder for both import checks

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = ["nfdseg", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The modules of `modules` that `path` (module `name`) imports anywhere in its body, functions included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from . import trainer` names a module
    return {m for m in found if m in modules and m != name}


def test_distill_modules_import_each_other_in_one_direction():
    files = {_module_name(p): p for p in sorted((ROOT / "distill").rglob("*.py"))}
    graph = {name: _imports(path, name, set(files)) for name, path in files.items()}
    assert "nfdseg.distill.trainer" in graph["nfdseg.distill.stage"], "the stage decides, then calls the trainer"
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"


def test_the_cycle_finder_finds_a_planted_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


class _Recorder:
    """A DistillConfig that notes each field read."""

    def __init__(self, cfg):
        object.__setattr__(self, "_cfg", cfg)
        object.__setattr__(self, "read", set())

    def __getattr__(self, key):
        self.read.add(key)
        return getattr(self._cfg, key)


@pytest.mark.parametrize("loss", ["nfd", "kd", "cwd", "none"])
def test_build_loss_reads_the_fields_loss_fields_names_and_no_others(loss):
    from nfdseg.distill.config import DistillConfig
    from nfdseg.distill.losses import LOSS_FIELDS, build_loss

    rec = _Recorder(DistillConfig(loss=loss, layers=["head"]))
    build_loss(rec, {"head": 4}, {"head": 4})
    assert rec.read - {"loss"} == set(LOSS_FIELDS[loss])


def test_the_default_weight_is_resolved_where_the_loss_is_built():
    from nfdseg.distill.config import DistillConfig
    from nfdseg.distill.losses import DEFAULT_WEIGHTS, build_loss

    built = build_loss(DistillConfig(loss="nfd", layers=["head"]), {"head": 4}, {"head": 4})
    assert built.weight == DEFAULT_WEIGHTS["nfd"]
    chosen = dataclasses.replace(DistillConfig(loss="kd"), weight=0.5)
    assert build_loss(chosen, {}, {}).weight == 0.5


def test_the_version_is_written_once_in_the_package(tmp_path):
    """pyproject.toml takes the version from nfdseg/__init__.py: a copy with another __version__ builds metadata of
    that version."""
    import re
    import shutil
    import subprocess
    import sys
    import tomllib

    import nfdseg
    from nfdseg.layout import PACKAGE_DIRS

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "nfdseg.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", nfdseg.__version__)

    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "nfdseg", tmp_path / "nfdseg", ignore=shutil.ignore_patterns("__pycache__"))
    for folder in set(PACKAGE_DIRS.values()) - {"nfdseg"}:  # the other packages' folders, empty: only names count
        (tmp_path / folder).mkdir(exist_ok=True)  # nfdseg/data, nfdseg/models came with nfdseg/
        (tmp_path / folder / "__init__.py").write_text("")
    init = tmp_path / "nfdseg" / "__init__.py"
    init.write_text(init.read_text().replace(f'__version__ = "{nfdseg.__version__}"', '__version__ = "9.8.7"'))
    r = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "\nVersion: 9.8.7\n" in (tmp_path / "nfdseg.egg-info" / "PKG-INFO").read_text()


# ------------------------------------------------- issue 29: export settings and batcher defaults from one source
def _parsed(*argv: str):
    from nfdseg.app.cli import build_parser
    from nfdseg.cliargs import parse_command_line

    return parse_command_line(build_parser(), list(argv))


def test_export_flags_default_to_the_export_settings():
    """`nfdseg export CKPT` with no flag builds exactly ExportConfig(): the flags' defaults are the dataclass's."""
    from nfdseg.export.cli import _budget, _export_config
    from nfdseg.export.parity import ParityBudget
    from nfdseg.export.run import ExportConfig

    assert _export_config(_parsed("export", "ckpt")) == ExportConfig()
    assert _budget(_parsed("check", "export_dir")) == ParityBudget()
    import inspect

    from nfdseg.export.triton import write_triton_repository

    triton_batch = inspect.signature(write_triton_repository).parameters["max_batch"].default
    assert triton_batch == ExportConfig().profile.max_batch, "Triton's batches default to the engine profile's"


def test_batcher_defaults_are_the_benchs_and_the_demos():
    """bench's flags, run_bench and bench_concurrency default to serve/batcher.py's values."""
    import inspect

    from nfdseg.serve import bench
    from nfdseg.serve.batcher import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUE, DEFAULT_MAX_WAIT_MS, MicroBatcher

    args = _parsed("bench", "export_dir")
    assert (args.max_batch, args.max_wait_ms) == (DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS)
    for fn in (bench.run_bench, bench.bench_concurrency, MicroBatcher.__init__):
        params = inspect.signature(fn).parameters
        assert (params["max_batch"].default, params["max_wait_ms"].default) == (DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS)
    assert inspect.signature(MicroBatcher.__init__).parameters["max_queue"].default == DEFAULT_MAX_QUEUE


# ---------------------------------------------------------- issue 29: every file and folder name in nfdseg/artifacts.py
def _artifact_names() -> dict[str, str]:
    """{value: constant} for every name nfdseg/artifacts.py spells (plain strings and the values of its tables)."""
    import nfdseg.artifacts as artifacts

    out = {}
    for key, value in vars(artifacts).items():
        if key.isupper():
            for v in value.values() if isinstance(value, dict) else [value]:
                if isinstance(v, str):
                    out[v] = key
    return out


def spelled_names(path: Path, names: dict[str, str]) -> list[str]:
    """Where `path` spells a name of artifacts.py itself: a file name (a string with a dot, or an engine pattern)
    anywhere outside a docstring, or any of the names (folders included) as the right side of a path `/`."""
    tree = ast.parse(path.read_text())
    skip = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    engine = next(v for v, k in names.items() if k == "ENGINE_SUFFIX")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant) \
                and node.right.value in names:
            found.append(f"{path.name}:{node.lineno}: path / {node.right.value!r} ({names[node.right.value]})")
            skip.add(id(node.right))  # reported once
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            v = node.value
            if (v in names and "." in v) or (v.endswith(engine) and v != engine):
                found.append(f"{path.name}:{node.lineno}: {v!r} ({names.get(v, 'ENGINE_SUFFIX')})")
    return found


def _package_sources() -> list[Path]:
    from nfdseg.layout import PACKAGE_DIRS

    return sorted({p for folder in PACKAGE_DIRS.values() for p in (ROOT / folder).rglob("*.py")
                   if p != ROOT / "nfdseg" / "artifacts.py"})


def test_file_and_folder_names_are_spelled_only_in_artifacts():
    names = _artifact_names()
    assert {"teacher", "student", "baseline", "export", "deploy", "timing.cache", ".engine"} <= set(names)
    found = [hit for path in _package_sources() for hit in spelled_names(path, names)]
    assert not found, "names to take from nfdseg/artifacts.py:\n" + "\n".join(found)


def test_the_name_check_finds_planted_spellings(tmp_path):
    """What the issue found (a literal timing cache, a run folder, an engine glob) is reported."""
    planted = tmp_path / "planted.py"
    planted.write_text('def f(out):\n    """out / "deploy" in a docstring is prose."""\n'
                       '    return out / "timing.cache", out / "teacher", out.glob("*.engine"), out / "bench"\n')
    found = spelled_names(planted, _artifact_names())
    assert len(found) == 3 and all(k in " ".join(found) for k in ("TIMING_CACHE", "TEACHER_DIR", "ENGINE_SUFFIX"))


def test_no_alias_names_an_artifact_twice():
    """One constant per name: INT8_FILE / ONNX_BY_PRECISION-style aliases of artifacts.py's names are gone."""
    import nfdseg.artifacts as artifacts
    from nfdseg.export import int8
    from nfdseg.serve import backends

    assert not hasattr(int8, "INT8_FILE") and not hasattr(backends, "ONNX_BY_PRECISION")
    values = [v for k, v in vars(artifacts).items() if k.isupper() and isinstance(v, str)]
    assert len(values) == len(set(values)), "two constants of artifacts.py spell the same name"


def test_ignore_index_and_demo_port_are_defined_once():
    from nfdseg.demo.app import DEFAULT_PORT
    from nfdseg.manifest import IGNORE_INDEX, ClassSpec
    from nfdseg.metrics import ConfusionMatrix

    assert ClassSpec(("a",), ((0, 0, 0),)).ignore_index == IGNORE_INDEX
    assert ConfusionMatrix(2).ignore_index == IGNORE_INDEX
    assert _parsed("demo", "export_dir").port == DEFAULT_PORT
    # the Dockerfile cannot import it: it must expose the same port
    assert f"EXPOSE {DEFAULT_PORT}" in (ROOT / "Dockerfile").read_text()
