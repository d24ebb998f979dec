"""Observability callbacks: GLIF's gates, the layers' firing, synaptic operations and energy;
and :class:`NonFiniteGuard`, which stops training at the first non-finite loss.

Add them to ``trainer.callbacks`` (conf/default.yaml has all four); they write to the run's
TensorBoard logger. ``notebooks/inspect_run.ipynb`` plots what they logged.
"""

from lightning_glif.callbacks.finite import NonFiniteGuard, NonFiniteLossError
from lightning_glif.callbacks.firing import FiringRateMonitor
from lightning_glif.callbacks.gates import GateMonitor
from lightning_glif.callbacks.synops import SynapticOpsMonitor

__all__ = [
    "FiringRateMonitor",
    "GateMonitor",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "SynapticOpsMonitor",
]
