"""Video sources and the overlay writer: files, cameras and stream URLs through PyAV (FFmpeg), torch-free.

PyAV (`pip install 'nfdseg[video]'`) is imported only when a video is opened. Why PyAV and not OpenCV: its
wheels bundle FFmpeg, with an H.264 encoder (libx264) whose MP4s play in every browser (the demo returns one),
no GUI libraries, and errors that say what FFmpeg saw; cameras open through FFmpeg's own device inputs
(v4l2 on Linux, avfoundation on macOS). docs/deploying.md says more.

    source = open_source("drive.mp4")            # or 0 (camera), "rtsp://cam/stream", a folder of images
    for frame in source:                         # Frame: RGB uint8 HxWx3, index, time, decode ms
        ...

A source is `live` when frames arrive whether or not anyone reads them (a camera, a stream URL): the streaming
runtime (stream.py) drops frames of a live source it cannot keep up with, and never drops frames of a file.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from nfdseg.errors import InputError, MissingDependencyError
from nfdseg.fsutil import atomic_path
from nfdseg.redact import redact

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".y4m", ".flv", ".wmv",
                  ".h264", ".264", ".h265", ".265", ".hevc")  # raw elementary streams: ffmpeg probes them
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".wma", ".aiff", ".aif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


@dataclass
class Frame:
    """One decoded frame: RGB uint8 HxWx3, its index in the source, its time (s) and how long decoding took (ms)."""

    index: int
    image: np.ndarray
    time_s: float
    decode_ms: float = 0.0
    name: str = ""

    def __post_init__(self):
        if not self.name:
            self.name = f"frame{self.index:06d}"


def _av():
    try:
        import av
    except ImportError:
        raise MissingDependencyError("reading and writing video needs PyAV (FFmpeg bindings)",
                                     seen="`import av` failed", fix="pip install 'nfdseg[video]'") from None
    return av


def audio_input_error(source: Any) -> InputError | None:
    """The InputError for a source that is an audio file by its name (predict segments images and videos), or None."""
    suffix = Path(str(source)).suffix.lower()
    if isinstance(source, int) or suffix not in AUDIO_SUFFIXES:
        return None
    return InputError(f"{source} is an audio file, not an image or a video", seen=f"suffix {suffix}",
                      fix="pass an image (PNG, JPEG, ...), a video (MP4, MKV, ..., raw .h264), a camera or a stream URL")


def is_video_source(source: Any) -> bool:
    """True for what `nfdseg predict` treats as a stream: a camera index, a stream URL, a video file."""
    if isinstance(source, int):
        return True
    text = str(source)
    return text.isdigit() or text.lower().startswith(URL_SCHEMES) or Path(text).suffix.lower() in VIDEO_SUFFIXES


class FrameSource:
    """Iterable of Frames. `live`: frames come at the source's pace (drop when behind); `fps`: nominal rate or
    None; `label`: how messages name it; `stopped`: why a live source ended early (None when it ended normally)."""

    live = False
    fps: float | None = None
    label = "source"
    stopped: str | None = None
    expected_frames: int | None = None

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class IterableSource(FrameSource):
    """Frames from any iterable of RGB arrays (or Frames): a camera SDK, a test's fake camera. An exception from
    the iterable ends a live source cleanly (recorded in `stopped`) and propagates for a non-live one."""

    def __init__(self, frames: Iterable[Any], live: bool = False, fps: float | None = None, label: str = "frames",
                 bgr: bool = False):
        self._frames, self.live, self.fps, self.label, self._bgr = frames, live, fps, label, bgr

    def __iter__(self) -> Iterator[Frame]:
        t0 = time.perf_counter()
        it = iter(self._frames)
        i = 0
        while True:
            t = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001 - a camera SDK raises anything when unplugged
                if not self.live:
                    raise
                self.stopped = f"{self.label} failed after {i} frames: {type(e).__name__}: {e}"
                log.warning("%s", self.stopped)
                return
            if isinstance(item, Frame):
                yield item
            else:
                from nfdseg.preprocess import load_image

                img = load_image(item, bgr=self._bgr, name=f"{self.label} frame {i}")
                yield Frame(i, img, time.perf_counter() - t0, (time.perf_counter() - t) * 1e3)
            i += 1


class ImageFolderSource(FrameSource):
    """The images of a folder in name order, as frames named by their file stems (a file source: no drops)."""

    def __init__(self, folder: Path):
        self.folder, self.label = folder, str(folder)
        self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise InputError(f"{folder} holds no images", seen=f"{len(list(folder.iterdir()))} entries",
                             fix=f"put {', '.join(IMAGE_SUFFIXES)} files there")
        self.expected_frames = len(self.paths)

    def __iter__(self) -> Iterator[Frame]:
        from nfdseg.preprocess import load_image

        for i, p in enumerate(self.paths):
            t = time.perf_counter()
            img = load_image(p, name=p.name)
            yield Frame(i, img, float(i), (time.perf_counter() - t) * 1e3, p.stem)


class AVSource(FrameSource):
    """A video file, a camera or a stream URL decoded by FFmpeg (PyAV). `pace`: deliver a file at its own frame
    rate, as a camera would (a file opened as a live source, for rehearsals and tests)."""

    def __init__(self, target: str, label: str, live: bool, fmt: str | None = None, options: dict | None = None,
                 pace: bool = False, timeout_s: float = 10.0):
        av = _av()
        self.label, self.live, self._pace = label, live, pace
        try:
            self._container = av.open(target, format=fmt, options=options or {}, timeout=(timeout_s, timeout_s))
        except av.FFmpegError as e:
            raise _open_error(label, target, fmt, e) from None
        if not self._container.streams.video:
            self._container.close()
            raise InputError(f"{label} has no video stream", seen=_streams_seen(self._container),
                             fix="pass a file with a video track")
        self._stream = self._container.streams.video[0]
        if self._stream.codec_context is None:
            tag = getattr(self._stream, "codec_tag", "") or "unknown"
            self._container.close()
            raise InputError(f"{label}: unsupported video codec (FFmpeg has no decoder for it)",
                             seen=f"codec tag {tag!r}", fix="re-encode it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4")
        self._stream.thread_type = "AUTO"  # FFmpeg's own frame/slice threads (outside the GIL)
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else None
        self.expected_frames = (self._stream.frames or None) if not live else None

    def __iter__(self) -> Iterator[Frame]:
        av = _av()
        tb = self._stream.time_base or Fraction(1, 1000)
        start, i = time.perf_counter(), 0
        frames = self._container.decode(self._stream)
        while True:
            t = time.perf_counter()
            try:
                frame = next(frames)
            except StopIteration:
                break
            except (av.FFmpegError, OSError) as e:
                if self.live:  # a camera unplugged, a stream that went away: stop cleanly, keep what was done
                    self.stopped = f"{self.label} stopped after {i} frames: {e}"
                    log.warning("%s", self.stopped)
                    return
                raise InputError(f"{self.label} is corrupt or truncated: decoding failed after {i} frames",
                                 seen=str(e), fix="re-copy or re-encode the file") from None
            img = frame.to_ndarray(format="rgb24")
            when = float(frame.pts * tb) if frame.pts is not None else i / (self.fps or 30.0)
            decode_ms = (time.perf_counter() - t) * 1e3
            if self._pace:
                time.sleep(max(0.0, when - (time.perf_counter() - start)))
            yield Frame(i, img, when, decode_ms)
            i += 1
        if i == 0:
            raise InputError(f"{self.label} holds no decodable frames (empty, truncated or corrupt)",
                             seen=f"{_size(self.label)}; {_streams_seen(self._container)}",
                             fix="re-copy or re-encode the file")
        if self.expected_frames and i < self.expected_frames:
            self.stopped = f"{self.label} ended after {i} of the {self.expected_frames} frames its header declares"
            log.warning("%s (truncated?)", self.stopped)

    def close(self) -> None:
        self._container.close()


def _size(label: str) -> str:
    try:
        return f"{os.path.getsize(label)} bytes"
    except OSError:
        return "size unknown"


def _streams_seen(container) -> str:
    return ", ".join(f"{s.type} ({getattr(s.codec_context, 'name', None) or 'no decoder'})"
                     for s in container.streams) or "no streams"


def _open_error(label: str, target: str, fmt: str | None, e: Exception) -> InputError:
    if fmt in ("v4l2", "avfoundation", "dshow"):
        present = sorted(str(p) for p in Path("/dev").glob("video*")) if fmt == "v4l2" else []
        return InputError(f"{label} cannot be opened", seen=f"{e}; cameras here: {', '.join(present) or 'none'}",
                          fix="plug the camera in, check its index (ls /dev/video*), or pass a video file")
    if target.lower().startswith(URL_SCHEMES):
        return InputError(f"stream {label} cannot be opened", seen=str(e),
                          fix="check the URL, the network and the credentials (rtsp://user:pass@host/path)")
    return InputError(f"{label}: not a readable video (corrupt, truncated or not a video format)", seen=str(e),
                      fix="pass an MP4, MKV, WebM, AVI or MOV file; re-encode it if it plays nowhere")


def open_camera(index: int, size: tuple[int, int] | None = None, fps: float | None = None) -> AVSource:
    """Camera `index` (0 = the first): /dev/video<index> via v4l2 on Linux, avfoundation on macOS.
    size (width, height) and fps are requests to the driver, which may choose the nearest it supports."""
    options = {}
    if size:
        options["video_size"] = f"{size[0]}x{size[1]}"
    if fps:
        options["framerate"] = str(fps)
    if sys.platform.startswith("linux"):
        target, fmt = f"/dev/video{index}", "v4l2"
        if not Path(target).exists():
            present = sorted(str(p) for p in Path("/dev").glob("video*"))
            raise InputError(f"camera {index} does not exist", seen=f"no {target}; cameras here: "
                             f"{', '.join(present) or 'none'}", fix="plug the camera in or pass another index")
    elif sys.platform == "darwin":
        target, fmt = str(index), "avfoundation"
    else:
        raise InputError(f"camera {index}: opening a camera by index is supported on Linux and macOS",
                         seen=sys.platform, fix="pass the camera's stream URL, or a frames iterator to Segmenter.stream")
    return AVSource(target, f"camera {index}", live=True, fmt=fmt, options=options)


def open_source(source: Any, live: bool | None = None) -> FrameSource:
    """A FrameSource for: a FrameSource (as is), a camera index (int or digits), a stream URL, a video file,
    a folder of images, or an iterable of RGB arrays. `live` overrides the kind's default (a file opened live
    is read at its own frame rate, and frames the model cannot keep up with are dropped)."""
    if isinstance(source, FrameSource):
        return source
    if isinstance(source, int) or (isinstance(source, str) and source.isdigit()):
        return open_camera(int(source))
    if isinstance(source, (str, Path)):
        text = str(source)
        if text.lower().startswith(URL_SCHEMES):
            safe = redact(text)  # never print credentials
            options = {"rtsp_transport": "tcp"} if text.lower().startswith("rtsp") else {}
            return AVSource(text, safe, live=True if live is None else live, options=options)
        path = Path(text)
        if path.is_dir():
            return ImageFolderSource(path)
        if not path.is_file():
            raise InputError(f"video file not found: {text}", fix="check the path")
        if path.stat().st_size == 0:
            raise InputError(f"{text} is empty", seen="0 bytes", fix="re-copy the file; it has no content")
        return AVSource(text, text, live=bool(live), pace=bool(live))
    if hasattr(source, "__iter__"):
        return IterableSource(source, live=bool(live))
    raise InputError("cannot read frames from this object", seen=type(source).__name__,
                     fix="pass a video path, a camera index, a stream URL or an iterable of RGB arrays")


class VideoWriter:
    """Write RGB frames to an MP4 (H.264, yuv420p: plays in browsers) atomically: the file appears under its name
    only when `close()` finishes; `abort()` (or an exception inside `with`) leaves nothing behind."""

    def __init__(self, path: str | Path, fps: float | None, codec: str = "libx264", crf: int = 23):
        self.path, self.fps, self.codec, self.crf = Path(path), fps or 30.0, codec, crf
        self.frames = 0
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._out = self._stream = None
        self._on_frame: Callable | None = None
        self.size_hw: tuple[int, int] | None = None  # the first frame's size: the video's
        self.resized: dict[str, Any] | None = None  # frames of another size, letterboxed into size_hw

    def write(self, rgb: np.ndarray, index: int | None = None) -> None:
        """Append one RGB frame (`index`: its number in the source, for messages). A frame whose size differs
        from the first one's (a stream that changed resolution mid-way) is scaled to fit, aspect kept, centred
        on black: never cropped; the first such frame is logged as a warning and all are counted in `resized`."""
        av = _av()
        if self._out is None:
            self.size_hw = rgb.shape[:2]
            self._open(rgb.shape[0], rgb.shape[1])
        if rgb.shape[:2] != self.size_hw:
            rgb = self._fit(rgb, self.frames if index is None else index)
        h, w = self._stream.height, self._stream.width
        if rgb.shape[:2] != (h, w):  # yuv420p needs even sides: repeat the last row/column
            rgb = np.pad(rgb[:h, :w], ((0, h - min(h, rgb.shape[0])), (0, w - min(w, rgb.shape[1])), (0, 0)), "edge")
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
            self._out.mux(packet)
        self.frames += 1

    def _fit(self, rgb: np.ndarray, index: int) -> np.ndarray:
        from PIL import Image

        (H, W), (h, w) = self.size_hw, rgb.shape[:2]
        seen = f"{w}x{h}"
        if self.resized is None:
            log.warning("%s: frame %d is %s but the video started at %dx%d (the source changed resolution): frames "
                        "of another size are scaled to fit the overlay video, aspect kept, black bars; label maps "
                        "keep each frame's own size", self.path.name, index, seen, W, H)
            self.resized = {"first_frame": index, "video_size": [W, H], "frames": 0, "sizes": {}}
        self.resized["frames"] += 1
        self.resized["sizes"][seen] = self.resized["sizes"].get(seen, 0) + 1
        scale = min(W / w, H / h)
        nw, nh = max(1, min(W, round(w * scale))), max(1, min(H, round(h * scale)))
        canvas = np.zeros((H, W, 3), np.uint8)
        top, left = (H - nh) // 2, (W - nw) // 2
        canvas[top:top + nh, left:left + nw] = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))
        return canvas

    def _open(self, h: int, w: int) -> None:
        av = _av()
        self._out = av.open(str(self._tmp), mode="w", format="mp4")
        try:
            self._stream = self._out.add_stream(self.codec, rate=Fraction(self.fps).limit_denominator(1001))
        except (av.FFmpegError, ValueError):
            log.warning("the %s encoder is missing from this FFmpeg build: writing MPEG-4 Part 2 instead "
                        "(browsers may not play it)", self.codec)
            self.codec = "mpeg4"
            self._stream = self._out.add_stream("mpeg4", rate=Fraction(self.fps).limit_denominator(1001))
        self._stream.width, self._stream.height = w + w % 2, h + h % 2
        self._stream.pix_fmt = "yuv420p"
        if self.codec == "libx264":
            self._stream.options = {"crf": str(self.crf), "preset": "veryfast"}

    def close(self) -> Path | None:
        """Finish the file; returns its path, or None when no frame was written (no file is left then)."""
        if self._out is not None:
            for packet in self._stream.encode(None):
                self._out.mux(packet)
            self._out.close()
            self._out = None
        written = self.frames > 0
        if written:
            self._atomic.__exit__(None, None, None)
        else:
            self.abort()
        return self.path if written else None

    def abort(self) -> None:
        if self._out is not None:
            try:
                self._out.close()
            except Exception:  # noqa: BLE001 - already failing; the temporary file goes either way
                pass
            self._out = None
        try:
            self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)
        except RuntimeError:
            pass

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
