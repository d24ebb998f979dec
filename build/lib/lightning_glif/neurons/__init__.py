"""Spiking neurons: GLIF and the LIF-family baselines, with their surrogate gradients.

``from lightning_glif.neurons import GLIF, GLIFf, LIF, PLIF``; each is built as
``Neuron(num_features, time_steps, **options)`` and maps ``[T, B, C, ...]`` to spikes.
A new neuron derives from :class:`SpikingNeuron` (the contract: its own ``forward``), or from
:class:`MembraneNeuron` when the membrane recurrence of :mod:`.functional` describes it (then it
only defines ``coefficients()``); :meth:`SpikingNeuron.observables` is what the monitors log.
"""

from .base import MembraneNeuron, Observable, SpikingNeuron
from .functional import GLIFValues, MembraneCoefficients
from .glif import GLIF, GLIFf
from .lif import LIF, PLIF
from .surrogate import ATan, Rectangular, Sigmoid, Surrogate, Triangle

__all__ = [
    "GLIF",
    "GLIFf",
    "LIF",
    "PLIF",
    "SpikingNeuron",
    "MembraneNeuron",
    "Observable",
    "GLIFValues",
    "MembraneCoefficients",
    "Surrogate",
    "Rectangular",
    "ATan",
    "Sigmoid",
    "Triangle",
]
