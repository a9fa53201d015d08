"""The distill stage: datasets, models, distillation losses and the trainer (needs torch)."""
