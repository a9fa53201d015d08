"""Backends by name, and `open_backend`, which resolves an artifact path and picks a runtime.

An artifact is an export directory (model.onnx, model.fp16.onnx, model.int8.onnx, *.engine with their .json), one of
those files, or a checkpoint directory (checkpoint.json, torch backend). `backend="auto"` picks the
best that can run here and logs why.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nfdseg.artifacts import (CHECKPOINT, CHECKPOINT_MANIFEST, ENGINE_SUFFIX, ONNX_FILES, ONNX_FP16, ONNX_FP32, ONNX_INT8,
                              PARITY_REPORT, manifest_path)
from nfdseg.errors import RUNTIME_INSTALL_HINT, ArtifactError, ConfigError, MissingDependencyError, NfdsegError
from nfdseg.manifest import Manifest, read_manifest

from .base import Backend

log = logging.getLogger(__name__)
BACKENDS = ("auto", "tensorrt", "onnxruntime", "openvino", "torch")
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")  # auto: fp16 on a GPU, fp32 on a CPU; int8 only when asked


def _manifest_for(file: Path) -> Manifest:
    return read_manifest(manifest_path(file), expect_kind="checkpoint" if file.suffix == ".pt" else None)


def _candidates(path: Path) -> dict[str, list[Path]]:
    """Files in an artifact path by backend kind, best first."""
    if path.is_file():
        if path.suffix == ENGINE_SUFFIX:
            return {"tensorrt": [path]}
        if path.suffix == ".onnx":
            return {"onnxruntime": [path], "openvino": [path]}
        if path.name == CHECKPOINT_MANIFEST or path.suffix == ".pt":
            return {"torch": [path.parent / CHECKPOINT]}
        if path.suffix == ".json":
            m = read_manifest(path, verify_sha=False)
            return _candidates(path.parent / m.artifact)
        raise ArtifactError(f"{path} is not an artifact nfdseg can serve",
                            fix="pass an export directory, a .onnx, a .engine or a checkpoint directory")
    if not path.is_dir():
        raise ArtifactError(f"artifact not found: {path}", fix="pass the output directory of `nfdseg export`")
    out = {"tensorrt": sorted(path.glob("*" + ENGINE_SUFFIX)), "onnxruntime": [], "torch": []}
    for name in ONNX_FILES.values():
        if (path / name).is_file():
            out["onnxruntime"].append(path / name)
    if (path / CHECKPOINT_MANIFEST).is_file():
        out["torch"].append(path / CHECKPOINT)
    out["openvino"] = list(out["onnxruntime"])
    if not any(out.values()):
        raise ArtifactError(f"{path} holds no servable artifact",
                            seen=", ".join(sorted(p.name for p in path.iterdir())[:10]) or "empty directory",
                            fix="run `nfdseg export CHECKPOINT_DIR --out DIR` and pass DIR")
    return out


def open_backend(path: str | Path, backend: str = "auto", device: str = "auto", precision: str = "auto",
                 **kwargs) -> Backend:
    """Open the artifact at `path` with `backend` (auto | tensorrt | onnxruntime | openvino | torch): the named
    one, or with auto the first of tensorrt, onnxruntime, torch that has an artifact there and loads (why the
    others did not is logged); on a CPU with OpenVINO installed too, onnxruntime or OpenVINO by a timed probe
    (cpu_choice.py).
    kwargs: allow_rtx, threads, cuda_graphs, openvino_hint (LATENCY | THROUGHPUT),
    openvino_precision (f32, or "" for the device's default: bf16 on CPUs with AVX512_BF16/AMX)."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend '{backend}'", fix=f"choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'", fix=f"choose one of {', '.join(PRECISIONS)}")
    if precision == "int8" and backend == "torch":
        raise ConfigError("the torch backend cannot run INT8", seen="backend torch, precision int8",
                          fix=f"serve the export directory's {ONNX_INT8} with --backend onnxruntime or openvino (or an "
                              "INT8 TensorRT engine with --backend tensorrt); `nfdseg export --int8` makes it")
    path = Path(path)
    cands = _candidates(path)
    order = [backend] if backend != "auto" else ["tensorrt", "onnxruntime", "torch"]
    reasons, artifact_errors = [], []
    for name in order:
        files = cands.get(name, [])
        if not files:
            reasons.append(f"{name}: no artifact")
            continue
        try:
            b = _OPENERS[name](files, device, precision, kwargs)
        except NfdsegError as e:
            if backend != "auto":
                raise
            reasons.append(f"{name}: {e.what}")
            if not isinstance(e, MissingDependencyError):  # the artifact, not the install, is what is wrong
                artifact_errors.append(e)
            continue
        if backend == "auto" and name == "onnxruntime" and b.device == "cpu" and device in ("auto", "cpu"):
            from .cpu_choice import prefer_faster_cpu_runtime

            b = prefer_faster_cpu_runtime(b, kwargs)  # onnxruntime unless OpenVINO is installed and probes faster
        if backend == "auto":
            log.info("backend auto -> %s on %s (%s)%s", b.name, b.device, b.precision,
                     f"; skipped {'; '.join(reasons)}" if reasons else "")
        _note_cuda_graphs(b, kwargs)
        return b
    if artifact_errors:  # e.g. --precision int8 without model.int8.onnx: the fix is an export, not an install
        raise ArtifactError(f"no backend can serve {path}", seen="; ".join(reasons), fix=artifact_errors[0].fix)
    raise ArtifactError(f"no backend can serve {path}", seen="; ".join(reasons),
                        fix=f"{RUNTIME_INSTALL_HINT}; or pass an artifact the chosen backend can load")


def _open_tensorrt(files: list[Path], device: str, precision: str, kwargs) -> Backend:
    from .tensorrt_backend import TensorRTBackend

    f = _pick_engine(files, precision)
    return TensorRTBackend(f, _manifest_for(f), allow_rtx=kwargs.get("allow_rtx", False), device=device)


def _open_onnxruntime(files: list[Path], device: str, precision: str, kwargs) -> Backend:
    """The ONNX file for this precision and device; FP16 picked for a GPU whose CUDA provider then did not load
    falls back (loudly) to the fp32 model on the CPU, where FP16 is slower. A file given by itself is served as
    given: no fallback."""
    from .onnxruntime_backend import OnnxRuntimeBackend

    gpu = _has_gpu()
    f = _pick_onnx(files, precision, gpu and device != "cpu")
    b = OnnxRuntimeBackend(f, _manifest_for(f), device=device, threads=kwargs.get("threads", 0))
    fp32_there = any(x.name == ONNX_FP32 for x in files)
    if f.name == ONNX_FP16 and precision == "auto" and b.device == "cpu" and gpu and device != "cpu" and fp32_there:
        f = _pick_onnx(files, "fp32", False)
        note = b.fallback
        b = OnnxRuntimeBackend(f, _manifest_for(f), device="cpu", threads=kwargs.get("threads", 0))
        b.fallback = f"{note}; serving {f.name} on CPU instead of {ONNX_FP16}"
        log.warning("FALLBACK: %s", b.fallback)
    return b


def _open_torch(files: list[Path], device: str, precision: str, kwargs) -> Backend:
    if precision == "int8":
        raise ArtifactError("the torch backend cannot run INT8",
                            fix=f"`nfdseg export CHECKPOINT --int8` writes {ONNX_INT8}; serve it with --backend onnxruntime")
    from .torch_backend import TorchBackend

    f = files[0]
    return TorchBackend(f, _manifest_for(f), device=device, precision=precision,
                        cuda_graphs=kwargs.get("cuda_graphs", False))


def _open_openvino(files: list[Path], device: str, precision: str, kwargs) -> Backend:
    """model.onnx (FP16 only when asked: OpenVINO's CPU plugin picks its own inference precision) or, for int8,
    model.int8.onnx, on OpenVINO's CPU plugin or the OpenVINO device named (GPU, NPU, AUTO, ...)."""
    from .openvino_backend import OpenVinoBackend

    f = _pick_onnx(files, precision, False)
    return OpenVinoBackend(f, _manifest_for(f), device=device, threads=kwargs.get("threads", 0),
                           hint=kwargs.get("openvino_hint", "LATENCY"),
                           inference_precision=kwargs.get("openvino_precision", "f32"))


_OPENERS = {"tensorrt": _open_tensorrt, "onnxruntime": _open_onnxruntime, "openvino": _open_openvino,
            "torch": _open_torch}


def note_missing_parity(path: Path, backend: str) -> None:
    """An export folder served without its parity.json was never checked against its checkpoint (an export that
    stopped half-way, or files copied without it): say so; a checkpoint folder (torch) has no parity record.
    Called where an export is *served* (Segmenter), not by open_backend: the export's own parity check opens the
    models of a folder whose parity.json it is about to write."""
    folder = path if path.is_dir() else path.parent
    exported = any((folder / f).is_file() for f in ONNX_FILES.values())
    if backend != "torch" and exported and not (folder / PARITY_REPORT).is_file():
        log.warning("%s has no %s: its models were never checked against the checkpoint (an export that stopped "
                    "half-way?); run `nfdseg check %s` before trusting its results", folder, PARITY_REPORT, folder)


def _note_cuda_graphs(b: Backend, kwargs) -> None:
    if kwargs.get("cuda_graphs") and b.name != "torch":
        note = f"CUDA graphs apply to the torch backend only; {b.name} runs without them"
        b.fallback = f"{b.fallback}; {note}" if b.fallback else note
        log.warning("FALLBACK: %s", note)


def _pick_engine(files: list[Path], precision: str) -> Path:
    """The first engine, or with an explicit precision the first whose manifest says that precision."""
    if precision == "auto" or len(files) == 1 and precision != "int8":
        return files[0]
    for f in files:
        m = read_manifest(manifest_path(f), verify_sha=False)
        if m.precision == precision:
            return f
    raise ArtifactError(f"no {precision} TensorRT engine here", seen=", ".join(f.name for f in files),
                        fix=f"build one: nfdseg export ... --engine-precision {precision}"
                            + (" --int8 --int8-activations int8" if precision == "int8" else ""))


def _pick_onnx(files: list[Path], precision: str, on_gpu: bool) -> Path:
    """fp32 ONNX on CPU (FP16 is slower there), the FP16 ONNX on GPU, unless precision says otherwise; the
    INT8 model only when precision is int8 (never by auto: it is kept only within its parity budget, and the
    choice to trade that accuracy is the caller's)."""
    by_name = {f.name: f for f in files}
    if precision == "int8":
        if ONNX_INT8 in by_name:
            return by_name[ONNX_INT8]
        raise ArtifactError(f"INT8 was requested but there is no {ONNX_INT8}",
                            seen=", ".join(sorted(by_name)) or "no ONNX model",
                            fix="export with `nfdseg export CHECKPOINT --int8` (it is written only when it holds its "
                                "parity budget), or serve --precision fp32")
    want_fp16 = precision == "fp16" or (precision == "auto" and on_gpu)
    if want_fp16 and ONNX_FP16 in by_name:
        return by_name[ONNX_FP16]
    if precision == "fp16" and ONNX_FP16 not in by_name:
        raise ArtifactError(f"FP16 was requested but there is no {ONNX_FP16}", fix="export with FP16 enabled")
    return by_name.get(ONNX_FP32, files[0])


def _has_gpu() -> bool:
    """Whether onnxruntime lists a CUDA provider (a first guess for fp16 vs fp32 ONNX; open_backend checks
    the provider that actually loaded and falls back to fp32 on CPU); never imports torch."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


__all__ = ["Backend", "open_backend", "BACKENDS", "PRECISIONS"]
