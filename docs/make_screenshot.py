"""Make docs/demo.png: start the demo on an artifact, upload a built-in example in headless Chromium, screenshot.

    python docs/make_screenshot.py runs/quick/export
    python docs/make_screenshot.py runs/camvid/deploy docs/demo_camvid.png
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path


def main() -> int:
    artifact = sys.argv[1] if len(sys.argv) > 1 else "runs/quick/export"
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from playwright.sync_api import sync_playwright

    from nfdseg.demo.app import build_demo
    from nfdseg.serve import Segmenter

    seg = Segmenter(artifact)
    demo = build_demo(seg)  # examples: the validation images recorded in the artifact's manifest
    examples = demo.nfdseg_examples[0]
    demo.queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    out = Path(sys.argv[2]).resolve() if len(sys.argv) > 2 else Path(__file__).resolve().parent / "demo.png"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                              "--disable-component-update"])
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            upload = page.locator("#nfd-image input[type=file]")
            upload.wait_for(state="attached", timeout=60_000)
            upload.set_input_files(examples[1])
            page.wait_for_function("document.querySelector('#nfd-status').innerText.includes('segmented')",
                                   timeout=60_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(out), full_page=True)
            browser.close()
    finally:
        demo.close()
        demo.nfdseg_close()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
