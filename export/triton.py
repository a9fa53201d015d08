"""A Triton Inference Server model repository: the ONNX (and the TensorRT plan when built), each with a
config.pbtxt that enables dynamic batching and whose names, dtypes and dims come from the manifest."""

from __future__ import annotations

import shutil
from pathlib import Path

from nfdseg.artifacts import ONNX_FP32, TRITON_CONFIG, TRITON_MANIFEST, TRITON_PLAN, TRITON_VERSION_DIR, manifest_path
from nfdseg.fsutil import write_text_atomic
from nfdseg.manifest import Manifest, TensorSpec

from .onnx2engine import EngineProfile

TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8", "int32": "TYPE_INT32",
                 "int64": "TYPE_INT64"}


def _dims(spec: TensorSpec) -> list[int]:
    """Triton dims exclude the batch axis; dynamic axes are -1."""
    return [d if isinstance(d, int) else -1 for d in spec.shape[1:]]


def config_pbtxt(model_name: str, platform: str, m: Manifest, max_batch: int, preferred: list[int],
                 queue_delay_us: int = 2000, kind: str = "KIND_GPU") -> str:
    inp, out = m.inputs[0], m.outputs[0]
    fmt = {"NCHW": "FORMAT_NCHW", "NHWC": "FORMAT_NHWC"}.get(inp.layout, "FORMAT_NONE")
    pref = ", ".join(str(p) for p in preferred if p <= max_batch)
    return f"""# written by nfdseg from the artifact manifest ({m.architecture}, {m.num_classes} classes, {m.precision})
name: "{model_name}"
platform: "{platform}"
max_batch_size: {max_batch}
input [
  {{
    name: "{inp.name}"
    data_type: {TRITON_DTYPES[inp.dtype]}
    format: {fmt}
    dims: {_dims(inp)}
  }}
]
output [
  {{
    name: "{out.name}"
    data_type: {TRITON_DTYPES[out.dtype]}
    dims: {_dims(out)}
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {pref} ]
  max_queue_delay_microseconds: {queue_delay_us}
}}
instance_group [
  {{
    count: 1
    kind: {kind}
  }}
]
"""


def write_triton_repository(repo: Path, onnx_path: Path, onnx_manifest: Manifest, engine_path: Path | None = None,
                            engine_manifest: Manifest | None = None, name: str = "nfdseg",
                            max_batch: int = EngineProfile.max_batch) -> list[Path]:
    """Write <repo>/<name>_onnx/{config.pbtxt,1/model.onnx} and, with an engine, <name>_trt/{...,1/model.plan}.
    Also copies the manifests (as 1/manifest.json) so a client can find classes and preprocessing."""
    written = []
    models = [(f"{name}_onnx", "onnxruntime_onnx", onnx_path, onnx_manifest, ONNX_FP32, "KIND_AUTO")]
    if engine_path is not None and engine_manifest is not None:
        models.append((f"{name}_trt", "tensorrt_plan", engine_path, engine_manifest, TRITON_PLAN, "KIND_GPU"))
    max_trt = max_batch
    if engine_manifest is not None and engine_manifest.engine and engine_manifest.engine.profile:
        lo_opt_hi = next(iter(engine_manifest.engine.profile.values()))
        max_trt = min(max_batch, int(lo_opt_hi[2][0]))  # the profile's max batch bounds Triton's batches
    for model_name, platform, src, m, fname, kind in models:
        mb = max_trt if platform == "tensorrt_plan" else max_batch
        d = repo / model_name
        version = d / TRITON_VERSION_DIR
        version.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, version / fname)
        shutil.copyfile(manifest_path(src), version / TRITON_MANIFEST)
        write_text_atomic(d / TRITON_CONFIG, config_pbtxt(model_name, platform, m, mb, [mb // 2 or 1, mb], kind=kind))
        written.append(d / TRITON_CONFIG)
    return written
