"""Observability callbacks: GLIF's gates, the layers' firing, synaptic operations and energy.

Add them to ``trainer.callbacks`` (conf/default.yaml has all three); they write to the run's
TensorBoard logger. ``notebooks/inspect_run.ipynb`` plots what they logged.
"""

from lightning_glif.callbacks.firing import FiringRateMonitor
from lightning_glif.callbacks.gates import GateMonitor
from lightning_glif.callbacks.synops import SynapticOpsMonitor

__all__ = ["FiringRateMonitor", "GateMonitor", "SynapticOpsMonitor"]
