"""The Docker image's health check (docker/healthcheck.py), run as Docker runs it: a closed demo port is
unhealthy, an answering demo is healthy, a batch command is healthy when the runtime imports."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docker" / "healthcheck.py"


def _health(cmdline: str) -> int:
    env = {"NFDSEG_HEALTH_CMDLINE": cmdline, "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, timeout=60).returncode


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # released on close: nothing listens there


def test_healthcheck_follows_the_demo_port():
    port = _closed_port()
    assert _health(f"nfdseg demo runs/x/export --host 0.0.0.0 --port {port}") == 1
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert _health(f"nfdseg demo runs/x/export --port={server.server_address[1]}") == 0
    finally:
        server.shutdown()
    assert _health("nfdseg bench runs/x/export") == 0


def test_dockerfile_uses_the_checked_health_script_and_keeps_distro_pip():
    text = (ROOT / "Dockerfile").read_text()
    assert "COPY docker/healthcheck.py" in text and "CMD python3 /usr/local/bin/nfdseg-healthcheck.py" in text
    assert "-m pip install --upgrade pip" not in text


ENTRY = ROOT / "docker" / "entrypoint.sh"


def _entry(tmp_path, env: dict, *args) -> subprocess.CompletedProcess:
    fake = tmp_path / "fake-nfdseg"  # stands in for the nfdseg command: prints what it was given
    fake.write_text('#!/bin/sh\necho "HOME=$HOME"\necho "MPL=$MPLCONFIGDIR"\necho "ARGS=$*"\n')
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "NFDSEG_COMMAND": str(fake), **env}
    return subprocess.run(["sh", str(ENTRY), *args], env=env, capture_output=True, text=True, timeout=30)


def test_entrypoint_gives_a_homeless_user_a_writable_home_and_runs_the_command(tmp_path):
    # `docker run --user 1000:1000` with no passwd entry: HOME is / or unset, not writable by that uid
    r = _entry(tmp_path, {"HOME": "/nonexistent", "NFDSEG_RUNS_DIR": str(tmp_path)}, "demo", "runs/x/export")
    assert r.returncode == 0, r.stderr
    home = r.stdout.split("HOME=")[1].split()[0]
    assert home.startswith("/tmp/nfdseg-home.") and Path(home).is_dir()
    assert f"MPL={home}/.config/matplotlib" in r.stdout and "ARGS=demo runs/x/export" in r.stdout
    assert r.stderr == "", "a writable runs folder gives no warning"
    Path(home).rmdir()
    r = _entry(tmp_path, {"HOME": str(tmp_path), "NFDSEG_RUNS_DIR": str(tmp_path)}, "--help")
    assert f"HOME={tmp_path}" in r.stdout, "a writable HOME is kept"


def test_entrypoint_says_how_to_fix_a_runs_mount_it_cannot_write(tmp_path):
    # /proc/self: a folder no uid can create files in (root included), standing in for a host-owned mount
    r = _entry(tmp_path, {"HOME": str(tmp_path), "NFDSEG_RUNS_DIR": "/proc/self"}, "bench", "runs/x/export")
    assert r.returncode == 0 and "ARGS=bench runs/x/export" in r.stdout
    assert "/proc/self" in r.stderr and "not writable by uid" in r.stderr and "--user $(id -u):$(id -g)" in r.stderr


def test_dockerfile_installs_one_gpu_runtime_and_documents_the_user_and_cuda12_extras():
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG NFDSEG_EXTRAS=all-cu13" in text, "the image gets the GPU onnxruntime (tests/test_install_targets.py)"
    assert "nfdseg-check-install.py" in text and 'ENTRYPOINT ["/usr/local/bin/nfdseg-entrypoint"]' in text
    example = text[text.index("tensorrt:24.08-py3"):text.index("-t nfdseg:trt10")]
    assert "NFDSEG_EXTRAS=all-cu12" in example and "cu126" in example, "the CUDA 12.6 base needs the CUDA 12 extras"
    assert "--user $(id -u):$(id -g)" in text and "-v $PWD/runs:/work/runs" in text
    docs = (ROOT / "docs" / "deploying.md").read_text()
    assert "--user $(id -u):$(id -g)" in docs and "NFDSEG_EXTRAS=all-cu12" in docs


def test_no_base_image_older_than_tensorrt_11_is_said_to_hold_it():
    """TensorRT 11.0 GA is dated 2026-06-02 (NVIDIA/TensorRT CHANGELOG): a container tag before 26.06 holds
    TensorRT 10, whatever its CUDA. Each paragraph naming such a tag must not call it TensorRT 11."""
    import re

    wrong = []
    for path in (ROOT / "Dockerfile", ROOT / "docs" / "deploying.md", ROOT / "README.md"):
        for para in re.split(r"\n\s*\n|\n#\s*\n", path.read_text()):
            tags = [(int(y), int(m)) for y, m in re.findall(r"tensorrt:(\d\d)\.(\d\d)", para)]
            if any(t < (26, 6) for t in tags) and re.search(r"TensorRT 11(?![.\d]*\s*GA)", para):
                wrong.append(f"{path.name}: {para.strip()[:160]}")
    assert not wrong, wrong
