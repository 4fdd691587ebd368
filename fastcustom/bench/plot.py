"""The report's pictures (matplotlib, no pyplot): `draw_summary` leads with fastcustom's
speed-up over its fastest alternative per task, training steps/s, and every implementation's
share of the roof at the large size; `draw_by_size` shows the speed-ups at each size."""

from fastcustom.bench.cases import FASTCUSTOM, KERNELS, PEERS, RATE_UNITS, ROOFS, SIZES

# One hue per family of implementations; fastcustom's is the loud one.
FAMILY_COLORS = {"fastcustom": "#e8590c", "fastcustom variant": "#ffa94d",
                 "fused": "#f59f00", "notes": "#868e96", "keras": "#1971c2",
                 "keras variant": "#74c0fc", "tf.function": "#66a80f", "xla": "#7048e8",
                 "numpy": "#8d5524", "torch": "#e03131", "jax": "#0c8599", "cuda": "#d6336c",
                 "other": "#495057"}
ROLE_FAMILIES = {"notes": "notes", "keras": "keras", "xla": "xla", "torch": "torch",
                 "jax": "jax", FASTCUSTOM: "fastcustom"}


def family(implementation):
    """The family of an implementation (or training row) name, for its color: by how the
    name starts ("model.fit ... (fastcustom loss, metric)" is a model.fit)."""
    name = implementation.lower()
    rules = (("fastcustom", "fastcustom"), ("accelerated", "fastcustom variant"),
             ("fused", "fused"), ("notes", "notes"), ("eager loop", "notes"),
             ("keras", "keras"), ("model.fit", "keras variant"), ("best xla", "xla"),
             ("xla", "xla"), ("tf.function + xla", "xla"), ("tf.", "tf.function"),
             ("numpy", "numpy"), ("torch", "torch"), ("jax", "jax"), ("cuda", "cuda"))
    return next((fam for prefix, fam in rules if name.startswith(prefix)), "other")


def _color(implementation, role=None):
    if role in ROLE_FAMILIES:
        return FAMILY_COLORS[ROLE_FAMILIES[role]]
    return FAMILY_COLORS[family(implementation)]


def _times_axis(axis):
    """Plain numbers on a log axis: 0.5×, 1×, 2×, 10× (not 10^0)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}×"))
    axis.set_minor_formatter(FuncFormatter(lambda value, _: ""))


def _plain_log_axis(axis):
    """Plain numbers on a log axis: 100, 1,000, 10,000."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 1
                                           else f"{value:g}"))


def _highlight(ax, labels, is_ours):
    """Bold tick labels for fastcustom's bars."""
    for tick, ours in zip(ax.get_yticklabels(), is_ours):
        if ours:
            tick.set_fontweight("bold")


def title(results):
    """Machine, date, load and commit, for a figure's title."""
    cpu = results.machine.get("cpu", {})
    info = results.machine.get("fastcustom", {})
    load = info.get("load_average")
    load_text = (f", load {load['before'][0]:.1f} → {load['after'][0]:.1f}" if load else "")
    commit = (info.get("huber_path", {}).get("commit") or results.commit.get("id") or "")[:10]
    quick = " (QUICK RUN: not a measurement)" if info.get("quick") else ""
    return (f"{cpu.get('brand_raw', 'unknown CPU')} ({cpu.get('count', '?')} cores), "
            f"{(results.datetime or '?')[:16].replace('T', ' ')} UTC{load_text}"
            f"{', commit ' + commit if commit else ''}{quick}")


# --- the summary ------------------------------------------------------------------
def _fastest_alternative(results):
    """(task label, Speedup over the fastest peer, that peer's role) per headline task."""
    from fastcustom.bench.table import fresh_speedup

    bars = []
    for row in sorted((r for r in results.interleaved if r.task in KERNELS and r.size == "large"),
                      key=lambda r: (KERNELS.index(r.task), r.device)):
        if row.speedups:
            role = min(row.speedups, key=lambda r: row.speedups[r]["median"])
            s = row.speedups[role]
            label = row.task + ("" if row.device == "cpu" else f" ({row.device})")
            bars.append((label, s["median"], s["q1"], s["q3"], role))
    for task in results.training_tasks():
        headline = results.training_headline(task)
        found = headline[2] if headline else {}
        if found:
            role = min(found, key=lambda r: found[r].ratio)
            s = found[role]
            bars.append((f"training: {task}", s.ratio, s.low, s.high, role))
    for row in results.fresh:
        for way, data in row.ways.items():
            if data["role"] != FASTCUSTOM:
                continue
            found = {role: fresh_speedup(row, way, role) for role in PEERS}
            found = {role: s for role, s in found.items() if s is not None}
            if found:
                role = min(found, key=lambda r: found[r].ratio)
                s = found[role]
                bars.append((f"{row.task}: {way}", s.ratio, s.low, s.high, role))
    return bars


