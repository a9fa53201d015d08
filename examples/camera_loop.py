"""Segment a camera, a video file, a stream URL or a folder of images with the nfdseg streaming runtime.

    python examples/camera_loop.py runs/quick/export --source 0            # first camera (pip install 'nfdseg[video]')
    python examples/camera_loop.py runs/quick/export --source video.mp4
    python examples/camera_loop.py runs/quick/export --source images/ --save out/

`nfdseg predict ARTIFACT SOURCE` does the same and writes an overlay video; this shows the Python API it uses:
`Segmenter.stream` decodes, preprocesses and infers in their own threads and yields results in frame order
(a camera drops the frames the model cannot keep up with, and says how many). With --save, each frame gives
<stem>_labels.png (class ids) and <stem>_overlay.png, as `nfdseg predict` writes for images.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact")
    ap.add_argument("--source", default="0", help="camera index, video file, stream URL or image folder")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--save", help="write <stem>_labels.png and <stem>_overlay.png here")
    ap.add_argument("--max-frames", type=int, default=0)
    args = ap.parse_args()

    from PIL import Image

    from nfdseg.preprocess import overlay
    from nfdseg.serve import Segmenter
    from nfdseg.serve.predict_video import format_summary

    seg = Segmenter(args.artifact, backend=args.backend)
    print(seg.describe())
    stream = seg.stream(args.source)
    for n, r in enumerate(stream):
        dropped = f" ({r.dropped_before} dropped before)" if r.dropped_before else ""
        print(f"{r.frame.name}: {r.timings_ms['latency_ms']:.1f} ms{dropped}")
        if args.save:
            out = Path(args.save)
            out.mkdir(parents=True, exist_ok=True)
            Image.fromarray(r.prediction.labels).save(out / f"{r.frame.name}_labels.png")
            Image.fromarray(overlay(r.frame.image, r.prediction.labels, seg.palette)).save(
                out / f"{r.frame.name}_overlay.png")
        if args.max_frames and n + 1 >= args.max_frames:
            break
    s = stream.stats.summary()
    if s["frames"]:
        lat = s["latency_ms"]["latency_ms"]
        print(f"{s['frames']} frames: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms")
        print(format_summary({**s, "source": args.source}))


if __name__ == "__main__":
    main()
