"""GPU measurements the issues ask for when a GPU is lent (not run on the CPU-only development machine):

1. train:  distillation step images/s, ResNet-101 teacher + ResNet-18 student at 512x512 crops,
           AMP (bf16) + channels_last against plain fp32 (target >= 2x).
2. parity: the student on CUDA at 1024x2048, fp16 and bf16 autocast against fp32 (max |Δlogit|, label agreement).
3. serve:  torch backend at 1024x2048, batch 1/4/8/16: fp32 eager vs fp16 + channels_last (+ CUDA graphs).
Writes benchmarks/results/gpu_suite_<gpu>.json.

    python benchmarks/gpu_suite.py --sections train,parity,serve
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, git_rev, machine  # noqa: E402


def timed(fn, warmup: int, iters: int) -> list[float]:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def train_speed(batch: int, crop: int, iters: int) -> dict:
    import torch
    import torch.nn.functional as F

    from nfdseg.distill.config import DistillConfig
    from nfdseg.distill.losses import build_loss
    from nfdseg.distill.models import build_model

    dev = torch.device("cuda")
    res = {}
    for mode in ("fp32", "amp_bf16_channels_last"):
        teacher = build_model("deeplabv3_resnet101", 19).to(dev).eval()
        student = build_model("deeplabv3_resnet18", 19).to(dev).train()
        loss_fn = build_loss(DistillConfig(), student.feature_channels, teacher.feature_channels).to(dev)
        cl = mode != "fp32"
        if cl:
            teacher, student = teacher.to(memory_format=torch.channels_last), student.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(list(student.parameters()) + list(loss_fn.parameters()), lr=0.01, momentum=0.9)
        x = torch.randn(batch, 3, crop, crop, device=dev)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 19, (batch, crop, crop), device=dev)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cl):
                with torch.no_grad():
                    tl, tf = teacher(x, return_features=True)
                sl, sf = student(x, return_features=True)
                loss = F.cross_entropy(sl.float(), y) + loss_fn(sl, sf, tl, tf)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        ms = timed(step, 5, iters)
        res[mode] = {"ms_per_step_median": sorted(ms)[len(ms) // 2], "images_per_s": batch / (sorted(ms)[len(ms) // 2] / 1e3)}
    res["speedup"] = res["amp_bf16_channels_last"]["images_per_s"] / res["fp32"]["images_per_s"]
    return res


def parity(hw: tuple[int, int]) -> dict:
    import torch

    from nfdseg.distill.data.synthetic import generate_scene
    from nfdseg.distill.models import build_model
    from nfdseg.manifest import PreprocessSpec
    from nfdseg.preprocess import normalize

    model = build_model("deeplabv3_resnet18", 19).cuda().eval()
    x = torch.from_numpy(normalize(generate_scene(1, hw)[0], PreprocessSpec()))[None].cuda()
    with torch.no_grad():
        ref = model(x).float()
        out = {}
        for name, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            with torch.autocast("cuda", dtype=dt):
                o = model(x).float()
            out[name] = {"max_abs_logit_error": float((o - ref).abs().max()),
                         "label_agreement_pct": float((o.argmax(1) == ref.argmax(1)).float().mean() * 100)}
    return out


def serve_latency(hw: tuple[int, int], batches: list[int], iters: int) -> dict:
    import numpy as np
    import torch

    from nfdseg.distill.models import build_model

    rows = []
    for variant in ("fp32_eager", "fp16_channels_last", "fp16_channels_last_cuda_graphs"):
        model = build_model("deeplabv3_resnet18", 19).cuda().eval()
        half = variant != "fp32_eager"
        if half:
            model = model.to(memory_format=torch.channels_last)
        for b in batches:
            x = torch.randn(b, 3, *hw, device="cuda")
            if half:
                x = x.contiguous(memory_format=torch.channels_last)

            def run():
                with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=half):
                    return model(x)

            fn = run
            if variant.endswith("graphs"):
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    for _ in range(3):
                        run()
                torch.cuda.current_stream().wait_stream(s)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    run()
                fn = g.replay
            ms = np.asarray(timed(fn, 5, iters))
            rows.append({"variant": variant, "batch": b, "p50_ms": float(np.percentile(ms, 50)),
                         "p99_ms": float(np.percentile(ms, 99)), "images_per_s": b / (np.percentile(ms, 50) / 1e3)})
    base = {r["batch"]: r["p50_ms"] for r in rows if r["variant"] == "fp32_eager"}
    for r in rows:
        r["speedup_vs_fp32_eager"] = base[r["batch"]] / r["p50_ms"]
    return {"hw": list(hw), "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="train,parity,serve")
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_suite needs a CUDA GPU; none is visible", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    out = {"benchmark": "gpu_suite", "machine": machine(), "git": git_rev(), "torch": torch.__version__}
    sections = args.sections.split(",")
    if "train" in sections:
        out["train"] = train_speed(batch=8, crop=512, iters=args.iters)
    if "parity" in sections:
        out["parity"] = parity((1024, 2048))
    if "serve" in sections:
        out["serve"] = serve_latency((1024, 2048), [1, 4, 8, 16], args.iters)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"gpu_suite_{out['machine']['tag']}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
