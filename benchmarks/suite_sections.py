"""The GPU suite's rules, apart from what it measures: each section has its own time budget, the JSON is
written (atomically) after every section so a kill keeps what finished, and nothing is timed under a label
the Segmenter's own report contradicts.

- `Budget`: a section's seconds; `check(what)` raises `OverBudget` once they are spent (between steps: a
  step that cannot be interrupted, such as the export, runs in a child process with the budget as time-out).
- `Recorder.run(name, budget_s, fn)`: runs one section, records `{status, wall_s, budget_s}` under
  `sections[name]` (done | skipped | over_budget | failed, with the reason), writes the JSON. `finish(required)`
  sets `complete` only when every required section is done: a run that measured nothing is not complete.
- `backend_mismatch(report, expect)`: '' when `Segmenter.describe()` shows the backend, provider, device and
  precision the section is about to label its figures with, else what differs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

log = logging.getLogger("gpu_suite")


class SkipSection(Exception):
    """The section cannot run here; the message says why (recorded, not an error)."""


class OverBudget(Exception):
    """The section spent its time budget; what it finished stays in the JSON."""


class Budget:
    def __init__(self, section: str, seconds: float):
        self.section, self.seconds, self.t0 = section, max(0.0, seconds), time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise OverBudget(f"{self.section} spent its {self.seconds:.0f} s budget before {what}")


def write_json_atomic(path: Path, obj: dict) -> None:
    """Temporary file beside `path`, fsync, rename: a kill leaves the previous complete JSON, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(obj, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Recorder:
    """The suite's JSON document, written after every section. `total_s` caps all sections together."""

    def __init__(self, path: Path, out: dict, total_s: float):
        self.path, self.out, self.t0, self.total_s = path, out, time.perf_counter(), total_s
        out.setdefault("sections", {})
        out["complete"] = False  # true only once every required section has measured (finish)
        self.failed = False
        self.write()

    def write(self) -> None:
        self.out["wall_s"] = round(time.perf_counter() - self.t0, 1)
        write_json_atomic(self.path, self.out)

    def run(self, name: str, budget_s: float, fn: Callable[[Budget], object]):
        """Run `fn(budget)` as section `name`; returns its result, or None when it did not finish."""
        left_total = self.total_s - (time.perf_counter() - self.t0)
        budget = Budget(name, min(budget_s, left_total))
        rec = {"budget_s": round(budget.seconds, 2)}
        result = None
        try:
            if budget.seconds <= 0:
                raise SkipSection(f"no time left: section budget {budget_s:.0f} s, suite budget left "
                                  f"{max(0.0, left_total):.0f} s")
            result = fn(budget)
            rec["status"] = "done"
        except SkipSection as e:
            rec.update(status="skipped", reason=str(e))
            self.out.setdefault(name, {})["skipped"] = str(e)
        except OverBudget as e:
            rec.update(status="over_budget", reason=str(e))
            self.out.setdefault(name, {})["stopped"] = str(e)
        except Exception as e:  # noqa: BLE001 - the JSON says what failed and where; later sections still run
            self.failed = True
            rec.update(status="failed", reason=f"{type(e).__name__}: {str(e)[:500]}")
            self.out.setdefault(name, {})["error"] = {"type": type(e).__name__, "message": str(e)[:2000],
                                                      "traceback": traceback.format_exc()[-4000:]}
        rec["wall_s"] = round(budget.seconds - budget.left(), 2) if budget.seconds > 0 else 0.0
        self.out["sections"][name] = rec
        log.info("section %s: %s%s (%.1f of %.0f s)", name, rec["status"],
                 f" ({rec['reason']})" if "reason" in rec else "", rec["wall_s"], rec["budget_s"])
        self.write()
        return result

    def finish(self, required: tuple[str, ...] = ()) -> bool:
        """Every section is recorded; `complete` is true only when each `required` section is done (measured
        under its label). Otherwise `incomplete` says which were not, and why. Returns `complete`."""
        missing = {name: self.out["sections"].get(name, {}).get("reason") or
                   self.out["sections"].get(name, {}).get("status", "not run") for name in required
                   if self.out["sections"].get(name, {}).get("status") != "done"}
        self.out["complete"] = not missing
        if missing:
            self.out["incomplete"] = missing
        self.write()
        return not missing


def backend_mismatch(report: dict, expect: dict) -> str:
    """'' when the Segmenter's report agrees with every expected key, else what differs. A `device` of
    'cuda' matches any 'cuda:N'; `fallback: ''` demands that nothing fell back."""
    wrong = []
    for key, want in expect.items():
        got = report.get(key)
        ok = (str(got or "").startswith("cuda") if want == "cuda" and key == "device" else got == want)
        if not ok:
            wrong.append(f"{key} {got!r} (asked for {want!r})")
    if not wrong:
        return ""
    note = f"; fallback: {report['fallback']}" if report.get("fallback") else ""
    return "the Segmenter reports " + ", ".join(wrong) + note + ": not timed under this label"


def missing_for_tensorrt(importable: Callable[[str], bool], gpu: bool) -> list[str]:
    """What the TensorRT section needs and does not find: TensorRT, cuda-python's bindings, a GPU."""
    from nfdseg.serve.backends.trt_compat import tensorrt_pip_spec  # the product's one rule (after use_checkout)

    missing = []
    if not importable("tensorrt"):
        missing.append(f"TensorRT (NVIDIA's container, JetPack, or pip install '{tensorrt_pip_spec(12)}' on a CUDA 12 "
                       f"driver, '{tensorrt_pip_spec(13)}' on CUDA 13; an existing engine needs its exact release)")
    if not (importable("cuda.bindings") or importable("cuda.cudart")):
        missing.append("CUDA bindings (pip install 'nfdseg[trt]' or 'nfdseg[trt-cu13]': cuda-python)")
    if not gpu:
        missing.append("a CUDA GPU")
    return missing


def torch_expectation(precision: str, graphs: bool, dry_run: bool) -> dict:
    """What the Segmenter must report for a torch variant. The dry run asks the CPU, which runs every variant
    in fp32 eagerly (each fallback recorded): its rows are plumbing, labelled as such."""
    if dry_run:
        return {"backend": "torch", "device": "cpu", "precision": "fp32", "cuda_graphs": False}
    return {"backend": "torch", "device": "cuda", "precision": precision, "cuda_graphs": graphs, "fallback": ""}


EXPORT_PACKAGES = ("onnx", "onnxslim", "onnxconverter_common", "onnxruntime")  # onnxruntime: the parity check


def runtime_plan(dry_run: bool, _importable: Callable[[str], bool], gpu: bool | None = None) -> dict:
    """What the export / onnxruntime_cuda / tensorrt sections can do here, decided before any of them starts.
    Each reason names what that section itself lacks first (TensorRT's section: TensorRT, the CUDA bindings, a
    GPU), then what the export it serves needs. `gpu`: stands in for torch's answer in tests."""
    if gpu is None:
        import torch

        gpu = torch.cuda.is_available()
    gpu = gpu and not dry_run
    no_gpu = "a CUDA GPU" + (" (--dry-run runs on the CPU)" if dry_run else "")
    export_missing = [m for m in EXPORT_PACKAGES if not _importable(m)]
    export_why = (f"the ONNX export needs {', '.join(export_missing)} (pip install 'nfdseg[export]')"
                  if export_missing else "")
    if not _importable("onnxruntime"):
        ort_why = "onnxruntime-gpu is not installed (pip install 'nfdseg[gpu-cu13]', or [gpu-cu12], alone)"
    else:
        import onnxruntime as ort

        ort_why = "" if "CUDAExecutionProvider" in ort.get_available_providers() else (
            f"onnxruntime {ort.__version__} has no CUDA provider (the CPU build: pip install 'nfdseg[gpu-cu13]' "
            "or [gpu-cu12], alone)")
        if not ort_why and not gpu:
            ort_why = f"no {no_gpu} in this run"
    trt_missing = missing_for_tensorrt(_importable, gpu)
    if dry_run and trt_missing and trt_missing[-1] == "a CUDA GPU":
        trt_missing[-1] = no_gpu
    trt_why = f"the TensorRT section needs {'; '.join(trt_missing)}" if trt_missing else ""
    ort_reason = "; ".join(r for r in (ort_why, export_why) if r)
    trt_reason = "; ".join(r for r in (trt_why, export_why) if r)
    skip_export = export_why or ("nothing to serve on the GPU: " + "; ".join((ort_why, trt_why))
                                 if ort_why and trt_why else "")
    return {"skip_export": skip_export, "ort_why_not": ort_reason, "trt_why_not": trt_reason,
            "tensorrt_ok": not trt_missing}


def parse_budgets(items: list[str], defaults: dict[str, float]) -> dict[str, float]:
    """`--budget SECTION=SECONDS` items over the defaults; a wrong item exits with what is accepted."""
    budgets = dict(defaults)
    for item in items:
        name, _, seconds = item.partition("=")
        if name not in budgets or not re.fullmatch(r"\d+(\.\d+)?", seconds):
            raise SystemExit(f"--budget wants SECTION=SECONDS with SECTION one of {', '.join(budgets)}; got {item!r}")
        budgets[name] = float(seconds)
    return budgets
