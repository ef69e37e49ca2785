"""``python -m specroute`` runs the command line (the form ``torchrun ... -m specroute run SPEC`` needs)."""

from specroute.cli import main

if __name__ == "__main__":
    main()
