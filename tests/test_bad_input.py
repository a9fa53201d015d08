"""Issue 27: bad input to the CLI and the runtime gives one clear message, no secret, no lost output."""

import json
import logging
import subprocess
import sys

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
