"""``lit_diffusion.evaluate`` lives in :mod:`lit_diffusion.evaluation.evaluate` (see docs/architecture.md); this name stays
so that old imports, configs and checkpoints keep working."""

import sys

if __name__ == "__main__":  # python -m lit_diffusion.evaluate / a path given to accelerate launch
    from lit_diffusion.evaluation.evaluate import main

    rc = main(sys.argv[1:])
    sys.exit(rc if isinstance(rc, int) else 0)
else:
    import importlib

    sys.modules[__name__] = importlib.import_module("lit_diffusion.evaluation.evaluate")
