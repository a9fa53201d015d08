"""The demo stage: a Gradio app over the serve runtime. `build_demo(segmenter)` returns the Blocks."""

from .app import build_demo

__all__ = ["build_demo"]
