"""The name of every file a stage writes, and of the manifest beside each artifact: the one place they are spelled.

A run folder, as the stages write it (docs/architecture.md):

    teacher/, student/, baseline/   best.pt + checkpoint.json (the artifact and its manifest), last.pt (resume
                                    state), config.yaml, history.json, best_metrics.json
    export/                         model.onnx + model.json, model.fp16.onnx + model.fp16.json,
                                    model.int8.onnx + model.int8.json,
                                    <engine>.engine + <engine>.json + <engine>.log (the build log), timing.cache,
                                    parity.json, export_summary.json
    triton/                         <name>_onnx/ and <name>_trt/ (config.pbtxt, 1/model.onnx|model.plan, 1/manifest.json)
    pipeline.json, choice.json, bench.json, report.md, report.json, deploy/ (the artifacts to ship, classes.json,
                                    usage.py)
"""

from __future__ import annotations

from pathlib import Path

# --- the folders of a run (`nfdseg distill --out`, `nfdseg pipeline --out`); a stage that writes one is named for it
TEACHER_DIR = "teacher"
STUDENT_DIR = "student"  # the distilled student
BASELINE_DIR = "baseline"  # the student trained without distillation (the pipeline's comparison)
EXPORT_DIR = "export"  # `nfdseg export`'s default: beside the checkpoint folder
TRITON_DIR = "triton"  # the pipeline's Triton model repository

# --- a training stage's folder
CHECKPOINT = "best.pt"  # the artifact: the best weights on the validation split
CHECKPOINT_MANIFEST = "checkpoint.json"
RESUME_STATE = "last.pt"  # weights, optimizer, RNG and iteration: what resuming needs
STAGE_CONFIG = "config.yaml"  # the resolved config the stage ran with
HISTORY = "history.json"
BEST_METRICS = "best_metrics.json"
CURVES_DIR = "tensorboard"  # TensorBoard event files (loss terms, lr, val mIoU, images/s) when tensorboard is installed

# --- the export folder
ONNX_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}  # precision -> file
ONNX_FP32, ONNX_FP16, ONNX_INT8 = ONNX_FILES["fp32"], ONNX_FILES["fp16"], ONNX_FILES["int8"]
ENGINE_SUFFIX = ".engine"
ENGINE_LOG_SUFFIX = ".log"  # <engine>.log beside each engine: TensorRT's build log (INFO and up)
TIMING_CACHE = "timing.cache"  # TensorRT's tactic timings, reused by the next build on the same GPU and version
PARITY_REPORT = "parity.json"
EXPORT_SUMMARY = "export_summary.json"

# --- a Triton model repository: <repo>/<model>/config.pbtxt and <model>/1/ (the model, its manifest)
TRITON_CONFIG = "config.pbtxt"
TRITON_VERSION_DIR = "1"  # the one version each model is written as
TRITON_PLAN = "model.plan"  # a TensorRT engine, as Triton's tensorrt_plan backend names it (ONNX keeps ONNX_FP32)
TRITON_MANIFEST = "manifest.json"  # the manifest copied into a Triton model's version folder

# --- the pipeline's run folder
PIPELINE_MARKER = "pipeline.json"
STUDENT_CHOICE = "choice.json"
BENCH_REPORT = "bench.json"
REPORT_MD, REPORT_JSON = "report.md", "report.json"
DEPLOY_DIR = "deploy"  # what to ship: the engine and ONNX models with their manifests, and these two
DEPLOY_CLASSES = "classes.json"
DEPLOY_USAGE = "usage.py"


def manifest_path(artifact: str | Path) -> Path:
    """The manifest beside an artifact: best.pt -> checkpoint.json, model.onnx -> model.json,
    model.fp16.onnx -> model.fp16.json, x.engine -> x.json. A manifest path is returned as it is."""
    artifact = Path(artifact)
    if artifact.suffix == ".json":
        return artifact
    if artifact.suffix == ".pt":
        return artifact.parent / CHECKPOINT_MANIFEST
    return artifact.with_suffix(".json")


def onnx_precision(path: str | Path) -> str | None:
    """The precision an export folder's ONNX file holds by its name ('fp32', 'fp16', 'int8'), or None for another file."""
    name = Path(path).name
    return next((p for p, f in ONNX_FILES.items() if f == name), None)


def is_checkpoint_dir(path: str | Path) -> bool:
    return (Path(path) / CHECKPOINT_MANIFEST).is_file()
