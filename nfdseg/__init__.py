"""nfdseg: Normalized Feature Distillation for semantic segmentation, from training to a served engine.

This top-level package is the artifact contract every stage shares (manifests, preprocessing, metrics,
errors, config loading); it imports the standard library, numpy, Pillow and PyYAML only. The stages are its
subpackages, kept in the top-level folders of the repository: nfdseg.distill (distill/), nfdseg.export
(export/), nfdseg.serve (serve/), nfdseg.demo (demo/) and the application nfdseg.app (app/). The layers and
what each may import: docs/architecture.md.
"""

__version__ = "0.1.0"  # the one place the version is written: pyproject.toml reads it from here
