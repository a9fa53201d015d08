"""Videos and cameras: the streaming runtime (order, bounded memory, drops for live sources only, several
cameras through one MicroBatcher), `nfdseg predict` on a clip, and every kind of bad video input."""

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av", reason="PyAV is not installed (pip install 'nfdseg[video]')")

from videofiles import decoded, resolution_change_ts, scene_frames, unknown_codec_avi, write_clip  # noqa: E402

from nfdseg.errors import InputError  # noqa: E402


@pytest.fixture(scope="module")
def seg(exported):
    from nfdseg.serve import Segmenter

    return Segmenter(exported, backend="onnxruntime", device="cpu")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clips") / "drive.mp4", scene_frames(12))


def test_stream_of_a_file_keeps_order_and_equals_predict(seg, clip):
    frames = decoded(clip)
    stream = seg.stream(str(clip), max_batch=3)
    results = list(stream)
    assert [r.frame.index for r in results] == list(range(12)) and not stream.live
    for r, f in zip(results, frames):
        np.testing.assert_array_equal(r.frame.image, f)
        np.testing.assert_array_equal(r.prediction.labels, seg.predict(f).labels)
        assert r.dropped_before == 0 and r.timings_ms["infer_ms"] > 0 and r.timings_ms["latency_ms"] > 0
    s = stream.stats.summary()
    assert s["frames"] == 12 and s["dropped"] == 0 and s["fps"] > 0
    assert set(s["latency_ms"]) == {"decode_ms", "preprocess_ms", "infer_ms", "post_ms", "latency_ms"}


def _counting(frames, pulled, delay_s=0.0):
    for f in frames:
        pulled.append(time.perf_counter())
        if delay_s:
            time.sleep(delay_s)
        yield f


def test_a_slow_consumer_holds_memory_and_a_file_never_drops(seg):
    from nfdseg.serve.video import IterableSource

    frames = scene_frames(40)
    pulled: list[float] = []
    stream = seg.stream(IterableSource(_counting(frames, pulled), live=False), max_batch=2, queue_size=2)
    ahead = []
    for i, r in enumerate(stream):
        time.sleep(0.02)  # a consumer slower than the model
        ahead.append(len(pulled) - (i + 1))
        assert r.frame.index == i
    # frames taken from the source but not yet consumed: at most the 4 queues (2 each), a batch, and one per stage
    assert max(ahead) <= 4 * 2 + 2 + 4, ahead
    assert stream.stats.dropped == 0 and stream.stats.frames_done == 40


def test_a_live_source_drops_when_the_model_is_behind_and_says_so(seg):
    from nfdseg.serve.video import IterableSource

    frames = scene_frames(120)
    sent_all = threading.Event()

    def camera_frames():
        yield from _counting(frames, [], delay_s=0.001)
        sent_all.set()

    camera = IterableSource(camera_frames(), live=True, label="fake camera")
    stream = seg.stream(camera, max_batch=1, queue_size=2)
    results = []
    for r in stream:
        # the consumer (and so the whole pipeline) stays behind until the camera has sent every frame: a fixed
        # ratio of sleeps is not "behind" on a loaded machine, where the camera thread itself runs late
        if not results:
            assert sent_all.wait(30), "a live source must never wait for the model"
        time.sleep(0.01)
        results.append(r)
    idx = [r.frame.index for r in results]
    assert idx == sorted(idx) and len(set(idx)) == len(idx), "order kept"
    s = stream.stats
    assert s.dropped > 30 and s.frames_read == 120 and s.frames_done + s.dropped == 120
    assert sum(r.dropped_before for r in results) == s.dropped - idx[0]
    assert idx[-1] == 119, "the newest frame is never the one dropped"


def test_a_camera_that_disconnects_stops_cleanly_and_keeps_what_was_done(seg):
    from nfdseg.serve.video import IterableSource

    def unplugged():
        yield from scene_frames(5)
        raise OSError("No such device")

    stream = seg.stream(IterableSource(unplugged(), live=True, label="camera 0"), queue_size=8)
    results = list(stream)
    assert len(results) == 5 and [r.frame.index for r in results] == list(range(5))
    assert "camera 0 failed after 5 frames" in stream.stats.stopped and "No such device" in stream.stats.stopped
    # the same failure in a file-like source is an error, raised after the frames before it
    def broken():
        yield from scene_frames(3)
        raise OSError("read error")

    got = []
    with pytest.raises(OSError, match="read error"):
        for r in seg.stream(IterableSource(broken(), live=False)):
            got.append(r)
    assert len(got) == 3


