"""C++ example vs Python on corrupted image files: does nfdseg_cpp read exactly the files Pillow reads, with the
same labels, and refuse the others without crashing? Writes benchmarks/results/cpp_fuzz_<machine>.json.

    python benchmarks/cpp_fuzz.py [--files 400] [--seeds 1,2,3] [--program PATH]

Each seed corrupts `--files` copies of the test images of tests/test_cpp_example.py (every kind the program
decodes, and the files where stb_image and Pillow differ): a cut at a random byte, 1-3 random bytes in the first
200 (headers, metadata), or 1-3 random bytes anywhere. Build the program with sanitizers to catch memory errors:

    BUILD_DIR=/tmp/asan examples/cpp/build.sh "-DCMAKE_CXX_FLAGS=-fsanitize=address,undefined -g -O1" \\
        "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined"
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import RESULTS, git_rev, machine  # noqa: E402
from cpp_bench import build_program  # noqa: E402
from cpp_probe import make_images, make_pillow_cases, make_probe_export  # noqa: E402

SANITIZER_SIGNS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "terminate called", "Segmentation fault")


def corrupt(sources: list[Path], out: Path, n: int, rng: np.random.Generator) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        src = sources[rng.integers(len(sources))]
        b = bytearray(src.read_bytes())
        how = rng.integers(3)
        if how == 0:
            b = b[: rng.integers(1, len(b))]
        else:
            for _ in range(rng.integers(1, 4)):
                b[rng.integers(min(200, len(b)) if how == 1 else len(b))] = rng.integers(256)
        files.append(out / f"f{i:04d}_{src.stem}{src.suffix}")
        files[-1].write_bytes(bytes(b))
    return files


def compare(program: Path, probe: Path, files: list[Path], out: Path) -> dict:
    from PIL import Image

    from nfdseg.errors import InputError
    from nfdseg.serve import Segmenter

    seg = Segmenter(probe, backend="onnxruntime", device="cpu")
    import warnings

    warnings.simplefilter("ignore")  # Pillow warns about each corrupt EXIF block it reads past
    proc = subprocess.run([str(program), str(probe), *map(str, files), "--out", str(out), "--threads", "1"],
                          capture_output=True, text=True, errors="replace", timeout=1800)
    counts: collections.Counter = collections.Counter()
    disagreements: collections.Counter = collections.Counter()
    for path in files:
        try:
            ref, why = seg.predict(path).labels, None
        except InputError as e:
            ref, why = None, (e.seen or e.what).replace(str(path), "FILE")[:70]
        got_path = out / f"{path.stem}_labels.png"
        got = np.asarray(Image.open(got_path)) if got_path.is_file() else None
        if ref is None and got is None:
            counts["both refuse"] += 1
        elif ref is not None and got is not None:
            same = got.shape == ref.shape and bool((got == ref).all())
            counts["both read, same labels" if same else "both read, labels differ"] += 1
            if not same:
                disagreements[f"{path.suffix} labels differ"] += 1
        elif got is not None:
            counts["C++ reads, Python refuses"] += 1
            disagreements[f"{path.suffix} C++ reads, Python refuses: {why}"] += 1
        else:
            counts["Python reads, C++ refuses"] += 1
            disagreements[f"{path.suffix} Python reads, C++ refuses"] += 1
    return {"counts": dict(counts), "disagreements": dict(disagreements), "exit_status": proc.returncode,
            "sanitizer_reports": [ln for ln in proc.stderr.splitlines() if any(s in ln for s in SANITIZER_SIGNS)]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=400, help="corrupted files per seed (default 400)")
    ap.add_argument("--seeds", default="1,2,3", help="random seeds (default 1,2,3)")
    ap.add_argument("--program", help="a built nfdseg_cpp (default: build with examples/cpp/build.sh)")
    ap.add_argument("--tag")
    args = ap.parse_args()
    program = Path(args.program) if args.program else build_program()
    load_before = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sources = make_images(work / "images") + [p for v in make_pillow_cases(work / "cases").values() for p in v]
        probe = make_probe_export(work / "probe")
        for seed in (int(s) for s in args.seeds.split(",")):
            files = corrupt(sources, work / f"seed{seed}", args.files, np.random.default_rng(seed))
            runs.append({"seed": seed, "files": len(files), **compare(program, probe, files, work / f"out{seed}")})
            print(f"seed {seed}: {runs[-1]['counts']}; sanitizer reports: {len(runs[-1]['sanitizer_reports'])}")
    total: collections.Counter = collections.Counter()
    for r in runs:
        total.update(r["counts"])
    m = machine()
    report = {"machine": m, "git": git_rev(), "program": str(program), "source_files": len(sources),
              "load_average_before": load_before, "load_average_after": os.getloadavg(), "total": dict(total),
              "runs": runs}
    path = RESULTS / f"cpp_fuzz_{args.tag or m['tag']}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"total: {dict(total)}\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
