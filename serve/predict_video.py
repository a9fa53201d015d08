"""Segment one video, camera or stream into an overlay MP4 (and label maps every Nth frame): `nfdseg predict`
on a stream, the demo's video tab and benchmarks/video_bench.py all call `segment_video`.

Two ways to run it, compared by the benchmark: the pipelined stream (FrameStream: decoding, preprocessing and
inference in their own threads while this thread encodes) and a plain frame loop (decode, predict, encode, one
after the other), which is what examples used to do.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from nfdseg.errors import InputError
from nfdseg.preprocess import OVERLAY_ALPHA

from .stream import STAGES, StreamStats, percentiles
from .video import FrameSource, VideoWriter, open_source

if TYPE_CHECKING:
    from .segmenter import Segmenter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoJob:
    """What to write: out_dir/<stem>_overlay.mp4 (overlay=False: none) and, when labels_every > 0, the label map
    (PNG, pixel value = class id) of every labels_every-th frame in out_dir/<stem>_labels/. max_frames: stop after
    this many results (0 = all). live: None = the source's own kind; True reads a file at its frame rate and drops
    frames the model cannot keep up with."""

    out_dir: Path
    alpha: float = OVERLAY_ALPHA
    labels_every: int = 0
    max_frames: int = 0
    overlay: bool = True
    live: bool | None = None
    pipelined: bool = True
    max_batch: int = 4


def source_stem(source: Any) -> str:
    """A file-name stem for a source: the file's stem, camera<N>, or the stream URL's last path part."""
    text = str(source)
    if text.isdigit():
        return f"camera{text}"
    if "://" in text:
        return re.sub(r"[^\w.-]+", "_", text.split("://", 1)[1].rsplit("/", 1)[-1] or "stream")
    return Path(text).stem


def output_stems(sources: Iterable[Any]) -> dict[str, str]:
    """The one naming rule for `nfdseg predict`'s outputs: each source's file-name stem (source_stem), made unique
    over all `sources` so no output overwrites another. Sources whose stems collide (clips/normal.mp4 and
    clips2/normal.mp4; a.png in two folders) are prefixed with their parent folder's name (clips_normal,
    clips2_normal), and numbered (_2, _3, ...) when that still collides. Keys are str(source)."""
    texts = list(dict.fromkeys(str(s) for s in sources))
    base = {t: source_stem(t) for t in texts}
    counts: dict[str, int] = {}
    for stem in base.values():
        counts[stem] = counts.get(stem, 0) + 1
    named: dict[str, str] = {}
    taken: set[str] = set()
    for t in texts:
        stem = base[t]
        if counts[stem] > 1 and "://" not in t and not t.isdigit():
            parent = re.sub(r"[^\w.-]+", "_", Path(t).resolve().parent.name) or "root"
            stem = f"{parent}_{stem}"
        unique, n = stem, 1
        while unique.lower() in taken:  # case-insensitive: A.png and a.png collide on macOS and Windows
            n += 1
            unique = f"{stem}_{n}"
        taken.add(unique.lower())
        named[t] = unique
    return named


def segment_video(seg: "Segmenter", source: Any, job: VideoJob, stem: str | None = None) -> dict[str, Any]:
    """Segment `source` as `job` says; returns the stream summary (frames, dropped, fps, p50/p99 ms per stage:
    decode, preprocess, infer, post, encode, latency) with the files written, and `resized` (None, or the frames a
    source that changed resolution mid-way had scaled to fit the overlay video: VideoWriter.resized; label maps
    keep each frame's own size). A file that cannot be decoded raises
    InputError and leaves no output video; a live source that stops (or Ctrl-C) keeps what was processed."""
    from PIL import Image

    from nfdseg.preprocess import overlay

    stem = stem or source_stem(source)
    job.out_dir.mkdir(parents=True, exist_ok=True)
    src = open_source(source, job.live)
    labels_dir = job.out_dir / f"{stem}_labels"
    writer = VideoWriter(job.out_dir / f"{stem}_overlay.mp4", src.fps) if job.overlay else None
    encode_ms: list[float] = []
    interrupted = False
    results = _pipelined(seg, src, job) if job.pipelined else _plain_loop(seg, src)
    stats: StreamStats = next(results)
    try:
        for n, (frame, labels, shown) in enumerate(results):
            t = time.perf_counter()
            if writer is not None:
                writer.write(shown if shown is not None else overlay(frame.image, labels, seg.palette, job.alpha),
                             frame.index)
            if job.labels_every and frame.index % job.labels_every == 0:
                labels_dir.mkdir(exist_ok=True)
                Image.fromarray(labels).save(labels_dir / f"{frame.name}.png")
            encode_ms.append((time.perf_counter() - t) * 1e3)
            if job.max_frames and n + 1 >= job.max_frames:
                break
    except KeyboardInterrupt:
        if not src.live:
            if writer is not None:
                writer.abort()
            raise
        interrupted = True  # a camera runs until stopped: Ctrl-C is how it ends, and the video is kept
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        results.close()
    video = writer.close() if writer is not None else None
    if stats.frames_done == 0:
        raise InputError(f"{src.label} gave no frames", seen=stats.stopped or "the source ended at once",
                         fix="check the camera or stream; for a file, re-copy or re-encode it")
    summary = stats.summary()
    summary["latency_ms"].update(percentiles({"encode_ms": encode_ms}))  # the plain loop's includes the overlay
    summary.update(source=src.label, output_stem=stem, live=src.live, pipelined=job.pipelined, interrupted=interrupted,
                   video=str(video) if video else None, resized=writer.resized if writer is not None else None,
                   labels_dir=str(labels_dir) if job.labels_every and labels_dir.is_dir() else None)
    return summary


def _pipelined(seg: "Segmenter", src: FrameSource, job: VideoJob) -> Iterator:
    from nfdseg.preprocess import overlay

    def render(frame, pred):  # the overlay is drawn in the stream's finish thread; this one only encodes
        return overlay(frame.image, pred.labels, seg.palette, job.alpha) if job.overlay else None

    stream = seg.stream(src, max_batch=job.max_batch, render=render)
    yield stream.stats
    try:
        for r in stream:
            yield r.frame, r.prediction.labels, r.rendered
    finally:
        stream.close()


def _plain_loop(seg: "Segmenter", src: FrameSource) -> Iterator:
    """Decode, predict, hand over: one frame at a time in this thread (the reference the benchmark compares)."""
    stats = StreamStats()
    yield stats
    try:
        for frame in src:
            stats.frames_read += 1
            t = time.perf_counter()
            pred = seg.predict(frame.image)
            stats.timings_ms["decode_ms"].append(frame.decode_ms)
            stats.timings_ms["preprocess_ms"].append(pred.timings_ms["decode_pre_ms"])
            stats.timings_ms["infer_ms"].append(pred.timings_ms["infer_ms"])
            stats.timings_ms["post_ms"].append(pred.timings_ms["post_ms"])
            stats.timings_ms["latency_ms"].append(frame.decode_ms + (time.perf_counter() - t) * 1e3)
            stats.frames_done += 1
            yield frame, pred.labels, None
        stats.stopped = src.stopped
    finally:
        stats.finished = time.perf_counter()
        src.close()


def format_summary(s: dict[str, Any]) -> str:
    """One or two lines for the terminal: frames, drops, fps, and p50/p99 ms of decode / infer / encode."""
    lat = s["latency_ms"]
    parts = [f"{k[:-3]} {lat[k]['p50']:.1f}/{lat[k]['p99']:.1f}" for k in (*STAGES, "encode_ms") if k in lat]
    head = (f"{s['source']}: {s['frames']} frames ({s['dropped']} dropped) in {s['seconds']:.1f} s, "
            f"{s['fps']:.1f} fps")
    tail = [f"  per-frame ms p50/p99: {', '.join(parts)}"]
    if s.get("stopped"):
        tail.append(f"  stopped early: {s['stopped']}")
    if s.get("interrupted"):
        tail.append("  stopped by Ctrl-C")
    if s.get("resized"):
        r = s["resized"]
        sizes = ", ".join(f"{k} x{n}" for k, n in r["sizes"].items())
        tail.append(f"  resolution changed at frame {r['first_frame']}: {r['frames']} frames "
                    f"({sizes}) scaled to fit the {r['video_size'][0]}x{r['video_size'][1]} overlay video "
                    "(aspect kept, black bars; label maps at each frame's own size)")
    if s.get("video"):
        tail.append(f"  wrote {s['video']}" + (f" and label maps in {s['labels_dir']}" if s.get("labels_dir") else ""))
    return "\n".join([head, *tail])
