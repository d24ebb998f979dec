"""Callbacks: the monitors (gates, firing, synaptic operations and energy), :class:`NonFiniteGuard`
(stops at the first NaN/Inf loss or gradient) and :class:`RunState` (RNG states and the model's
description in every checkpoint, and the check that a checkpoint fits the model).

conf/default.yaml lists the monitors and the guard; the CLI adds :class:`RunState` to every run.
``notebooks/inspect_run.ipynb`` plots what the monitors log.
"""

from lightning_glif.callbacks.finite import NonFiniteGuard, NonFiniteLossError
from lightning_glif.callbacks.firing import FiringRateMonitor
from lightning_glif.callbacks.gates import GateMonitor
from lightning_glif.callbacks.run_state import RunState
from lightning_glif.callbacks.synops import SynapticOpsMonitor

__all__ = [
    "FiringRateMonitor",
    "GateMonitor",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "RunState",
    "SynapticOpsMonitor",
]
