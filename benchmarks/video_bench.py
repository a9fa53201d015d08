"""Video benchmark: end-to-end fps of `segment_video` (decode -> segment -> overlay -> H.264 encode) on a generated
30 s clip at 640x480, the pipelined stream (FrameStream) against a plain frame loop, interleaved in one run, for
the quick student and a real architecture at a reduced input. Weights are random (fps does not depend on them).
Writes benchmarks/results/video_<machine>.json. Target (issue 19): pipelined >= 1.3x the plain loop on 2 cores.

    python benchmarks/video_bench.py                      # about 6-9 minutes on 2 shared cores
    python benchmarks/video_bench.py --seconds 5 --rounds 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, git_rev, machine  # noqa: E402

# (name, architecture, model input H x W): the quick preset's student at its own 96 px, and the paper's mobile
# student at a reduced input for 2 CPU cores
MODELS = (("quick_student", "deeplabv3_resnet10_w8", (96, 96)),
          ("deeplabv3_mobilenetv3_large", "deeplabv3_mobilenetv3_large", (192, 256)))


def build_export(work: Path, arch: str, size: tuple[int, int]) -> Path:
    """A randomly initialised `arch` trained for one step (so it has a checkpoint and a manifest) and exported to
    fp32 ONNX; cached under `work` between runs."""
    out = work / f"{arch}_{size[0]}x{size[1]}"
    if (out / "export/model.onnx").is_file():
        return out / "export"
    from nfdseg.distill.config import load_run_config
    from nfdseg.distill.trainer import train_stage
    from nfdseg.export.run import ExportConfig, run_export

    cfg = load_run_config("quick", {
        "data": {"synthetic_train": 8, "synthetic_val": 2, "synthetic_size": list(size), "crop_size": list(size),
                 "input_size": list(size)},
        "teacher": {"model": {"arch": arch}, "train": {"iters": 1, "batch_size": 2, "eval_every": 1,
                                                       "ckpt_every": 1, "log_every": 1}}})
    train_stage(cfg, "teacher", out / "ckpt", progress=False)
    run_export(out / "ckpt", out / "export", ExportConfig(engine="off", fp16=False, fp16_calibration_images=0))
    return out / "export"


def make_clip(path: Path, seconds: float, fps: int = 30, size=(480, 640)) -> Path:
    """A synthetic street-like scene panned 4 px per frame, H.264 at `fps`."""
    from nfdseg.data.synthetic import generate_scene
    from nfdseg.serve.video import VideoWriter

    if path.is_file():
        return path
    h, w = size
    big = generate_scene(7, (h, 2 * w))[0]
    with VideoWriter(path, fps) as writer:
        for i in range(int(seconds * fps)):
            x = (4 * i) % w
            writer.write(big[:, x:x + w])
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="clip length (default 30 s at 30 fps)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of (plain, pipelined) per model")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "nfdseg-video-bench"))
    ap.add_argument("--tag")
    args = ap.parse_args()

    from nfdseg.serve import Segmenter
    from nfdseg.serve.predict_video import VideoJob, segment_video

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_setup = time.perf_counter()
    clip = make_clip(work / f"clip_{args.seconds:g}s_640x480.mp4", args.seconds)
    exports = {name: build_export(work, arch, size) for name, arch, size in MODELS}
    segs = {name: Segmenter(path, backend="onnxruntime", device="cpu") for name, path in exports.items()}
    setup_s = time.perf_counter() - t_setup
    runs: dict[str, dict[str, list]] = {name: {"plain_loop": [], "pipelined": []} for name in segs}
    for r in range(args.rounds):
        for name, seg in segs.items():
            order = ("plain_loop", "pipelined") if r % 2 == 0 else ("pipelined", "plain_loop")
            for mode in order:
                load, cpu0, wall0 = os.getloadavg()[0], time.process_time(), time.perf_counter()
                s = segment_video(seg, clip, VideoJob(work / "out", pipelined=mode == "pipelined"), stem=name)
                s["loadavg_1min_before"] = round(load, 2)
                # CPU seconds of this process (every thread: FFmpeg's, onnxruntime's, ours) per wall second
                s["cores_busy"] = round((time.process_time() - cpu0) / (time.perf_counter() - wall0), 2)
                runs[name][mode].append(s)
                print(f"round {r} {name:28s} {mode:10s} {s['fps']:6.2f} fps  {s['cores_busy']:.2f} cores busy  "
                      f"load {load:.2f}", flush=True)
    models = {}
    for name, arch, size in MODELS:
        fps = {mode: [s["fps"] for s in runs[name][mode]] for mode in ("plain_loop", "pipelined")}
        ratio = [p / q for p, q in zip(fps["pipelined"], fps["plain_loop"])]
        d = segs[name].describe()
        models[name] = {
            "architecture": arch, "model_input_hw": list(size), "backend": d["backend"], "device": d["device"],
            "frames": runs[name]["pipelined"][0]["frames"],
            "fps_plain_loop": fps["plain_loop"], "fps_pipelined": fps["pipelined"],
            "speedup_per_round": [round(x, 3) for x in ratio], "speedup_median": round(float(np.median(ratio)), 3),
            "cores_busy_plain_loop": [s["cores_busy"] for s in runs[name]["plain_loop"]],
            "cores_busy_pipelined": [s["cores_busy"] for s in runs[name]["pipelined"]],
            "loadavg_before_runs": {m: [s["loadavg_1min_before"] for s in runs[name][m]] for m in runs[name]},
            "latency_ms_plain_loop": runs[name]["plain_loop"][-1]["latency_ms"],
            "latency_ms_pipelined": runs[name]["pipelined"][-1]["latency_ms"],
            "dropped": sum(s["dropped"] for m in runs[name].values() for s in m),
        }
    mach = machine()
    result = {
        "benchmark": "video", "machine": mach, "git": git_rev(),
        "machine_note": "2-core AMD EPYC, no GPU, shared with other agents: see loadavg",
        "clip": {"seconds": args.seconds, "fps": 30, "size_wh": [640, 480], "codec": "h264 (libx264 veryfast crf 23)",
                 "content": "synthetic scene panned 4 px per frame"},
        "what": "segment_video end to end: decode (PyAV) -> preprocess -> onnxruntime fp32 -> postprocess -> overlay "
                "-> H.264 encode of the overlay. plain_loop: one frame after another in one thread; pipelined: "
                "FrameStream (decode, preprocess, infer threads, queues of 4, batches of up to 4 ready frames) while "
                "the caller's thread overlays and encodes. Interleaved: rounds alternate which mode runs first.",
        "rounds": args.rounds, "setup_s": round(setup_s, 1),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "models": models,
        "target": {"speedup": 1.3, "met": {n: m["speedup_median"] >= 1.3 for n, m in models.items()}},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"video_{args.tag or mach['tag']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    for n, m in models.items():
        print(f"{n}: plain {m['fps_plain_loop']} fps, pipelined {m['fps_pipelined']} fps, x{m['speedup_median']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
