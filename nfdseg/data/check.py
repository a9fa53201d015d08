"""One pass over a whole dataset that lists every problem with its file, and a summary per split.

Images are read by header only (Pillow opens lazily: the size and the EXIF orientation come without
decoding pixels); a PNG or JPEG whose last bytes lack its end marker is decoded to tell a cut-off file from
one with trailing data. Masks are decoded, because their values are what training reads. `full=True` decodes
every image.

    report = check_dataset(DataConfig(format="folder", root="my_data"))
    print(report.format_text()); sys.exit(0 if report.ok else 1)
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from nfdseg.errors import DataError, InputError
from nfdseg.manifest import IGNORE_INDEX, ClassSpec
from nfdseg.preprocess import load_image, oriented_size

from .config import DataConfig
from .classes import class_file
from .sources import LISTERS, Listing, Problem, bad_ids, open_mask, raise_problems, turned_hint

log = logging.getLogger(__name__)

_PNG_END = b"IEND\xaeB`\x82"


@dataclass
class SplitSummary:
    """What one split holds: images, their sizes (width x height, as displayed), pixel share per class (% of the
    labelled pixels), the ignore share (% of all mask pixels), and the classes no mask contains."""

    split: str
    images: int = 0
    sizes: dict[str, int] = field(default_factory=dict)
    pixel_share: dict[str, float] = field(default_factory=dict)
    ignore_share: float = 0.0
    never_present: list[str] = field(default_factory=list)

    def line(self) -> str:
        top = sorted(self.sizes.items(), key=lambda kv: -kv[1])
        sizes = ", ".join(f"{s} x{n}" for s, n in top[:4]) + (f", +{len(top) - 4} more sizes" if len(top) > 4 else "")
        shares = ", ".join(f"{k} {v:.1f}%" for k, v in sorted(self.pixel_share.items(), key=lambda kv: -kv[1]))
        out = [f"{self.split}: {self.images} images ({sizes or 'none readable'})",
               f"  pixel share per class: {shares or '-'}; ignore {self.ignore_share:.1f}% of all pixels"]
        if self.never_present:
            out.append(f"  classes never present: {', '.join(self.never_present)}")
        return "\n".join(out)


@dataclass
class CheckReport:
    """The result of check_dataset: `ok` is True when no problem was found."""

    root: str
    format: str
    classes: list[str]
    ignore_index: int
    splits: list[SplitSummary]
    problems: list[Problem]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "root": self.root, "format": self.format, "classes": self.classes,
                "ignore_index": self.ignore_index, "seconds": round(self.seconds, 3),
                "problem_counts": _counts(self.problems),
                "problems": [{"split": p.split, "kind": p.kind, "file": p.file, "detail": p.detail} for p in self.problems],
                "splits": [vars(s) for s in self.splits]}

    def format_text(self) -> str:
        head = f"{self.format} dataset {self.root}: {len(self.classes)} classes, ignore index {self.ignore_index}"
        lines = [head] + [s.line() for s in self.splits]
        if self.problems:
            counts = ", ".join(f"{n} {k}" for k, n in _counts(self.problems).items())
            lines.append(f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''} ({counts}):")
            lines += [f"  {p.line()}" for p in self.problems]
        else:
            lines.append("no problems found")
        lines.append(f"checked in {self.seconds:.1f} s")
        return "\n".join(lines)


def _counts(problems: list[Problem]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in problems:
        out[p.kind] = out.get(p.kind, 0) + 1
    return out


def _looks_cut_off(path: Path) -> bool:
    """True when a PNG does not end with its IEND chunk or a JPEG with its EOI marker, as a cut-off download or
    copy does (checked from the file's last bytes; the caller decodes such a file to be sure, because some
    cameras append data after the image)."""
    kind = path.suffix.lower()
    if kind not in (".png", ".jpg", ".jpeg"):
        return False
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(size - 64, 0))
        tail = f.read()
    return _PNG_END not in tail if kind == ".png" else not tail.rstrip(b"\x00").endswith(b"\xff\xd9")


def _check_pair(img_path: Path, mask_path: Path, classes: ClassSpec, lut: np.ndarray | None, split: str,
                full: bool) -> tuple[list[Problem], str | None, np.ndarray | None]:
    """Problems of one pair, the image's displayed size 'WxH' (None if unreadable), and the mask's histogram of
    class ids after the label map (uint8 values, 256 bins; None if unreadable)."""
    problems, size = [], None
    try:
        if full or _looks_cut_off(img_path):
            arr = load_image(img_path, name=img_path.name)
            wh = (arr.shape[1], arr.shape[0])
        else:
            with Image.open(img_path) as im:
                wh = oriented_size(im)
        size = f"{wh[0]}x{wh[1]}"
    except InputError as e:
        problems.append(Problem("unreadable image", str(img_path), e.seen or e.what, split))
    except Exception as e:  # PIL raises many types for corrupt files
        problems.append(Problem("unreadable image", str(img_path), f"{type(e).__name__}: {e}", split))
    try:
        raw = open_mask(mask_path)
    except Exception as e:
        problems.append(Problem("unreadable mask", str(mask_path), f"{type(e).__name__}: {e}", split))
        return problems, size, None
    raw_hist = np.bincount(raw.ravel(), minlength=256)
    hist = raw_hist
    if lut is not None:  # the label map sends raw values to class ids (a format's table may leave some unmapped)
        hist = np.bincount(lut, weights=raw_hist, minlength=256).astype(np.int64)
    bad = bad_ids(np.flatnonzero(hist), classes)
    if bad:
        seen = [int(i) for i in np.flatnonzero(raw_hist)]
        problems.append(Problem("ids out of range", str(mask_path),
                                f"ids {bad} are not classes (0-{classes.num_classes - 1}) nor ignore "
                                f"{classes.ignore_index}; {'raw values' if lut is not None else 'ids'} seen: {seen}",
                                split))
    mask_wh = (raw.shape[1], raw.shape[0])
    if size is not None and mask_wh != wh:
        problems.append(Problem("size mismatch", str(mask_path), f"mask {mask_wh[0]}x{mask_wh[1]}, image {img_path.name} "
                                f"{size}" + turned_hint(wh, mask_wh), split))
    return problems, size, hist


def _splits(cfg: DataConfig, splits: list[str] | None) -> list[str]:
    if splits:
        return list(dict.fromkeys(splits))
    return list(dict.fromkeys([cfg.train_split, cfg.val_split]))


def check_dataset(cfg: DataConfig, splits: list[str] | None = None, full: bool = False, workers: int = 0,
                  progress: bool = False) -> CheckReport:
    """Check the on-disk dataset of `cfg` (format, root, class list) split by split; never raises for a bad file.

    splits: split names (default the config's train and val splits). full: decode images too (slower).
    workers: reader threads (default: the CPU count, at most 8). Raises DataError only when there is nothing to
    check (the synthetic format, an unknown one, or a root that is not a folder)."""
    if cfg.format not in LISTERS:
        raise DataError(f"data format '{cfg.format}' has no files to check",
                        fix=f"check one of: {', '.join(LISTERS)} (synthetic scenes are generated, always valid)")
    root = Path(cfg.root)
    if not root.is_dir():  # before the class list: a typo in the root is not a missing classes.yaml
        raise DataError(f"the dataset root {'is not a folder' if root.exists() else 'does not exist'}: {root}",
                        seen=f"data.root {cfg.root!r} (absolute: {root.absolute()})",
                        fix="pass the folder that holds the dataset (nfdseg data check DIR, or data.root in the config)")
    t0 = time.perf_counter()
    names = _splits(cfg, splits)
    problems: list[Problem] = []
    listings: dict[str, Listing] = {}
    classes = None
    for split in names:
        try:
            listing = LISTERS[cfg.format](cfg.root, split, class_file(cfg))
        except DataError as e:  # the class list itself: nothing else can be judged without it
            problems.append(Problem("class list", e.what, "; ".join(x for x in (e.seen, e.fix) if x)))
            return CheckReport(str(cfg.root), cfg.format, [], IGNORE_INDEX, [], problems, time.perf_counter() - t0)
        listings[split] = listing
        classes = classes or listing.classes
        problems += listing.problems
    workers = workers or min(os.cpu_count() or 1, 8)
    summaries = []
    for split, listing in listings.items():
        summary, found = _check_split(listing, split, full, workers, progress)
        summaries.append(summary)
        problems += found
    order = {s: i for i, s in enumerate(names)}
    problems.sort(key=lambda p: (order.get(p.split, -1), p.file, p.kind))
    return CheckReport(str(cfg.root), cfg.format, list(classes.names), classes.ignore_index, summaries, problems,
                       time.perf_counter() - t0)


def _check_split(listing: Listing, split: str, full: bool, workers: int, progress: bool):
    from tqdm.auto import tqdm

    classes, lut = listing.classes, listing.lut
    hist = np.zeros(256, np.int64)
    sizes: dict[str, int] = {}
    problems: list[Problem] = []
    # PIL's decoders release the GIL while they decode; most of the rest is Python, so 2 threads gained ~10 % here
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda p: _check_pair(p[0], p[1], classes, lut, split, full), listing.pairs, chunksize=32)
        for found, size, h in tqdm(results, total=len(listing.pairs), desc=f"check {split}", unit="pair",
                                   disable=not progress):
            problems += found
            if size:
                sizes[size] = sizes.get(size, 0) + 1
            if h is not None:
                hist += h
    labelled = int(hist[: classes.num_classes].sum())
    share = {n: (100.0 * hist[i] / labelled if labelled else 0.0) for i, n in enumerate(classes.names)}
    summary = SplitSummary(split, len(listing.pairs), sizes,
                           {k: round(float(v), 3) for k, v in share.items()},
                           round(100.0 * hist[classes.ignore_index] / max(int(hist.sum()), 1), 3),
                           [n for i, n in enumerate(classes.names) if hist[i] == 0])
    return summary, problems


_CLEAN: set[tuple] = set()


def require_clean_data(cfg: DataConfig, progress: bool = False) -> CheckReport | None:
    """The check at the start of training: log the summary, or raise one DataError listing every problem.

    Synthetic data is generated and needs no check (returns None). A dataset that passed once in this process is
    not re-read while its file list, sizes and modification times are unchanged."""
    if cfg.format not in LISTERS:
        return None
    key = (cfg, _fingerprint(cfg))
    if key in _CLEAN:
        return None
    report = check_dataset(cfg, progress=progress)
    if not report.ok:
        raise_problems(report.problems, cfg.root, ", ".join(s.split for s in report.splits) or cfg.train_split,
                       cfg.format)
    for s in report.splits:
        log.info("data check %s", s.line().replace("\n", ";"))
    log.info("data check: %s, no problems in %.1f s", cfg.root, report.seconds)
    _CLEAN.add(key)
    return report


def _fingerprint(cfg: DataConfig) -> int:
    entries = []
    for dirpath, _, files in os.walk(cfg.root):
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            entries.append((dirpath, f, st.st_size, st.st_mtime_ns))
    return hash(tuple(sorted(entries)))
