"""Neuron ablations and searches: ``python ablate.py --help`` (docs/sweeps.md).

A thin entry point: the command is :func:`lightning_glif.sweep.cli.main`, also installed as the
``lightning-glif-ablate`` console script.
"""

import sys

from lightning_glif.sweep.cli import main

if __name__ == "__main__":
    sys.exit(main())
