"""The command line (``train.py``, the ``lightning-glif`` script): the LightningCLI and its config
rules (:mod:`.main`, :mod:`.config`), checkpoint writing and reading (:mod:`.checkpoint_io`) and
the run directory's lock (:mod:`.locks`)."""

from .main import cli_main, main

__all__ = ["cli_main", "main"]
