"""Parity checks the provider and precision that will serve: on a machine where onnxruntime offers CUDA, each
ONNX model is also run on the CUDA provider (where `auto` serves model.fp16.onnx); where the provider is
listed but cannot load, the report says so instead of passing on the CPU's figures."""

from __future__ import annotations

import json

from nfdseg.export.parity import ParityBudget, run_parity


def test_parity_reports_the_cuda_provider(exported, trained_run, monkeypatch):
    import onnxruntime as ort

    plain = run_parity(exported, trained_run / "student", ParityBudget(max_images=4))
    assert plain["onnxruntime_cuda"].startswith("not offered") and plain["passed"]
    assert [r["artifact"] for r in plain["results"] if "OpenVINO" not in r["artifact"]] == ["model.onnx",
                                                                                          "model.fp16.onnx"]

    # onnxruntime-gpu installed but its CUDA libraries missing: listed, cannot be created
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    listed = run_parity(exported, trained_run / "student", ParityBudget(max_images=4))
    assert listed["onnxruntime_cuda"] == "checked"
    skipped = {n["artifact"]: n["reason"] for n in listed["not_run"] if "OpenVINO" not in n["artifact"]}
    assert set(skipped) == {"model.onnx (CUDA provider)", "model.fp16.onnx (CUDA provider)"}
    assert all("could not create it" in r for r in skipped.values())
    assert [r["artifact"] for r in listed["results"] if "OpenVINO" not in r["artifact"]] == ["model.onnx",
                                                                                          "model.fp16.onnx"]
    json.dumps(listed)  # the report stays JSON
