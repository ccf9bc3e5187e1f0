"""Layer 3, evaluation: metrics, the offline MNIST feature network, ``python -m
lit_diffusion.evaluate`` (docs/architecture.md)."""
