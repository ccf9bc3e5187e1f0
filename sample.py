#!/usr/bin/env python
"""Draw samples from a checkpoint (Lightning ScoreModule .ckpt or diffusers pipeline folder).

    python sample.py --checkpoint checkpoints/swissroll/last.ckpt --sampler ddram --steps 50 --n 2000 \
        --reference swissroll --out out/swissroll
    python sample.py --checkpoint pipeline_dir/ --sampler exponential_euler --ode --steps 25 --precision bf16
    accelerate launch --num_processes 2 sample.py --checkpoint ... --n 10000 --out out/big

Writes <out>/samples.npz (or .safetensors) and <out>/samples.png.  `python sample.py --help` lists
every option; see docs/sampling.md.
"""

import sys

from lit_diffusion.cli.sample import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
