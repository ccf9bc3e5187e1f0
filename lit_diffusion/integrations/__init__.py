"""Layer 6, integrations: the diffusers scheduler, the export, ``LitDiffusionPipeline``
(docs/architecture.md)."""
