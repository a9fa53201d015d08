"""What this CPU can do: its flags, its bf16 units, and its peak FLOP/s. Read, never assumed.

Training asks `cpu_bf16_units()` to decide `train.amp: auto` on a CPU; the benchmarks ask `cpu_peak_gflops()` to
put a measured rate next to what the hardware could do. Everything is read from `/proc/cpuinfo` (Linux); where
it is absent (macOS, Windows) no bf16 unit is claimed, so `auto` trains fp32 there. Tests stand in for a machine
by passing `cpuinfo` text and an `env`.

oneDNN (PyTorch's CPU convolutions) can be capped below the hardware with `ONEDNN_MAX_CPU_ISA`; a cap below
AVX512_CORE_BF16 leaves the bf16 units unused, and a cap below AVX512_CORE_AMX leaves AMX unused, so the cap is
read too: that is how one machine measures the CPUs that lack AMX.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

# oneDNN's ISA names, lowest to highest (the ones that matter here); a cap admits its own and the lower ones
_ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
                "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                "AVX10_2_512", "AVX10_2_512_AMX_2", "DEFAULT", "ALL")
_BF16_ISA, _AMX_ISA = "AVX512_CORE_BF16", "AVX512_CORE_AMX"


@dataclass(frozen=True)
class CpuInfo:
    model: str
    cores: int  # logical CPUs this process may run on
    mhz: float  # nominal clock: the "@ x.xxGHz" of the model name, else the first "cpu MHz" line; 0 if unknown
    flags: frozenset[str]
    onednn_cap: str  # ONEDNN_MAX_CPU_ISA as set ("" when unset)

    def _admitted(self, isa: str) -> bool:
        cap = self.onednn_cap.upper()
        if not cap or cap not in _ONEDNN_ISAS:
            return True
        return _ONEDNN_ISAS.index(cap) >= _ONEDNN_ISAS.index(isa)

    @property
    def amx_bf16(self) -> bool:
        return {"amx_bf16", "amx_tile"} <= self.flags and self._admitted(_AMX_ISA)

    @property
    def avx512_bf16(self) -> bool:
        return "avx512_bf16" in self.flags and self._admitted(_BF16_ISA)

    @property
    def bf16_units(self) -> tuple[str, ...]:
        """The bf16 units training can use: ('amx_bf16', 'avx512_bf16'), either, or () when none."""
        return tuple(n for n, ok in (("amx_bf16", self.amx_bf16), ("avx512_bf16", self.avx512_bf16)) if ok)


def read_cpu_info(cpuinfo: str | None = None, env: dict | None = None, cores: int | None = None) -> CpuInfo:
    """Parse /proc/cpuinfo (or the given text). Unknown fields stay empty rather than guessed."""
    env = os.environ if env is None else env
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, mhz, flags = platform.processor() or "unknown", 0.0, frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and model in ("unknown", platform.processor()):
            model = value
        elif key == "cpu MHz" and not mhz:
            mhz = float(value or 0)
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    nominal = re.search(r"@\s*([\d.]+)\s*GHz", model)
    if nominal:
        mhz = float(nominal.group(1)) * 1000
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return CpuInfo(model, cores, mhz, flags, env.get("ONEDNN_MAX_CPU_ISA", ""))


def cpu_bf16_units(info: CpuInfo | None = None) -> tuple[str, ...]:
    """The bf16 units of this CPU that oneDNN may use (see CpuInfo.bf16_units)."""
    return (info or read_cpu_info()).bf16_units


# FLOPs per cycle per core, the method behind cpu_peak_gflops (Intel's optimisation manual, server cores):
# fp32 FMA: 2 ports x vector lanes x 2 (multiply + add): AVX-512 16 lanes -> 64, AVX2 8 lanes -> 32.
# AVX512-BF16 (VDPBF16PS): 2 ports x 16 lanes x 2 products x 2 -> 128.  AMX-BF16 (TDPBF16PS): 1024.
FLOPS_PER_CYCLE = {"fp32_avx512": 64, "fp32_avx2": 32, "bf16_avx512": 128, "bf16_amx": 1024}


def cpu_peak_gflops(info: CpuInfo | None = None) -> dict:
    """Peak GFLOP/s for fp32 and bf16 from the flags, the core count and the nominal clock, with the method.

    An upper bound: it assumes two FMA ports per core (true of Xeon server cores; many client cores have one)
    and the nominal clock (turbo is higher, AVX-512 licence clocks lower). 'cores' are the logical CPUs this
    process may use: on a VM these may be hyper-threads of fewer physical cores, which would halve the bound.
    """
    info = info or read_cpu_info()
    ghz = info.mhz / 1000
    fp32_key = "fp32_avx512" if "avx512f" in info.flags else "fp32_avx2" if "avx2" in info.flags else None
    bf16_key = "bf16_amx" if info.amx_bf16 else "bf16_avx512" if info.avx512_bf16 else None
    out = {"cpu": info.model, "cores": info.cores, "ghz": round(ghz, 3), "bf16_units": list(info.bf16_units),
           "onednn_max_cpu_isa": info.onednn_cap or None,
           "method": "cores x nominal GHz x FLOPs/cycle/core (" + ", ".join(
               f"{k} {v}" for k, v in FLOPS_PER_CYCLE.items()) + "); assumes 2 FMA ports per core"}
    for name, key in (("fp32", fp32_key), ("bf16", bf16_key or fp32_key)):
        out[f"{name}_peak_gflops"] = round(info.cores * ghz * FLOPS_PER_CYCLE[key], 1) if key and ghz else None
        out[f"{name}_unit"] = key
    return out
