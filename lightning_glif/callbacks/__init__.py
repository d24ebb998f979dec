"""Callbacks: the observability monitors (the neurons' gates, the layers' firing, synaptic
operations and energy), :class:`NonFiniteGuard`, which stops training at the first non-finite
loss or gradient, and :class:`RunState`, which carries the RNG states and the model's description
in every checkpoint and checks that a checkpoint fits the model.

The monitors and the guard go in ``trainer.callbacks`` (conf/default.yaml has them, beside two
stock ``ModelCheckpoint``: the best epoch and ``last.ckpt``); the monitors' scalars go to every
logger of the trainer, their histograms and images to its TensorBoardLogger, and
``notebooks/inspect_run.ipynb`` plots what they logged. The CLI adds :class:`RunState` to every
run.
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
