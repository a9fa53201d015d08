"""One pip command per deployment target ends with exactly one onnxruntime build, of the right kind.

onnxruntime (CPU) and onnxruntime-gpu share one import name: with both installed the last one wins, often the
CPU build, and a GPU server runs on its CPU. Each target's command (docs/deploying.md, "Install") is put to
pip's resolver as a dry run from this checkout (`--ignore-installed`: as on a fresh machine) and the report must
hold one onnxruntime distribution: the CPU build for `cpu` (and `all`, the development set), onnxruntime-gpu
built for CUDA 12 / CUDA 13 for `gpu-cu12` / `gpu-cu13` (the CUDA major read from the wheel's own
`[cuda]` requirements, not from a version rule), nothing for the bare core. The Jetson target resolves for
aarch64 / Python 3.10 (JetPack 6) against a stand-in for NVIDIA's Jetson AI Lab index (not reachable here),
and without that index must fail rather than fall back to a CPU build.

pip runs `--isolated` (this machine's constraints file and local wheel folder do not decide), and `all-cu12` is also
resolved for Python 3.10 (the 24.08 image) and 3.12 (the default image). The Jetson stand-in carries the real
onnxruntime-gpu 1.23.0's requirements, read from PyPI. The TensorRT install hint is resolved too.

Slow (pip asks the package index for metadata): every dry run the selected tests need starts at once when the
first of them runs (`resolver`), so the module takes about as long as its slowest resolution; skips with the
reason when the index cannot be reached.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
OFFLINE = ("Failed to establish", "Temporary failure", "Network is unreachable", "Max retries exceeded",
           "Could not fetch URL", "connection timed out", "Read timed out")
PARALLEL = 6  # pip dry runs at once: each waits on the package index most of its time (~4 CPU-min in all)
TIMEOUT_S = 900  # per run, from its start: generous, since a slow index (or a busy CPU) is not a failure


def _run_pip(args: list[str], env: dict | None = None):
    # --isolated: this machine's pip configuration (a constraints file capping torch, a local wheel folder, extra
    # indexes) must not decide what a user's machine would get
    cmd = [sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed", "--quiet",
           "--disable-pip-version-check", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=ROOT,
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return f"pip's resolver did not answer within {TIMEOUT_S} s (package index slow or unreachable)"


def _checked(r) -> subprocess.CompletedProcess:
    """A finished pip run; the test skips with the reason when the package index could not be reached."""
    if isinstance(r, str):
        pytest.skip(r)
    if r.returncode != 0 and any(s in r.stderr for s in OFFLINE):
        pytest.skip(f"pip could not reach the package index: {r.stderr.strip().splitlines()[-1]}")
    return r


def onnxruntime_builds(dists: dict[str, dict]) -> list[str]:
    return sorted(n for n in dists if n.startswith("onnxruntime") and not n.startswith("onnxruntime-genai")
                  and n != "onnxruntime-extensions")


def cuda_major(metadata: dict) -> int:
    """The CUDA major an onnxruntime-gpu wheel is built for, from its `[cuda]` extra's runtime requirement
    (nvidia-cuda-runtime-cu12~=12.0 up to 1.26; nvidia-cuda-runtime-cu13 / nvidia-cuda-runtime ~=13.0 after)."""
    for req in metadata.get("requires_dist") or []:
        m = re.match(r"nvidia-cuda-runtime(?:-cu(\d+))?\s*~=\s*(\d+)", req)
        if m and 'extra == "cuda"' in req:
            return int(m.group(1) or m.group(2))
    raise AssertionError(f"no CUDA runtime requirement in onnxruntime-gpu {metadata['version']}'s metadata")


def _stub_wheel(folder: Path, name: str, version: str, tag: str, requires: tuple[str, ...] = (),
                requires_python: str = "") -> Path:
    """A minimal valid wheel (metadata only) standing in for the Jetson AI Lab index's onnxruntime-gpu."""
    dist = f"{name.replace('-', '_')}-{version}"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += f"Requires-Python: {requires_python}\n" if requires_python else ""
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {f"{dist}.dist-info/METADATA": meta,
             f"{dist}.dist-info/WHEEL": f"Wheel-Version: 1.0\nGenerator: stub\nRoot-Is-Purelib: false\nTag: {tag}\n"}
    record = "".join(f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(t.encode()).digest()).rstrip(b'=').decode()},"
                     f"{len(t)}\n" for p, t in files.items()) + f"{dist}.dist-info/RECORD,,\n"
    path = folder / f"{dist}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, t in {**files, f"{dist}.dist-info/RECORD": record}.items():
            z.writestr(p, t)
    return path


