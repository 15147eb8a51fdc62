# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Study 2: architecture search (Sec. 3.1, Fig. 6/7)
#
# The paper searches over the number of iterations N, of scales L and of bottleneck blocks K.
# For each (N, L, K) the width f is the largest whose last output costs less than 2.2 billion
# MACs on a 480x360 image, so every candidate has the same budget. Each candidate is trained
# with and without weight sharing, ranked by the normalized area under its mIoU-over-MACs
# curve (AUC'), after discarding networks whose peak mIoU is more than 0.02 below the best
# peak; the lowest average rank over both variants wins. The paper found N=16, L=3, K=1.
#
# **Run again after the initialization fix (bc63915), on 2026-11-28.** Before it, every
# per-iteration weight started with equal rows (the 16 heads, and every conv of an
# independent network, so that it started as a weight-shared one).
#
# Run it: `python -m itnet_keras.lab.notebooks notebooks/02_architecture_search.py --mode full`.

# %%
from IPython.display import Image, Markdown, display

from itnet_keras.lab import figures, modes, search, studies

MODE = modes.mode_from_env()
study = studies.Study("02_architecture_search", MODE, repo="..")
# (N, L, K): a reduced grid (the paper's is larger) and few epochs, to fit the CPU budget.
GRID = [(16, 3, 1), (8, 3, 1), (16, 2, 1)] if MODE == "full" else [(4, 2, 1), (2, 2, 1)]
EPOCHS = 5 if MODE == "full" else None  # None: the mode's epochs
print(f"mode {MODE}: {study.settings.description}; search runs use {EPOCHS or 'the mode’s'} epochs")

# %% [markdown]
# ## The width of each candidate under the MAC budget

# %%
size, budget = study.settings.input_size, study.settings.mac_budget
candidates = {}
for n, l, k in GRID:
    shape = dict(num_iterations=n, num_scales=l, num_blocks=k)
    base = {key: v for key, v in study.network("independent", **shape).items() if key not in ("width", "weight_sharing")}
    candidates[f"N{n} L{l} K{k}"] = {**shape, "width": search.largest_width(budget, size, **base)}
display(Markdown("| N L K | f | MACs of the last output |\n|---|---:|---:|\n" + "\n".join(
    f"| {a} | {c['width']} | {search.macs_of(size, **{**study.network('independent', **c)}):.3g} |"
    for a, c in candidates.items())))

# %% [markdown]
# ## Train every candidate, shared and independent

# %%
rows = []
for architecture, shape in candidates.items():
    for variant in ("shared", "independent"):
        result = study.train(variant, epochs=EPOCHS, **shape)
        rows.append({"architecture": architecture, "variant": variant, **shape, **studies.summary(result)})
winner, ranks = search.select_architecture(rows)
# the model of each run is the epoch whose last output scored best on val (`fit`'s best.keras)
display(Markdown("| N L K | variant | f | epoch | AUC' | peak mIoU | rank |\n|---|---|---:|---:|---:|---:|---:|\n"
                 + "\n".join(f"| {r['architecture']} | {r['variant']} | {r['width']} | {r['epoch']} | "
                             f"{r['normalized_auc']:.3f} | {r['miou_peak']:.3f} | "
                             f"{ranks[r['architecture']][r['variant']] or 'discarded'} |" for r in rows)))
print(f"selected: {winner} (the paper: N16 L3 K1)")
figures.plot_search(rows, study.path("search.png"))
display(Image(filename=str(study.path("search.png"))))
study.save({"grid": GRID, "epochs": EPOCHS, "rows": rows, "ranks": ranks, "winner": winner}, epochs=EPOCHS)

# %% [markdown]
# ## Conclusion (full mode), next to the paper

# %%
committed = study.committed_results()
if committed:
    print(f"budget: {committed['budget']}, {committed['epochs']} epochs per run; selected {committed['winner']}")

# %% [markdown]
# **Conclusion** (full mode at a reduced grid and budget: three architectures, each trained
# shared and independent for 5 epochs at 90x120, 2 to 3.5 minutes per run on this CPU; the
# paper searches a larger grid with 2000-epoch trainings on GPUs). The search selects
# **N=16, L=3, K=1**, the paper's choice: it has the best peak mIoU in both variants (0.172
# shared, 0.186 independent, at f=29). The peak-mIoU rule (within 0.02 of the best peak)
# discards N=16, L=2 at f=34 in both (0.122 / 0.148) and N=8, L=3 at f=42 among the
# independent networks (0.155); among the shared ones N=8, L=3 survives (0.158) and the
# AUC' ranks it second (0.102 against 0.108). (Before the initialization fix the other two
# failed the rule in both variants.) The widths under the 2.2e9-MAC budget come from the
# cost model: fewer iterations or fewer scales buy a wider network (f=42, f=34) for the
# same MACs.
#
# The models compared are not all of the same epoch (column `epoch`): each run's is the
# epoch whose last output scored best on val (`fit`'s best.keras), epoch 5 for the N=16,
# L=3 pair and the independent N=16, L=2, epoch 1 for the other three, whose val mIoU fell
# after the first epoch while their training mIoU rose (each run's `log.csv`). With every
# run's epoch-5 model the selection is the same: the peaks of those three are lower at
# epoch 5 (N=8, L=3: 0.134 shared, 0.131 independent; N=16, L=2 shared: 0.087), so all
# three fail the peak rule and N=16, L=3 wins in both variants.
#
# With 5 epochs every network is far from trained (peak mIoU below 0.19), and only three of
# the paper's candidates were run, so this confirms the selection rule and that the paper's
# architecture wins this small grid; it is not a reproduction of Fig. 6/7. Widening the grid
# (`GRID`) and the epochs (`EPOCHS`) is a parameter change; each further run costs 2 to 3.5
# minutes at 5 epochs.
