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
