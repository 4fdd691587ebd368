"""The report's picture: throughput against size per kernel, the measured ceiling dashed."""

from fastcustom.bench.cases import IMPLEMENTATIONS, KERNELS, ROOFS


def _order(key):
    """(implementation, device) in report order: CPU first, then IMPLEMENTATIONS order."""
    implementation, device = key
    rank = IMPLEMENTATIONS.index(implementation) if implementation in IMPLEMENTATIONS else 99
    return (device != "cpu", device, rank, implementation)


def _label(key):
    implementation, device = key
    return implementation if device == "cpu" else f"{implementation} ({device})"


# A style per implementation, distinct across all of them (ten colors repeated before).
_MARKERS = "osD^vPX"


def _styles():
    """implementation -> (color, marker): tab20's 20 colors, seven markers."""
    from matplotlib import colormaps

    palette = colormaps["tab20"]
    return {name: (palette(i % 20), _MARKERS[i % len(_MARKERS)])
            for i, name in enumerate(IMPLEMENTATIONS)}


def _panel(ax, results, kernel, styles, lines, ceilings):
    """One kernel: a line per (implementation, device), the device's ceiling as a rule."""
    cases = [c for c in results.cases if c.kernel == kernel]
    unit = cases[0].unit
    for key in sorted({(c.implementation, c.device) for c in cases}, key=_order):
        points = sorted((c for c in cases if (c.implementation, c.device) == key),
                        key=lambda c: c.work)
        color, marker = styles.get(key[0], (None, "o"))
        (lines[key],) = ax.plot([c.work for c in points],
                                [c.throughput / 1e9 for c in points], marker=marker,
                                color=color, linestyle="-" if key[1] == "cpu" else ":")
    for device in sorted({c.device for c in cases}):
        roof = results.ceiling(unit, device)
        if roof is not None:
            ceilings[f"ceiling: {ROOFS[unit][0]} ({device})"] = ax.axhline(
                roof.throughput / 1e9, color="black", linewidth=1,
                linestyle="--" if device == "cpu" else "-.")
    ax.set(xscale="log", yscale="log", title=kernel, ylabel=ROOFS[unit][1],
           xlabel="bytes per call" if unit == "B" else "FLOP per call")
    ax.grid(True, which="both", alpha=0.3)


def draw(results, path):
    """Write a PNG to `path`: one log-log panel per kernel, one line per implementation."""
    from matplotlib.figure import Figure   # no pyplot: no GUI backend, no global state

    kernels = [k for k in KERNELS if any(c.kernel == k for c in results.cases)]
    columns = min(3, max(1, len(kernels)))
    rows = max(1, -(-len(kernels) // columns))
    figure = Figure(figsize=(5.5 * columns, 4.2 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    styles = _styles()
    lines, ceilings = {}, {}
    for ax, kernel in zip(axes, kernels):
        _panel(ax, results, kernel, styles, lines, ceilings)
    for ax in axes[len(kernels):]:
        ax.axis("off")
    legend = {_label(key): lines[key] for key in sorted(lines, key=_order)} | ceilings
    if len(axes) > len(kernels):   # a spare panel holds the legend
        axes[len(kernels)].legend(legend.values(), legend.keys(), loc="center")
    else:
        figure.legend(legend.values(), legend.keys(), loc="outside lower center",
                      ncol=min(4, len(legend)), fontsize="small")
    figure.savefig(path, dpi=110)
    return path
