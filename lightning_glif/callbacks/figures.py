"""Matplotlib figures of the neurons' values per layer, off-screen (no pyplot state).

Layers are coloured by depth, dark to light. Cheap enough to draw every epoch: no layout engine,
three ticks per axis (tick labels are most of the drawing time).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

MAX_LEGEND = 8  # more layers than this: a depth colour bar instead of a legend


def _layer_colors(n: int) -> list:
    cmap = colormaps["viridis"]
    return [cmap(i / max(1, n - 1) * 0.9) for i in range(n)]


def _short_names(layers: Sequence[str]) -> list[str]:
    """Names without their shared prefix but its last part (``backbone.features.0.2`` ->
    ``features.0.2``)."""
    if len(layers) < 2:
        return list(layers)
    parts = [name.split(".") for name in layers]
    common = 0
    while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
        common += 1
    return [".".join(p[max(0, common - 1) :]) for p in parts]


def _panels(n: int) -> tuple[Figure, Sequence]:
    figure = Figure(figsize=(2.8 * n + 0.8, 2.4), dpi=72)
    figure.subplots_adjust(left=0.07, right=0.9, bottom=0.2, top=0.88, wspace=0.3)
    axes = figure.subplots(1, n, squeeze=False)[0]
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(3))
        ax.yaxis.set_major_locator(MaxNLocator(3))
        ax.tick_params(labelsize=7)
    return figure, axes


def _finish(figure: Figure, axes: Sequence, layers: Sequence[str]) -> Figure:
    if len(layers) <= MAX_LEGEND:
        # A handle per layer: the last panel may lack a layer's line.
        handles = [Line2D([], [], color=c) for c in _layer_colors(len(layers))]
        axes[-1].legend(
            handles, _short_names(layers), fontsize=7, loc="upper left", bbox_to_anchor=(1, 1)
        )
    else:
        mappable = ScalarMappable(Normalize(0, len(layers) - 1), colormaps["viridis"])
        figure.colorbar(mappable, ax=list(axes), label="layer (depth)", fraction=0.03)
    return figure


def quantities(values: Mapping[str, Mapping[str, object]]) -> list[str]:
    """The quantity names of ``{layer: {quantity: ...}}``, in first-seen order (GLIF: alpha,
    beta, gamma)."""
    return list(dict.fromkeys(q for per_layer in values.values() for q in per_layer))


def evolution_figure(
    epochs: Sequence[int],
    means: Mapping[str, Mapping[str, Sequence[float]]],
    stds: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
):
    """One panel per gate: each layer's mean against epoch, within a band of one across-channel
    standard deviation where ``stds`` has one. Layers without gates are left out.

    Args:
        epochs: the x values, ``[E]``.
        means: ``{layer: {gate: [E] means}}``.
        stds: ``{layer: {gate: [E] standard deviations}}`` (same keys), or ``None``.
    """
    means = {layer: m for layer, m in means.items() if m}
    stds = stds or {}
    gates = quantities(means)
    layers = list(means)
    figure, axes = _panels(len(gates))
    colors = _layer_colors(len(layers))
    for ax, gate in zip(axes, gates, strict=True):
        for layer, color in zip(layers, colors, strict=True):
            if gate not in means[layer]:
                continue
            mean = np.asarray(means[layer][gate])
            ax.plot(epochs[: len(mean)], mean, color=color, marker=".")
            std = stds.get(layer, {}).get(gate)
            if std is not None and len(std) == len(mean):
                x = epochs[: len(mean)]
                low, high = mean - np.asarray(std), mean + np.asarray(std)
                ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
        # Zoom on the data, but never below a 0.02 span (gates at the paper's lr / 10 move little).
        lo, hi = ax.get_ylim()
        mid, half = (lo + hi) / 2, max(hi - lo, 0.02) / 2
        ax.set(ylim=(mid - half, mid + half))
        title = f"{gate}: mean ± std over channels" if stds else f"mean {gate} per epoch"
        ax.set_title(title, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(3, integer=True))
    return _finish(figure, axes, layers)


def distribution_figure(values: Mapping[str, Mapping[str, np.ndarray]], bins: int = 30):
    """One panel per quantity (first-seen order): its distribution over channels, one outline
    per layer.

    Args:
        values: ``{layer: {quantity: array}}`` (any shape; all elements are counted).
        bins: bins per panel, over the range of the panel's values.
    """
    values = {layer: v for layer, v in values.items() if v}
    panels = quantities(values)
    layers = list(values)
    figure, axes = _panels(len(panels))
    colors = _layer_colors(len(layers))
    for ax, quantity in zip(axes, panels, strict=True):
        shown = [np.ravel(v[quantity]) for v in values.values() if quantity in v]
        edges = np.histogram_bin_edges(np.concatenate(shown), bins)
        for layer, color in zip(layers, colors, strict=True):
            if quantity in values[layer]:
                counts, _ = np.histogram(values[layer][quantity], bins=edges)
                ax.stairs(counts / max(1, counts.sum()), edges, color=color)
        ax.set_title(f"{quantity}: share of channels", fontsize=9)
        ax.set_yticks([])  # shapes matter here, not the heights; ticks cost most of the drawing
    return _finish(figure, axes, layers)
