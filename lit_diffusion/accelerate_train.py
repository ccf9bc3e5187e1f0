"""Launcher: ``python -m lit_diffusion.accelerate_train`` runs :func:`lit_diffusion.cli.accelerate_train.main`; the code lives there."""

if __name__ == "__main__":
    import sys

    from lit_diffusion.cli.accelerate_train import main

    rc = main(sys.argv[1:])
    sys.exit(rc if isinstance(rc, int) else 0)
