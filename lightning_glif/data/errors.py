"""The two ways data can be wrong on disk: missing, or unreadable. Both name the path."""

from __future__ import annotations

from pathlib import Path


class DatasetNotFoundError(FileNotFoundError):
    """``dataset`` (display name) is not in ``folder``: names what is ``missing`` there (one
    entry per line), the ``layout`` expected, the ``download`` flag and the ``manual`` steps."""

    def __init__(
        self, dataset: str, folder: Path, missing: list[str], layout: str, manual: str
    ) -> None:
        self.folder = Path(folder)
        self.missing = list(missing)
        lines = [
            f"{dataset} was not found in {self.folder}. Looked for:",
            *(f"  - {m}" for m in self.missing),
            f"Expected layout under {self.folder}:",
            *(f"  {line}" for line in layout.strip("\n").splitlines()),
            "To get it, either let the DataModule download it: set `download: true` under the "
            "data's init_args in your config (on the command line: --data.init_args.download "
            "true), or do it by hand:",
            *(f"  {line}" for line in manual.strip("\n").splitlines()),
            "Or point `data_dir` (--data.init_args.data_dir) at the folder that holds "
            f"{self.folder.name}/.",
        ]
        super().__init__("\n".join(lines))


class CorruptFileError(ValueError):
    """A data or cache file ``path`` exists but cannot be read: ``reason`` says why, ``fix`` how
    to get a good file (by default: delete it and get it again)."""

    def __init__(self, path: str | Path, reason: str, fix: str | None = None) -> None:
        self.path = Path(path)
        fix = fix or (
            "The file is truncated or corrupt: delete it and get it again (download it, or "
            "re-extract its archive)."
        )
        super().__init__(f"cannot read {self.path}: {reason}. {fix}")
