"""Checkpoints written atomically beside themselves, and one clear error for an unreadable one.

Lightning's ``TorchCheckpointIO`` writes its temporary file in ``$TMPDIR`` and moves it: across
filesystems (a tmpfs ``/tmp``) the move is a copy over ``last.ckpt``, which a kill leaves
truncated. :class:`AtomicCheckpointIO` writes beside the checkpoint and renames
(:mod:`lightning_glif.io`); a full disk is one :class:`DiskFullError` naming the filesystem.

A file that is not a checkpoint (empty, truncated, text, another pickle) or whose bytes changed
(a zip member's CRC-32: a bit flip on disk or in a copy) is one :class:`CorruptCheckpointError`
naming the file, what is wrong and, in a run directory, the newest intact checkpoint of the run.
"""

from __future__ import annotations

import codecs
import errno
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import CheckpointIO, TorchCheckpointIO

from lightning_glif.io import atomic_open, remove_stale_temps

_ZIP_MAGIC = b"PK\x03\x04"


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file that cannot be loaded; the message names the file and the fix."""


class DiskFullError(OSError):
    """A checkpoint save ran out of space (or quota); the message names the filesystem."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are atomic in the checkpoint's directory (local paths;
    remote URLs keep Lightning's own save) and whose loads explain an unreadable file."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options.")
        path = Path(str(path).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent)  # what a save killed earlier left
        try:
            with atomic_open(path) as f:
                torch.save(checkpoint, f)
        except (OSError, RuntimeError) as error:
            # torch.save reports a failed write as "unexpected pos ..." with the OSError inside.
            if not _out_of_space(error):
                raise
            raise DiskFullError(
                errno.ENOSPC,
                f"no space left on the filesystem mounted at {_mount_point(path.parent)} while "
                f"saving {path}: free space there or write the run elsewhere "
                f"(--trainer.default_root_dir); {path.name} is as it was before this save",
            ) from error

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None):
        load = super().load_checkpoint
        if not os.path.exists(path):
            return load(path, map_location, weights_only)  # its own error
        return _load_checked(Path(path), lambda p: load(p, map_location, weights_only))


def _out_of_space(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while path.parent != path and path.parent.stat().st_dev == path.stat().st_dev:
        path = path.parent
    return path


def with_atomic_checkpoint_io(plugins: Any) -> list:
    """The trainer's ``plugins`` with :class:`AtomicCheckpointIO` added, unless one of them is
    already a ``CheckpointIO`` (the user's choice wins)."""
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
    if any(isinstance(p, CheckpointIO) for p in plugins):
        return plugins
    return [*plugins, AtomicCheckpointIO()]


def check_checkpoint_file(path: str | os.PathLike, weights_only: bool = True) -> dict[str, Any]:
    """Load ``path`` on the CPU (tensors memory-mapped) and return it, or raise
    :class:`CorruptCheckpointError` (``FileNotFoundError``: a missing file). Every member's CRC-32
    is checked first: one more pass over the file's bytes, once per file and process."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist.")
    return _load_checked(path, lambda p: _torch_load(p, weights_only))


def _torch_load(path: Path, weights_only: bool) -> Any:
    with open(path, "rb") as f:
        zipped = f.read(4) == _ZIP_MAGIC
    # mmap: only the pickle is read, not the tensors; only the zip format can be mapped.
    return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=zipped)


def _load_checked(path: Path, load: Callable[[Path], Any]) -> dict[str, Any]:
    problem, cause = _static_problem(path), None
    if problem is None:
        try:
            checkpoint = load(path)
        except Exception as err:  # torch.load's: EOFError, RuntimeError, UnpicklingError, ...
            problem, cause = _load_problem(err), err
        else:
            problem = _content_problem(checkpoint)
            if problem is None:
                return checkpoint
    raise CorruptCheckpointError(f"checkpoint {path} {problem}.{_alternative(path)}") from cause


_INTACT: set[tuple[str, int, int, int]] = set()  # (path, inode, size, mtime) whose CRCs matched


def _static_problem(path: Path) -> str | None:
    """What is wrong with the bytes of ``path``, if it shows without unpickling."""
    if path.is_dir():
        return "is a directory, not a file"
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes): a save that was interrupted, or a file created by hand"
    with open(path, "rb") as f:
        head = f.read(256)
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return (
                f"is truncated ({size} bytes, the zip archive that torch.save writes has no "
                "end): a save that was interrupted, or a copy cut short"
            )
        stat = path.stat()
        key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if key not in _INTACT:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()  # reads every member, compares its CRC-32
            if bad is not None:
                return (
                    f"is damaged: the bytes of its member {bad!r} no longer match the checksum "
                    "written with them (a bit flip on the disk or in a copy)"
                )
            _INTACT.add(key)
        return None
    if _is_text(head):
        start = head.decode("utf-8", errors="replace").split("\n", 1)[0][:60]
        return f"is a text file, not a checkpoint (it starts with {start!r})"
    return None  # maybe torch.save's legacy (non-zip) format: torch.load decides


def _is_text(head: bytes) -> bool:
    try:  # incremental: a multi-byte character cut at the end of ``head`` is no error
        text = codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\n\r\t" for c in text)


def _load_problem(err: Exception) -> str:
    # The weights-only unpickler's reason, without its advice to load with weights_only=False.
    why = str(err).split("WeightsUnpickler error:")[-1].split("Check the doc")[0]
    why = " ".join(why.split()).split(" Please use")[0][:300]
    if "Unsupported global" in why:
        return (
            f"holds Python objects that weights-only loading refuses ({why}): it was not written "
            "by this project's training"
        )
    return f"is not a checkpoint: torch.load cannot unpickle it ({type(err).__name__}: {why})"


def _content_problem(checkpoint: Any) -> str | None:
    if not isinstance(checkpoint, dict):
        return f"holds a {type(checkpoint).__name__}, not a Lightning checkpoint (a dict)"
    if "state_dict" not in checkpoint:
        keys = ", ".join(map(repr, list(checkpoint)[:6])) + (", ..." if len(checkpoint) > 6 else "")
        return (
            f"is not a Lightning checkpoint: it has no 'state_dict' (its keys: {keys or 'none'}); "
            "a bare model.state_dict() file loads with model.load_state_dict(torch.load(...))"
        )
    return None


def _alternative(bad: Path) -> str:
    """The newest intact checkpoint of the run ``bad`` belongs to (a ``checkpoints/`` folder
    beside a ``config.yaml``) to pass instead; outside a run, none (its neighbours may be
    anything's)."""
    if bad.parent.name != "checkpoints" or not (bad.parent.parent / "config.yaml").is_file():
        return ""
    others = [p for p in bad.parent.glob("*.ckpt") if p.is_file() and p.name != bad.name]
    for other in sorted(others, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            checkpoint = None if _static_problem(other) else _torch_load(other, True)
        except Exception:  # noqa: BLE001 - any unreadable checkpoint is skipped
            continue
        if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
            where = f"epoch {checkpoint.get('epoch')}, global step {checkpoint.get('global_step')}"
            return (
                f" The newest intact checkpoint of the same run is {other} ({where}): pass "
                f"--ckpt_path {other} instead."
            )
    none = " No other checkpoint of this run is intact: train again without --ckpt_path."
    return none if others else ""
