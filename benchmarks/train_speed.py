"""Training speed against the hardware: images/s and achieved GFLOP/s of the teacher and the student stages, next
to the CPU's (or GPU's) peak, for fp32, bf16 autocast and bf16 + channels_last, interleaved in one run.

Each mode runs the trainer's own step (distill/trainer.py: data from the batch plan, forward, the NFD loss with
the teacher's forward pass for the student stage, backward, SGD) on the preset's data and models; rounds
interleave the modes so that a change of load on a shared machine touches every mode alike.
FLOPs: the model's forward FLOPs at the training crop (torch.utils.flop_counter, a multiply-add = 2) x 3 per image
for forward + backward; the student stage also spends one teacher forward per image, reported beside it.
Peak: nfdseg.cpu.cpu_peak_gflops (cores x nominal clock x FLOPs/cycle of the unit the flags show; method recorded).

    python benchmarks/train_speed.py --config camvid_cpu --set data.root=$CAMVID
    python benchmarks/train_speed.py --config quick --tag quick
    ONEDNN_MAX_CPU_ISA=AVX512_CORE python benchmarks/train_speed.py ...   # a CPU without bf16 units, on this one
Writes benchmarks/results/train_speed_<machine>[_<tag>].json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, git_rev, machine  # noqa: E402

MODES = {"fp32": {"amp": "off", "channels_last": False},
         "fp32_channels_last": {"amp": "off", "channels_last": True},
         "bf16": {"amp": "bf16", "channels_last": False},
         "bf16_channels_last": {"amp": "bf16", "channels_last": True}}


def forward_gflops(model, size, device) -> float:
    """Forward GFLOPs of one image at `size` (H, W)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.zeros(1, 3, *size, device=device))
    model.train(was)
    return fc.get_total_flops() / 1e9


class StageBench:
    """One stage's networks per mode, built through the trainer's own setup, and its step."""

    def __init__(self, cfg, stage: str, teacher_dir):
        from nfdseg.distill import trainer as T

        self.T, self.stage, self.teacher_dir, self.cfg = T, stage, teacher_dir, cfg
        sc = getattr(cfg, stage)
        self.proc = T._setup_process(sc)
        self.data = T._setup_data(cfg, sc, self.proc, progress=False)
        self.nets, self.batches = {}, {}

    def setup(self, mode: str, settings: dict):
        import dataclasses

        sc0 = getattr(self.cfg, self.stage)
        sc = dataclasses.replace(sc0, train=dataclasses.replace(sc0.train, **settings))
        cfg = dataclasses.replace(self.cfg, **{self.stage: sc})
        nets = self.T._setup_nets(cfg, sc, self.stage, self.data, self.proc, self.teacher_dir)
        nets.net.train()
        self.nets[mode] = (nets, sc)
        self.batches[mode] = iter(self.T.plan_loader(self.data.train_ds, self.data.plan, 0, 10**7, sc.train.workers))

    def steps(self, mode: str, n: int) -> tuple[float, float]:
        """(wall seconds, this process's CPU seconds) for n optimiser steps. On a shared machine the CPU time of a
        single-threaded run (--threads 1) is the steadier measure: waiting for a core does not count."""
        nets, sc = self.nets[mode]
        t, c = time.perf_counter(), time.process_time()
        for it in range(n):
            self.T._train_step(nets, sc, self.batches[mode], it, self.proc)
        return time.perf_counter() - t, time.process_time() - c


