"""What a command costs before it trains: parsing and building, with one subcommand's parser or
all four.

    python benchmarks/cli_startup.py --rounds 20

``train.py fit ...`` builds only the ``fit`` parser (:class:`lightning_glif.cli.GLIFCLI`); a command
that does not start with its subcommand (``--help``) builds LightningCLI's four. Both ways run
``train.py fit --config conf/experiment/row_digits.yaml --print_config`` (parse every config, check
every value, print the resolved config, exit) in one process, interleaved round by round in a
rotated order (:func:`benchmarks.common.rotated_rounds`). Printed: the median wall time of each and
the paired ratio to the four-parser way (geometric mean of the per-round ratios, 95% Student-t
interval, :func:`lightning_glif.stats.paired_ratio`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning_glif.cli as cli  # noqa: E402
from benchmarks.common import (  # noqa: E402
    machine_note,
    markdown_table,
    paired_ratio_cell,
    rotated_rounds,
)

COMMAND = ["fit", "--config", "conf/experiment/row_digits.yaml", "--print_config"]


def print_config(every_parser: bool) -> float:
    leading = cli._leading_subcommand
    if every_parser:  # as for a command that does not start with its subcommand
        cli._leading_subcommand = lambda args: None
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            cli.cli_main(list(COMMAND))
    finally:
        cli._leading_subcommand = leading
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    args = parser.parse_args(argv)
    sys.argv = [sys.argv[0]]  # LightningCLI reads sys.argv when given no args
    print_config(True)  # warm-up: imports and first-call caches
    ways = {
        "all four subcommand parsers": lambda: print_config(True),
        "the fit parser only (shipped)": lambda: print_config(False),
    }
    times = rotated_rounds(ways, args.rounds)
    base = times["all four subcommand parsers"]
    rows = [[name, f"{statistics.median(t):.3f}", paired_ratio_cell(t, base)]
            for name, t in times.items()]  # fmt: skip
    print(f"# train.py {' '.join(COMMAND)}, {args.rounds} interleaved rounds")
    print(f"# {machine_note(torch.device('cpu'))}")
    print(markdown_table(["parsers built", "median s", "vs all four (geo. mean [95% CI])"], rows))


if __name__ == "__main__":
    main()
