"""The pipeline's report (report.md, report.json, PNG plots) and the deployable folder (deploy/)."""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path
from typing import Any

from nfdseg.artifacts import (BASELINE_DIR, DEPLOY_CLASSES, DEPLOY_DIR, DEPLOY_USAGE, ENGINE_SUFFIX, EXPORT_DIR, HISTORY,
                              ONNX_FILES, ONNX_FP16, ONNX_FP32, ONNX_INT8, PARITY_REPORT, REPORT_JSON, REPORT_MD,
                              STUDENT_DIR, TEACHER_DIR, manifest_path)
from nfdseg.fsutil import write_json_atomic, write_text_atomic
from nfdseg.manifest import Manifest, read_manifest, runtime_versions

from .choose import teacher_lead


def model_cost(ckpt_dir: Path) -> dict[str, float]:
    """Parameters (millions) and forward FLOPs (GFLOPs, 2 x multiply-adds) at the model's input size."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from nfdseg.models.checkpoint import load_model_from_dir

    model, m = load_model_from_dir(ckpt_dir)
    h, w = m.preprocess.input_size
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, h, w))
    return {"params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 4),
            "gflops": round(counter.get_total_flops() / 1e9, 4), "input_hw": [h, w]}


def _plots(out: Path, runs: dict[str, Path], per_class: dict[str, dict], bench_rows: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, d in runs.items():
        h = json.loads((d / HISTORY).read_text())
        a.plot([r["iter"] for r in h["train"]], [r["ce"] for r in h["train"]], label=name)
        b.plot([r["iter"] for r in h["eval"]], [r["miou"] for r in h["eval"]], marker="o", label=name)
    a.set(title="training cross-entropy", xlabel="iteration")
    b.set(title="validation mIoU (%)", xlabel="iteration")
    a.legend()
    b.legend()
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=110)
    plt.close(fig)
    files.append("training_curves.png")

    names = list(next(iter(per_class.values())).keys())
    fig, ax = plt.subplots(figsize=(10, 3.6))
    width = 0.8 / len(per_class)
    for k, (label, ious) in enumerate(per_class.items()):
        ax.bar([i + k * width for i in range(len(names))], [ious[n] or 0 for n in names], width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=30, ha="right")
    ax.set(ylabel="IoU (%)", title="per-class IoU on the validation split")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "per_class_iou.png", dpi=110)
    plt.close(fig)
    files.append("per_class_iou.png")

    fig, ax = plt.subplots(figsize=(6, 3.6))
    series: dict[str, list[tuple[int, float]]] = {}
    for r in bench_rows:
        if "infer" in r:
            series.setdefault(f"{r['backend']} {r['precision']} ({r['device']})", []).append(
                (r["batch"], r["infer"]["p50_ms"] / r["batch"]))
    for label, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set(xlabel="batch size", ylabel="ms per image (p50, infer)", title="latency vs batch size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "latency_vs_batch.png", dpi=110)
    plt.close(fig)
    files.append("latency_vs_batch.png")
    return files


def zero_classes(per_class: dict[str, dict[str, float | None]],
                 gt_pixels: dict[str, int] | None = None) -> dict[str, list[str]]:
    """For each model, the classes present in the validation masks (gt_pixels > 0, where known) that it never gets
    right (IoU 0). A class absent from the masks but predicted somewhere also has IoU 0: it is not listed."""
    present = (lambda name: gt_pixels.get(name, 0) > 0) if gt_pixels else (lambda name: True)
    return {model: [name for name, iou in ious.items() if iou is not None and iou == 0.0 and present(name)]
            for model, ious in per_class.items()}


LOSS_NAMES = {"nfd": "NFD", "kd": "KD", "cwd": "CWD", "none": "undistilled"}


def distillation_label(distill: dict | None) -> str:
    """What the student stage distilled with, as the report names it: 'NFD', 'NFD + logits KD', 'KD', ..."""
    from nfdseg.distill.config import DistillConfig, adds_logits_kd  # the trainer's own rule (no torch)

    distill = distill or {"loss": "nfd"}
    label = LOSS_NAMES.get(distill.get("loss", "nfd"), str(distill.get("loss")))
    ran = DistillConfig(loss=distill.get("loss", "nfd"), logits_kd_weight=distill.get("logits_kd_weight") or 0.0)
    if adds_logits_kd(ran):
        label += " + logits KD"
    return label


def write_report(out: Path, teacher: Manifest, student: Manifest, baseline: Manifest | None, export: dict,
                 bench: dict, status: list[dict], wall_s: float, choice=None,
                 deployed_dir: Path | None = None) -> dict[str, Any]:
    parity = json.loads((out / EXPORT_DIR / PARITY_REPORT).read_text())
    by_artifact = {r["artifact"]: r for r in parity["results"]}
    miou = {"teacher": teacher.metrics["miou"], "student_nfd": student.metrics["miou"],
            "baseline": baseline.metrics["miou"] if baseline else None}
    for name, key in ((ONNX_FP32, "onnx_fp32"), (ONNX_FP16, "onnx_fp16"), (ONNX_INT8, "onnx_int8")):
        if name in by_artifact:
            miou[key] = by_artifact[name]["miou"]
            miou[f"{key}_delta"] = by_artifact[name]["delta_miou"]
    engine = export.get("engine") or {}
    for r in parity["results"]:
        if r["artifact"].endswith(ENGINE_SUFFIX):
            miou["engine"], miou["engine_delta"] = r["miou"], r["delta_miou"]
    label = distillation_label((student.config or {}).get("distill"))
    per_class = {"teacher": teacher.metrics["per_class_iou"], f"student ({label})": student.metrics["per_class_iou"]}
    if baseline:
        per_class["baseline"] = baseline.metrics["per_class_iou"]
    runs = {f"student ({label})": out / STUDENT_DIR} | ({"baseline": out / BASELINE_DIR} if baseline else {})
    plots = _plots(out, runs, per_class, bench["rows"])
    deployed_dir = deployed_dir or out / STUDENT_DIR
    deployed_m = baseline if deployed_dir.name == BASELINE_DIR and baseline is not None else student
    cost = {"teacher": model_cost(out / TEACHER_DIR), "student": model_cost(out / STUDENT_DIR)}
    if deployed_dir.name != STUDENT_DIR:
        cost["deployed (baseline)"] = model_cost(deployed_dir)
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version()},
        "versions": runtime_versions("torch", "onnx", "onnxruntime", "openvino", "numpy"),
        "wall_time_s": round(wall_s, 1), "stages": status, "miou": miou, "distillation": label,
        "nfd_gain_over_baseline": round(miou["student_nfd"] - miou["baseline"], 3) if baseline else None,
        "teacher_lead": teacher_lead(miou["teacher"], miou["baseline"]).to_json() if baseline else None,
        "per_class_iou": per_class, "zero_iou_classes": zero_classes(per_class, teacher.metrics.get("gt_pixels")),
        "student_choice": choice.to_json() if choice is not None else None, "cost": cost, "bench": bench["rows"], "plots": plots,
        "bench_budget": {**bench.get("budget", {}), "seconds": bench.get("seconds")},
        "engine": engine or {"path": None, "reason": "engine off"},
        "parity": {"passed": parity["passed"], "images": parity["images"], "not_run": parity["not_run"]},
        "checks": {"parity_passed": parity["passed"],
                   "student_miou_matches_parity_torch": abs(parity["torch_miou"] - deployed_m.metrics["miou"]) < 1e-6},
        "architectures": {"teacher": teacher.architecture, "student": student.architecture},
        "deploy": sorted(p.name for p in (out / DEPLOY_DIR).iterdir()) if (out / DEPLOY_DIR).is_dir() else [],
    }
    write_json_atomic(out / REPORT_JSON, report)
    write_text_atomic(out / REPORT_MD, _markdown(report))
    return report


def _fmt(v, digits=2):
    return "—" if v is None else f"{v:.{digits}f}"


def _markdown(r: dict[str, Any]) -> str:
    m = r["miou"]
    lines = ["# nfdseg pipeline report", ""]
    choice = r.get("student_choice")
    if choice and choice.get("gap") is not None:
        worse = choice["gap"] < 0
        lines += [("> **" if worse else "> ") + choice["message"][0].upper() + choice["message"][1:]
                  + (".**" if worse else "."), ""]
    if not r["engine"].get("path"):
        lines += [f"> **No TensorRT engine was built**: {r['engine'].get('reason', '')}. The deployable is the ONNX "
                  "model for onnxruntime; rebuild on a machine with TensorRT with `nfdseg export ... --engine on`.", ""]
    gain = r["nfd_gain_over_baseline"]
    lead = r.get("teacher_lead")
    if lead:
        text = lead["message"][0].upper() + lead["message"][1:]
        lines += [f"> **{text}.**" if lead["small"] else f"> {text}.", ""]
    lines += [f"Teacher `{r['architectures']['teacher']}`, student `{r['architectures']['student']}`. "
              f"{r['distillation']} student's gain over the baseline student: **{_fmt(gain)} mIoU points**."
              if gain is not None else "", "",
              "## Accuracy (validation split, mIoU %)", "", "| model | mIoU | Δ vs the deployed student (torch) |", "|---|---|---|",
              f"| teacher | {_fmt(m['teacher'])} | |", f"| baseline student (no distillation) | {_fmt(m['baseline'])} | |",
              f"| {r['distillation']} student (torch) | {_fmt(m['student_nfd'])} | |"]
    deployed = "baseline" if choice and choice.get("deployed") == "baseline" else "distilled"
    for key, label in (("onnx_fp32", "ONNX fp32 (onnxruntime)"), ("onnx_fp16", "ONNX fp16 (onnxruntime)"),
                       ("onnx_int8", "ONNX INT8 Q/DQ (onnxruntime)"), ("engine", "TensorRT engine")):
        if key in m:
            lines.append(f"| {label}, {deployed} student | {_fmt(m[key])} | {m[key + '_delta']:+.3f} |")
    names = list(next(iter(r["per_class_iou"].values())).keys())
    lines += ["", "## Per-class IoU (validation split, %)", "",
              "| class | " + " | ".join(r["per_class_iou"]) + " |", "|---|" + "---|" * len(r["per_class_iou"])]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(_fmt(ious.get(n)) for ious in r["per_class_iou"].values()) + " |")
    zeros = {model: cls for model, cls in r["zero_iou_classes"].items() if cls}
    lines += [""] + ([f"Classes at 0 % IoU: " + "; ".join(f"{model}: {', '.join(cls)}" for model, cls in zeros.items())
                      + ". A class at 0 is never found: more data of it, class weights "
                        "(train.class_weights: median_frequency) or OHEM (train.ohem_thresh) are the usual remedies."]
                     if zeros else ["Every class present in the validation masks is found by every model (IoU > 0)."])
    lines += ["", f"Parity: {'passed' if r['parity']['passed'] else '**FAILED**'} on {r['parity']['images']} images"
              + "".join(f"; {n['artifact']} not run: {n['reason']}" for n in r["parity"]["not_run"]) + ".", "",
              "## Cost", "", "| model | params (M) | GFLOPs | input |", "|---|---|---|---|"]
    for name, c in r["cost"].items():
        lines.append(f"| {name} | {c['params_m']:.3f} | {c['gflops']:.3f} | {c['input_hw'][0]}×{c['input_hw'][1]} |")
    bb = r.get("bench_budget") or {}
    lines += ["", "## Latency (p50 / p99 ms per call; images/s)", ""]
    if bb.get("total_s"):
        lines += [f"Bench budget {bb['total_s']:g} s (took {bb['seconds']:.0f} s): each row timed for "
                  f"{bb['duration_s']:g} s and at least {bb['min_iters']} calls after {bb['warmup']} warm-up; rows "
                  "that could not fit are marked skipped.", ""]
    lines += ["| backend | artifact | precision | device | batch | infer p50 | infer p99 | end-to-end p50 | images/s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in r["bench"]:
        if "error" in row:
            lines.append(f"| {row['backend']} | {row['artifact']} | | | | not run: {row['error']} | | | |")
            continue
        if "skipped" in row:
            lines.append(f"| {row['backend']} | {row['artifact']} | {row['precision']} | {row['device']} | {row['batch']} "
                         f"| skipped: {row['skipped']} | | | |")
            continue
        lines.append(f"| {row['backend']} | {row['artifact']} | {row['precision']} | {row['device']} | {row['batch']} | "
                     f"{row['infer']['p50_ms']:.2f} | {row['infer']['p99_ms']:.2f} | {row['end_to_end']['p50_ms']:.2f} | "
                     f"{row['end_to_end_images_per_s']:.0f} |")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in r["plots"]]
    lines += ["", "## Stages", ""] + [f"- {s['stage']}: {s['state']} — {s['detail']} ({s['seconds']:.0f}s)"
                                      for s in r["stages"]]
    lines += ["", f"Machine: {r['machine']['platform']} ({r['machine']['processor'] or 'cpu'}); "
              f"versions: {', '.join(f'{k} {v}' for k, v in r['versions'].items())}. Wall time {r['wall_time_s']:.0f}s.",
              "", "## Deploy", "", f"`{DEPLOY_DIR}/` holds what to ship (each artifact with its manifest JSON), the "
              f"class list and a usage snippet (`python {DEPLOY_DIR}/{DEPLOY_USAGE} {DEPLOY_DIR} image.png`):", ""]
    lines += [f"- `{DEPLOY_DIR}/{name}`" for name in r["deploy"]] + [""]
    return "\n".join(lines)


USAGE = '''"""Minimal use of the deployed model: pip install "nfdseg[cpu]" (a GPU: "nfdseg[gpu-cu13]" or [gpu-cu12];
a Jetson: "nfdseg[jetson]"; a TensorRT engine: add [trt] and TensorRT), see docs/deploying.md."""
import sys

from nfdseg.serve import Segmenter

seg = Segmenter(sys.argv[1] if len(sys.argv) > 1 else ".")  # this folder: picks the engine or the ONNX
pred = seg.predict(sys.argv[2] if len(sys.argv) > 2 else "image.png")
print(seg.describe())
print("classes present:", sorted({seg.class_names[i] for i in set(pred.labels.ravel().tolist())}))
'''


def write_deploy(out: Path) -> Path:
    """deploy/: the engine (if built) and the ONNX models with their manifests, classes.json, usage.py."""
    export, deploy = out / EXPORT_DIR, out / DEPLOY_DIR
    if deploy.exists():
        shutil.rmtree(deploy)
    deploy.mkdir()
    files = sorted(export.glob("*" + ENGINE_SUFFIX)) + [p for p in (export / f for f in ONNX_FILES.values())
                                                          if p.is_file()]
    for f in files:
        shutil.copy2(f, deploy / f.name)
        shutil.copy2(manifest_path(f), deploy / manifest_path(f).name)
    m = read_manifest(manifest_path(deploy / ONNX_FP32))
    write_json_atomic(deploy / DEPLOY_CLASSES, {"names": list(m.classes.names), "palette": [list(c) for c in m.classes.palette],
                                                "ignore_index": m.classes.ignore_index})
    write_text_atomic(deploy / DEPLOY_USAGE, USAGE)
    return deploy
