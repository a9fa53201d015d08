"""The artifact contract: a typed JSON manifest beside every checkpoint, ONNX file and engine.

Every stage writes one for what it made and reads (and checks) the one of what it consumes.
This module imports numpy-free stdlib only, so the embedded runtime can use it.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import platform
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .config import from_dict, to_dict
from .errors import ArtifactError, ConfigError
from .fsutil import sha256_file, write_json_atomic

FORMAT_VERSION = 1
KINDS = ("checkpoint", "onnx", "engine")
IGNORE_INDEX = 255  # the label value that counts for no class, unless a dataset's class list says otherwise


@dataclass(frozen=True)
class ClassSpec:
    """Class names, their RGB colours, and the label value that means 'ignore'."""

    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.names)


# The normalisation of ImageNet-pretrained backbones, the default of every preset (one home: data configs
# and the manifest read it from here).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes the network input; identical in training, export and serving.

    pixels are scaled to [0, 1] (divided by 255), then (x - mean) / std per channel, in `color_order`.
    `input_size` is (height, width) in pixels; `size_policy` 'resize' stretches any image to it and the
    label map is resized back (nearest) to the original size.
    """

    input_size: tuple[int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    color_order: str = "RGB"
    size_policy: str = "resize"


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype, layout and shape (strings for dynamic axes)."""

    name: str
    dtype: str
    shape: tuple[Any, ...]
    layout: str = ""


@dataclass(frozen=True)
class Int8Info:
    """How a Q/DQ INT8 model was made (export/int8.py): the calibration set and method, and what had to stay float.

    calibration_sha256 hashes the ordered image names and their decoded pixels, so two exports calibrated on
    the same images record the same value. remedies_used lists, in ladder order, the remedies the accepted
    model needed (empty: the first quantization held the parity budget); attempts has one entry per try."""

    quantizer: str
    calibration_method: str
    calibration_images: int
    calibration_split: str
    calibration_sha256: str
    activation_type: str
    weight_type: str
    per_channel: bool
    calibration_s: float = 0.0
    remedies_used: tuple[str, ...] = ()
    nodes_kept_float: tuple[str, ...] = ()
    attempts: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class OnnxInfo:
    opset: int
    ir_version: int
    normalize_in_graph: bool = False
    argmax_in_graph: bool = False
    simplified_with: str = ""
    fp16_converter: str = ""
    kept_fp32_ops: tuple[str, ...] = ()
    kept_fp32_nodes: tuple[str, ...] = ()  # nodes kept float32 because their values leave the float16 range
    fp16_overflow: dict[str, Any] = field(default_factory=dict)  # the scan that chose them (export/overflow.py)
    int8: Int8Info | None = None  # set on model.int8.onnx only


@dataclass(frozen=True)
class EngineInfo:
    tensorrt_version: str
    tensorrt_flavor: str  # "tensorrt" or "tensorrt_rtx"
    gpu_name: str
    compute_capability: str
    precision_requested: str
    precision_built: str
    strongly_typed: bool
    profile: dict[str, Any] = field(default_factory=dict)
    timing_cache: str = ""
    timing_cache_reused: bool = False


@dataclass(frozen=True)
class Manifest:
    """What an artifact is and how it was made. Saved as `<artifact>.json` or a fixed name beside it."""

    kind: str
    artifact: str
    architecture: str
    classes: ClassSpec
    preprocess: PreprocessSpec
    precision: str = "fp32"
    output_kind: str = "logits"  # "logits" (N, C, H, W) or "labels" (N, H, W)
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    sha256: str = ""
    parent_sha256: str = ""
    parent: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    onnx: OnnxInfo | None = None
    engine: EngineInfo | None = None
    created: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return self.classes.num_classes

    def to_json(self) -> dict[str, Any]:
        return to_dict(self)


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def runtime_versions(*modules: str) -> dict[str, str]:
    """Versions of python, nfdseg and the named importable modules (e.g. "torch", "onnxruntime", "tensorrt"), read
    from the module itself where it is already loaded, otherwise from the installed distributions' metadata:
    nothing is imported, so recording torch's version costs nothing
    on a torch-free robot. A module whose distribution is not installed is left out; where several
    distributions provide one module (onnxruntime / onnxruntime-gpu), the installed ones are joined."""
    out = {"python": platform.python_version(), "nfdseg": _dist_version("nfdseg") or "unknown"}
    for name in modules:
        loaded = sys.modules.get(name)  # already imported: its own version string keeps a build tag (+cu130)
        if loaded is not None and isinstance(getattr(loaded, "__version__", None), str):
            out[name] = loaded.__version__
            continue
        versions = [v for d in _distributions_of(name) if (v := _dist_version(d))]
        if versions:
            out[name] = ", ".join(sorted(set(versions)))
    return out


def _distributions_of(module: str) -> list[str]:
    return sorted(set(_packages_distributions().get(module, []))) or [module]


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    import importlib.metadata

    return dict(importlib.metadata.packages_distributions())


def _dist_version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def write_manifest(manifest: Manifest, path: str | Path, hash_artifact: bool = True) -> Manifest:
    """Write `manifest` to `path` (atomically). Fills in sha256 of the artifact (resolved beside `path`)."""
    path = Path(path)
    if manifest.kind not in KINDS:
        raise ValueError(f"manifest kind must be one of {KINDS}, got {manifest.kind!r}")
    changes: dict[str, Any] = {}
    if not manifest.created:
        changes["created"] = now_iso()
    artifact = path.parent / manifest.artifact
    if hash_artifact and artifact.is_file():
        changes["sha256"] = sha256_file(artifact)
    manifest = replace(manifest, **changes) if changes else manifest
    write_json_atomic(path, manifest.to_json())
    return manifest


def read_manifest(path: str | Path, expect_kind: str | None = None, verify_sha: bool = True) -> Manifest:
    """Read and check a manifest: format version, kind, and (optionally) the artifact's sha256."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(
            f"manifest not found: {path}",
            fix="point at a directory or file produced by `nfdseg distill` / `nfdseg export`",
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"manifest {path} is not valid JSON", seen=str(e)) from None
    if not isinstance(data, dict) or "kind" not in data:
        raise ArtifactError(f"{path} is not an nfdseg manifest", seen="no 'kind' field",
                            fix="use the .json written beside the artifact by nfdseg")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"manifest {path} has format version {version}, this nfdseg reads version {FORMAT_VERSION}",
            fix="re-export the artifact with this nfdseg version",
        )
    try:
        manifest = from_dict(Manifest, data)
    except ConfigError as e:
        raise ArtifactError(f"manifest {path} is malformed", seen=str(e)) from None
    if expect_kind and manifest.kind != expect_kind:
        raise ArtifactError(
            f"expected a {expect_kind} manifest, got a {manifest.kind} manifest", seen=str(path)
        )
    artifact = path.parent / manifest.artifact
    if not artifact.is_file():
        raise ArtifactError(f"the artifact named by {path} is missing", seen=str(artifact),
                            fix="copy the artifact together with its manifest")
    if verify_sha and manifest.sha256:
        actual = sha256_file(artifact)
        if actual != manifest.sha256:
            raise ArtifactError(
                f"{artifact} does not match its manifest (sha256 differs): it was changed, truncated or replaced",
                seen=f"manifest {manifest.sha256[:12]}..., file {actual[:12]}...",
                fix="re-export the artifact, or copy the matching file and manifest together",
            )
    return manifest


def default_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """The Pascal VOC bit-interleaved palette: distinct, deterministic colours for any class count."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return tuple(out)
