"""Carve a tune split out of CamVid's train split, so that settings are chosen without reading val (or test).

CamVid's frames come from a few video sequences (0001TP, 0006R0, 0016E5, Seq05VD), and neighbouring frames are
nearly the same picture, so a random hold-out would leak: the last `--share` of each sequence's train frames
(in time order) becomes `tune`, the rest `trainfit`. Both are folders of symbolic links beside the original
splits, in the SegNet layout nfdseg reads:

    python benchmarks/camvid_tune_split.py $CAMVID          # makes $CAMVID/trainfit(annot), $CAMVID/tune(annot)
    nfdseg distill --config camvid_cpu --set data.root=$CAMVID data.train_split=trainfit data.val_split=tune
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path


def carve(root: Path, share: float) -> dict[str, int]:
    frames = defaultdict(list)
    for img in sorted((root / "train").glob("*.png")):
        frames[img.stem.split("_")[0]].append(img.name)
    counts = {"trainfit": 0, "tune": 0}
    for split in counts:
        for sub in (split, f"{split}annot"):
            (root / sub).mkdir(exist_ok=True)
            for old in (root / sub).glob("*.png"):
                old.unlink()
    for seq, names in frames.items():
        cut = len(names) - max(1, round(len(names) * share))
        for k, name in enumerate(names):
            split = "trainfit" if k < cut else "tune"
            (root / split / name).symlink_to((root / "train" / name).resolve())
            (root / f"{split}annot" / name).symlink_to((root / "trainannot" / name).resolve())
            counts[split] += 1
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path, help="CamVid in the SegNet layout (train/, trainannot/, ...)")
    ap.add_argument("--share", type=float, default=0.2, help="share of each sequence's last frames held out")
    args = ap.parse_args()
    if not (args.root / "train").is_dir() or not (args.root / "trainannot").is_dir():
        print(f"error: {args.root} has no train/ and trainannot/ folders (CamVid's SegNet layout)", file=sys.stderr)
        return 2
    print(carve(args.root, args.share))
    return 0


if __name__ == "__main__":
    sys.exit(main())
