"""Demo load test: the Gradio app on 127.0.0.1, 200 requests from 10 concurrent gradio_client clients, against
one client sending the same requests sequentially. Reports p50/p95/p99 latency, throughput, errors and
lost requests. Writes benchmarks/results/demo_<machine>.json. Bounded: it stops by itself.

    python benchmarks/demo_load.py runs/quick/export
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, git_rev, machine  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(url: str, files: list[str], clients: int, requests: int) -> dict:
    from gradio_client import Client, handle_file

    lat, errors, done = [], [], []
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker():
        client = Client(url, verbose=False)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t = time.perf_counter()
            try:
                gallery, *_ = client.predict(handle_file(files[i % len(files)]), [], 0.5, api_name="/segment")
                ok = len(gallery) == 1
            except Exception as e:  # counted, not raised: the load test reports errors
                ok, gallery = False, str(e)
            with lock:
                (done if ok else errors).append(i)
                lat.append((time.perf_counter() - t) * 1e3)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=600)
    wall = time.perf_counter() - t0
    a = np.asarray(lat)
    return {"clients": clients, "requests": requests, "completed": len(done), "errors": len(errors),
            "lost": requests - len(done) - len(errors), "wall_s": round(wall, 2),
            "throughput_rps": round(len(done) / wall, 2), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p95_ms": round(float(np.percentile(a, 95)), 1), "p99_ms": round(float(np.percentile(a, 99)), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--tag")
    args = ap.parse_args()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    from nfdseg.demo.app import build_demo
    from nfdseg.demo.examples import example_images
    from nfdseg.serve import Segmenter

    seg = Segmenter(args.artifact, backend="onnxruntime")
    files, _ = example_images(seg.manifest, Path(tempfile.mkdtemp()), n=8)  # the model's own validation images
    demo = build_demo(seg, examples=[])
    demo.queue(default_concurrency_limit=32, max_size=512)
    port = _port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        _run(url, files, 2, 10)  # warm-up
        sequential = _run(url, files, 1, args.requests)
        concurrent = _run(url, files, args.clients, args.requests)
    finally:
        demo.close()
        demo.nfdseg_close()
    mach = machine()
    result = {"benchmark": "demo_load", "machine": mach, "git": git_rev(), "segmenter": seg.describe(),
              "sequential": sequential, "concurrent": concurrent,
              "speedup": round(concurrent["throughput_rps"] / max(sequential["throughput_rps"], 1e-9), 3),
              "targets": {"errors": 0, "lost": 0, "speedup": 1.3}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"demo_{args.tag or mach['tag']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("sequential", "concurrent", "speedup")}, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
