"""Parity: torch vs ONNX (onnxruntime) vs FP16 ONNX vs engine, on the checkpoint's validation images.

Per artifact: max and p99 absolute logit error against the checkpoint (or, where torch is not installed,
the fp32 ONNX model, said in the report), label-map pixel agreement at the model's output size, and mIoU
and ΔmIoU scored by the project's one evaluation at each label's own size. Budgets (fp32: agreement >= 99.9 %; fp16: |ΔmIoU| <= 0.5 points) decide pass/fail; a failure
lists the images and classes that differ most.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nfdseg.config import from_dict
from nfdseg.errors import ArtifactError, EngineNotRunnableHere, MissingDependencyError
from nfdseg.manifest import Manifest, read_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParityBudget:
    """fp32_min_agreement: % of pixels whose label equals torch's. fp16_max_delta_miou: mIoU points."""

    fp32_min_agreement: float = 99.9
    fp16_max_delta_miou: float = 0.5
    max_images: int = 64


def validation_source(ckpt: Manifest):
    """The checkpoint's validation split, from its recorded data config."""
    from nfdseg.data import build_source
    from nfdseg.data.config import DataConfig

    return build_source(from_dict(DataConfig, ckpt.config.get("data", {})), "val")


def validation_images(ckpt: Manifest, max_images: int) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """The first `max_images` (0: all) validation images of the checkpoint: RGB images, masks (own size), names."""
    src = validation_source(ckpt)
    n = min(len(src), max_images) if max_images else len(src)
    items = [src.load(i) for i in range(n)]
    return [im for im, _ in items], [m for _, m in items], [src.name(i) for i in range(n)]


def _labels_of(out: np.ndarray, kind: str) -> np.ndarray:
    return out.astype(np.uint8) if kind == "labels" else out.argmax(1).astype(np.uint8)


class _Agreement:
    """Per-batch comparison of an artifact's graph output with the reference's, at the model's output size."""

    def __init__(self, ref_out: np.ndarray, ref_kind: str, kind: str):
        self.ref_out, self.ref_kind, self.kind = ref_out, ref_kind, kind
        self.ref_labels = _labels_of(ref_out, ref_kind)
        self.agree: list[np.ndarray] = []
        self.errors: list[np.ndarray] = []
        self.finite = True

    def __call__(self, start: int, out: np.ndarray, preds) -> None:
        ref_labels = self.ref_labels[start:start + len(out)]
        labels = _labels_of(out, self.kind)
        self.agree.append((labels == ref_labels).reshape(len(out), -1).mean(1) * 100)
        if self.kind in ("logits", "probs") and self.ref_kind == "logits":
            ref = self.ref_out[start:start + len(out)]
            ref = ref if self.kind == "logits" else _softmax(ref)
            self.errors.append(np.abs(out.astype(np.float32) - ref.astype(np.float32)).reshape(-1))
            self.finite &= bool(np.isfinite(out).all())


def compare(name: str, agreement: _Agreement, result: dict[str, Any], reference: dict[str, Any],
            names: list[str]) -> dict[str, Any]:
    """One artifact's parity figures: label agreement and logit error against the reference (model output size),
    mIoU and its change (scored by the one evaluation, at each label's own size)."""
    agree = np.concatenate(agreement.agree)
    res: dict[str, Any] = {
        "artifact": name, "output_kind": agreement.kind,
        "pixel_agreement_pct": round(float(agree.mean()), 4),
        "miou": result["miou"], "delta_miou": round(result["miou"] - reference["miou"], 4),
        "per_class_iou": result["per_class_iou"],
        "worst_images": [{"image": names[i], "agreement_pct": round(float(agree[i]), 3)}
                         for i in np.argsort(agree)[:5] if agree[i] < 100.0],
    }
    if agreement.errors:
        err = np.concatenate(agreement.errors)
        res["max_abs_error"] = float(np.nanmax(np.where(np.isfinite(err), err, np.inf)))
        res["p99_abs_error"] = float(np.percentile(np.where(np.isfinite(err), err, np.inf), 99))
        res["finite"] = agreement.finite
    return res


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _reference(ckpt_dir: Path, ckpt: Manifest, export_dir: Path):
    """The checkpoint on the torch backend (CPU, fp32); without torch, the fp32 ONNX model, said loudly."""
    from nfdseg.serve.backends import open_backend

    try:
        import torch  # noqa: F401
    except ImportError:
        note = ("torch is not installed here, so the checkpoint itself was not run: the fp32 ONNX model is the "
                "reference (pip install 'nfdseg[export]' to compare against the checkpoint)")
        log.warning("parity: %s", note)
        return open_backend(export_dir / "model.onnx", "onnxruntime", device="cpu"), "model.onnx", note
    from nfdseg.serve.backends.torch_backend import TorchBackend

    backend = TorchBackend(Path(ckpt_dir) / ckpt.artifact, ckpt, device="cpu", precision="fp32", channels_last=False)
    return backend, "checkpoint", ""


