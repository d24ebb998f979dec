"""Spiking neurons, ``Neuron(num_features, time_steps, **options)``, mapping ``[T, B, C, ...]``
to spikes: GLIF, the LIF-family baselines, their surrogate gradients, and the contract a new
neuron meets (:class:`SpikingNeuron`; :class:`MembraneNeuron` when the recurrence of
:mod:`.functional` describes it: then it only defines ``coefficients()``)."""

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