def _speedup_panel(ax, results):
    bars = _fastest_alternative(results)
    if not bars:
        ax.text(0.5, 0.5, "no interleaved or training rows in this run", ha="center",
                va="center", transform=ax.transAxes)
        ax.axis("off")
        return
    labels = [b[0] for b in bars]
    values = [b[1] for b in bars]
    errors = [[max(0.0, v - (lo if lo is not None else v)) for _, v, lo, _, _ in bars],
              [max(0.0, (hi if hi is not None else v) - v) for _, v, _, hi, _ in bars]]
    colors = [FAMILY_COLORS[ROLE_FAMILIES[b[4]]] for b in bars]
    y = list(range(len(bars)))[::-1]
    # Bars grow from 1x ("as fast"): right where fastcustom is faster, left where slower.
    ax.barh(y, [v - 1.0 for v in values], left=1.0, xerr=errors, color=colors,
            edgecolor="black", linewidth=0.6, capsize=3, error_kw={"elinewidth": 1})
    for yy, (_, value, _, high, role) in zip(y, bars):
        ax.text(max(value, high or value, 1.0) * 1.06, yy, f"{value:.2f}× vs {PEERS[role]}",
                va="center", fontsize=8)
    ax.axvline(1.0, color="black", linewidth=1.2)
    ax.set_yticks(y, labels, fontsize=9)
    ax.set_xscale("log")
    lowest = min(min(values), min(b[2] or b[1] for b in bars), 1.0)
    ax.set_xlim(lowest / 1.5, max(max(values), max(b[3] or b[1] for b in bars)) * 3)
    _times_axis(ax.xaxis)
    ax.set_xlabel("fastcustom's speed-up over its fastest alternative "
                  "(log; 1× = as fast; bars: IQR)")
    ax.set_title("fastcustom against its fastest alternative (kernels at the large size)",
                 fontsize=11)
    ax.grid(True, axis="x", which="both", alpha=0.3)


def _training_panel(ax, results, task="notes' model"):
    rows = sorted(results.training_rows(task), key=lambda r: r.steps_per_second)
    if not rows:
        ax.text(0.5, 0.5, f"training ({task}): not in this run", ha="center", va="center",
                transform=ax.transAxes)
        ax.axis("off")
        return
    values = [r.steps_per_second for r in rows]
    errors = [[v - r.steps_per_second_iqr[0] for v, r in zip(values, rows)],
              [r.steps_per_second_iqr[1] - v for v, r in zip(values, rows)]]
    ours = [r.role == FASTCUSTOM for r in rows]
    ax.barh(range(len(rows)), values, xerr=errors, capsize=3,
            color=[_color(r.implementation, r.role) for r in rows],
            edgecolor=["black" if o else "none" for o in ours],
            linewidth=[1.5 if o else 0 for o in ours])
    ax.set_yticks(range(len(rows)), [r.implementation for r in rows], fontsize=8)
    _highlight(ax, rows, ours)
    ax.set_xscale("log")
    _plain_log_axis(ax.xaxis)
    ax.set_xlabel("training steps per second (log; bars: IQR)")
    ax.set_title(f"Training: {task}", fontsize=11)
    ax.grid(True, axis="x", which="both", alpha=0.3)


def _roof_panel(ax, results, kernel, device="cpu"):
    """Every implementation of `kernel` at the large size: its share of the roof."""
    cases = [c for c in results.cases if c.kernel == kernel and c.size == "large"
             and c.device == device]
    roof = results.roof_for(kernel, device)
    if not cases or roof is None:
        ax.text(0.5, 0.5, f"{kernel}: no large rows or no roof", ha="center", va="center",
                transform=ax.transAxes)
        ax.axis("off")
        return
    best = roof.best_throughput
    cases.sort(key=lambda c: c.throughput)
    shares = [100 * c.throughput / best for c in cases]
    low = [100 * c.work / c.timing.q3 / best if c.timing.q3 else s for c, s in zip(cases, shares)]
    high = [100 * c.work / c.timing.q1 / best if c.timing.q1 else s for c, s in zip(cases, shares)]
    ours = [c.implementation == FASTCUSTOM for c in cases]
    ax.barh(range(len(cases)), shares, xerr=[[s - lo for s, lo in zip(shares, low)],
                                              [hi - s for s, hi in zip(shares, high)]],
            capsize=2, color=[_color(c.implementation) for c in cases],
            edgecolor=["black" if o else "none" for o in ours],
            linewidth=[1.5 if o else 0 for o in ours])
    ax.set_yticks(range(len(cases)), [c.implementation for c in cases], fontsize=8)
    _highlight(ax, cases, ours)
    ax.axvline(100, color="black", linestyle="--", linewidth=1.2)
    roof_name = ROOFS.get(roof.roof, (roof.kernel,))[0]
    ax.set_xlim(0, max(115, max(high) * 1.08))
    ax.set_xlabel(f"% of the {roof_name} roof (dashed: {best / 1e9:.3g} "
                  f"{RATE_UNITS[roof.unit]}); bars: IQR")
    ax.set_title(f"{kernel}, large {cases[0].shape}", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)


