"""Latency and throughput of a Segmenter: infer-only and end-to-end per batch size, and through the
micro-batcher per concurrency level. Percentiles in ms, throughput in images/s.

Every row runs for a time budget, like `trtexec --duration`: warm-up calls, then timed calls until
`duration_s` has passed and at least `min_iters` calls were made. A whole-bench budget (`total_s`)
skips the rows whose minimum would not fit in what is left, and says so in the row.
"""

from __future__ import annotations

import math
import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np

from nfdseg.errors import ConfigError
from nfdseg.manifest import runtime_versions
from nfdseg.preprocess import prepare_batch

from .batcher import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUE, DEFAULT_MAX_WAIT_MS, MicroBatcher
from .segmenter import Segmenter

Clock = Callable[[], float]
DEFAULT_BATCHES = (1, 4, 8)  # the batch sizes `nfdseg bench` and the pipeline's bench stage time


@dataclass(frozen=True)
class BenchBudget:
    """How long each row runs (seconds), like trtexec's --duration / --iterations / --warmUp.

    duration_s: timed seconds per row and mode (infer-only, end-to-end), after warm-up; 0 = count only.
    min_iters: timed calls per row even when they outlast duration_s (per concurrency level: requests).
    warmup: untimed calls before each row (its infer-only loop; the end-to-end loop follows on the warm backend).
    max_iters: cap on timed calls per row.
    total_s: budget of the whole bench (None: none). A row whose minimum (warm-up + min_iters calls,
        estimated from the rows before it) does not fit in what is left is skipped, with the reason.
    """

    duration_s: float = 3.0
    min_iters: int = 5
    warmup: int = 2
    max_iters: int = 10_000
    total_s: float | None = None

    def __post_init__(self) -> None:
        if self.duration_s < 0 or self.min_iters < 1 or self.warmup < 0 or self.max_iters < self.min_iters:
            raise ConfigError("bench budget needs duration >= 0 s, min iterations >= 1, warm-up >= 0 and "
                              "max iterations >= min iterations", seen=str(asdict(self)),
                              fix="e.g. --duration 3 --min-iters 5 --warmup 2")
        if self.total_s is not None and self.total_s <= 0:
            raise ConfigError("the bench's total budget must be positive", seen=f"{self.total_s} s")


def _fixed(count: int, warmup: int = 3) -> BenchBudget:
    """Exactly `count` timed calls, no time budget (the older iteration-count interface)."""
    return BenchBudget(duration_s=0.0, min_iters=count, warmup=warmup, max_iters=count)


def percentiles(ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(ms, np.float64)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "mean_ms": round(float(a.mean()), 3), "n": int(a.size)}


def timed_calls(fn: Callable[[], Any], budget: BenchBudget, clock: Clock = time.perf_counter,
                deadline: float = math.inf, on_call: Callable[[], None] | None = None) -> list[float]:
    """Warm up, then call fn until duration_s has passed (or the deadline) and min_iters calls were made.

    Returns the timed calls' latencies in ms. The minimum count wins over the duration and the deadline.
    """
    for _ in range(budget.warmup):
        fn()
    out: list[float] = []
    start = clock()
    while len(out) < budget.max_iters:
        t = clock()
        fn()
        now = clock()
        out.append((now - t) * 1e3)
        if on_call is not None:
            on_call()
        if len(out) >= budget.min_iters and (now - start >= budget.duration_s or now >= deadline):
            break
    return out


def sample_images(seg: Segmenter, n: int, size: tuple[int, int] | None = None, seed: int = 0) -> list[np.ndarray]:
    """Deterministic test images: synthetic scenes at the model's input size (or `size`)."""

    try:
        from nfdseg.data.synthetic import generate_scene
    except ImportError:  # serve-only install: random images are as good for timing
        generate_scene = None
    h, w = size or tuple(seg.manifest.preprocess.input_size)
    imgs = []
    for i in range(n):
        if generate_scene is not None:
            im = generate_scene(10_000 + seed * 1000 + i, (h, w))[0]
        else:
            im = np.random.default_rng(seed * 1000 + i).integers(0, 255, (h, w, 3), dtype=np.uint8)
        imgs.append(im)
    return imgs


