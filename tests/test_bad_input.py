"""Issue 27: bad input to the CLI and the runtime gives one clear message, no secret, no lost output."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from nfdseg.errors import InputError
from nfdseg.redact import RedactingFilter, redact

URL = "rtsp://bob:s3cret@127.0.0.1:9/x"


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "nfdseg.app.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, **kw)


def test_redact_hides_userinfo_in_text_lists_and_dicts():
    assert redact(f"Connection refused: '{URL}'") == "Connection refused: 'rtsp://***@127.0.0.1:9/x'"
    assert redact({"source": [URL], "n": 3}) == {"source": ["rtsp://***@127.0.0.1:9/x"], "n": 3}
    assert redact("runs/a@b/c.mp4 and http://host/p@q") == "runs/a@b/c.mp4 and http://host/p@q"
    record = logging.LogRecord("nfdseg", logging.INFO, __file__, 1, "opening %s", (URL,), None)
    RedactingFilter().filter(record)
    assert "s3cret" not in record.getMessage()


def test_every_error_message_is_redacted():
    e = InputError(f"stream {URL} cannot be opened", seen=f"refused: '{URL}'", fix=URL)
    assert "s3cret" not in str(e) and "s3cret" not in e.seen + e.fix + e.what


def test_refused_stream_seen_line_has_no_password(exported, tmp_path):
    pytest.importorskip("av", reason="PyAV is not installed (pip install 'nfdseg[video]')")
    r = _cli("-v", "predict", exported, URL, "--backend", "onnxruntime", "--out", tmp_path / "o")
    assert r.returncode == 2 and "seen:" in r.stderr, r.stderr
    assert "s3cret" not in r.stdout + r.stderr and "Traceback" not in r.stderr


def test_json_files_are_redacted(tmp_path):
    from nfdseg.fsutil import write_json_atomic

    write_json_atomic(tmp_path / "s.json", {"source": URL})
    assert json.loads((tmp_path / "s.json").read_text())["source"] == "rtsp://***@127.0.0.1:9/x"


def test_output_stems_are_unique_for_sources_with_the_same_name(tmp_path):
    from nfdseg.serve.predict_video import output_stems

    stems = output_stems(["clips/normal.mp4", "clips2/normal.mp4", "x/d/a.png", "y/d/a.png", "b.png", "0"])
    assert stems == {"clips/normal.mp4": "clips_normal", "clips2/normal.mp4": "clips2_normal",
                     "x/d/a.png": "d_a", "y/d/a.png": "d_a_2", "b.png": "b", "0": "camera0"}


def test_predict_keeps_every_output_when_stems_collide(exported, tmp_path):
    pytest.importorskip("av", reason="PyAV is not installed (pip install 'nfdseg[video]')")
    import numpy as np
    from PIL import Image
    from videofiles import scene_frames, write_clip

    for folder, n in (("clips", 6), ("clips2", 3)):
        (tmp_path / folder).mkdir()
        write_clip(tmp_path / folder / "normal.mp4", scene_frames(n))
        Image.fromarray(np.full((40, 50, 3), 30 * n, np.uint8)).save(tmp_path / folder / "a.png")
    srcs = [tmp_path / f / name for name in ("normal.mp4", "a.png") for f in ("clips", "clips2")]
    r = _cli("predict", exported, *srcs, "--backend", "onnxruntime", "--out", tmp_path / "o", "--json")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "o"
    for stem in ("clips_normal", "clips2_normal"):
        assert (out / f"{stem}_overlay.mp4").is_file()
        assert json.loads((out / f"{stem}_video.json").read_text())["output_stem"] == stem
    for stem in ("clips_a", "clips2_a"):
        assert (out / f"{stem}_overlay.png").is_file() and (out / f"{stem}_labels.png").is_file()
    assert f"{srcs[0]} -> clips_normal" in r.stdout
    assert json.loads((out / "outputs.json").read_text())["outputs"][str(srcs[1])] == "clips2_normal"


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_unwritable_out_is_one_clear_error(exported, tmp_path, where):
    from PIL import Image

    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "o" if where == "under_a_file" else "/proc/nfdseg_x"
    r = _cli("predict", exported, tmp_path / "a.png", "--backend", "onnxruntime", "--out", out)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "cannot write the output" in r.stderr and "seen:" in r.stderr and "fix:" in r.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE as set here is Linux behaviour")
def test_an_encode_that_fails_midway_is_one_clear_error_and_leaves_no_video(exported, tmp_path):
    pytest.importorskip("av", reason="PyAV is not installed (pip install 'nfdseg[video]')")
    import resource

    import numpy as np
    from videofiles import write_clip

    rng = np.random.default_rng(0)
    write_clip(tmp_path / "long.mp4", [rng.integers(0, 255, (96, 128, 3), np.uint8) for _ in range(30)])
    limit = (tmp_path / "long.mp4").stat().st_size // 3  # the overlay of noise outgrows a third of the source

    def small_files():  # like `ulimit -f`: a write past the limit fails with EFBIG (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = _cli("predict", exported, tmp_path / "long.mp4", "--backend", "onnxruntime", "--out", tmp_path / "o",
             preexec_fn=small_files)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "file-size limit" in r.stderr and "fix:" in r.stderr
    assert not list((tmp_path / "o").glob("*.mp4")) and not list((tmp_path / "o").glob(".*.tmp"))


@pytest.mark.parametrize("argv", [["data", "check", "--format", "camvid", "ROOT"],
                                  ["data", "check", "ROOT", "--format", "camvid"],
                                  ["data", "--format", "camvid", "check", "ROOT"]])
def test_options_before_or_after_positionals(argv):
    from nfdseg.app.cli import build_parser
    from nfdseg.cliargs import parse_command_line

    args = parse_command_line(build_parser(), argv)
    assert (args.action, args.root, args.format) == ("check", "ROOT", "camvid")


def test_predict_options_anywhere_and_unknown_options_still_refused():
    from nfdseg.app.cli import build_parser
    from nfdseg.cliargs import parse_command_line

    args = parse_command_line(build_parser(), ["predict", "--out", "o", "EXP", "--alpha", "0.3", "a.png", "b.png"])
    assert (args.artifact, args.images, args.out, args.alpha) == ("EXP", ["a.png", "b.png"], "o", 0.3)
    with pytest.raises(SystemExit) as e:
        parse_command_line(build_parser(), ["data", "check", "ROOT", "--no-such-flag"])
    assert e.value.code == 2


def test_every_command_a_message_names_exists():
    """Each `nfdseg WORD [WORD]` quoted in the code's messages is a real command (and sub-action)."""
    import re
    from pathlib import Path

    from nfdseg.app.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    root = Path(__file__).resolve().parents[1]
    seen = []
    for folder in ("app", "demo", "distill", "export", "nfdseg", "serve"):  # nfdseg/ holds data/ and models/
        for path in (root / folder).rglob("*.py"):
            for m in re.finditer(r"`nfdseg ([a-z][\w-]*)(?: ([a-z][\w-]*))?", path.read_text()):
                seen.append(m.group(0))
                assert m.group(1) in commands, f"{path.name}: {m.group(0)}` names no command"
                if m.group(1) == "data":
                    assert m.group(2) in ("check",), f"{path.name}: {m.group(0)}` names no data action"
    assert len(seen) > 5


