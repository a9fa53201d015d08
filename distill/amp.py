"""Which precision a training stage runs in: `train.amp` -> an autocast dtype (or fp32), with the reason.

GPUs: bf16 where the GPU has bf16 units (Ampere and later), fp16 on older ones. CPUs: bf16 is only worth taking
where it is faster, and the flags do not say that. Measured on one CPU with AVX512-BF16 and no AMX (Intel, 2 cores,
oneDNN 3.12): a 3x3 convolution's forward + backward ran 1.25x *slower* in bf16 than in fp32, while another
AVX512-BF16 CPU (issue 25) trained 1.33x faster; AMX's bf16 tiles are several times faster than AVX-512 fp32.
So `auto` on a CPU with bf16 units (nfdseg.cpu) times the stage's own model, forward and backward on a batch of the
training shape, in fp32 and in bf16, and takes bf16 only when it is clearly faster (BF16_MARGIN); on a CPU without
bf16 units it trains fp32 without asking. The answer is recorded in checkpoint.json (metrics.amp,
metrics.amp_reason) and kept: per process, and per machine in the user's cache (`amp_choice.json` under
$NFDSEG_CACHE_DIR, else $XDG_CACHE_HOME/nfdseg, else ~/.cache/nfdseg; keyed by the CPU, its oneDNN ISA cap, the
threads, torch's version, the model and the batch), so a second run of the same config on the same machine trains
in the same precision even when the machine is busier than at the first timing; delete the file to time again.
A resumed run keeps the precision it started with (last.pt records it).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path
from typing import Callable

import torch

from nfdseg.cpu import cpu_bf16_units, read_cpu_info
from nfdseg.fsutil import read_json_object, write_json_atomic

log = logging.getLogger(__name__)

# The one spelling of what ran, shared by train.amp's values, the checkpoint manifest's metrics.amp and the GPU
# suite's labels: "bf16", "fp16" or "off" (fp32).
AMP_LABELS = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "off"}
DTYPE_OF_LABEL = {label: dtype for dtype, label in AMP_LABELS.items()}
BF16_MARGIN = 1.10  # bf16 must be at least this much faster than fp32 for `auto` to take it on a CPU
PROBE_STEPS = 3  # timed forward+backward passes per precision (after one warm-up), interleaved; the fastest counts
AMP_CHOICE_FILE = "amp_choice.json"

_probe_memo: dict[tuple, tuple[torch.dtype | None, str]] = {}


def amp_label(dtype: torch.dtype | None) -> str:
    return AMP_LABELS[dtype]


def _time_step(model: torch.nn.Module, frozen: torch.nn.Module | None, x: torch.Tensor,
               dtype: torch.dtype | None) -> float:
    """Seconds of one training step's compute: the model's forward and backward, the frozen teacher's forward."""
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = model(x)
        if frozen is not None:
            with torch.no_grad():
                frozen(x)
    out.float().mean().backward()
    return time.perf_counter() - t


def probe_cpu_bf16(model: torch.nn.Module, batch_shape: tuple[int, ...], channels_last: bool,
                   frozen: torch.nn.Module | None = None, timer: Callable = _time_step) -> tuple[float, float]:
    """Fastest seconds of a forward + backward pass of a copy of `model` (weights untouched; plus the forward of
    `frozen`, the teacher, when given) on a random batch, in fp32 and in bf16 autocast: (fp32 s, bf16 s).
    The fastest of the interleaved steps: other work on the machine only ever adds time, so the minimum is the
    estimate least shifted by it. `timer(model, frozen, x, dtype)` stands in for the clock in tests."""
    rng = torch.get_rng_state()  # the probe's batch and dropout must not shift the training's random stream
    probe = copy.deepcopy(model).train()
    times: dict[torch.dtype | None, list[float]] = {None: [], torch.bfloat16: []}
    try:
        x = torch.randn(*batch_shape)
        if channels_last:
            probe = probe.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        for dtype in times:
            timer(probe, frozen, x, dtype)  # warm-up: oneDNN builds its primitives
        for _ in range(PROBE_STEPS):
            for dtype in times:
                times[dtype].append(timer(probe, frozen, x, dtype))
    finally:
        torch.set_rng_state(rng)
    return min(times[None]), min(times[torch.bfloat16])


