"""Layer 7, entry points: ``train.py`` (:mod:`.train`), ``sample.py`` (:mod:`.sample`), the
Accelerate launcher (:mod:`.accelerate_train`), the demo (:mod:`.demo`) (docs/architecture.md).

``lit_diffusion.cli`` also keeps the names of ``train.py``'s command line, as before the layout."""

_TRAIN_NAMES = (
    "LOGGERS", "DiffusionCLI", "RunConfig", "check_config_files", "check_resume", "embedded_defaults", "main",
    "make_logger", "short_help", "wandb_mode",
)


def __getattr__(name):
    """``train.py``'s names, imported on first use (``train.py --help`` does not import Lightning)."""
    if name in _TRAIN_NAMES:
        import importlib

        return getattr(importlib.import_module(".train", __name__), name)
    raise AttributeError(f"module 'lit_diffusion.cli' has no attribute {name!r}")