def run_parity(export_dir: Path, ckpt_dir: Path, budget: ParityBudget = ParityBudget(),
               engine_allow_rtx: bool = False) -> dict[str, Any]:
    """Compare every artifact in export_dir with the checkpoint on the validation images. Returns the report.

    Every mIoU here is the project's one evaluation (nfdseg.serve.evaluate): labels scored at each mask's own
    size, exactly as `nfdseg eval` and the trainer score them.
    """
    from nfdseg.serve.backends import open_backend
    from nfdseg.serve.evaluate import evaluate
    from nfdseg.serve.segmenter import Segmenter

    ckpt_dir = Path(ckpt_dir)
    ckpt = read_manifest(ckpt_dir / "checkpoint.json", expect_kind="checkpoint")
    source = validation_source(ckpt)
    n = min(len(source), budget.max_images) if budget.max_images else len(source)
    names = [source.name(i) for i in range(n)]
    ref_backend, ref_name, ref_note = _reference(ckpt_dir, ckpt, Path(export_dir))
    ref_seg = Segmenter.from_backend(ref_backend)
    ref_chunks: list[np.ndarray] = []
    reference = evaluate(ref_seg, source, batch=16, limit=n, progress=False,
                         on_batch=lambda start, out, preds: ref_chunks.append(out))
    ref_backend.close()
    ref_out = np.concatenate(ref_chunks)
    report: dict[str, Any] = {"images": n, "reference": ref_name, "reference_note": ref_note,
                              "torch_miou": reference["miou"] if ref_name == "checkpoint" else None,
                              "reference_miou": reference["miou"], "budget": budget.__dict__, "results": [],
                              "not_run": [], "passed": True, "failures": []}
    onnx_files = [p for p in (export_dir / "model.onnx", export_dir / "model.fp16.onnx") if p.is_file()]
    # Each ONNX model on the CPU provider, and again on the CUDA provider where onnxruntime offers it: on a GPU
    # machine `auto` serves model.fp16.onnx there, so that is the pairing that must pass.
    cuda_listed = _onnxruntime_lists_cuda()
    report["onnxruntime_cuda"] = "checked" if cuda_listed else "not offered by the onnxruntime installed here"
    targets = [(p, "cpu", p.name) for p in onnx_files]
    targets += [(p, "cuda", f"{p.name} (CUDA provider)") for p in onnx_files if cuda_listed]
    targets += [(p, "auto", p.name) for p in sorted(export_dir.glob("*.engine"))]  # precision: from each manifest
    for path, device, label in targets:
        if ref_name == path.name and device == "cpu":
            report["not_run"].append({"artifact": path.name, "reason": "it is the reference (torch not installed)"})
            continue
        try:
            backend = open_backend(path, "tensorrt" if path.suffix == ".engine" else "onnxruntime", device=device,
                                   allow_rtx=engine_allow_rtx)
            if device == "cuda" and not backend.device.startswith("cuda"):
                report["not_run"].append({"artifact": label, "reason": backend.fallback})
                log.warning("parity: %s not run: %s", label, backend.fallback)
                backend.close()
                continue
        except (MissingDependencyError, ArtifactError) as e:
            # Only an engine may be skipped, and only because TensorRT or a matching GPU is absent here;
            # an ONNX file we produced that cannot be loaded is a failure.
            if path.suffix == ".engine" and _engine_cannot_run_here(e):
                report["not_run"].append({"artifact": path.name, "reason": e.what})
                log.warning("parity: %s not run: %s", path.name, e.what)
                continue
            report["failures"].append({"artifact": path.name, "rule": f"cannot be loaded: {e.what}",
                                       "worst_images": [], "classes_most_changed": []})
            report["passed"] = False
            continue
        m = backend.manifest
        seg = Segmenter.from_backend(backend)
        agreement = _Agreement(ref_out, ref_seg.output_kind, m.output_kind)
        result = evaluate(seg, source, batch=backend.max_batch or 16, limit=n, progress=False, on_batch=agreement)
        res = compare(label, agreement, result, reference, names)
        res["precision"] = m.precision
        res["backend"] = backend.describe()
        backend.close()
        if m.precision == "fp32":
            ok = res["pixel_agreement_pct"] >= budget.fp32_min_agreement
            rule = f"pixel agreement {res['pixel_agreement_pct']:.3f}% < {budget.fp32_min_agreement}%"
        else:
            ok = abs(res["delta_miou"]) <= budget.fp16_max_delta_miou and res.get("finite", True)
            rule = f"|ΔmIoU| {abs(res['delta_miou']):.3f} > {budget.fp16_max_delta_miou} (or non-finite output)"
        res["passed"] = bool(ok)
        if not ok:
            deltas = [(k, (v or 0) - (reference["per_class_iou"].get(k) or 0)) for k, v in res["per_class_iou"].items()]
            worst_cls = sorted(deltas, key=lambda kv: kv[1])[:3]
            report["failures"].append({"artifact": label, "rule": rule, "worst_images": res["worst_images"],
                                       "classes_most_changed": [{"class": k, "delta_iou": round(d, 3)} for k, d in worst_cls]})
            report["passed"] = False
        report["results"].append(res)
    return report


