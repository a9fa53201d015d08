"""Where each layer's package lives in a checkout: the one table of folders.

setup.py hands it to setuptools (installed, every folder is a subpackage of `nfdseg`; `pip install -e .` maps the
same names to the checkout's folders), and benchmarks/gpu_suite.py reads it to import a checkout that is not
installed. Nothing else spells a folder: everything else asks Python's import system where a package is. A
subpackage lives in its parent's folder (`nfdseg.serve.backends` in `serve/backends/`). See docs/architecture.md.

The stages of the pipeline (distill, export, serve, demo) and the application sit at the root, one folder each; the
layers under them that are no stage (data, models) live inside nfdseg/, where their names cannot be taken for a
dataset folder or a folder of weights (mmsegmentation's docs, for one, tell users to link their datasets to
`data/` at the root: here that is nobody's package, and .gitignore leaves it out).
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIRS: dict[str, str] = {
    "nfdseg": "nfdseg",  # contract
    "nfdseg.data": "nfdseg/data",
    "nfdseg.models": "nfdseg/models",
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
            continue  # the contract is nfdseg's own modules; the layers in its folder (data, models) have rows of their own
        for init in sorted(base.rglob("__init__.py")):
            rel = init.parent.relative_to(base).parts
            if rel:
                out.append(".".join((name, *rel)))
    return out
