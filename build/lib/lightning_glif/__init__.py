"""lightning-glif: a PyTorch Lightning research template for spiking neural networks built
around GLIF, the Gated Leaky Integrate-and-Fire neuron (Yao et al., NeurIPS 2022)."""

__version__ = "0.1.0"