def _onnxruntime_lists_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def _engine_cannot_run_here(e: Exception) -> bool:
    """TensorRT absent or broken here, or the engine refused by the compatibility checks or by TensorRT-RTX's
    own validity check (both raise EngineNotRunnableHere): "not run here", never a parity failure."""
    return isinstance(e, (MissingDependencyError, EngineNotRunnableHere))


def format_report(report: dict[str, Any]) -> str:
    ref = "checkpoint" if report.get("reference", "checkpoint") == "checkpoint" else report["reference"]
    lines = [f"parity on {report['images']} validation images (reference: {ref}, mIoU {report['reference_miou']:.2f}%)",
             f"{'artifact':<44} {'prec':<5} {'max|Δ|':>9} {'p99|Δ|':>9} {'agree%':>8} {'mIoU':>7} {'ΔmIoU':>7}  ok"]
    for r in report["results"]:
        lines.append(f"{r['artifact']:<44} {r['precision']:<5} {r.get('max_abs_error', float('nan')):>9.2e} "
                     f"{r.get('p99_abs_error', float('nan')):>9.2e} {r['pixel_agreement_pct']:>8.3f} "
                     f"{r['miou']:>7.2f} {r['delta_miou']:>+7.3f}  {'yes' if r['passed'] else 'NO'}")
    for n in report["not_run"]:
        lines.append(f"{n['artifact']:<44} not run: {n['reason']}")
    for f in report["failures"]:
        lines.append(f"FAILED {f['artifact']}: {f['rule']}")
        for w in f["worst_images"]:
            lines.append(f"   image {w['image']}: {w['agreement_pct']:.2f}% pixels agree")
        for c in f["classes_most_changed"]:
            lines.append(f"   class {c['class']}: IoU {c['delta_iou']:+.2f}")
    return "\n".join(lines)