def user_cache_dir() -> Path:
    """Where nfdseg keeps per-machine measurements: $NFDSEG_CACHE_DIR, else $XDG_CACHE_HOME/nfdseg, else
    ~/.cache/nfdseg."""
    if os.environ.get("NFDSEG_CACHE_DIR"):
        return Path(os.environ["NFDSEG_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nfdseg"


def _remember(key: str, dtype: torch.dtype | None, reason: str) -> None:
    """Best effort: a cache that cannot be written only means timing again next time."""
    path = user_cache_dir() / AMP_CHOICE_FILE
    data = read_json_object(path)
    data[key] = {"amp": amp_label(dtype), "reason": reason, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, data)
    except OSError as e:
        log.info("could not keep the amp choice in %s (%s); it will be timed again", path, e)


def amp_choice(mode: str, device: torch.device, bf16_units: tuple[str, ...] | None = None,
               model: torch.nn.Module | None = None, batch_shape: tuple[int, ...] | None = None,
               channels_last: bool = False, frozen: torch.nn.Module | None = None,
               timer: Callable | None = None) -> tuple[torch.dtype | None, str]:
    """train.amp -> (autocast dtype, or None for fp32; why). `bf16_units` stands in for the CPU probe in tests.

    `model` and `batch_shape` let `auto` time the two precisions on a CPU with bf16 units; without them it keeps
    fp32 there (nothing measured, nothing assumed). `timer` stands in for the clock (tests): its answers are never
    kept on disk nor read from there."""
    if mode == "off":
        return None, "train.amp=off"
    if device.type == "cuda":
        if mode == "fp16":
            return torch.float16, "train.amp=fp16"
        if mode == "bf16":
            return torch.bfloat16, "train.amp=bf16"
        # including_emulation=False: torch otherwise says yes on V100/T4 too, where bf16 is emulated and slower
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16, "auto: the GPU has bf16 units"
        return torch.float16, "auto: the GPU has no bf16 units"
    units = cpu_bf16_units() if bf16_units is None else tuple(bf16_units)
    if mode == "fp16":
        log.warning("FALLBACK: train.amp=fp16 requested but training on %s: running fp32 (use amp=bf16 or auto "
                    "on a CPU)", device)
        return None, "train.amp=fp16 on a CPU: fp32"
    if mode == "bf16":
        if not units:
            log.warning("train.amp=bf16 on a CPU without bf16 units (no amx_bf16 or avx512_bf16 in its flags): bf16 "
                        "is emulated and usually slower than fp32; amp=auto would train fp32 here")
            return torch.bfloat16, "train.amp=bf16 (CPU without bf16 units: emulated)"
        return torch.bfloat16, f"train.amp=bf16 (CPU {'+'.join(units)})"
    if not units:
        return None, "auto: the CPU has no bf16 units (no amx_bf16 or avx512_bf16 in its flags)"
    if model is None or batch_shape is None:
        return None, f"auto: the CPU has {'+'.join(units)}, but nothing was timed: fp32"
    key = tuple((getattr(m, "arch", type(m).__name__), sum(p.numel() for p in m.parameters()))
                for m in (model, frozen) if m is not None) + (tuple(batch_shape), channels_last, units)
    real_clock = timer is None
    if key not in _probe_memo and real_clock:
        cpu = read_cpu_info()
        disk_key = (f"{cpu.model}|{cpu.onednn_cap or 'no ISA cap'}|{torch.get_num_threads()} threads|torch "
                    f"{torch.__version__}|{key}")
        hit = read_json_object(user_cache_dir() / AMP_CHOICE_FILE).get(disk_key)
        if isinstance(hit, dict) and hit.get("amp") in ("bf16", "off"):
            _probe_memo[key] = (DTYPE_OF_LABEL[hit["amp"]], f"{hit.get('reason', '')} (kept from {hit.get('when')}, "
                                                            f"{user_cache_dir() / AMP_CHOICE_FILE})")
    if key not in _probe_memo:
        fp32_s, bf16_s = probe_cpu_bf16(model, batch_shape, channels_last, frozen, timer or _time_step)
        speedup = fp32_s / max(bf16_s, 1e-12)
        take = speedup >= BF16_MARGIN
        timed = (f"forward+backward of batch {tuple(batch_shape)}{' channels_last' if channels_last else ''}: "
                 f"fp32 {fp32_s * 1e3:.1f} ms, bf16 {bf16_s * 1e3:.1f} ms ({speedup:.2f}x)")
        reason = (f"auto: the CPU has {'+'.join(units)} and bf16 was faster, {timed}" if take else
                  f"auto: the CPU has {'+'.join(units)} but bf16 was not {BF16_MARGIN:.2f}x faster, {timed}: fp32")
        _probe_memo[key] = (torch.bfloat16 if take else None, reason)
        if real_clock:
            _remember(disk_key, *_probe_memo[key])
    return _probe_memo[key]
