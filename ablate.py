"""Neuron ablations and searches: ``python ablate.py --help``, docs/sweeps.md."""

from lightning_glif.sweep.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