def test_three_cameras_share_one_model_through_the_micro_batcher(seg):
    from nfdseg.serve import MicroBatcher
    from nfdseg.serve.video import IterableSource

    cams = {c: scene_frames(16, seed=10 + c) for c in range(3)}
    out: dict[int, list] = {}
    with MicroBatcher(seg, max_batch=8, max_wait_ms=30) as batcher:
        def run(c):
            stream = seg.stream(IterableSource(iter(cams[c]), live=False, label=f"camera {c}"), batcher=batcher)
            out[c] = [(r.frame.index, r.prediction.labels) for r in stream]

        threads = [threading.Thread(target=run, args=(c,)) for c in cams]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stats = dict(batcher.stats)
    for c, frames in cams.items():
        assert [i for i, _ in out[c]] == list(range(16)), f"camera {c} in order"
        for (i, labels), f in zip(out[c], frames):
            np.testing.assert_array_equal(labels, seg.predict(f).labels)
    assert stats["images"] == 48 and stats["batches"] < 48 / 1.5, f"frames of the cameras were batched: {stats}"


def test_video_writer_is_atomic_and_pads_odd_sizes(tmp_path):
    from nfdseg.serve.video import VideoWriter

    frames = scene_frames(6, size_hw=(33, 47))
    w = VideoWriter(tmp_path / "o.mp4", fps=10)
    for f in frames:
        w.write(f)
    assert not (tmp_path / "o.mp4").exists(), "nothing under the final name before close"
    assert w.close() == tmp_path / "o.mp4"
    back = decoded(tmp_path / "o.mp4")
    assert len(back) == 6 and back[0].shape == (34, 48, 3)
    assert np.abs(back[3][:33, :47].astype(int) - frames[3]).mean() < 12, "the frames are the ones written"
    with pytest.raises(RuntimeError):
        with VideoWriter(tmp_path / "x.mp4", fps=10) as w2:
            w2.write(frames[0])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == [tmp_path / "o.mp4"], "an aborted video leaves nothing, not even a temp file"


