"""nfdseg stage package."""