def _build_wheel(out: Path):
    """nfdseg's wheel, built from a copy (an in-tree build would leave build/ in the checkout)."""
    src = out / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "tests", "benchmarks", "runs", "build", "dist",
                                                             "*.egg-info", "__pycache__", "docs", "examples"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check",
                        "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        return r  # the test that needs it reports why
    return next(out.glob("nfdseg-*.whl"))


JETSON = ["--only-binary=:all:", "--platform", "linux_aarch64", "--platform", "manylinux2014_aarch64",
          "--python-version", "3.10", "--implementation", "cp"]
TARGETS = [  # (extra, the onnxruntime build it must bring, its CUDA major)
    ("cpu", "onnxruntime", None),
    ("gpu-cu12", "onnxruntime-gpu", 12),
    ("gpu-cu13", "onnxruntime-gpu", 13),
    ("all", "onnxruntime", None),  # the README's pipeline install (and, through [dev], the test install)
    ("all-cu13", "onnxruntime-gpu", 13),  # the Docker image
]
IMAGE_PYTHONS = ["3.10", "3.12"]  # all-cu12 on the 24.08 image's Python and on the default image's Python
JETSON_ORT = "onnxruntime-gpu==1.23.0"  # what the Jetson AI Lab's wheel is built from
WHEEL_RUNS = ("all-cu12", "jetson", "jetson-without-index", "openvino-aarch64")  # runs that install nfdseg from its built wheel


def _aarch64(glibc_minor: int) -> list[str]:
    """pip's platform tags for a Linux aarch64 machine with glibc 2.<glibc_minor>: every manylinux tag it accepts,
    as pip lists them on such a machine (pip does not expand one --platform tag to the older ones)."""
    tags = ["linux_aarch64", "manylinux2014_aarch64",
            *(f"manylinux_2_{m}_aarch64" for m in range(glibc_minor, 16, -1))]
    return ["--only-binary=:all:", *(a for t in tags for a in ("--platform", t)),
            "--python-version", "3.10", "--implementation", "cp"]


