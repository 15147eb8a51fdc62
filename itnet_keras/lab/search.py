"""The paper's architecture search (Sec. 3.1): the widest network under a MAC budget, and
the selection rule over the trained candidates (notebook 02)."""

import numpy as np

from itnet_keras.costs import output_costs
from itnet_keras.model import build_itnet


def macs_of(input_size, **model_args):
    """MACs of the last output at `input_size` (from the cost model)."""
    model = build_itnet(input_shape=(*input_size, 3), **model_args)
    return output_costs(model, input_size)[-1]["macs"]


def largest_width(budget, input_size, **model_args):
    """The largest f whose last output costs less than `budget` MACs (bisection; MACs grow with f)."""
    low, high = 7, 8
    if macs_of(input_size, width=low, **model_args) >= budget:
        raise ValueError(f"even f=7 costs at least {budget:.3g} MACs at {input_size}")
    while macs_of(input_size, width=high, **model_args) < budget:
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if macs_of(input_size, width=middle, **model_args) < budget else (low, middle)
    return low


def select_architecture(rows, tolerance=0.02):
    """The paper's selection rule. `rows`: dicts with `architecture`, `variant` (shared or
    independent), `normalized_auc` and `miou_peak`. Per variant, networks whose peak mIoU is
    more than `tolerance` below the best peak are discarded and the rest ranked by AUC'
    (1 = best); the architecture with the lowest average rank over both variants wins.
    Returns (winner, {architecture: {variant: rank or None}}); the winner is None when no
    architecture survives the rule in every variant (a notebook then shows the ranks, and
    that the rule selects none, instead of stopping)."""
    ranks = {}
    for variant in sorted({r["variant"] for r in rows}):
        group = [r for r in rows if r["variant"] == variant]
        best_peak = max(r["miou_peak"] for r in group)
        kept = sorted((r for r in group if r["miou_peak"] >= best_peak - tolerance),
                      key=lambda r: -r["normalized_auc"])
        for r in group:
            ranks.setdefault(r["architecture"], {})[variant] = None
        for rank, r in enumerate(kept, start=1):
            ranks[r["architecture"]][variant] = rank
    variants = {r["variant"] for r in rows}
    complete = {a: np.mean(list(v.values())) for a, v in ranks.items()
                if set(v) == variants and None not in v.values()}
    return (min(complete, key=complete.get) if complete else None), ranks
