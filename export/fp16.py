"""FP16 ONNX: weights and most ops in float16, inputs/outputs kept float32, sensitive ops kept float32.

Uses onnxconverter-common's converter (keep_io_types). Ops whose float16 results drift or overflow
(Resize of logits, Softmax, reductions, ArgMax inputs) are blocked from conversion. The converter
has been seen to leave a float16 graph output despite keep_io_types, so outputs are checked and,
if needed, a final Cast to float32 is appended; the manifest records what was done.

Large activations: given calibration inputs, the fp32 model runs once with every intermediate exposed
(overflow.py); the nodes whose output or input leaves the float16 range, or whose weights the converter
would clamp, stay float32, and the manifest names them and the first op that overflowed.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from nfdseg.artifacts import manifest_path
from nfdseg.errors import MissingDependencyError
from nfdseg.fsutil import atomic_path, sha256_file
from nfdseg.manifest import Manifest, OnnxInfo, runtime_versions, write_manifest

from .onnx_options import DEFAULT_OPSET, IR_VERSION

log = logging.getLogger(__name__)

KEEP_FP32_OPS = ("Resize", "Softmax", "ReduceMean", "GlobalAveragePool", "ArgMax", "ReduceSum", "Exp", "Log", "Pow",
                 "Sqrt", "Div")


def _fix_float16_outputs(model: onnx.ModelProto) -> list[str]:
    fixed = []
    for out in model.graph.output:
        if out.type.tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        internal = f"{out.name}__fp16"
        for node in model.graph.node:
            node.output[:] = [internal if o == out.name else o for o in node.output]
            node.input[:] = [internal if i == out.name else i for i in node.input]
        model.graph.node.append(helper.make_node("Cast", [internal], [out.name], to=TensorProto.FLOAT,
                                                 name=f"{out.name}_to_fp32"))
        out.type.tensor_type.elem_type = TensorProto.FLOAT
        fixed.append(out.name)
    return fixed


def _keep_fp32_outputs(model: onnx.ModelProto, fp32_nodes: set[str]) -> list[str]:
    """A graph output made by a node kept in float32 must not pass through float16 on its way out: the converter
    casts it down (and may declare the output float16); turn that cast into a float32 no-op."""
    producers = {o: n for n in model.graph.node for o in n.output}
    kept = []
    for out in model.graph.output:
        cast = producers.get(out.name)
        src = producers.get(cast.input[0]) if cast is not None and cast.op_type == "Cast" else None
        if src is None or src.name not in fp32_nodes:
            continue
        for a in cast.attribute:
            if a.name == "to":
                a.i = TensorProto.FLOAT
        out.type.tensor_type.elem_type = TensorProto.FLOAT
        kept.append(out.name)
    return kept


def _to(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "to"), -1)


def _skip_fp16_round_trips(model: onnx.ModelProto, fp32_nodes: set[str]) -> int:
    """Between two nodes kept in float32 the converter leaves Cast(fp16) -> Cast(fp32): the very overflow the nodes
    were kept for. Feed the second cast from the float32 value instead (and drop the first when unused)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    outputs = {o.name for o in model.graph.output}
    skipped = 0
    for down in [n for n in model.graph.node if n.op_type == "Cast" and _to(n) == TensorProto.FLOAT16]:
        src = producers.get(down.input[0])
        if src is None or src.name not in fp32_nodes:
            continue
        for up in model.graph.node:
            if up.op_type == "Cast" and _to(up) == TensorProto.FLOAT and up.input[0] == down.output[0]:
                up.input[0] = down.input[0]
                skipped += 1
        if down.output[0] not in outputs and not any(down.output[0] in n.input for n in model.graph.node):
            model.graph.node.remove(down)
    return skipped


