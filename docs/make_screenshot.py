"""Make docs/demo.png: start the demo on an artifact, upload a built-in example in headless Chromium, screenshot.

    python docs/make_screenshot.py runs/quick/export
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path


def main() -> int:
    artifact = sys.argv[1] if len(sys.argv) > 1 else "runs/quick/export"
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from playwright.sync_api import sync_playwright

    from nfdseg.demo.app import build_demo, example_images
    from nfdseg.serve import Segmenter

    seg = Segmenter(artifact)
    examples = example_images(seg, 4, Path(tempfile.mkdtemp()))
    demo = build_demo(seg, examples=examples)
    demo.queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    out = Path(__file__).resolve().parent / "demo.png"
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
        demo.nfdseg_batcher.close()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
