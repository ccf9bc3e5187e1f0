"""Launcher: ``python -m lit_diffusion.evaluate`` runs :func:`lit_diffusion.cli.evaluate.main`; the code lives there."""

if __name__ == "__main__":
    import sys

    from lit_diffusion.cli.evaluate import main

    rc = main(sys.argv[1:])
    sys.exit(rc if isinstance(rc, int) else 0)
