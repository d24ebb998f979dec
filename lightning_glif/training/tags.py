"""Every metric and TensorBoard tag name of the project, built in one place.

The module, the monitors, the sweeps and the notebook build their names here, so that a tag is
renamed once. Layers are keyed by module name (``backbone.features.0.2``: dots, never slashes),
so a tag splits on ``/`` unambiguously.

=========================================  =================================================
tag                                        written by
=========================================  =================================================
``<stage>/<name>``                         ``SpikingClassifier``:
                                           ``train/loss``, ``val/acc``, ``val/acc_best``, ...
``lr-<optimizer>/<group>``                 Lightning's ``LearningRateMonitor``
``gates/<layer>/<gate>[_<stat>]``          :class:`~lightning_glif.callbacks.GateMonitor`
``membrane/<layer>/<name>[_<stat>][/t<k>]``  the same, per time step ``k`` where it has one
``gates/evolution``, ``gates/distributions``  the same (images)
``spikes/<stage>[/<layer>]/<stat>``        :class:`~lightning_glif.callbacks.FiringRateMonitor`
``synops/<stage>[/<layer>]/<ac|mac>``      :class:`~lightning_glif.callbacks.SynapticOpsMonitor`
``energy/<stage>/uJ``                      the same
=========================================  =================================================
"""

from __future__ import annotations

GATE_EVOLUTION = "gates/evolution"
GATE_DISTRIBUTIONS = "gates/distributions"


def metric(stage: str, name: str) -> str:
    """``<stage>/<name>``: a metric the LightningModule logs, e.g. ``metric("val", "acc")``."""
    return f"{stage}/{name}"


def best(stage: str, name: str) -> str:
    """``<stage>/<name>_best``: the best value of a metric so far in the run (``val/acc_best``)."""
    return metric(stage, f"{name}_best")


def observable(
    group: str, layer: str, name: str, stat: str | None = None, step: int | None = None
) -> str:
    """``<group>/<layer>/<name>[_<stat>][/t<step>]``: a neuron observable (``group`` is
    ``"gates"`` or ``"membrane"``), as a histogram (no ``stat``) or a statistic over channels
    (``"mean"``, ``"std"``); ``step`` for the quantities with one value per time step."""
    tag = f"{group}/{layer}/{name}" + (f"_{stat}" if stat else "")
    return tag if step is None else f"{tag}/t{step}"


def firing(stage: str, stat: str = "rate", layer: str | None = None) -> str:
    """``spikes/<stage>[/<layer>]/<stat>``: ``rate``, ``channel_rate``, ``dead``, ``saturated``;
    without ``layer`` the rate over all spiking layers."""
    return f"spikes/{stage}/{layer}/{stat}" if layer else f"spikes/{stage}/{stat}"


def synops(stage: str, kind: str, layer: str | None = None) -> str:
    """``synops/<stage>[/<layer>]/<kind>``: ``kind`` ``"ac"`` or ``"mac"`` per sample; without
    ``layer`` the total."""
    return f"synops/{stage}/{layer}/{kind}" if layer else f"synops/{stage}/{kind}"


def energy(stage: str) -> str:
    """``energy/<stage>/uJ``: the estimated energy per sample in microjoules."""
    return f"energy/{stage}/uJ"


def layers(tags, group: str) -> list[str]:
    """The layers (in first-seen order) that have tags of ``group`` (``"gates"``,
    ``"membrane"``) or of a stage's firing rates (``"spikes/<stage>"``) among ``tags``."""
    prefix = group.rstrip("/") + "/"
    depth = prefix.count("/")
    found = [t.split("/")[depth] for t in tags if t.startswith(prefix) and t.count("/") > depth]
    return list(dict.fromkeys(found))
