"""nfdseg: Normalized Feature Distillation for semantic segmentation, from training to a served engine.

The top-level package holds the artifact contract that every stage shares (manifests,
preprocessing, metrics, errors). It imports numpy-free stdlib only, so a deployed runtime needs no torch.
"""

import os as _os

__version__ = "0.1.0"

# Installed, the stages are subpackages (nfdseg/serve, ...). In a source checkout they are the folders
# beside this one (serve/, distill/, ...), and a `python` started in the checkout finds this folder
# before the installed package: let the stage folders resolve from here too.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "pyproject.toml")) and _os.path.isdir(_os.path.join(_root, "serve")):
    __path__.append(_root)  # type: ignore[name-defined]  # noqa: F821
