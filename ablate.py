"""Neuron ablation: ``python ablate.py`` trains a grid of neuron variants and compares them.

A thin entry point: the command lives in :func:`lightning_glif.ablation.main` (also installed as
the ``lightning-glif-ablate`` console script). ``python ablate.py --help`` lists every option.
"""

import sys

from lightning_glif.ablation import main

if __name__ == "__main__":
    sys.exit(main())