@dataclass
class BenchTarget:
    """One artifact to bench: its name in the report, the backend asked for, and how to open it."""

    artifact: str
    backend: str
    open: Callable[[], Segmenter]


class _Progress:
    """One tqdm bar over all rows; the postfix names the row running and counts its timed calls."""

    def __init__(self, rows: int, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=rows, desc="bench", unit="row", disable=not enabled, dynamic_ncols=True)
        self.label, self.calls, self.shown = "", 0, 0.0

    def row(self, label: str) -> None:
        self.label, self.calls = label, 0
        self.bar.set_postfix_str(label)

    def call(self) -> None:
        self.calls += 1
        now = time.monotonic()
        if now - self.shown >= 0.5:  # slow rows (large inputs) show they are alive; fast ones do not pay for it
            self.shown = now
            self.bar.set_postfix_str(f"{self.label} n={self.calls}")

    def done(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _batch_row(seg: Segmenter, b: int, budget: BenchBudget, clock: Clock, deadline: float,
               prog: _Progress) -> dict[str, Any]:
    """Warm up, then time infer-only and end-to-end calls. When the warm-up calls show that the minimum count
    cannot finish before the deadline, the row stops there and says so (row["skipped"])."""
    imgs = sample_images(seg, b)
    x = prepare_batch(imgs, seg.manifest.preprocess, seg.normalize_in_graph)
    t0 = clock()
    for _ in range(budget.warmup):
        t = clock()
        seg.backend_infer_batch(x)
        call_s = clock() - t
    if budget.warmup and clock() + call_s * 2 * budget.min_iters > deadline:
        return {"batch": b, "skipped": f"a warm-up call took {call_s:.1f} s, so {2 * budget.min_iters} timed calls "
                                       f"need about {call_s * 2 * budget.min_iters:.1f} s; "
                                       f"{max(deadline - clock(), 0):.1f} s of the bench budget remain",
                "seconds": round(clock() - t0, 2), "warmup_s_per_image": round(call_s / b, 4)}
    timed = replace(budget, warmup=0)  # the end-to-end loop follows on the warm backend too
    infer = timed_calls(lambda: seg.backend_infer_batch(x), timed, clock, deadline, prog.call)
    e2e = timed_calls(lambda: seg.predict(imgs), timed, clock, deadline, prog.call)
    return {"batch": b, "infer": percentiles(infer), "end_to_end": percentiles(e2e),
            "infer_images_per_s": round(b / (np.median(infer) / 1e3), 2),
            "end_to_end_images_per_s": round(b / (np.median(e2e) / 1e3), 2), "seconds": round(clock() - t0, 2)}


def _min_cost_s(per_image_s: float, batch: int, budget: BenchBudget) -> float:
    """Seconds a row needs at least: warm-up, then min_iters calls infer-only and min_iters end-to-end."""
    return per_image_s * batch * (budget.warmup + 2 * budget.min_iters)


def bench_targets(targets: Sequence[BenchTarget], batch_sizes: Sequence[int], budget: BenchBudget = BenchBudget(),
                  progress: bool = True, clock: Clock = time.perf_counter) -> dict[str, Any]:
    """Bench several artifacts within one budget. Rows run smallest batch first across all targets, so a
    tight total budget drops the large batches, not whole artifacts. Returns {"budget", "rows", "seconds"}.

    A target that cannot be opened gives a row with "error"; a row that does not fit gives "skipped".
    """
    t_start = clock()
    deadline = t_start + budget.total_s if budget.total_s else math.inf
    segs: dict[int, Segmenter | None] = {}
    per_image: dict[int, float] = {}  # measured seconds per image, per target
    rows: dict[tuple[int, int], dict[str, Any]] = {}
    prog = _Progress(len(targets) * len(batch_sizes), progress)
    try:
        for b in sorted(batch_sizes):
            for k, t in enumerate(targets):
                if k not in segs:
                    try:
                        segs[k] = t.open()
                    except Exception as e:  # e.g. an engine that cannot run here: the report says so
                        segs[k] = None
                        rows[(k, -1)] = {"backend": t.backend, "artifact": t.artifact, "error": getattr(e, "what", str(e))}
                seg = segs[k]
                if seg is None:
                    prog.done()
                    continue
                head = {**seg.describe(), "artifact": t.artifact}
                estimate = per_image.get(k, max(per_image.values(), default=0.0))
                need, left = _min_cost_s(estimate, b, budget), deadline - clock()
                if need > left or left <= 0:
                    rows[(k, b)] = {**head, "batch": b, "skipped": (
                        f"needs about {need:.1f} s (warm-up {budget.warmup} + {budget.min_iters} calls infer-only + "
                        f"{budget.min_iters} end-to-end) but {max(left, 0):.1f} s of the {budget.total_s:g} s bench budget remain")}
                    prog.done()
                    continue
                prog.row(f"{t.artifact} {t.backend} b{b}")
                row = _batch_row(seg, b, budget, clock, deadline, prog)
                per_image[k] = row["warmup_s_per_image"] if "skipped" in row else row["end_to_end"]["p50_ms"] / 1e3 / b
                rows[(k, b)] = {**head, **row}
                prog.done()
    finally:
        prog.close()
        for seg in segs.values():
            if seg is not None:
                seg.close()
    ordered = [rows[key] for key in sorted(rows)]
    return {"budget": asdict(budget), "rows": ordered, "seconds": round(clock() - t_start, 2),
            "rows_skipped": sum("skipped" in r for r in ordered)}


def bench_batches(seg: Segmenter, batch_sizes: Sequence[int], budget: BenchBudget | None = None, *,
                  warmup: int | None = None, iters: int | None = None, progress: bool = False,
                  clock: Clock = time.perf_counter) -> list[dict]:
    """Rows of one Segmenter per batch size. `iters` (with `warmup`) asks for exactly that many timed calls
    instead of a time budget."""
    if budget is None:
        budget = _fixed(iters, 3 if warmup is None else warmup) if iters else BenchBudget()
    deadline = clock() + budget.total_s if budget.total_s else math.inf
    prog = _Progress(len(batch_sizes), progress)
    rows = []
    try:
        for b in batch_sizes:
            prog.row(f"batch {b}")
            rows.append(_batch_row(seg, b, budget, clock, deadline, prog))
            prog.done()
    finally:
        prog.close()
    return rows


def _load(fn_per_request: Callable[[np.ndarray], Any], imgs: list[np.ndarray], concurrency: int,
          budget: BenchBudget, clock: Clock = time.perf_counter) -> dict[str, Any]:
    """`concurrency` callers send requests until duration_s has passed and min_iters requests were sent."""
    lat: list[float] = []
    lock = threading.Lock()
    errors = issued = 0
    start = clock()

    def take() -> int | None:
        nonlocal issued
        with lock:
            enough = issued >= budget.min_iters and clock() - start >= budget.duration_s
            if enough or issued >= budget.max_iters:
                return None
            issued += 1
            return issued - 1

    def caller() -> None:
        nonlocal errors
        while (i := take()) is not None:
            t = clock()
            try:
                fn_per_request(imgs[i % len(imgs)])
            except Exception:
                with lock:
                    errors += 1
                continue
            with lock:
                lat.append((clock() - t) * 1e3)

    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(caller) for _ in range(concurrency)]:
            f.result()
    wall = clock() - start
    return {"concurrency": concurrency, "requests": issued, "errors": errors, **percentiles(lat or [0.0]),
            "throughput_images_per_s": round(len(lat) / max(wall, 1e-9), 2)}


