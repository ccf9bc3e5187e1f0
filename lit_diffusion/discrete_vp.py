"""``lit_diffusion.discrete_vp`` lives in :mod:`lit_diffusion.core.discrete_vp` (see docs/architecture.md); this name stays
so that old imports, configs and checkpoints keep working (it is the same module object)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("lit_diffusion.core.discrete_vp")
