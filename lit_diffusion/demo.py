"""Launcher: ``python -m lit_diffusion.demo`` runs :func:`lit_diffusion.cli.demo.main`; the code lives there."""

if __name__ == "__main__":
    import sys

    from lit_diffusion.cli.demo import main

    rc = main(sys.argv[1:])
    sys.exit(rc if isinstance(rc, int) else 0)
