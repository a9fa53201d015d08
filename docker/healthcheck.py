"""Docker HEALTHCHECK for the nfdseg image: exit 0 when healthy, 1 when not.

When the container runs `nfdseg demo`, healthy means the demo answers HTTP on its port (--port, default
7860). Batch commands (distill, export, bench, eval) serve nothing: healthy means the runtime imports.
The command is read from PID 1's command line (NFDSEG_HEALTH_CMDLINE overrides it, for tests).
"""

import os
import sys
import urllib.request


def command() -> list[str]:
    if "NFDSEG_HEALTH_CMDLINE" in os.environ:
        return os.environ["NFDSEG_HEALTH_CMDLINE"].split()
    with open("/proc/1/cmdline", "rb") as f:
        return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]


def demo_port(args: list[str]) -> int | None:
    """The demo's port when the command is `nfdseg demo ...`, else None."""
    if "demo" not in args:
        return None
    for i, a in enumerate(args):
        if a == "--port" and i + 1 < len(args):
            return int(args[i + 1])
        if a.startswith("--port="):
            return int(a.split("=", 1)[1])
    from nfdseg.demo.app import DEFAULT_PORT  # the demo's own default, so the two cannot drift apart

    return DEFAULT_PORT


def main() -> int:
    port = demo_port(command())
    if port is None:
        import nfdseg.serve  # noqa: F401  (raises, so exit 1, when the runtime is broken)

        return 0
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3) as r:
            return 0 if r.status < 500 else 1
    except Exception:
        return 1


if __name__ == "__main__":
    sys.exit(main())
