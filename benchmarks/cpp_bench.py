"""C++ example vs the Python runtime: per-image latency (decode + preprocess + infer + postprocess, the work of
`Segmenter.predict(path)`) on the same images with the same ONNX Runtime library and thread count, measured in
interleaved rounds; also checks that both give the same labels. Writes benchmarks/results/cpp_<machine>.json.

    python benchmarks/cpp_bench.py [EXPORT_DIR] [--rounds 5] [--repeat 20] [--threads 2]

Without EXPORT_DIR it exports the quick preset's student architecture (deeplabv3_resnet10_w8, 96x96) after
a few training iterations: latency does not depend on how well a model was trained.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, git_rev, machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# (width, height, format): camera frames and small odd sizes
IMAGES = [(1920, 1080, "jpg"), (1280, 720, "jpg"), (640, 480, "jpg"), (640, 480, "png"), (321, 241, "png"),
          (61, 29, "png")]


def make_export(work: Path) -> Path:
    from nfdseg.distill.config import load_run_config
    from nfdseg.distill.trainer import train_stage
    from nfdseg.export.run import ExportConfig, run_export

    cfg = load_run_config("quick", {
        "data": {"synthetic_train": 16, "synthetic_val": 4},
        "teacher": {"model": {"arch": "deeplabv3_resnet10_w8"},
                    "train": {"iters": 4, "batch_size": 4, "eval_every": 4, "ckpt_every": 4, "log_every": 2}}})
    train_stage(cfg, "teacher", work / "model", progress=False)
    run_export(work / "model", work / "export", ExportConfig(fp16=False, engine="off"))
    return work / "export"


def make_images(work: Path) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for w, h, fmt in IMAGES:
        y, x = np.mgrid[0:h, 0:w]
        img = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1) + rng.normal(0, 20, (h, w, 3))
        path = work / f"frame_{w}x{h}_{fmt}.{fmt}"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, **({"quality": 90} if fmt == "jpg" else {}))
        paths.append(path)
    return paths


def build_program() -> Path:
    proc = subprocess.run(["bash", str(ROOT / "examples/cpp/build.sh")], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable})
    if proc.returncode:
        sys.exit(f"examples/cpp/build.sh failed:\n{proc.stderr}")
    return Path(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export", nargs="?", help="an `nfdseg export` directory (default: make a quick student)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds, C++ then Python each (default 5)")
    ap.add_argument("--repeat", type=int, default=20, help="runs per image per round and runtime (default 20)")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads, both runtimes (default 2)")
    ap.add_argument("--program", help="a built nfdseg_cpp (default: build with examples/cpp/build.sh)")
    ap.add_argument("--tag")
    args = ap.parse_args()

    from PIL import Image

    from nfdseg.serve import Segmenter

    work = Path(tempfile.mkdtemp(prefix="nfdseg-cpp-bench-"))
    export = Path(args.export) if args.export else make_export(work)
    images = make_images(work)
    program = Path(args.program) if args.program else build_program()
    seg = Segmenter(export, backend="onnxruntime", device="cpu", threads=args.threads)
    load_before = os.getloadavg()
    cpp = {p.name: {"total": [], "infer": []} for p in images}
    py = {p.name: {"total": [], "infer": []} for p in images}
    for _ in range(args.rounds):
        report = work / "cpp.json"
        subprocess.run([str(program), str(export), *map(str, images), "--out", str(work / "out"), "--threads",
                        str(args.threads), "--repeat", str(args.repeat), "--json", str(report)],
                       check=True, capture_output=True)
        for r in json.loads(report.read_text())["images"]:
            cpp[Path(r["image"]).name]["total"].append(r["total_ms"])
            # like Python's timings_ms["infer_ms"], which spans prepare_batch (resize + normalise) and the run
            cpp[Path(r["image"]).name]["infer"].append(r["preprocess_ms"] + r["infer_ms"])
        for p in images:
            seg.predict(p)  # warm-up, as the C++ process's first run of each image is inside its median
            totals, infers = [], []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                pred = seg.predict(p)
                totals.append((time.perf_counter() - t0) * 1e3)
                infers.append(pred.timings_ms["infer_ms"])
            py[p.name]["total"].append(statistics.median(totals))
            py[p.name]["infer"].append(statistics.median(infers))
    load_after = os.getloadavg()

    rows = []
    for p in images:
        same = np.array_equal(np.asarray(Image.open(work / "out" / f"{p.stem}_labels.png")), seg.predict(p).labels)
        w, h = Image.open(p).size
        c_tot, p_tot = statistics.median(cpp[p.name]["total"]), statistics.median(py[p.name]["total"])
        rows.append({"image": p.name, "width": w, "height": h, "labels_equal": bool(same),
                     "cpp_ms": {"total_p50": round(c_tot, 3), "preprocess_infer_p50": round(statistics.median(cpp[p.name]["infer"]), 3)},
                     "python_ms": {"total_p50": round(p_tot, 3), "preprocess_infer_p50": round(statistics.median(py[p.name]["infer"]), 3)},
                     "python_over_cpp_total": round(p_tot / c_tot, 2)})
    mach = machine()
    manifest = json.loads((export / "model.json").read_text())
    result = {
        "benchmark": "cpp_example_vs_python_runtime", "machine": mach, "git": git_rev(),
        "machine_note": f"{mach['cores']}-core {mach['cpu']}, {mach['gpu'] or 'no GPU'}, shared with other jobs",
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
        "model": {"architecture": manifest["architecture"], "input_size": manifest["preprocess"]["input_size"],
                  "export": str(export) if args.export else "quick student architecture, 4 training iterations"},
        "onnxruntime": seg.describe().get("onnxruntime"), "threads": args.threads,
        "method": (f"{args.rounds} interleaved rounds; each round runs every image {args.repeat} times in one C++ "
                   "process (--repeat, median) and then through one Python Segmenter.predict(path) (median); the "
                   "figures are medians over rounds. total = decode + preprocess + infer + postprocess, no PNG writing; preprocess_infer = resize + "
                   "normalise + the ONNX Runtime run (Python's timings_ms['infer_ms'] spans the same)."),
        "images": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"cpp_{args.tag or mach['tag']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(f"{r['image']:<24} C++ {r['cpp_ms']['total_p50']:8.2f} ms (preprocess+infer {r['cpp_ms']['preprocess_infer_p50']:6.2f})   "
              f"Python {r['python_ms']['total_p50']:8.2f} ms (preprocess+infer {r['python_ms']['preprocess_infer_p50']:6.2f})   "
              f"labels equal: {r['labels_equal']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
