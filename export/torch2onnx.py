"""torch2onnx: a trained student checkpoint -> model.onnx + model.json.

Only the student's inference graph is traced: the distillation connectors live in the loss module
and the teacher in another file, so neither can appear in the export. Options put normalisation
(uint8 NHWC input) and argmax (label-map output) inside the graph, as deployments want.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from nfdseg.artifacts import CHECKPOINT, manifest_path
from nfdseg.errors import ArtifactError, ConfigError
from nfdseg.fsutil import atomic_path
from nfdseg.manifest import Manifest, OnnxInfo, TensorSpec, runtime_versions, write_manifest

from .onnx_options import IR_VERSION, MAX_OPSET, MIN_OPSET, OnnxExportOptions

log = logging.getLogger(__name__)


class DeployWrapper(nn.Module):
    """The student as deployed: optional in-graph normalisation before, softmax/argmax after."""

    def __init__(self, model: nn.Module, mean, std, opts: OnnxExportOptions):
        super().__init__()
        self.model, self.opts = model, opts
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.opts.normalize_in_graph:
            x = (x.permute(0, 3, 1, 2).float() - self.mean) * self.inv_std
        logits = self.model(x)
        if self.opts.output == "probs":
            return torch.softmax(logits, dim=1)
        if self.opts.output == "labels":
            labels = logits.argmax(dim=1)
            return labels.to(torch.uint8 if self.opts.label_dtype == "uint8" else torch.int32)
        return logits


def validate_options(opts: OnnxExportOptions) -> None:
    if not MIN_OPSET <= opts.opset <= MAX_OPSET:
        raise ConfigError(f"opset {opts.opset} is not supported", fix=f"choose an opset from {MIN_OPSET} to {MAX_OPSET}")
    if opts.output not in ("logits", "probs", "labels"):
        raise ConfigError(f"unknown output kind '{opts.output}'", fix="choose logits, probs or labels")
    if opts.label_dtype not in ("uint8", "int32"):
        raise ConfigError(f"unknown label dtype '{opts.label_dtype}'", fix="choose uint8 or int32")


def io_specs(ckpt: Manifest, opts: OnnxExportOptions) -> tuple[TensorSpec, TensorSpec]:
    h, w = ("H", "W") if opts.dynamic_hw else tuple(ckpt.preprocess.input_size)
    if opts.normalize_in_graph:
        inp = TensorSpec("image", "uint8", ("N", h, w, 3), "NHWC")
    else:
        inp = TensorSpec("input", "float32", ("N", 3, h, w), "NCHW")
    c = ckpt.num_classes
    if opts.output == "labels":
        out = TensorSpec("labels", opts.label_dtype, ("N", h, w), "NHW")
    else:
        out = TensorSpec(opts.output, "float32", ("N", c, h, w), "NCHW")
    return inp, out


def torch2onnx(model: nn.Module, ckpt: Manifest, ckpt_sha: str, out_path: str | Path,
               opts: OnnxExportOptions = OnnxExportOptions()) -> Manifest:
    """Export `model` (the student described by `ckpt`) to `out_path`; write `<stem>.json` beside it."""
    validate_options(opts)
    out_path = Path(out_path)
    inp, out = io_specs(ckpt, opts)
    wrapper = DeployWrapper(model.cpu().eval(), ckpt.preprocess.mean, ckpt.preprocess.std, opts).eval()
    h, w = ckpt.preprocess.input_size
    example = (torch.randint(0, 255, (1, h, w, 3), dtype=torch.uint8) if opts.normalize_in_graph
               else torch.randn(1, 3, h, w))
    axes_in = {0: "N", 1: "H", 2: "W"} if opts.normalize_in_graph else {0: "N", 2: "H", 3: "W"}
    axes_out = {0: "N", 1: "H", 2: "W"} if opts.output == "labels" else {0: "N", 2: "H", 3: "W"}
    if not opts.dynamic_hw:
        axes_in, axes_out = {0: "N"}, {0: "N"}
    t0 = time.perf_counter()
    with atomic_path(out_path) as tmp, torch.no_grad():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
            torch.onnx.export(wrapper, (example,), str(tmp), opset_version=opts.opset, dynamo=False,
                              input_names=[inp.name], output_names=[out.name],
                              dynamic_axes={inp.name: axes_in, out.name: axes_out}, do_constant_folding=True)
        proto = onnx.load(str(tmp))
        proto.ir_version = IR_VERSION
        simplified_with = ""
        if opts.simplify:
            proto, simplified_with = _simplify(proto, example.numpy(), inp.name)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
    seconds = time.perf_counter() - t0
    manifest = replace(
        ckpt, kind="onnx", artifact=out_path.name, precision="fp32",
        output_kind="labels" if opts.output == "labels" else opts.output, inputs=(inp,), outputs=(out,),
        sha256="", created="", parent_sha256=ckpt_sha, parent=CHECKPOINT,
        onnx=OnnxInfo(opset=opts.opset, ir_version=IR_VERSION, normalize_in_graph=opts.normalize_in_graph,
                      argmax_in_graph=opts.output == "labels", simplified_with=simplified_with),
        metrics={"checkpoint_miou": ckpt.metrics.get("miou"), "export_time_s": round(seconds, 3)},
        versions={**ckpt.versions, **runtime_versions("torch", "onnx", "onnxruntime", "onnxslim")},
    )
    log.info("exported %s in %.1fs (opset %d, IR %d)", out_path, seconds, opts.opset, IR_VERSION)
    return write_manifest(manifest, manifest_path(out_path))


def _simplify(proto: onnx.ModelProto, example: np.ndarray, input_name: str) -> tuple[onnx.ModelProto, str]:
    """Simplify with onnxslim when installed, keeping the result only if outputs are unchanged (1e-5)."""
    try:
        import onnxslim
    except ImportError:
        log.info("onnxslim not installed: graph left as exported")
        return proto, ""
    import onnxruntime as ort

    try:
        slim = onnxslim.slim(proto)
    except Exception as e:  # a simplifier bug must not fail the export
        log.warning("onnxslim failed (%s): keeping the unsimplified graph", e)
        return proto, ""
    slim.ir_version = IR_VERSION
    feeds = {input_name: example}
    a = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    b = ort.InferenceSession(slim.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    diff = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
    if diff > 1e-5:
        log.warning("onnxslim changed outputs by %.2e: keeping the unsimplified graph", diff)
        return proto, ""
    log.info("simplified with onnxslim %s: %d -> %d nodes, max |diff| %.1e", onnxslim.__version__,
             len(proto.graph.node), len(slim.graph.node), diff)
    return slim, f"onnxslim {onnxslim.__version__} (max |diff| {diff:.1e})"


def load_onnx_checked(path: str | Path) -> onnx.ModelProto:
    """Load and check an ONNX file, turning a corrupt or truncated file into a clear ArtifactError."""
    path = Path(path)
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as e:
        raise ArtifactError(f"{path} is not a valid ONNX model (corrupt or truncated?)",
                            seen=f"{type(e).__name__}: {str(e)[:200]}", fix="re-run `nfdseg export`") from None
    return proto


def file_mb(path: str | Path) -> float:
    return round(Path(path).stat().st_size / 1e6, 3)


__all__ = ["torch2onnx", "OnnxExportOptions", "IR_VERSION", "load_onnx_checked", "file_mb"]
