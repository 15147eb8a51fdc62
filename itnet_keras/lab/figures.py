"""The studies' figures (costs, latency, a metric over a setting, the architecture search),
each saved atomically; mIoU over MACs is `plots.plot_miou_over_macs`."""

import numpy as np

from itnet_keras.files import pyplot, save_figure


def _axes(columns=1, width=5.5, height=3.8):
    fig, axes = pyplot().subplots(1, columns, figsize=(width * columns, height), squeeze=False)
    return fig, list(axes.flat)


def _dress(ax, xlabel, ylabel, integer_x=False):
    """Axis labels (with units), a light grid and the legend."""
    if integer_x:
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_costs_per_output(costs, path):
    """Fig. 1b-d: MACs, graph size (both views) and depth over the output n, per network."""
    fig, (macs, graph, depth) = _axes(3, width=4.2, height=3.4)
    for label, rows in costs.items():
        n = [r["output"] for r in rows]
        line, = macs.plot(n, [r["macs"] / 1e9 for r in rows], "o-", markersize=3, label=label)
        graph.plot(n, [r["graph_bytes_collapsed"] / 1e6 for r in rows], "o-", markersize=3, color=line.get_color(),
                   label=f"{label}, loop collapsed")
        graph.plot(n, [r["graph_bytes_unrolled"] / 1e6 for r in rows], "s--", markersize=3, color=line.get_color(),
                   label=f"{label}, unrolled")
        depth.plot(n, [r["depth"] for r in rows], "o-", markersize=3, label=label)
    for ax, ylabel in ((macs, "MACs per image (billions)"), (graph, "computational graph (MB)"),
                       (depth, "depth (conv layers on the longest path)")):
        _dress(ax, "output n (iterations)", ylabel, integer_x=True)
    fig.tight_layout()
    save_figure(fig, path)


def plot_latency_per_output(latency, path):
    """Latency of output n on LiteRT: `anytime` (loop file) and the app's `encode`+`step` path."""
    fig, (ax,) = _axes()
    for label, row in latency.items():
        n = np.arange(1, len(row["anytime_s"]) + 1)
        line, = ax.plot(n, np.array(row["anytime_s"]) * 1e3, "o-", markersize=3, label=f"{label}: anytime(n)")
        ax.plot(n, np.array(row["step_s"]) * 1e3, "s--", markersize=3, color=line.get_color(),
                label=f"{label}: encode + n x step")
        if row.get("unrolled_s"):
            ax.plot(n, np.array(row["unrolled_s"]) * 1e3, "^:", markersize=3, color=line.get_color(),
                    label=f"{label}: unrolled, n iterations")
    ax.set_ylim(bottom=0)
    _dress(ax, "output n (iterations)", "latency (ms, LiteRT CPU, batch 1)", integer_x=True)
    fig.tight_layout()
    save_figure(fig, path)


def plot_metric_over(points, path, xlabel, ylabel):
    """One line per {label: [(x, y), ...]}."""
    fig, (ax,) = _axes()
    for label, xy in points.items():
        x, y = zip(*xy)
        ax.plot(x, y, "o-", markersize=4, label=label)
    _dress(ax, xlabel, ylabel)
    fig.tight_layout()
    save_figure(fig, path)


def plot_search(rows, path):
    """Fig. 6/7: AUC' and peak mIoU of every architecture, shared and independent."""
    fig, (auc, peak) = _axes(2, width=5.0)
    names = sorted({r["architecture"] for r in rows}, key=lambda a: [int(v[1:]) for v in a.split()])
    for offset, variant in ((-0.15, "shared"), (0.15, "independent")):
        group = {r["architecture"]: r for r in rows if r["variant"] == variant}
        x = [i + offset for i, a in enumerate(names) if a in group]
        auc.bar(x, [group[a]["normalized_auc"] for a in names if a in group], width=0.3, label=variant)
        peak.bar(x, [group[a]["miou_peak"] for a in names if a in group], width=0.3, label=variant)
    for ax, ylabel in ((auc, "normalized AUC' of mIoU over MACs"), (peak, "peak mIoU over the outputs")):
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        _dress(ax, "architecture (iterations N, scales L, blocks K)", ylabel)
    fig.tight_layout()
    save_figure(fig, path)