def _fit(img, size_hw):
    """Independent reference: scale to fit size_hw, aspect kept, centred on black."""
    from PIL import Image

    (H, W), (h, w) = size_hw, img.shape[:2]
    s = min(W / w, H / h)
    nw, nh = round(w * s), round(h * s)
    out = np.zeros((H, W, 3), np.uint8)
    out[(H - nh) // 2:(H - nh) // 2 + nh, (W - nw) // 2:(W - nw) // 2 + nw] = np.asarray(
        Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    return out


def test_video_writer_fits_frames_of_another_size_and_warns_once(tmp_path, caplog):
    from nfdseg.serve.video import VideoWriter

    first = scene_frames(3, size_hw=(96, 128))
    wide = scene_frames(4, size_hw=(40, 160), seed=5)  # another aspect: black bars above and below
    w = VideoWriter(tmp_path / "o.mp4", fps=10)
    with caplog.at_level("WARNING", logger="nfdseg.serve.video"):
        for i, f in enumerate(first + wide):
            w.write(f, index=10 + i)
    w.close()
    warnings = [r.getMessage() for r in caplog.records if "changed resolution" in r.getMessage()]
    assert len(warnings) == 1 and "frame 13 is 160x40" in warnings[0] and "128x96" in warnings[0], warnings
    assert w.resized == {"first_frame": 13, "video_size": [128, 96], "frames": 4, "sizes": {"160x40": 4}}
    back = decoded(tmp_path / "o.mp4")
    assert [b.shape for b in back] == [(96, 128, 3)] * 7
    want = _fit(wide[2], (96, 128))
    err = np.abs(back[5].astype(int) - want).mean()
    cropped = np.abs(back[5][:40].astype(int) - wide[2][:, :128]).mean()
    assert err < 8 and cropped > 3 * err, (err, cropped)
    assert back[5][:20].max() < 40 and back[5][-20:].max() < 40, "letterbox bars are black"


def test_cli_video_that_changes_resolution_keeps_every_pixel(exported, tmp_path, seg):
    import json

    from PIL import Image

    ts, frames = resolution_change_ts(tmp_path / "joined.ts")
    r = _cli("predict", exported, ts, "--backend", "onnxruntime", "--out", tmp_path / "o", "--labels-every", "1",
             "--json")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("changed resolution") == 1 and "frame 6 is 160x120" in r.stderr, r.stderr
    assert "resolution changed at frame 6" in r.stdout, r.stdout
    for i, f in enumerate(frames):  # label maps: each frame's own size and labels
        labels = np.asarray(Image.open(tmp_path / f"o/joined_labels/frame{i:06d}.png"))
        np.testing.assert_array_equal(labels, seg.predict(f).labels)
    back = decoded(tmp_path / "o/joined_overlay.mp4")
    assert len(back) == 12 and {b.shape for b in back} == {(96, 128, 3)}
    from nfdseg.preprocess import overlay

    for i in (6, 11):
        shown = overlay(frames[i], seg.predict(frames[i]).labels, seg.palette, 0.5)
        err = np.abs(back[i].astype(int) - _fit(shown, (96, 128))).mean()
        cropped = np.abs(back[i].astype(int) - shown[:96, :128]).mean()
        assert err < 8 and cropped > 2 * err, (i, err, cropped)
    summary = json.loads((tmp_path / "o/joined_video.json").read_text())
    assert summary["resized"] == {"first_frame": 6, "video_size": [128, 96], "frames": 6, "sizes": {"160x120": 6}}


def test_bad_videos_give_one_clear_error(tmp_path, clip):
    from nfdseg.serve.video import open_camera, open_source

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    half = tmp_path / "half.mp4"
    half.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])  # MP4 index (moov) is at the end: cut off
    mkv = write_clip(tmp_path / "a.mkv", scene_frames(4))
    cut_mkv = tmp_path / "cut.mkv"
    cut_mkv.write_bytes(mkv.read_bytes()[: mkv.stat().st_size // 2])  # header kept, no whole frame
    zz = unknown_codec_avi(tmp_path / "zz.avi", scene_frames(4))
    cases = {empty: "is empty", junk: "not a readable video", half: "not a readable video",
             cut_mkv: "no decodable frames", zz: "unsupported video codec", tmp_path / "gone.mp4": "not found"}
    for path, what in cases.items():
        with pytest.raises(InputError) as e:
            list(open_source(str(path)))
        assert what in str(e.value) and e.value.fix, (path.name, str(e.value))
    absent = next(i for i in range(9, 64) if not Path(f"/dev/video{i}").exists())
    if sys.platform.startswith("linux"):
        with pytest.raises(InputError, match=f"camera {absent} does not exist") as e:
            open_camera(absent)
        assert "cameras here" in e.value.seen


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "nfdseg.app.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_cli_predict_on_a_video_writes_overlay_labels_and_timings(exported, clip, tmp_path, seg):
    r = _cli("predict", exported, clip, "--backend", "onnxruntime", "--out", tmp_path / "o", "--labels-every", "5",
             "--json")
    assert r.returncode == 0, r.stderr
    assert "12 frames (0 dropped)" in r.stdout and "fps" in r.stdout
    for stage in ("decode", "infer", "encode"):
        assert f"{stage} " in r.stdout, r.stdout
    back = decoded(tmp_path / "o/drive_overlay.mp4")
    assert len(back) == 12 and back[0].shape == (48, 64, 3)
    labels = sorted(p.name for p in (tmp_path / "o/drive_labels").iterdir())
    assert labels == ["frame000000.png", "frame000005.png", "frame000010.png"]
    from PIL import Image

    src = decoded(clip)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o/drive_labels/frame000005.png")),
                                  seg.predict(src[5]).labels)
    import json

    summary = json.loads((tmp_path / "o/drive_video.json").read_text())
    assert summary["frames"] == 12 and summary["latency_ms"]["encode_ms"]["p99"] > 0


def test_cli_bad_video_and_missing_camera_fail_cleanly(exported, tmp_path):
    junk = tmp_path / "clip.mp4"
    junk.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    r = _cli("predict", exported, junk, "--backend", "onnxruntime", "--out", tmp_path / "o")
    assert r.returncode == 2 and "not a readable video" in r.stderr + r.stdout and "Traceback" not in r.stderr
    assert not any((tmp_path / "o").glob("*.mp4")) and not any((tmp_path / "o").glob(".*tmp"))
    if sys.platform.startswith("linux"):
        absent = next(i for i in range(9, 64) if not Path(f"/dev/video{i}").exists())
        r = _cli("predict", exported, absent, "--backend", "onnxruntime", "--out", tmp_path / "o")
        assert r.returncode == 2 and f"camera {absent} does not exist" in r.stderr + r.stdout
        assert "Traceback" not in r.stderr
