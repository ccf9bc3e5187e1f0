"""Layer 7, entry points: ``train.py`` (:mod:`.train`, with :mod:`.train_setup`, :mod:`.config_files`
and :mod:`.train_checks`), ``sample.py`` (:mod:`.sample`), the Accelerate launcher
(:mod:`.accelerate_train`), ``python -m lit_diffusion.evaluate`` (:mod:`.evaluate`), pretrained folders
(:mod:`.pretrained`), fitted grids (:mod:`.grid_fit`), the demo (:mod:`.demo`) (docs/architecture.md)."""
