"""How long `nfdseg data check` takes on 10,000 small image/mask pairs (JPEG photos, PNG masks), header-only
(the default) with one reader thread and with the default thread count, and with --full (images decoded too).
Writes benchmarks/results/data_check_<machine>.json.

    python benchmarks/data_check_bench.py                      # 10,000 pairs of 160x120 in benchmarks/work/
    python benchmarks/data_check_bench.py --pairs 1000 --size 320x240
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, git_rev, machine  # noqa: E402

WORK = Path(__file__).resolve().parent / "work" / "data_check"


def make_dataset(root: Path, pairs: int, w: int, h: int, val_share: float = 0.1) -> None:
    """pairs image/mask files: textured JPEGs and 8-class PNG masks of blocks, 10 % of them in val."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text("classes: [c0, c1, c2, c3, c4, c5, c6, c7]\n")
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    n_val = int(pairs * val_share)
    for i in range(pairs):
        split = "val" if i < n_val else "train"
        img_dir, mask_dir = root / "images" / split, root / "masks" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        img = np.roll(base, i * 7, axis=1) // 2 + rng.integers(0, 128, (1, 1, 3), dtype=np.uint8)
        Image.fromarray(img).save(img_dir / f"{i:05d}.jpg", quality=90)
        blocks = rng.integers(0, 8, (h // 8 + 1, w // 8 + 1), dtype=np.uint8)
        Image.fromarray(np.kron(blocks, np.ones((8, 8), np.uint8))[:h, :w]).save(mask_dir / f"{i:05d}.png")


def timed_check(root: Path, *extra: str) -> dict:
    """Run the real command in a fresh process (cold imports included) and time it end to end."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "nfdseg.app.cli", "data", "check", str(root), "--quiet", "--json", "-",
                        *extra], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode not in (0, 1):
        raise SystemExit(f"data check failed: {r.stderr}")
    rep = json.loads(r.stdout)
    return {"args": list(extra), "wall_s": round(wall, 2), "check_s": rep["seconds"], "ok": rep["ok"],
            "problems": len(rep["problems"]), "images": sum(s["images"] for s in rep["splits"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=10_000)
    ap.add_argument("--size", default="160x120", help="image width x height (default 160x120)")
    ap.add_argument("--keep", action="store_true", help="keep the generated dataset")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    root = WORK / f"{args.pairs}_{w}x{h}"
    if not (root / "classes.yaml").exists():
        shutil.rmtree(root, ignore_errors=True)
        t = time.perf_counter()
        make_dataset(root, args.pairs, w, h)
        print(f"generated {args.pairs} pairs in {time.perf_counter() - t:.1f} s")
    disk_mb = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 2**20
    load_before = os.getloadavg()
    runs = [timed_check(root, "--workers", "1"), timed_check(root), timed_check(root, "--full")]
    load_after = os.getloadavg()
    for r in runs:
        print(f"data check {' '.join(r['args']) or '(default)'}: {r['check_s']:.2f} s check, {r['wall_s']:.2f} s "
              f"wall, {r['images']} pairs, ok={r['ok']}")
    out = {"benchmark": "data_check", "machine": machine(), "git": git_rev(), "pairs": args.pairs,
           "image": f"{w}x{h} JPEG q90", "mask": f"{w}x{h} PNG, 8 classes", "dataset_mb": round(disk_mb, 1),
           "default_workers": min(os.cpu_count() or 1, 8), "runs": runs,
           "load_avg_1_5_15_before": [round(v, 2) for v in load_before],
           "load_avg_1_5_15_after": [round(v, 2) for v in load_after],
           "note": "check_s: the check itself (listing, image headers + PNG end marker, mask decode); wall_s: "
                   "the whole `nfdseg data check` process including Python start-up and imports; page cache warm "
                   "after generation; the machine is shared, so the load average is recorded beside the times"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"data_check_{out['machine']['tag']}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
