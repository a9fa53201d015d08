"""Parity: torch vs ONNX (onnxruntime, and OpenVINO for fp32/INT8) vs FP16 ONNX vs engine, on the checkpoint's
validation images. OpenVINO's rows read "skipped: OpenVINO not installed" where it is not.

Per artifact: max and p99 absolute logit error against the checkpoint (or, where torch is not installed,
the fp32 ONNX model, said in the report), label-map pixel agreement at the model's output size, and mIoU
and ΔmIoU scored by the project's one evaluation at each label's own size. Budgets (fp32: agreement >= 99.9 %; fp16: |ΔmIoU| <= 0.5 points; int8: |ΔmIoU| <= 1.0) decide pass/fail; a failure
lists the images and classes that differ most.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nfdseg.artifacts import CHECKPOINT_MANIFEST, ENGINE_SUFFIX, ONNX_FILES, ONNX_FP32, ONNX_INT8
from nfdseg.config import from_dict
from nfdseg.errors import ArtifactError, EngineNotRunnableHere, MissingDependencyError
from nfdseg.manifest import Manifest, read_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParityBudget:
    """fp32_min_agreement: % of pixels whose label equals torch's. fp16/int8_max_delta_miou: mIoU points."""

    fp32_min_agreement: float = 99.9
    fp16_max_delta_miou: float = 0.5
    max_images: int = 64
    int8_max_delta_miou: float = 1.0  # mIoU points; the INT8 remedies ladder (export/int8.py) works to hold it


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


def _reference_backend(ckpt_dir: Path, ckpt: Manifest, export_dir: Path):
    """The checkpoint on the torch backend (CPU, fp32); without torch, the fp32 ONNX model, said loudly."""
    from nfdseg.serve.backends import open_backend

    try:
        import torch  # noqa: F401
    except ImportError:
        note = ("torch is not installed here, so the checkpoint itself was not run: the fp32 ONNX model is the "
                "reference (pip install 'nfdseg[export]' to compare against the checkpoint)")
        log.warning("parity: %s", note)
        return open_backend(export_dir / ONNX_FP32, "onnxruntime", device="cpu"), ONNX_FP32, note
    from nfdseg.serve.backends.torch_backend import TorchBackend

    backend = TorchBackend(Path(ckpt_dir) / ckpt.artifact, ckpt, device="cpu", precision="fp32", channels_last=False)
    return backend, "checkpoint", ""


@dataclass
class Reference:
    """What every artifact is compared with: the validation images, and the reference's output and scores."""

    source: Any
    images: int
    names: list[str]
    name: str  # "checkpoint", or "model.onnx" where torch is not installed
    note: str
    output: np.ndarray  # graph output on every image, at the model's output size
    output_kind: str
    result: dict[str, Any]  # the one evaluation's figures (mIoU, per-class IoU)


def build_reference(export_dir: Path, ckpt_dir: Path, budget: ParityBudget = ParityBudget()) -> Reference:
    """Run the reference (the checkpoint, or the fp32 ONNX model without torch) on the validation images."""
    from nfdseg.serve.evaluate import evaluate
    from nfdseg.serve.segmenter import Segmenter

    ckpt_dir = Path(ckpt_dir)
    ckpt = read_manifest(ckpt_dir / CHECKPOINT_MANIFEST, expect_kind="checkpoint")
    source = validation_source(ckpt)
    n = min(len(source), budget.max_images) if budget.max_images else len(source)
    backend, name, note = _reference_backend(ckpt_dir, ckpt, Path(export_dir))
    seg = Segmenter.from_backend(backend)
    chunks: list[np.ndarray] = []
    result = evaluate(seg, source, batch=16, limit=n, progress=False,
                      on_batch=lambda start, out, preds: chunks.append(out))
    backend.close()
    return Reference(source, n, [source.name(i) for i in range(n)], name, note, np.concatenate(chunks),
                     seg.output_kind, result)


def _new_report(ref: Reference, budget: ParityBudget) -> dict[str, Any]:
    return {"images": ref.images, "reference": ref.name, "reference_note": ref.note,
            "torch_miou": ref.result["miou"] if ref.name == "checkpoint" else None,
            "reference_miou": ref.result["miou"], "budget": budget.__dict__, "results": [],
            "not_run": [], "passed": True, "failures": [], "refused": []}


# Runtimes beside onnxruntime on the same file: a row of theirs over budget refuses that runtime for the file (listed
# under "refused") instead of failing the export, whose files onnxruntime serves within budget
OPTIONAL_RUNTIMES = ("openvino",)
OPENVINO_LABEL = "OpenVINO CPU"  # OpenVINO rows: "<file> (OpenVINO CPU)"; fp32 and INT8 (FP16 is for GPUs)


