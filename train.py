"""Train, validate, test or predict with a spiking classifier: ``python train.py fit``.

A thin entry point: the CLI lives in :mod:`lightning_glif.cli` (also installed as the
``lightning-glif`` console script). ``python train.py fit --help`` lists every option.
"""

from lightning_glif.cli.main import main

if __name__ == "__main__":
    main()
