"""The export stage: ONNX, FP16 ONNX, TensorRT engine, parity check, Triton repository."""
