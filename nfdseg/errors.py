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
        from .redact import redact  # a stream URL's password never reaches a message (nfdseg/redact.py)

        what, seen, fix = redact(what), redact(seen), redact(fix)
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


class EngineNotRunnableHere(ArtifactError):
    """A sound engine that this machine cannot run: another TensorRT release or flavor, another GPU
    architecture, no GPU, or TensorRT-RTX's own validity check said INVALID. Parity lists such an engine as
    "not run here" instead of failing it; anything else wrong with an engine stays a plain ArtifactError."""


class OutputError(NfdsegError):
    """An output that cannot be written: a folder under a file, no permission, a full disk, a file-size limit."""


# errno values that mean "this output cannot be written here" (output_error); any other OSError is not ours to word.
_WRITE_ERRNOS = {"ENOSPC": "the disk is full", "EDQUOT": "the disk quota is used up",
                 "EFBIG": "a file grew past the file-size limit (ulimit -f) or the file system's maximum",
                 "EACCES": "no permission to write there", "EPERM": "no permission to write there",
                 "EROFS": "the file system is read-only", "ENOTDIR": "a part of the path is a file, not a folder",
                 "EEXIST": "a part of the path is a file, not a folder", "ENOENT": "the path cannot be created"}


def output_error(target: object, error: OSError) -> OutputError | None:
    """The OutputError for an OSError raised while writing under `target`, or None when the OSError's errno is
    not a write failure (so the caller re-raises it unchanged)."""
    import errno as errno_mod

    name = errno_mod.errorcode.get(error.errno or -1, "")
    why = _WRITE_ERRNOS.get(name)
    if why is None:
        return None
    return OutputError(f"cannot write the output under {target}: {why}",
                       seen=f"{name}: {error.strerror or error} ({getattr(error, 'filename', None) or target})",
                       fix="pass an --out folder you can write, on a disk with room (df -h; ulimit -f); nothing "
                           "half-written is left under its final name")


class InputError(NfdsegError):
    """An image handed to the runtime that it cannot segment."""


class BusyError(NfdsegError):
    """The serving queue is full; the caller should retry later."""


class MissingDependencyError(NfdsegError):
    """An optional library (TensorRT, CUDA bindings, Gradio) is not installed."""


class BrokenDependencyError(MissingDependencyError):
    """An optional library is installed but fails to import (a missing shared library, a mismatched build):
    never read as "not installed", so nothing falls back past it silently."""


# Which extra of `pip install nfdseg[...]` brings each optional top-level module (docs/architecture.md).
EXTRA_OF_MODULE = {
    "torch": "train", "torchvision": "train", "matplotlib": "train",
    "onnx": "export", "onnxconverter_common": "export", "onnxslim": "export",
    "cuda": "trt", "tritonclient": "trt",
    "gradio": "demo", "gradio_client": "demo",
    "av": "video",
}


# onnxruntime comes from one runtime extra per target (exactly one build: they share the import name).
RUNTIME_INSTALL_HINT = ("pip install 'nfdseg[cpu]' (CPU), 'nfdseg[gpu-cu13]' (NVIDIA GPU, CUDA 13), "
                        "'nfdseg[gpu-cu12]' (CUDA 12) or, on a Jetson, 'nfdseg[jetson]' with NVIDIA's Jetson AI Lab "
                        "index (docs/deploying.md, Install)")


def missing_extra(error: ModuleNotFoundError, command: str = "this command") -> MissingDependencyError | None:
    """The install hint for an optional module that is not installed, or None when it is not one of ours."""
    module = (error.name or "").split(".")[0]
    if module == "onnxruntime":
        return MissingDependencyError(f"`nfdseg {command}` needs onnxruntime, which is not installed",
                                      seen="nfdseg without a runtime extra has no inference engine",
                                      fix=RUNTIME_INSTALL_HINT)
    extra = EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    return MissingDependencyError(f"`nfdseg {command}` needs {module}, which is not installed",
                                  seen=f"the runtime-only install (`pip install nfdseg`) has no {module}",
                                  fix=f"pip install 'nfdseg[{extra}]'  (or 'nfdseg[all]' for every stage)")
