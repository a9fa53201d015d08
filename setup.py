"""Only the folder layout lives here (everything else is in pyproject.toml): nfdseg/layout.py is the one table of
which folder holds which package, so setuptools, the import check and the GPU suite cannot disagree."""

import importlib.util
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("nfdseg_layout", ROOT / "nfdseg" / "layout.py")
layout = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(layout)

setup(package_dir=layout.PACKAGE_DIRS, packages=layout.packages(ROOT))