def convert_to_fp16(fp32_path: str | Path, fp32_manifest: Manifest, out_path: str | Path,
                    keep_fp32_ops: tuple[str, ...] = KEEP_FP32_OPS, calibration=None,
                    keep_downstream: bool = False) -> Manifest:
    """Write an FP16 twin of `fp32_path` to `out_path` with its manifest `<stem>.json`.

    calibration: model inputs (a batch as the graph takes it) to look for activations beyond the float16 range;
    the nodes they reach stay float32 (see overflow.py). keep_downstream: also keep everything after the first
    overflowing op in float32 (the fallback when keeping the overflowing nodes alone still gives non-finite
    outputs)."""
    try:
        from onnxconverter_common import float16
        import onnxconverter_common
    except ImportError:
        raise MissingDependencyError("FP16 conversion needs onnxconverter-common",
                                     fix="pip install onnxconverter-common") from None
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    model = onnx.load(str(fp32_path))
    # A blocked op that produces a graph output trips the converter's cast clean-up
    # ("downstream node of the second cast node should be graph output"), so ops feeding
    # graph outputs directly are converted; the others in keep_fp32_ops stay float32.
    # Stale value_info (from the simplifier's shape inference) makes the converter type blocked
    # ops' outputs wrongly; drop it and let the converter and runtime infer types afresh.
    del model.graph.value_info[:]
    outputs = {o.name for o in model.graph.output}
    overflow: dict = {}
    if calibration is not None:
        from .overflow import find_fp16_overflow

        overflow = find_fp16_overflow(model, calibration, downstream=keep_downstream)
    fp32_nodes = set(overflow.get("fp32_nodes", ()))
    feeding_output = [n for n in model.graph.node if set(n.output) & outputs]
    blocked_nodes = [n.name for n in model.graph.node if n.name and (
        n.name in fp32_nodes or (n.op_type in keep_fp32_ops and n not in feeding_output))]
    converted_at_output = sorted({n.op_type for n in feeding_output if n.op_type in keep_fp32_ops
                                  and n.name not in fp32_nodes})
    ops_kept = tuple(sorted({n.op_type for n in model.graph.node
                             if n.name in set(blocked_nodes) and n.name not in fp32_nodes}))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter warns about values it clamps to fp16 range
        half = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=[],
                                                node_block_list=blocked_nodes)
    if converted_at_output:
        log.info("fp16: %s feeding the graph output run in float16 (the converter cannot block them)",
                 converted_at_output)
    kept_outputs = _keep_fp32_outputs(half, fp32_nodes)
    _skip_fp16_round_trips(half, fp32_nodes)
    if fp32_nodes:
        log.warning("fp16: %d node(s) kept in float32 because their values leave the float16 range (|x| > %g): "
                    "first %s (%s, max |x| %.3g)%s", len(fp32_nodes), overflow["limit"], overflow["first"]["node"],
                    overflow["first"]["op"], overflow["first"]["max_abs"],
                    "; with everything after it" if keep_downstream else "")
    fixed = _fix_float16_outputs(half)
    if fixed:
        log.info("converter left float16 outputs %s: appended Cast to float32", fixed)
    half.ir_version = IR_VERSION
    onnx.checker.check_model(half)
    with atomic_path(out_path) as tmp:
        onnx.save(half, str(tmp))
    info = replace(fp32_manifest.onnx or OnnxInfo(opset=DEFAULT_OPSET, ir_version=IR_VERSION),
                   fp16_converter=f"onnxconverter-common {onnxconverter_common.__version__} keep_io_types"
                                  + (f"; output cast appended for {fixed}" if fixed else "")
                                  + (f"; outputs kept float32 {kept_outputs}" if kept_outputs else ""),
                   kept_fp32_ops=ops_kept, kept_fp32_nodes=tuple(n for n in blocked_nodes if n in fp32_nodes),
                   fp16_overflow={k: v for k, v in overflow.items() if k != "fp32_nodes"})
    manifest = replace(fp32_manifest, artifact=out_path.name, precision="fp16", sha256="", created="",
                       parent_sha256=sha256_file(fp32_path), parent=fp32_path.name, onnx=info,
                       versions={**fp32_manifest.versions, **runtime_versions("onnxconverter_common")})
    return write_manifest(manifest, manifest_path(out_path))