def bench_concurrency(seg: Segmenter, levels: Sequence[int], budget: BenchBudget = BenchBudget(),
                      max_batch: int = DEFAULT_MAX_BATCH, max_wait_ms: float = DEFAULT_MAX_WAIT_MS) -> list[dict]:
    """Per level: the micro-batcher versus the same callers served one at a time (a lock around predict)."""
    imgs = sample_images(seg, 16)
    rows = []
    serial_lock = threading.Lock()

    def serial(im):
        with serial_lock:
            return seg.predict(im)

    for c in levels:
        with MicroBatcher(seg, max_batch=max_batch, max_wait_ms=max_wait_ms,
                          max_queue=max(DEFAULT_MAX_QUEUE, min(budget.max_iters, 10_000))) as mb:
            for im in imgs[:budget.warmup]:
                mb.predict(im)
            batched = _load(mb.predict, imgs, c, budget)
            batched["mean_batch"] = round(mb.stats["images"] / max(mb.stats["batches"], 1), 2)
        one_by_one = _load(serial, imgs, c, budget)
        rows.append({"concurrency": c, "batcher": batched, "one_by_one": one_by_one,
                     "speedup": round(batched["throughput_images_per_s"] /
                                      max(one_by_one["throughput_images_per_s"], 1e-9), 3)})
    return rows