class Resolver:
    """Every pip dry run of this module, by name, started together in a thread pool; `dists(name)` waits for one.

    A run is (pip arguments, environment, what it needs first): runs that install nfdseg from its wheel wait for the
    wheel, the Jetson run for the stand-in index made from onnxruntime-gpu 1.23.0's real metadata."""

    def __init__(self, work: Path):
        self.work = work
        self.pool = ThreadPoolExecutor(PARALLEL, thread_name_prefix="pip")
        self.runs: dict[str, Future] = {}
        self._wheel: Future | None = None
        self._lock = threading.Lock()

    def wheel(self) -> Path:
        with self._lock:
            if self._wheel is None:
                self._wheel = self.pool.submit(_build_wheel, self.work / "wheel")
        w = self._wheel.result()
        if isinstance(w, Path):
            return w
        if any(s in w.stderr for s in OFFLINE):
            pytest.skip(f"pip could not reach the package index to build the wheel: {w.stderr.strip().splitlines()[-1]}")
        raise AssertionError(w.stderr[-2000:])

    def _plan(self, name: str) -> tuple[list[str], dict | None]:
        kind, _, arg = name.partition(":")
        target = ["--target", str(self.work / name.replace(":", "_") / "t")]
        if kind == "extra":
            return [f"{ROOT}[{arg}]"], None
        if kind == "core":
            return [str(ROOT)], None
        if kind == "core-under-a-constraint":  # a constraints file forbidding numpy, in pip's environment
            folder = self.work / "constraint"
            folder.mkdir(exist_ok=True)
            (folder / "constraints.txt").write_text("numpy<0\n")
            return [str(ROOT)], {"PIP_CONSTRAINT": str(folder / "constraints.txt"), "PIP_FIND_LINKS": str(folder)}
        if kind == "meta":  # one requirement's own metadata for x86-64 Linux, Python 3.10 wheels ("meta:" + it)
            return ["--no-deps", "--only-binary=:all:", "--python-version", "3.10", "--implementation", "cp",
                    *target, arg], None
        if kind == "meta-any":  # the same for this interpreter, sdists allowed (NVIDIA's TensorRT metapackages)
            return ["--no-deps", arg], None
        if kind == "all-cu12":
            return ["--only-binary=:all:", "--python-version", arg, "--implementation", "cp", *target,
                    f"nfdseg[all-cu12] @ {self.wheel().as_uri()}"], None
        if kind == "jetson":
            index = self.work / "jetson-ai-lab"
            index.mkdir(exist_ok=True)
            meta = self.metadata(f"meta:{JETSON_ORT}")
            _stub_wheel(index, "onnxruntime-gpu", JETSON_ORT.split("==")[1], "cp310-cp310-linux_aarch64",
                        tuple(meta.get("requires_dist") or ()), meta.get("requires_python") or "")
            return [*JETSON, *target, "--find-links", str(index), f"nfdseg[jetson] @ {self.wheel().as_uri()}"], None
        if kind == "openvino-aarch64":  # glibc 2.<arg>; "2014": only the manylinux2014 tag (glibc 2.17)
            tags = (["--only-binary=:all:", "--platform", "manylinux2014_aarch64", "--python-version", "3.10",
                     "--implementation", "cp"] if arg == "2014" else _aarch64(int(arg)))
            return [*tags, *target, f"nfdseg[openvino] @ {self.wheel().as_uri()}"], None
        if kind == "jetson-without-index":
            return [*JETSON, *target, f"nfdseg[jetson] @ {self.wheel().as_uri()}"], None
        raise KeyError(name)

    def _run(self, name: str):
        try:
            args, env = self._plan(name)
        except BaseException as e:  # a skip or failure while preparing: handed to the test that waits for it
            return e
        report = self.work / f"{name.replace(':', '_').replace('/', '_')}.report.json"
        return _run_pip([*args, "--report", str(report)], env), report

    def start(self, *names: str) -> None:
        for n in names:
            if n.split(":")[0] in WHEEL_RUNS:
                with self._lock:  # queued before the runs that wait for it
                    if self._wheel is None:
                        self._wheel = self.pool.submit(_build_wheel, self.work / "wheel")
            if n not in self.runs:
                self.runs[n] = self.pool.submit(self._run, n)

    def result(self, name: str) -> tuple[subprocess.CompletedProcess, Path]:
        self.start(name)
        out = self.runs[name].result()
        if isinstance(out, BaseException):
            raise out
        r, report = out
        return _checked(r), report

    def dists(self, name: str) -> dict[str, dict]:
        r, report = self.result(name)
        assert r.returncode == 0, r.stderr[-3000:]
        return {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]
                for i in json.loads(report.read_text())["install"]}

    def metadata(self, name: str) -> dict:
        r, report = self.result(name)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(report.read_text())["install"][0]["metadata"]


def _tensorrt_specs() -> dict[int, str]:
    from nfdseg.serve.backends.trt_compat import tensorrt_pip_spec

    return {cuda: tensorrt_pip_spec(cuda) for cuda in (12, 13)}


NEEDS = {  # the runs each test waits for: started together before the first of them
    "test_each_target_resolves_to_exactly_one_onnxruntime": lambda: [f"extra:{e}" for e, _, _ in TARGETS],
    "test_the_bare_core_brings_no_onnxruntime": lambda: ["core"],
    "test_this_machines_pip_configuration_does_not_decide": lambda: ["core-under-a-constraint"],
    "test_jetson_resolves_to_the_jetson_build_only": lambda: [f"meta:{JETSON_ORT}", "jetson"],
    "test_all_cu12_resolves_on_the_images_pythons": lambda: [f"all-cu12:{p}" for p in IMAGE_PYTHONS],
    "test_the_tensorrt_hint_installs_the_build_for_the_drivers_cuda":
        lambda: [f"meta-any:{s}" for s in _tensorrt_specs().values()] + ["meta-any:tensorrt>=10,<11"],
    "test_jetson_without_its_index_fails_instead_of_taking_a_cpu_build": lambda: ["jetson-without-index"],
    "test_openvino_extra_resolves_on_aarch64_without_torch": lambda: ["openvino-aarch64:35", "openvino-aarch64:2014"],
}


@pytest.fixture(scope="module")
def resolver(request, tmp_path_factory):
    r = Resolver(tmp_path_factory.mktemp("pip"))
    chosen = {item.originalname for item in request.session.items if item.module is request.module}
    for test in sorted(chosen & NEEDS.keys()):
        r.start(*NEEDS[test]())
    yield r
    r.pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("extra, build, cuda", TARGETS)
