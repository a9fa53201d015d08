"""Where each layer's package lives in a checkout: the one table of folders.

setup.py hands it to setuptools (installed, every folder is a subpackage of `nfdseg`; `pip install -e .` maps the
same names to the checkout's folders), and benchmarks/gpu_suite.py reads it to import a checkout that is not
installed. Nothing else spells a folder: everything else asks Python's import system where a package is. A
subpackage lives in its parent's folder (`nfdseg.serve.backends` in `serve/backends/`). See docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIRS: dict[str, str] = {
    "nfdseg": "nfdseg",  # contract
    "nfdseg.data": "data",
    "nfdseg.models": "models",
    "nfdseg.serve": "serve",  # runtime
    "nfdseg.distill": "distill",  # training
    "nfdseg.export": "export",
    "nfdseg.demo": "demo",
    "nfdseg.app": "app",  # CLI, pipeline, report
}


def packages(root: str | Path) -> list[str]:
    """Every package of the checkout at `root`: the folders above and their subfolders holding an __init__.py."""
    root = Path(root)
    out = []
    for name, folder in PACKAGE_DIRS.items():
        base = root / folder
        out.append(name)
        if name == "nfdseg":
            continue  # the contract's own folder holds no subpackage; the other layers sit beside it
        for init in sorted(base.rglob("__init__.py")):
            rel = init.parent.relative_to(base).parts
            if rel:
                out.append(".".join((name, *rel)))
    return out
