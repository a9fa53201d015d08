"""Latency and throughput of a Segmenter: infer-only and end-to-end per batch size, and through the
micro-batcher per concurrency level. Percentiles in ms, throughput in images/s."""

from __future__ import annotations

import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np

from nfdseg.manifest import runtime_versions
from nfdseg.preprocess import prepare_batch

from .batcher import MicroBatcher
from .segmenter import Segmenter


def percentiles(ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(ms, np.float64)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "mean_ms": round(float(a.mean()), 3), "n": int(a.size)}


def _time(fn: Callable[[], Any], warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def sample_images(seg: Segmenter, n: int, size: tuple[int, int] | None = None, seed: int = 0) -> list[np.ndarray]:
    """Deterministic test images: synthetic scenes at the model's input size (or `size`)."""

    try:
        from nfdseg.distill.data.synthetic import generate_scene
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


def bench_batches(seg: Segmenter, batch_sizes: Sequence[int], warmup: int = 3, iters: int = 20) -> list[dict]:
    rows = []
    for b in batch_sizes:
        imgs = sample_images(seg, b)
        x = prepare_batch(imgs, seg.manifest.preprocess, seg.normalize_in_graph)
        infer = _time(lambda: seg.backend_infer_batch(x), warmup, iters)
        e2e = _time(lambda: seg.predict(imgs), warmup, iters)
        rows.append({"batch": b, "infer": percentiles(infer), "end_to_end": percentiles(e2e),
                     "infer_images_per_s": round(b / (np.median(infer) / 1e3), 2),
                     "end_to_end_images_per_s": round(b / (np.median(e2e) / 1e3), 2)})
    return rows


def _load(fn_per_request: Callable[[np.ndarray], Any], imgs: list[np.ndarray], concurrency: int,
          requests: int) -> dict[str, Any]:
    lat: list[float] = []
    lock = threading.Lock()
    errors = 0

    def one(i: int) -> None:
        nonlocal errors
        t = time.perf_counter()
        try:
            fn_per_request(imgs[i % len(imgs)])
        except Exception:
            with lock:
                errors += 1
            return
        with lock:
            lat.append((time.perf_counter() - t) * 1e3)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": requests, "errors": errors, **percentiles(lat or [0.0]),
            "throughput_images_per_s": round(len(lat) / wall, 2)}


def bench_concurrency(seg: Segmenter, levels: Sequence[int], requests: int = 200, max_batch: int = 8,
                      max_wait_ms: float = 5.0) -> list[dict]:
    """Per level: the micro-batcher versus the same callers served one at a time (a lock around predict)."""
    imgs = sample_images(seg, 16)
    rows = []
    serial_lock = threading.Lock()

    def serial(im):
        with serial_lock:
            return seg.predict(im)

    for c in levels:
        with MicroBatcher(seg, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max(256, requests)) as mb:
            for im in imgs[:4]:
                mb.predict(im)  # warm-up
            batched = _load(mb.predict, imgs, c, requests)
            batched["mean_batch"] = round(mb.stats["images"] / max(mb.stats["batches"], 1), 2)
        one_by_one = _load(serial, imgs, c, requests)
        rows.append({"concurrency": c, "batcher": batched, "one_by_one": one_by_one,
                     "speedup": round(batched["throughput_images_per_s"] /
                                      max(one_by_one["throughput_images_per_s"], 1e-9), 3)})
    return rows


def batcher_overhead(seg: Segmenter, iters: int = 200) -> dict[str, Any]:
    """p50 of one request through the batcher (concurrency 1, max_wait 0) minus a direct predict call."""
    im = sample_images(seg, 1)[0]
    direct = _time(lambda: seg.predict(im), 10, iters)
    with MicroBatcher(seg, max_batch=8, max_wait_ms=0.0) as mb:
        via = _time(lambda: mb.predict(im), 10, iters)
    d, v = percentiles(direct), percentiles(via)
    return {"direct": d, "batcher": v, "overhead_p50_ms": round(v["p50_ms"] - d["p50_ms"], 3)}


def run_bench(seg: Segmenter, batch_sizes: Sequence[int], concurrency: Sequence[int], iters: int = 20,
              requests: int = 200, max_batch: int = 8, max_wait_ms: float = 5.0) -> dict[str, Any]:
    report = {"segmenter": seg.describe(), "machine": {"platform": platform.platform(), "processor": platform.processor()},
              "versions": runtime_versions("numpy", "onnxruntime", "tensorrt", "torch"),
              "batches": bench_batches(seg, batch_sizes, iters=iters)}
    if concurrency:
        report["concurrency"] = bench_concurrency(seg, concurrency, requests, max_batch, max_wait_ms)
        report["batcher_overhead"] = batcher_overhead(seg)
    return report


def format_bench(report: dict[str, Any]) -> str:
    s = report["segmenter"]
    lines = [f"{s['backend']} on {s['device']} ({s['precision']}), input {s['input_size']}",
             f"{'batch':>5} {'infer p50':>10} {'p95':>8} {'p99':>8} {'img/s':>8} | {'e2e p50':>8} {'p95':>8} {'p99':>8} {'img/s':>8}"]
    for r in report["batches"]:
        i, e = r["infer"], r["end_to_end"]
        lines.append(f"{r['batch']:>5} {i['p50_ms']:>10.2f} {i['p95_ms']:>8.2f} {i['p99_ms']:>8.2f} "
                     f"{r['infer_images_per_s']:>8.1f} | {e['p50_ms']:>8.2f} {e['p95_ms']:>8.2f} {e['p99_ms']:>8.2f} "
                     f"{r['end_to_end_images_per_s']:>8.1f}")
    for r in report.get("concurrency", []):
        b, o = r["batcher"], r["one_by_one"]
        lines.append(f"concurrency {r['concurrency']:>3}: batcher {b['throughput_images_per_s']:.1f} img/s "
                     f"(p50 {b['p50_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms, mean batch {b['mean_batch']}) vs one-by-one "
                     f"{o['throughput_images_per_s']:.1f} img/s -> x{r['speedup']:.2f}; errors {b['errors']}")
    if "batcher_overhead" in report:
        lines.append(f"batcher overhead at concurrency 1: {report['batcher_overhead']['overhead_p50_ms']:+.3f} ms p50")
    return "\n".join(lines)
