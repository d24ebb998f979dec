"""The one place that touches Tonic beyond its documented API: datasets that never download.

Checked against Tonic 1.7.0, which downloads whenever its private ``_check_exists`` fails
(archive absent, or fewer files than the full set) and has no switch against it. :func:`offline`
returns a subclass whose ``_check_exists`` trusts the caller, which checked for the extracted
files; downloads go through Tonic's own class. Re-check on a Tonic upgrade: if ``_check_exists``
is renamed, Tonic downloads again. Tonic (GPL-3.0) is imported only here.
"""

from __future__ import annotations

from functools import cache
from typing import Any

try:
    import tonic
except ModuleNotFoundError as err:  # pragma: no cover - Tonic is in requirements.txt
    raise ModuleNotFoundError(
        "the event datasets read their recordings with Tonic, which is not installed: "
        "pip install 'tonic>=1.7,<1.8'",
        name="tonic",
    ) from err

__all__ = ["offline", "tonic"]  # tonic: the event modules import it from here


class NeverDownload:
    """Mixin for a Tonic dataset class: the files are there (the caller checked)."""

    tonic_class: type  # the Tonic class this one extends (set by offline())

    def _check_exists(self) -> bool:  # Tonic's private check (see the module docstring)
        return True

    def download(self) -> None:
        raise RuntimeError("lightning-glif downloads only with download=True.")

    def __reduce__(self) -> tuple[Any, ...]:
        # offline() builds the class at run time, so pickle (the dataset sent to spawned
        # DataLoader workers) cannot import it by name: it is rebuilt from the Tonic class.
        return restore, (self.tonic_class, self.__dict__)


@cache
def offline(tonic_class: type) -> type:
    """``tonic_class`` that never downloads; it keeps Tonic's class name, which Tonic uses as the
    dataset's folder (``<save_to>/<class name>``). One class per Tonic class."""
    namespace = {"tonic_class": tonic_class, "__module__": __name__}
    return type(tonic_class.__name__, (NeverDownload, tonic_class), namespace)


def restore(tonic_class: type, state: dict[str, Any]) -> Any:
    """The unpickled copy of an :func:`offline` dataset: its attributes, without a new scan."""
    cls = offline(tonic_class)
    dataset = cls.__new__(cls)
    dataset.__dict__.update(state)
    return dataset
