"""Layer 7, entry points: ``train.py`` (:mod:`.train`), ``sample.py`` (:mod:`.sample`), the
Accelerate launcher (:mod:`.accelerate_train`), the demo (:mod:`.demo`) (docs/architecture.md).

``lit_diffusion.cli`` also keeps the names of ``train.py``'s command line, as before the layout."""

from .train import (  # noqa: F401
    LOGGERS, DiffusionCLI, RunConfig, check_config_files, check_resume, embedded_defaults, main, make_logger,
    short_help, wandb_mode,
)