def parity_targets(export_dir: Path) -> list[tuple[Path, str, str, str]]:
    """(file, backend, device, label) to compare: each ONNX model on onnxruntime's CPU provider, and again on the
    CUDA provider where onnxruntime offers it (on a GPU machine `auto` serves model.fp16.onnx there, so that
    pairing must pass); model.onnx and model.int8.onnx on OpenVINO's CPU plugin (`auto` on a CPU may serve
    OpenVINO, which computes and rounds INT8 its own way); then each engine (its precision from its manifest)."""
    onnx_files = [p for p in (export_dir / n for n in ONNX_FILES.values()) if p.is_file()]
    targets = [(p, "onnxruntime", "cpu", p.name) for p in onnx_files]
    targets += [(p, "onnxruntime", "cuda", f"{p.name} (CUDA provider)") for p in onnx_files
                if _onnxruntime_lists_cuda()]
    targets += [(p, "openvino", "cpu", f"{p.name} ({OPENVINO_LABEL})") for p in onnx_files
                if p.name in (ONNX_FP32, ONNX_INT8)]
    return targets + [(p, "tensorrt", "auto", p.name) for p in sorted(export_dir.glob("*" + ENGINE_SUFFIX))]


def _not_run(report: dict[str, Any], label: str, reason: str) -> None:
    report["not_run"].append({"artifact": label, "reason": reason})
    log.warning("parity: %s not run: %s", label, reason)


def _open_target(report: dict[str, Any], path: Path, backend: str, device: str, label: str, engine_allow_rtx: bool):
    """The backend for one target, or None with the reason recorded (not run here, or a failure)."""
    from nfdseg.serve.backends import open_backend
    from nfdseg.serve.backends.openvino_backend import OPENVINO_INSTALL_HINT

    try:
        opened = open_backend(path, backend, device=device, allow_rtx=engine_allow_rtx)
    except (MissingDependencyError, ArtifactError) as e:
        # An engine is skipped only because TensorRT or a matching GPU is absent here. OpenVINO is an optional
        # runtime: absent, or unable to compile a model onnxruntime serves (then `auto` serves onnxruntime and
        # `--backend openvino` stops with the same error), its rows say so instead of failing the export.
        if backend == "tensorrt" and _engine_cannot_run_here(e):
            _not_run(report, path.name, e.what)
            return None
        if backend == "openvino":
            why = (f"skipped: OpenVINO not installed ({OPENVINO_INSTALL_HINT} to check it)"
                   if isinstance(e, MissingDependencyError)
                   else f"OpenVINO cannot serve it: {e.what}" + (f" ({e.seen})" if e.seen else ""))
            _not_run(report, label, why)
            return None
        # an ONNX file we produced that onnxruntime cannot load is a failure
        report["failures"].append({"artifact": label, "rule": f"cannot be loaded: {e.what}",
                                   "worst_images": [], "classes_most_changed": []})
        report["passed"] = False
        return None
    if device == "cuda" and not opened.device.startswith("cuda"):
        _not_run(report, label, opened.fallback)
        opened.close()
        return None
    return opened


def score_backend(backend, label: str, ref: Reference, budget: ParityBudget) -> dict[str, Any]:
    """One opened artifact against the reference: its parity figures and verdict under the budget of its
    precision (closes the backend)."""
    from nfdseg.serve.evaluate import evaluate
    from nfdseg.serve.segmenter import Segmenter

    m = backend.manifest
    agreement = _Agreement(ref.output, ref.output_kind, m.output_kind)
    try:
        result = evaluate(Segmenter.from_backend(backend), ref.source, batch=backend.max_batch or 16,
                          limit=ref.images, progress=False, on_batch=agreement)
        res = compare(label, agreement, result, ref.result, ref.names)
        res["precision"] = m.precision
        res["backend"] = backend.describe()
    finally:
        backend.close()
    ok, rule = judge(res, budget)
    res["passed"], res["rule"] = ok, rule
    return res


def judge(res: dict[str, Any], budget: ParityBudget) -> tuple[bool, str]:
    """(passed, the rule as text) for one result: fp32 by pixel agreement, fp16 and int8 by |ΔmIoU|. The text
    states what held: a pass reads "... >= budget: passed", a breach "... < budget: FAILED"."""
    if res["precision"] == "fp32":
        ok = bool(res["pixel_agreement_pct"] >= budget.fp32_min_agreement)
        cmp = ">=" if ok else "<"
        return ok, (f"pixel agreement {res['pixel_agreement_pct']:.3f}% {cmp} {budget.fp32_min_agreement}%: "
                    f"{'passed' if ok else 'FAILED'}")
    limit = budget.int8_max_delta_miou if res["precision"] == "int8" else budget.fp16_max_delta_miou
    finite = res.get("finite", True)
    ok = bool(abs(res["delta_miou"]) <= limit and finite)
    if not finite:
        return False, f"non-finite output (|ΔmIoU| {abs(res['delta_miou']):.3f}, budget {limit}): FAILED"
    return ok, f"|ΔmIoU| {abs(res['delta_miou']):.3f} {'<=' if ok else '>'} {limit}: {'passed' if ok else 'FAILED'}"


