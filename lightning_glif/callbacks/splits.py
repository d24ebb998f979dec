"""The data split of a run, written into its run directory, so two runs can prove they trained and
tested on the same recordings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pytorch_lightning import Callback, LightningModule, Trainer

from lightning_glif.io import write_bytes

FOLDER = "splits"


def digest(sources: list[str]) -> str:
    """SHA-256 of the sources, one per line in order: equal digests, equal splits."""
    return hashlib.sha256("".join(f"{s}\n" for s in sources).encode()).hexdigest()


class SplitFiles(Callback):
    """At setup, for data modules with a ``split_manifest()`` (the Tonic modules), writes
    ``<trainer.log_dir>/splits/<split>.txt`` (one source file per line, relative to the dataset's
    folder, in unshuffled loader order) and ``splits/splits.json`` (per split: the count and the
    SHA-256 of its ``.txt``), on rank 0. Other splits already there are kept, and the new ones
    written beside them as ``splits-<n>/``. The CLI adds it to every run.
    """

    def __init__(self) -> None:
        self.path: Path | None = None  # where the last setup wrote (or found) the split

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        manifest = getattr(trainer.datamodule, "split_manifest", None)
        if manifest is None or not trainer.is_global_zero:
            return
        splits = manifest()
        if not splits:
            return
        summary = {name: {"count": len(s), "sha256": digest(s)} for name, s in splits.items()}
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        folder, n = run_dir / FOLDER, 1
        while (folder / "splits.json").is_file():
            stored = json.loads((folder / "splits.json").read_text())
            if all(stored.get(name) == value for name, value in summary.items()):
                self.path = folder
                return
            n += 1
            folder = run_dir / f"{FOLDER}-{n}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, sources in splits.items():
            write_bytes(folder / f"{name}.txt", "".join(f"{s}\n" for s in sources).encode())
        write_bytes(folder / "splits.json", (json.dumps(summary, indent=2) + "\n").encode())
        self.path = folder
