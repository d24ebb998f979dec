"""The command line (``train.py``, ``lightning-glif``): the LightningCLI (:mod:`.main`), its config
rules (:mod:`.config`), checkpoint IO (:mod:`.checkpoint_io`), the run directory's lock."""

from .main import cli_main, main

__all__ = ["cli_main", "main"]