def per_class_table(res: dict[str, Any], reference: dict[str, Any]) -> list[dict[str, Any]]:
    """Every class: reference IoU, this artifact's IoU and the change (points; None where a class is absent)."""
    rows = []
    for k, v in res["per_class_iou"].items():
        r = reference["per_class_iou"].get(k)
        rows.append({"class": k, "reference_iou": r, "iou": v,
                     "delta_iou": None if v is None and r is None else round((v or 0) - (r or 0), 3)})
    return rows


def failure_entry(res: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """What a failed result contributes to the report: the rule, the worst images, the classes most changed
    and the whole per-class table."""
    table = per_class_table(res, reference)
    worst = sorted((r for r in table if r["delta_iou"] is not None), key=lambda r: r["delta_iou"])[:3]
    return {"artifact": res["artifact"], "rule": res["rule"], "worst_images": res["worst_images"],
            "classes_most_changed": [{"class": r["class"], "delta_iou": r["delta_iou"]} for r in worst],
            "per_class": table}


def run_parity(export_dir: Path, ckpt_dir: Path, budget: ParityBudget = ParityBudget(),
               engine_allow_rtx: bool = False, reference: Reference | None = None) -> dict[str, Any]:
    """Compare every artifact in export_dir with the checkpoint on the validation images. Returns the report.

    Every mIoU here is the project's one evaluation (nfdseg.serve.evaluate): labels scored at each mask's own
    size, exactly as `nfdseg eval` and the trainer score them. `reference`: one already run (run_export shares
    it with the INT8 ladder).
    """
    export_dir = Path(export_dir)
    ref = reference or build_reference(export_dir, ckpt_dir, budget)
    report = _new_report(ref, budget)
    report["onnxruntime_cuda"] = ("checked" if _onnxruntime_lists_cuda()
                                  else "not offered by the onnxruntime installed here")
    report["openvino"] = _openvino_status()
    for path, runtime, device, label in parity_targets(export_dir):
        if ref.name == path.name and runtime == "onnxruntime" and device == "cpu":
            report["not_run"].append({"artifact": path.name, "reason": "it is the reference (torch not installed)"})
            continue
        backend = _open_target(report, path, runtime, device, label, engine_allow_rtx)
        if backend is None:
            continue
        res = score_backend(backend, label, ref, budget)
        if not res["passed"] and runtime in OPTIONAL_RUNTIMES:
            # onnxruntime serves this file within budget; OpenVINO does not: the export stands, `auto` never picks
            # OpenVINO for the file and `--backend openvino` serves it only with a loud warning (serve/backends)
            report["refused"].append({"file": path.name, "backend": runtime, "artifact": label, "rule": res["rule"]})
            log.warning("PARITY: %s breaks its budget on %s (%s): `auto` serves onnxruntime for it, and "
                        "`--backend %s` warns", path.name, runtime, res["rule"], runtime)
        elif not res["passed"]:
            report["failures"].append(failure_entry(res, ref.result))
            report["passed"] = False
        report["results"].append(res)
    return report


def _onnxruntime_lists_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def _openvino_status() -> str:
    """What the report says about OpenVINO: its version when its rows ran, else why they did not."""
    from importlib.metadata import PackageNotFoundError, version

    from nfdseg.serve.backends.openvino_backend import import_openvino

    try:
        import_openvino()
    except MissingDependencyError:
        return "skipped: OpenVINO not installed"
    try:
        return f"checked on {OPENVINO_LABEL} (openvino {version('openvino')})"
    except PackageNotFoundError:
        return f"checked on {OPENVINO_LABEL}"


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
        if "int8" in f["artifact"] and f.get("per_class"):
            lines += _per_class_lines(f["per_class"])
    for r in report.get("refused", []):
        lines.append(f"REFUSED {r['backend']} for {r['file']}: {r['rule']} (`auto` serves onnxruntime for it)")
    lines += _int8_lines(report.get("int8"))
    return "\n".join(lines)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _per_class_lines(table: list[dict[str, Any]]) -> list[str]:
    lines = [f"   {'class':<20} {'ref IoU':>8} {'IoU':>8} {'Δ':>8}"]
    for r in table:
        d = "-" if r["delta_iou"] is None else f"{r['delta_iou']:+.2f}"
        lines.append(f"   {r['class']:<20} {_fmt(r['reference_iou']):>8} {_fmt(r['iou']):>8} {d:>8}")
    return lines


def _int8_lines(int8: dict[str, Any] | None) -> list[str]:
    """The INT8 remedies ladder: one line per attempt, and the verdict."""
    if not int8:
        return []
    cal = int8["calibration"]
    lines = [f"int8 calibration: {cal['images']} images of split '{cal['split']}' (sha256 {cal['sha256'][:12]}...)"]
    for a in int8["attempts"]:
        lines.append(f"   int8 {a['step']:<26} {a['method']:<10} {a['nodes_kept_float']:>4} node(s) float  "
                     f"ΔmIoU {a['delta_miou']:+.3f}  {'ok' if a['passed'] else 'over budget'}")
    if not int8["passed"]:
        lines.append("   INT8 REFUSED: model.int8.onnx was not written; the fp32/FP16 artifacts are kept")
    return lines
