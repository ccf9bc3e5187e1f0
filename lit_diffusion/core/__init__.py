"""Layer 1, pure maths on tensors: random draws, the forward SDEs, prediction types, the field
wrapper, time grids, analytic targets (docs/architecture.md)."""
