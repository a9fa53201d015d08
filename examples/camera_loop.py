"""Segment a camera, a video file or a folder of images with the nfdseg runtime; print per-frame latency.

    python examples/camera_loop.py runs/quick/export --source 0            # webcam (needs opencv-python)
    python examples/camera_loop.py runs/quick/export --source video.mp4
    python examples/camera_loop.py runs/quick/export --source images/ --save out/

With --save, each frame gives <stem>_labels.png (class ids) and <stem>_overlay.png, as `nfdseg predict` writes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def frames(source: str):
    """Yield (stem, image, is_bgr): OpenCV for cameras and videos, Pillow for image folders.
    `stem` names the frame without an extension (f1.png -> f1, video frames -> frame000001)."""
    path = Path(source)
    if path.is_dir():
        from nfdseg.preprocess import load_image

        for p in sorted(path.iterdir()):
            if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp"):
                yield p.stem, load_image(p), False
        return
    import cv2  # pip install opencv-python

    cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not cap.isOpened():
        raise SystemExit(f"cannot open {source}")
    i = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        yield f"frame{i:06d}", frame, True
        i += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact")
    ap.add_argument("--source", default="0", help="camera index, video file, or image folder")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--save", help="write <stem>_labels.png and <stem>_overlay.png here")
    ap.add_argument("--max-frames", type=int, default=0)
    args = ap.parse_args()

    from PIL import Image

    from nfdseg.preprocess import overlay
    from nfdseg.serve import Segmenter

    seg = Segmenter(args.artifact, backend=args.backend)
    print(seg.describe())
    lat = []
    for n, (name, img, bgr) in enumerate(frames(args.source)):
        t = time.perf_counter()
        pred = seg.predict(img, bgr=bgr)
        lat.append((time.perf_counter() - t) * 1e3)
        print(f"{name}: {lat[-1]:.1f} ms")
        if args.save:
            rgb = img[..., ::-1] if bgr else img
            out = Path(args.save)
            out.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pred.labels).save(out / f"{name}_labels.png")
            Image.fromarray(overlay(rgb, pred.labels, seg.palette)).save(out / f"{name}_overlay.png")
        if args.max_frames and n + 1 >= args.max_frames:
            break
    if lat:
        print(f"{len(lat)} frames: p50 {np.percentile(lat, 50):.1f} ms, p95 {np.percentile(lat, 95):.1f} ms")


if __name__ == "__main__":
    main()