def batcher_overhead(seg: Segmenter, budget: BenchBudget = BenchBudget()) -> dict[str, Any]:
    """p50 of one request through the batcher (concurrency 1, max_wait 0) minus a direct predict call."""
    im = sample_images(seg, 1)[0]
    direct = timed_calls(lambda: seg.predict(im), budget)
    with MicroBatcher(seg, max_batch=DEFAULT_MAX_BATCH, max_wait_ms=0.0) as mb:
        via = timed_calls(lambda: mb.predict(im), budget)
    d, v = percentiles(direct), percentiles(via)
    return {"direct": d, "batcher": v, "overhead_p50_ms": round(v["p50_ms"] - d["p50_ms"], 3)}


def run_bench(seg: Segmenter, batch_sizes: Sequence[int], concurrency: Sequence[int],
              budget: BenchBudget | None = None, load_budget: BenchBudget | None = None, *, iters: int | None = None,
              requests: int | None = None, max_batch: int = DEFAULT_MAX_BATCH, max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
              progress: bool = False) -> dict[str, Any]:
    """The `nfdseg bench` report. budget: per batch-size row; load_budget: per concurrency level (min_iters =
    requests). `iters` / `requests` instead ask for fixed counts with no time budget."""
    budget = budget or (_fixed(iters) if iters else BenchBudget())
    load_budget = load_budget or (_fixed(requests, budget.warmup) if requests else budget)
    report = {"segmenter": seg.describe(), "machine": {"platform": platform.platform(), "processor": platform.processor()},
              "versions": runtime_versions("numpy", "onnxruntime", "openvino", "tensorrt", "torch"),
              "budget": {"batches": asdict(budget), "concurrency": asdict(load_budget)},
              "batches": bench_batches(seg, batch_sizes, budget, progress=progress)}
    if concurrency:
        report["concurrency"] = bench_concurrency(seg, concurrency, load_budget, max_batch, max_wait_ms)
        report["batcher_overhead"] = batcher_overhead(seg, budget)
    return report


def format_bench(report: dict[str, Any]) -> str:
    s = report["segmenter"]
    lines = [f"{s['backend']} on {s['device']} ({s['precision']}), input {s['input_size']}",
             f"{'batch':>5} {'infer p50':>10} {'p95':>8} {'p99':>8} {'img/s':>8} | {'e2e p50':>8} {'p95':>8} {'p99':>8} "
             f"{'img/s':>8} {'calls':>6}"]
    for r in report["batches"]:
        i, e = r["infer"], r["end_to_end"]
        lines.append(f"{r['batch']:>5} {i['p50_ms']:>10.2f} {i['p95_ms']:>8.2f} {i['p99_ms']:>8.2f} "
                     f"{r['infer_images_per_s']:>8.1f} | {e['p50_ms']:>8.2f} {e['p95_ms']:>8.2f} {e['p99_ms']:>8.2f} "
                     f"{r['end_to_end_images_per_s']:>8.1f} {i['n']:>6}")
    for r in report.get("concurrency", []):
        b, o = r["batcher"], r["one_by_one"]
        lines.append(f"concurrency {r['concurrency']:>3}: batcher {b['throughput_images_per_s']:.1f} img/s "
                     f"(p50 {b['p50_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms, mean batch {b['mean_batch']}) vs one-by-one "
                     f"{o['throughput_images_per_s']:.1f} img/s -> x{r['speedup']:.2f}; errors {b['errors']}")
    if "batcher_overhead" in report:
        lines.append(f"batcher overhead at concurrency 1: {report['batcher_overhead']['overhead_p50_ms']:+.3f} ms p50")
    b = report.get("budget", {}).get("batches")
    if b:
        lines.append(f"budget per row: {b['duration_s']:g} s and at least {b['min_iters']} calls after {b['warmup']} "
                     f"warm-up (like trtexec --duration/--iterations)")
    return "\n".join(lines)
