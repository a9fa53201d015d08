"""What an ONNX export writes, importable without torch or onnx: the opset range and default, the IR version and
the graph options. torch2onnx builds the graph from these; `nfdseg export`'s flags, the FP16 converter and the
engine builder's messages read them here, so each value is written once."""

from __future__ import annotations

from dataclasses import dataclass

MIN_OPSET, MAX_OPSET = 17, 20
DEFAULT_OPSET = 17  # the opset every export writes unless told otherwise (`nfdseg export --opset`)
# IR version written into every model: 8 is what opset 17-20 graphs need and every onnxruntime
# since 1.14 and TensorRT 10 read; newer onnx helpers would otherwise stamp a newer IR.
IR_VERSION = 8


@dataclass(frozen=True)
class OnnxExportOptions:
    """output: logits | probs | labels. label_dtype: uint8 | int32 (for labels).
    normalize_in_graph: input is uint8 NHWC RGB, the graph scales and normalises it.
    dynamic_hw: height and width are dynamic axes (the model is fully convolutional)."""

    opset: int = DEFAULT_OPSET
    output: str = "logits"
    label_dtype: str = "uint8"
    normalize_in_graph: bool = False
    dynamic_hw: bool = True
    simplify: bool = True
