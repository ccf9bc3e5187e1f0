"""Layer 3, evaluation: metrics, the offline MNIST feature network, ``python -m
lit_diffusion.evaluation.evaluate`` (docs/architecture.md)."""