def test_each_target_resolves_to_exactly_one_onnxruntime(resolver, extra, build, cuda):
    dists = resolver.dists(f"extra:{extra}")
    assert onnxruntime_builds(dists) == [build], f"nfdseg[{extra}] would install {onnxruntime_builds(dists)}"
    if cuda is not None:
        assert cuda_major(dists[build]) == cuda, f"nfdseg[{extra}] resolved onnxruntime-gpu {dists[build]['version']}"
        libs = {n for n in dists if n.startswith("nvidia-cudnn")}
        assert libs == {f"nvidia-cudnn-cu{cuda}"}, f"cuDNN from pip for CUDA {cuda}: {libs}"


def test_the_bare_core_brings_no_onnxruntime(resolver):
    dists = resolver.dists("core")
    assert onnxruntime_builds(dists) == [] and "torch" not in dists
    assert {"numpy", "pillow", "pyyaml", "tqdm"} <= set(dists)


def test_this_machines_pip_configuration_does_not_decide(resolver):
    """A constraints file in pip's configuration (this machine caps torch through one) would make every
    resolution answer for this machine instead of a user's: one that forbids numpy must change nothing."""
    dists = resolver.dists("core-under-a-constraint")
    assert "numpy" in dists and not dists["numpy"]["version"].startswith("0")


def test_jetson_resolves_to_the_jetson_build_only(resolver):
    # The Jetson AI Lab wheel is built from the same source as PyPI's onnxruntime-gpu 1.23.0: the stand-in carries
    # that release's requirements and Python requirement, so a conflict with them shows here
    dists = resolver.dists("jetson")
    assert onnxruntime_builds(dists) == ["onnxruntime-gpu"] and dists["onnxruntime-gpu"]["version"] == "1.23.0"
    assert dists["cuda-python"]["version"].startswith("12."), "JetPack 6 has a CUDA 12 driver: cuda-python 12"
    assert {"numpy", "protobuf", "sympy"} <= set(dists), "the stand-in's own requirements were resolved"


@pytest.mark.parametrize("python", IMAGE_PYTHONS)
def test_all_cu12_resolves_on_the_images_pythons(resolver, python):
    dists = resolver.dists(f"all-cu12:{python}")
    assert onnxruntime_builds(dists) == ["onnxruntime-gpu"] and cuda_major(dists["onnxruntime-gpu"]) == 12
    assert dists["cuda-python"]["version"].startswith("12.") and "torch" in dists
    assert {n for n in dists if n.startswith("nvidia-cudnn")} == {"nvidia-cudnn-cu12"}


@pytest.mark.parametrize("cuda", [12, 13])
def test_the_tensorrt_hint_installs_the_build_for_the_drivers_cuda(resolver, cuda):
    """trt_compat's hint for a CUDA 12 driver must not bring the CUDA 13 build (the bare `tensorrt` metapackage
    does since 10.13.2, which is why the hint names tensorrt-cu12 / -cu13)."""
    meta = resolver.metadata(f"meta-any:{_tensorrt_specs()[cuda]}")
    reqs = [r for r in meta.get("requires_dist") or () if "extra ==" not in r]
    assert meta["version"].startswith("10.") and reqs
    assert all(r.lower().replace("-", "_").startswith(f"tensorrt_cu{cuda}_") for r in reqs), reqs
    bare = resolver.metadata("meta-any:tensorrt>=10,<11")
    assert any(r.replace("-", "_").startswith("tensorrt_cu13") for r in bare["requires_dist"]), bare["requires_dist"]


def test_jetson_without_its_index_fails_instead_of_taking_a_cpu_build(resolver):
    r, _ = resolver.result("jetson-without-index")
    assert r.returncode != 0 and "onnxruntime-gpu" in r.stderr and "No matching distribution" in r.stderr, r.stderr


def test_openvino_extra_resolves_on_aarch64_without_torch(resolver):
    """`nfdseg[openvino]` on an ARM board (Python 3.10): OpenVINO's aarch64 wheels need glibc 2.31 or newer, so it
    resolves on Ubuntu 22.04 / JetPack 6 (glibc 2.35) with no torch and no onnxruntime, and on a glibc-2.17
    (manylinux2014-only) system it stops with a clear resolver error instead of an old OpenVINO."""
    dists = resolver.dists("openvino-aarch64:35")
    assert "openvino" in dists and int(dists["openvino"]["version"].split(".")[0]) >= 2024
    assert "torch" not in dists and onnxruntime_builds(dists) == [], sorted(dists)
    r, _ = resolver.result("openvino-aarch64:2014")
    assert r.returncode != 0 and "openvino>=2024.0" in r.stderr, r.stderr[-2000:]
