"""One error type for everything a user can get wrong: what happened, what was seen, how to fix it."""

from __future__ import annotations


class NfdsegError(Exception):
    """A user-facing error. The CLI prints it as one block and exits with status 2.

    Args:
        what: what went wrong, in one sentence.
        seen: the offending value or file, as observed.
        fix: what the user should do about it.
    """

    def __init__(self, what: str, seen: str | None = None, fix: str | None = None):
        self.what, self.seen, self.fix = what, seen, fix
        parts = [what]
        if seen:
            parts.append(f"seen: {seen}")
        if fix:
            parts.append(f"fix: {fix}")
        super().__init__("\n  ".join(parts))


class DataError(NfdsegError):
    """Bad or missing data: images, masks, splits, class lists."""


class ConfigError(NfdsegError):
    """A config file or option that cannot be used."""


class ArtifactError(NfdsegError):
    """A checkpoint, ONNX file or engine that is missing, corrupt or does not match its manifest."""


class InputError(NfdsegError):
    """An image handed to the runtime that it cannot segment."""


class BusyError(NfdsegError):
    """The serving queue is full; the caller should retry later."""


class MissingDependencyError(NfdsegError):
    """An optional library (TensorRT, CUDA bindings, Gradio) is not installed."""
