"""nfdseg: Normalized Feature Distillation for semantic segmentation, from training to a served engine.

The top-level package holds the artifact contract that every stage shares (manifests,
preprocessing, metrics, errors). It imports numpy only, so a deployed runtime needs no torch.
"""

__version__ = "0.1.0"
