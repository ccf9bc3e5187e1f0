"""Layer 4, runtime: atomic checkpoint files and safe loading, the run lock, signal and non-finite
guards, the picture writer (docs/architecture.md)."""