def draw_summary(results, path):
    """Write the summary PNG: the answer (speed-up over the fastest alternative per task),
    training steps/s, and each kernel's share of its roof at the large size."""
    from matplotlib.figure import Figure   # no pyplot: no GUI backend, no global state

    kernels = [k for k in KERNELS if any(c.kernel == k and c.size == "large"
                                         and c.device == "cpu" for c in results.cases)]
    rows = 1 + -(-len(kernels) // 3)
    figure = Figure(figsize=(19, 5.5 + 4.6 * (rows - 1)), layout="constrained")
    top, bottom = figure.subfigures(2, 1, height_ratios=[5.5, 4.6 * max(rows - 1, 1)])
    left, right = top.subplots(1, 2, width_ratios=[1.1, 1])
    _speedup_panel(left, results)
    _training_panel(right, results)
    if kernels:
        bottom.suptitle("Every implementation at the large size: its median against the roof's "
                        "fastest round (the headline's interleaved shares hold better on a "
                        "busy machine)", fontsize=11)
        axes = bottom.subplots(rows - 1, 3, squeeze=False).ravel()
        for ax, kernel in zip(axes, kernels):
            _roof_panel(ax, results, kernel)
        for ax in axes[len(kernels):]:
            _legend_panel(ax)
            break
        for ax in axes[len(kernels) + 1:]:
            ax.axis("off")
    figure.suptitle(f"fastcustom benchmarks — {title(results)}", fontsize=13, weight="bold")
    figure.savefig(path, dpi=100)
    return path


def _legend_panel(ax):
    """The colors, in a spare panel."""
    from matplotlib.patches import Patch

    names = {"fastcustom": "fastcustom (bold, outlined)",
             "fastcustom variant": "accelerated model.fit variants",
             "fused": "the fused op called directly", "notes": "the notes' code",
             "keras": "Keras built-in / model.fit", "keras variant": "other model.fit settings",
             "tf.function": "tf.function", "xla": "XLA forms", "numpy": "NumPy float64",
             "torch": "PyTorch", "jax": "JAX"}
    ax.legend([Patch(color=FAMILY_COLORS[k]) for k in names], names.values(), loc="center",
              title="colors", fontsize=9)
    ax.axis("off")


# --- by size ------------------------------------------------------------------------
def draw_by_size(results, path):
    """Write a PNG of fastcustom's interleaved speed-up over each peer at each size, one
    panel per kernel; None (nothing written) when the run has no interleaved kernel rows."""
    from matplotlib.figure import Figure

    kernels = [k for k in KERNELS if any(r.task == k and r.device == "cpu"
                                         for r in results.interleaved)]
    if not kernels:
        return None
    columns = min(3, len(kernels))
    rows = -(-len(kernels) // columns)
    figure = Figure(figsize=(6 * columns, 4.3 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, kernel in zip(axes, kernels):
        found = {r.size: r for r in results.interleaved if r.task == kernel and r.device == "cpu"}
        sizes = [s for s in SIZES if s in found]
        for offset, role in enumerate(PEERS):
            points = [(i, found[s].speedups[role]) for i, s in enumerate(sizes)
                      if role in found[s].speedups]
            if not points:
                continue
            x = [i + (offset - 2) * 0.06 for i, _ in points]
            median = [p["median"] for _, p in points]
            ax.errorbar(x, median, yerr=[[m - p["q1"] for m, (_, p) in zip(median, points)],
                                         [p["q3"] - m for m, (_, p) in zip(median, points)]],
                        marker="o", capsize=3, color=FAMILY_COLORS[ROLE_FAMILIES[role]],
                        label=f"vs {PEERS[role]}")
        ax.axhline(1.0, color="black", linewidth=1)
        ax.set_xticks(range(len(sizes)), [f"{s}\n{found[s].shape}" for s in sizes], fontsize=8)
        ax.set_yscale("log")
        _times_axis(ax.yaxis)
        ax.set_ylabel("speed-up (log): above 1×, fastcustom is faster")
        ax.set_title(kernel, fontsize=10)
        ax.grid(True, axis="y", which="both", alpha=0.3)
    for ax in axes[len(kernels):]:
        ax.axis("off")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=len(labels))
    figure.suptitle(f"fastcustom's speed-up by size (interleaved rounds; bars: IQR) — "
                    f"{title(results)}", fontsize=12, weight="bold")
    figure.savefig(path, dpi=100)
    return path
