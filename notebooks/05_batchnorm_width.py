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
# # Study 5: batch-norm placement (Fig. 3a) and width sweep (Fig. 3b)
#
# **Batch norm.** ItNet puts one batch normalization per iteration *between* iterations (its
# parameters and statistics belong to iteration n, Sec. 2.5). The variant puts BN after *every*
# conv of the block (also per iteration). Which trains better under the same recipe?
#
# **Width.** How do the last output's mIoU and the anytime AUC' grow with the width f of the
# independent network (MACs grow about with f squared)?
#
# Run it: `python -m itnet_keras.notebooks notebooks/05_batchnorm_width.py --mode full`.

# %%
from IPython.display import Image, Markdown, display

from itnet_keras import studies
from itnet_keras.evaluate import plot_miou_over_macs

MODE = studies.mode_from_env()
study = studies.Study("05_batchnorm_width", MODE, repo="..")
f = study.settings.widths["independent"]
WIDTHS = sorted({max(7, round(f * 0.45)), max(7, round(f * 0.72)), f})  # 13, 21, 29 in full mode
print(f"mode {MODE}: {study.settings.description}; widths {WIDTHS}")

# %% [markdown]
# ## Batch-norm placement (Fig. 3a): the independent network, f as in the paper

# %%
placement = {f"BN {p}": study.train("independent", bn_placement=p) for p in ("between", "every_conv")}
plot_miou_over_macs(placement, study.path("bn_placement.png"), title="Batch-norm placement")
display(Image(filename=str(study.path("bn_placement.png"))))
bn_rows = {label: studies.summary(r) for label, r in placement.items()}
display(Markdown(studies.markdown_table(bn_rows, studies.SUMMARY_COLUMNS)))

# %% [markdown]
# ## Width sweep (Fig. 3b)

# %%
widths = {w: study.train("independent", width=w) for w in WIDTHS}
width_rows = {f"f={w}": {**studies.summary(r), "macs": r["outputs"][-1]["macs"] / 1e9} for w, r in widths.items()}
display(Markdown(studies.markdown_table(width_rows, {**studies.SUMMARY_COLUMNS,
                                                     "macs": ("MACs 1e9 (eval size)", "{:.3f}")})))
studies.plot_metric_over(
    {"mIoU of the last output": [(w, r["outputs"][-1]["miou"]) for w, r in widths.items()],
     "peak mIoU": [(w, max(o["miou"] for o in r["outputs"])) for w, r in widths.items()],
     "normalized AUC'": [(w, r["normalized_auc"]) for w, r in widths.items()]},
    study.path("width_sweep.png"), "width f (channels per scale)", "mIoU / normalized AUC' (val)")
display(Image(filename=str(study.path("width_sweep.png"))))
study.save({"bn_placement": bn_rows, "widths": width_rows})

# %% [markdown]
# ## Conclusion (full mode), next to the paper

# %%
committed = study.committed_results()
if committed:
    print(f"budget: {committed['budget']}")
    display(Markdown(studies.markdown_table(committed["bn_placement"], studies.SUMMARY_COLUMNS)))
    display(Markdown(studies.markdown_table(committed["widths"], studies.SUMMARY_COLUMNS)))

# %% [markdown]
# CONCLUSION