def profile_step(bench: StageBench, mode: str, top: int = 12) -> list[dict]:
    """Self CPU time of the slowest operators over 3 steps (where a step's time goes)."""
    from torch.profiler import ProfilerActivity, profile

    bench.steps(mode, 1)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        bench.steps(mode, 3)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    return [{"op": e.key, "self_ms_per_step": round(e.self_cpu_time_total / 3e3, 2),
             "share": round(e.self_cpu_time_total / total, 3)} for e in rows]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="camvid_cpu")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--steps", type=int, default=6, help="timed optimiser steps per mode and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stages", default="teacher,student")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--tag", default="", help="results file suffix after the machine")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from nfdseg.config import deep_update, parse_overrides
    from nfdseg.cpu import cpu_peak_gflops
    from nfdseg.distill.config import load_run_config
    from nfdseg.distill.trainer import train_stage
    from nfdseg.models import build_model

    cfg = load_run_config(args.config, parse_overrides(args.overrides))
    modes = args.modes.split(",")
    m = machine()
    res = {"benchmark": "train_speed", "config": args.config, "overrides": args.overrides, "machine": m,
           "git": git_rev(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "peak": cpu_peak_gflops(), "modes": {k: MODES[k] for k in modes}, "steps": args.steps,
           "rounds": args.rounds, "load_before": os.getloadavg(), "stages": {}}
    tmp = Path(tempfile.mkdtemp(prefix="train_speed_"))
    teacher_dir = None
    if "student" in args.stages:  # the student's stage needs a teacher checkpoint: 2 iterations are enough
        quick_teacher = load_run_config(args.config, deep_update(parse_overrides(args.overrides), {"teacher": {
            "train": {"iters": 2, "eval_every": 2, "ckpt_every": 2}}, "data": {"max_val_images": 2}}))
        train_stage(quick_teacher, "teacher", tmp / "teacher", progress=False)
        teacher_dir = tmp / "teacher"
    crop = tuple(cfg.data.crop_size)
    for stage in args.stages.split(","):
        sc = getattr(cfg, stage)
        bench = StageBench(cfg, stage, teacher_dir)
        for mode in modes:
            bench.setup(mode, MODES[mode])
            bench.steps(mode, 2)  # warm-up: oneDNN primitive creation, allocator
        times = {mode: [] for mode in modes}
        cpu = {mode: [] for mode in modes}
        for _ in range(args.rounds):
            for mode in modes:
                wall, used = bench.steps(mode, args.steps)
                times[mode].append(wall)
                cpu[mode].append(used)
        model = build_model(sc.model.arch, bench.data.classes.num_classes)
        fwd = forward_gflops(model, crop, "cpu")
        teacher_fwd = 0.0
        if stage == "student" and bench.nets[modes[0]][0].teacher_forward:
            teacher_fwd = forward_gflops(bench.nets[modes[0]][0].teacher, crop, "cpu")
        rows = {}
        for mode in modes:
            per_step = statistics.median(times[mode]) / args.steps
            ips = sc.train.batch_size / per_step
            nets = bench.nets[mode][0]
            peak_key = "bf16_peak_gflops" if nets.amp is not None else "fp32_peak_gflops"
            achieved = ips * 3 * fwd
            rows[mode] = {"ms_per_step": round(per_step * 1e3, 1), "images_per_s": round(ips, 2),
                          "round_ms_per_step": [round(t / args.steps * 1e3, 1) for t in times[mode]],
                          "cpu_ms_per_step": round(statistics.median(cpu[mode]) / args.steps * 1e3, 1),
                          "amp_ran": nets.amp_reason, "gflops_model_x3": round(achieved, 2),
                          "gflops_incl_teacher_forward": round(ips * (3 * fwd + teacher_fwd), 2),
                          "peak_gflops": res["peak"][peak_key],
                          "share_of_peak": round(ips * (3 * fwd + teacher_fwd) / res["peak"][peak_key], 4)
                          if res["peak"][peak_key] else None}
        base = rows[modes[0]]["images_per_s"]
        for mode in modes:
            rows[mode]["speedup_vs_" + modes[0]] = round(rows[mode]["images_per_s"] / base, 3)
            rows[mode]["cpu_time_speedup_vs_" + modes[0]] = round(rows[modes[0]]["cpu_ms_per_step"]
                                                                   / rows[mode]["cpu_ms_per_step"], 3)
        prof_mode = max(modes, key=lambda k: rows[k]["images_per_s"])
        res["stages"][stage] = {"arch": sc.model.arch, "batch": sc.train.batch_size, "crop": list(crop),
                                "forward_gflops_per_image": round(fwd, 4),
                                "teacher_forward_gflops_per_image": round(teacher_fwd, 4), "modes": rows,
                                "profile_mode": prof_mode, "profile": profile_step(bench, prof_mode)}
        print(stage, json.dumps(rows, indent=1))
    res["load_after"] = os.getloadavg()
    suffix = f"_{args.tag}" if args.tag else ""
    out = RESULTS / f"train_speed_{m['tag']}{suffix}.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
