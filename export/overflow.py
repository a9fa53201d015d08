"""Which nodes of an fp32 ONNX graph must stay float32 in its FP16 twin: the values they make or read leave the
float16 range (max 65504), or their weights are larger than the converter keeps (it clamps them to 1e4).

The fp32 model runs on calibration inputs with every intermediate tensor exposed as an output; the largest
|value| of each tensor is compared with the limit. This reads the ranges from fp32 arithmetic, so it finds the
overflow a GPU would hit even where onnxruntime's CPU provider quietly runs float16 nodes in float32.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

log = logging.getLogger(__name__)

FP16_MAX = 65504.0
# Half the float16 maximum: a value this size is one sum or a brighter image away from inf.
OVERFLOW_LIMIT = FP16_MAX / 2
CONVERTER_CLAMP = 1e4  # onnxconverter-common's max_finite_val: larger fp16 weights are clamped to it


def name_nodes(model: onnx.ModelProto) -> None:
    """Give unnamed nodes a name (the converter blocks nodes by name)."""
    taken = {n.name for n in model.graph.node}
    for i, n in enumerate(model.graph.node):
        if not n.name:
            n.name = f"{n.op_type}_{i}"
            while n.name in taken:
                n.name += "_"
            taken.add(n.name)


def activation_ranges(model: onnx.ModelProto, calibration: np.ndarray) -> dict[str, float]:
    """Largest |value| of every float tensor the graph computes, over the calibration batch (one image at a time,
    so a large input size needs the memory of one image's activations). Non-finite values give inf."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    names = [o for n in probe.graph.node for o in n.output if o and o not in present]
    probe.graph.output.extend([onnx.ValueInfoProto(name=o) for o in names])
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every node as written
    opts.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    inits = {i.name for i in model.graph.initializer}
    feed_name = next(i.name for i in model.graph.input if i.name not in inits)
    out_names = [o.name for o in sess.get_outputs()]
    ranges: dict[str, float] = {}
    for k in range(len(calibration)):
        for name, arr in zip(out_names, sess.run(out_names, {feed_name: calibration[k:k + 1]})):
            arr = np.asarray(arr)
            if arr.dtype.kind != "f" or arr.size == 0:
                continue
            finite = np.isfinite(arr).all()
            peak = float(np.abs(arr).max()) if finite else float("inf")
            ranges[name] = max(ranges.get(name, 0.0), peak)
    return ranges


def _big_weights(model: onnx.ModelProto, clamp: float) -> dict[str, float]:
    out = {}
    for t in model.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            a = numpy_helper.to_array(t)
            if a.size and float(np.abs(a).max()) > clamp:
                out[t.name] = float(np.abs(a).max())
    return out


def _num(v: float) -> float | str:
    return v if np.isfinite(v) else "inf"  # strict JSON has no Infinity


def _downstream(model: onnx.ModelProto, start: onnx.NodeProto) -> list[str]:
    reached = set(start.output)
    names = []
    for n in model.graph.node:  # ONNX graphs are topologically sorted
        if n is start or set(n.input) & reached:
            reached.update(n.output)
            names.append(n.name)
    return names


def find_fp16_overflow(model: onnx.ModelProto, calibration: np.ndarray, downstream: bool = False,
                       limit: float = OVERFLOW_LIMIT, clamp: float = CONVERTER_CLAMP) -> dict[str, Any]:
    """Nodes to keep in float32, and why. Returns {"limit", "images", "first" (the first node in graph order whose
    output passes the limit: node, op, max_abs; None if none), "nodes" (name -> reasons), "fp32_nodes" (names),
    "largest_abs" (over all tensors), "downstream"}. downstream=True adds every node after the first one."""
    name_nodes(model)
    ranges = activation_ranges(model, calibration)
    weights = _big_weights(model, clamp)
    over = {t for t, v in ranges.items() if v > limit}
    reasons: dict[str, list[str]] = {}
    first = None
    for n in model.graph.node:
        why = []
        if set(n.output) & over:
            why.append("output")
            if first is None:
                first = n
        if set(n.input) & over:
            why.append("input")
        if set(n.input) & set(weights):
            why.append("weights")
        if why:
            reasons[n.name] = why
    if downstream and first is not None:
        for name in _downstream(model, first):
            reasons.setdefault(name, ["after the first overflow"])
    order = [n.name for n in model.graph.node if n.name in reasons]
    first_info = None
    if first is not None:
        first_info = {"node": first.name, "op": first.op_type,
                      "max_abs": _num(max(ranges[o] for o in first.output if o in ranges))}
    return {"limit": limit, "fp16_max": FP16_MAX, "images": int(len(calibration)), "first": first_info,
            "largest_abs": _num(max(ranges.values(), default=0.0)), "nodes": {k: reasons[k] for k in order},
            "fp32_nodes": order, "downstream": bool(downstream and first is not None),
            "weights_over_clamp": len(weights)}
