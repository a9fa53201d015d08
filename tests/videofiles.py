"""Video clips for tests, generated with PyAV (no downloads): moving synthetic scenes, and broken variants."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def scene_frames(n: int, size_hw=(48, 64), seed: int = 3) -> list[np.ndarray]:
    """n RGB frames of one synthetic scene panned sideways by 2 px per frame (something to segment, and each
    frame differs)."""
    from nfdseg.data.synthetic import generate_scene

    h, w = size_hw
    # generate_scene fails for sides that are not multiples of 8 (seen: 48x74, 33x94), so draw a rounded-up canvas
    big = generate_scene(seed, (-(-h // 8) * 8, -(-2 * w // 8) * 8))[0][:h]
    return [np.ascontiguousarray(big[:, (2 * i) % w:(2 * i) % w + w]) for i in range(n)]


def write_clip(path: Path, frames: list[np.ndarray], fps: int = 10, codec: str = "libx264", fmt: str | None = None):
    import av

    with av.open(str(path), "w", format=fmt) as out:
        s = out.add_stream(codec, rate=fps)
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    return path


def decoded(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def unknown_codec_avi(path: Path, frames) -> Path:
    """An AVI whose video codec tag FFmpeg does not know (MPEG-4's FMP4 renamed ZZZZ): 'unsupported codec'."""
    tmp = write_clip(path.with_suffix(".src.avi"), frames, codec="mpeg4")
    data = tmp.read_bytes()
    assert b"FMP4" in data
    path.write_bytes(data.replace(b"FMP4", b"ZZZZ"))
    return path


def y4m(path: Path, frames, fps: int = 10) -> Path:
    """A YUV4MPEG2 file (what Chromium's fake camera reads), 4:2:0, from RGB frames (BT.601 full range)."""
    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
            y = 0.299 * r + 0.587 * g + 0.114 * b
            u = (b - y) * 0.564 + 128
            v = (r - y) * 0.713 + 128
            sub = lambda c: c.reshape(h // 2, 2, w // 2, 2).mean((1, 3))  # noqa: E731
            f.write(b"FRAME\n")
            for plane in (y, sub(u), sub(v)):
                f.write(np.clip(plane + 0.5, 0, 255).astype(np.uint8).tobytes())
    return path


def resolution_change_ts(path: Path, n: int = 6) -> tuple[Path, list[np.ndarray]]:
    """Two H.264 MPEG-TS clips, 128x96 then 160x120 (another scene), concatenated byte for byte: a stream whose
    resolution changes mid-way (a camera re-negotiating, a recorder's joined files). Returns the file and the
    decoded frames (n of each size)."""
    a = write_clip(path.with_suffix(".a.ts"), scene_frames(n, (96, 128)), fmt="mpegts")
    b = write_clip(path.with_suffix(".b.ts"), scene_frames(n, (120, 160), seed=5), fmt="mpegts")
    path.write_bytes(a.read_bytes() + b.read_bytes())
    frames = decoded(path)
    assert [f.shape[:2] for f in frames] == [(96, 128)] * n + [(120, 160)] * n, [f.shape for f in frames]
    return path, frames
