"""Layer 5, training: losses, the LightningModule, EMA, data modules, networks, callbacks, the
registry, the frozen autoencoder, pretrained folders (docs/architecture.md)."""