def test_int8_without_an_int8_model_says_to_export_it(exported):
    from nfdseg.errors import ArtifactError
    from nfdseg.serve import Segmenter

    assert not (exported / "model.int8.onnx").exists()
    with pytest.raises(ArtifactError) as e:
        Segmenter(exported, precision="int8")  # backend auto
    assert "nfdseg export" in e.value.fix and "--int8" in e.value.fix and "pip install" not in e.value.fix


def test_parity_rule_text_reads_as_a_pass_on_passing_rows():
    from nfdseg.export.parity import ParityBudget, judge

    budget = ParityBudget()
    ok, rule = judge({"precision": "fp32", "pixel_agreement_pct": 100.0}, budget)
    assert ok and "< " not in rule and ">=" in rule and rule.endswith("passed")
    ok, rule = judge({"precision": "fp32", "pixel_agreement_pct": 50.0}, budget)
    assert not ok and "<" in rule and "FAILED" in rule
    ok, rule = judge({"precision": "fp16", "delta_miou": 0.0}, budget)
    assert ok and "> " not in rule and rule.endswith("passed")
    ok, rule = judge({"precision": "int8", "delta_miou": 0.0, "finite": False}, budget)
    assert not ok and "non-finite" in rule


def test_a_wav_is_reported_as_audio(exported, tmp_path):
    import wave

    with wave.open(str(tmp_path / "song.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(b"\x00\x01" * 800)
    r = _cli("predict", exported, tmp_path / "song.wav", "--backend", "onnxruntime", "--out", tmp_path / "o")
    assert r.returncode == 1 and "is an audio file, not an image or a video" in r.stdout + r.stderr, r.stdout
    assert "Traceback" not in r.stderr


def test_raw_h264_is_accepted_as_video(tmp_path):
    pytest.importorskip("av", reason="PyAV is not installed (pip install 'nfdseg[video]')")
    from videofiles import scene_frames, write_clip

    from nfdseg.serve.video import is_video_source, open_source

    path = write_clip(tmp_path / "raw.h264", scene_frames(5), fmt="h264") or tmp_path / "raw.h264"
    assert is_video_source(path)
    src = open_source(path)
    try:
        assert len(list(src)) == 5
    finally:
        src.close()


# 4. An export checks what it can before writing, builds beside the target and moves into place only when done;
# serving an export without its parity record warns.
def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_export_refuses_before_writing_anything(trained_run, tmp_path):
    import shutil

    r = _cli("export", trained_run / "student", "--int8", "--int8-calib-images", "100", "--engine", "off",
             "--out", tmp_path / "e")
    assert r.returncode == 2 and "training split has only 64" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "e").exists() and _leftovers(tmp_path) == []
    moved = tmp_path / "student"  # a checkpoint whose dataset folder has gone
    shutil.copytree(trained_run / "student", moved)
    record = json.loads((moved / "checkpoint.json").read_text())
    record["config"]["data"].update(format="folder", root=str(tmp_path / "gone"))
    (moved / "checkpoint.json").write_text(json.dumps(record))
    r = _cli("export", moved, "--int8", "--engine", "off", "--out", tmp_path / "e2")
    assert r.returncode == 2 and "data cannot be read" in r.stderr and "put the dataset back" in r.stderr, r.stderr
    assert not (tmp_path / "e2").exists() and _leftovers(tmp_path) == []


def test_build_then_move_leaves_the_old_export_when_a_build_fails(tmp_path):
    from nfdseg.export.stage import build_then_move

    out = tmp_path / "export"
    out.mkdir()
    (out / "model.onnx").write_text("old")

    def failing(folder):
        (folder / "model.onnx").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        build_then_move(out, failing)
    assert (out / "model.onnx").read_text() == "old" and _leftovers(tmp_path) == []
    assert build_then_move(out, lambda f: (f / "model.onnx").write_text("new")) == 3
    assert (out / "model.onnx").read_text() == "new" and _leftovers(tmp_path) == []


def test_check_finds_the_checkpoint_of_an_export_written_elsewhere(exported, tmp_path):
    import shutil

    from nfdseg.artifacts import ONNX_FP32, manifest_path
    from nfdseg.export.cli import _find_checkpoint
    from nfdseg.manifest import read_manifest

    elsewhere = tmp_path / "deploy" / "models" / "exp"
    shutil.copytree(exported, elsewhere)
    m = read_manifest(manifest_path(elsewhere / ONNX_FP32), expect_kind="onnx")
    assert _find_checkpoint(elsewhere, m.parent_sha256, m.parent) == exported.parent / "student"


def test_serving_an_export_without_parity_json_warns(exported, tmp_path, caplog):
    import shutil

    from nfdseg.serve import Segmenter

    bare = tmp_path / "exp"
    shutil.copytree(exported, bare)
    (bare / "parity.json").unlink()
    with caplog.at_level(logging.WARNING):
        Segmenter(bare, backend="onnxruntime", device="cpu")
    assert "has no parity.json" in caplog.text and "nfdseg check" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        Segmenter(exported, backend="onnxruntime", device="cpu")
    assert "parity.json" not in caplog.text


def test_an_export_does_not_warn_about_the_parity_record_it_is_writing(trained_run, tmp_path, caplog):
    """The missing-parity warning is for serving: the export's own parity check opens models whose parity.json
    does not exist yet, and must not tell the user that something went wrong."""
    from nfdseg.export.run import ExportConfig, run_export

    with caplog.at_level("WARNING"):
        run_export(trained_run / "student", tmp_path / "e", ExportConfig(engine="off", fp16=False))
    assert (tmp_path / "e" / "parity.json").is_file()
    assert not [r for r in caplog.records if "parity.json" in r.getMessage()]


def test_a_decompression_bomb_is_too_large_not_unreadable(tmp_path):
    """A 20000x20000 PNG header: Pillow refuses it at open (DecompressionBombError); nfdseg says "too large" with
    the limit, as for any image over max_pixels (and as the C++ example says)."""
    import struct
    import zlib

    from nfdseg.preprocess import load_image

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    with pytest.raises(InputError, match="huge.png: image is too large") as e:
        load_image(huge)
    assert e.value.seen == "400000000 pixels, limit 64000000" and "downscale" in e.value.fix
