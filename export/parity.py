"""Parity: torch vs ONNX (onnxruntime) vs FP16 ONNX vs engine, on the checkpoint's validation images.

Per artifact: max and p99 absolute logit error against torch, label-map pixel agreement, mIoU and
ΔmIoU. Budgets (fp32: agreement >= 99.9 %; fp16: |ΔmIoU| <= 0.5 points) decide pass/fail; a failure
lists the images and classes that differ most.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nfdseg.config import from_dict
from nfdseg.errors import ArtifactError, MissingDependencyError
from nfdseg.manifest import Manifest
from nfdseg.metrics import ConfusionMatrix
from nfdseg.preprocess import prepare_batch, resize_labels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParityBudget:
    """fp32_min_agreement: % of pixels whose label equals torch's. fp16_max_delta_miou: mIoU points."""

    fp32_min_agreement: float = 99.9
    fp16_max_delta_miou: float = 0.5
    max_images: int = 64


def validation_images(ckpt: Manifest, max_images: int) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """The checkpoint's validation split (from its recorded data config): RGB images, masks, names."""
    from nfdseg.distill.data.config import DataConfig
    from nfdseg.distill.data import build_source

    data_cfg = from_dict(DataConfig, ckpt.config.get("data", {}))
    src = build_source(data_cfg, "val")
    n = min(len(src), max_images) if max_images else len(src)
    imgs, masks, names = [], [], []
    for i in range(n):
        im, m = src.load(i)
        imgs.append(im)
        masks.append(resize_labels(m, tuple(ckpt.preprocess.input_size)))
        names.append(src.name(i))
    return imgs, masks, names


def _labels_of(out: np.ndarray, kind: str) -> np.ndarray:
    return out.astype(np.uint8) if kind == "labels" else out.argmax(1).astype(np.uint8)


def compare(name: str, out: np.ndarray, kind: str, ref_logits: np.ndarray, ref_labels: np.ndarray,
            masks: list[np.ndarray], names: list[str], ckpt: Manifest, ref_miou: float) -> dict[str, Any]:
    labels = _labels_of(out, kind)
    cm = ConfusionMatrix(ckpt.num_classes, ckpt.classes.ignore_index)
    for lab, m in zip(labels, masks):
        cm.update(lab, m)
    agree_per_image = (labels == ref_labels).reshape(len(labels), -1).mean(1) * 100
    res: dict[str, Any] = {
        "artifact": name, "output_kind": kind,
        "pixel_agreement_pct": round(float((labels == ref_labels).mean() * 100), 4),
        "miou": round(cm.miou(), 4), "delta_miou": round(cm.miou() - ref_miou, 4),
        "per_class_iou": cm.summary(ckpt.classes.names)["per_class_iou"],
        "worst_images": [{"image": names[i], "agreement_pct": round(float(agree_per_image[i]), 3)}
                         for i in np.argsort(agree_per_image)[:5] if agree_per_image[i] < 100.0],
    }
    if kind in ("logits", "probs"):
        ref = ref_logits if kind == "logits" else _softmax(ref_logits)
        err = np.abs(out.astype(np.float64) - ref.astype(np.float64))
        res["max_abs_error"] = float(err.max())
        res["p99_abs_error"] = float(np.percentile(err, 99))
        finite = np.isfinite(out).all()
        res["finite"] = bool(finite)
    return res


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def run_parity(export_dir: Path, ckpt_dir: Path, budget: ParityBudget = ParityBudget(),
               engine_allow_rtx: bool = False) -> dict[str, Any]:
    """Compare every artifact in export_dir with the torch checkpoint. Returns the parity report dict."""
    import torch

    from nfdseg.distill.checkpoint import load_model_from_dir
    from nfdseg.serve.backends import open_backend

    model, ckpt = load_model_from_dir(ckpt_dir, "cpu")
    imgs, masks, names = validation_images(ckpt, budget.max_images)
    x_ref = prepare_batch(imgs, ckpt.preprocess, False)
    with torch.no_grad():
        ref_logits = np.concatenate([model(torch.from_numpy(x_ref[i:i + 16])).numpy() for i in range(0, len(x_ref), 16)])
    ref_labels = ref_logits.argmax(1).astype(np.uint8)
    cm = ConfusionMatrix(ckpt.num_classes, ckpt.classes.ignore_index)
    for lab, m in zip(ref_labels, masks):
        cm.update(lab, m)
    ref_miou = cm.miou()
    report: dict[str, Any] = {"images": len(imgs), "torch_miou": round(ref_miou, 4),
                              "budget": budget.__dict__, "results": [], "not_run": [], "passed": True, "failures": []}
    onnx_files = [p for p in (export_dir / "model.onnx", export_dir / "model.fp16.onnx") if p.is_file()]
    for path in onnx_files + sorted(export_dir.glob("*.engine")):  # each artifact's precision is in its manifest
        try:
            backend = open_backend(path, "tensorrt" if path.suffix == ".engine" else "onnxruntime", device="cpu"
                                   if path.suffix == ".onnx" else "auto", allow_rtx=engine_allow_rtx)
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
        nig = bool(m.onnx and m.onnx.normalize_in_graph)
        x = prepare_batch(imgs, m.preprocess, nig)
        step = backend.max_batch or 16
        out = np.concatenate([backend.infer(x[i:i + step]) for i in range(0, len(x), step)])
        res = compare(path.name, out, m.output_kind, ref_logits, ref_labels, masks, names, ckpt, ref_miou)
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
            worst_cls = sorted(((k, (v or 0) - (ckpt_iou or 0)) for (k, v), ckpt_iou in
                                zip(res["per_class_iou"].items(), _ref_iou(cm, ckpt))), key=lambda kv: kv[1])[:3]
            report["failures"].append({"artifact": path.name, "rule": rule, "worst_images": res["worst_images"],
                                       "classes_most_changed": [{"class": k, "delta_iou": round(d, 3)} for k, d in worst_cls]})
            report["passed"] = False
        report["results"].append(res)
    return report


def _engine_cannot_run_here(e: Exception) -> bool:
    text = getattr(e, "what", str(e))
    return isinstance(e, MissingDependencyError) or "needs a CUDA GPU" in text or "was built with" in text \
        or "was built for compute capability" in text


def _ref_iou(cm: ConfusionMatrix, ckpt: Manifest) -> list[float | None]:
    return list(cm.summary(ckpt.classes.names)["per_class_iou"].values())


def format_report(report: dict[str, Any]) -> str:
    lines = [f"parity on {report['images']} validation images (torch mIoU {report['torch_miou']:.2f}%)",
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
