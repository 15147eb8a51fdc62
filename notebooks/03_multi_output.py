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
# # Study 3: multi-output training (Sec. 3.2, Fig. 4)
#
# ItNet trains one loss per output, $L = \sum_n \bar a_n c_n$ with normalized weights
# $\bar a_n$. Which outputs should carry weight? We train the same network (CamVid
# independent, f=29, N=16; no dropout, no L2, as in the paper's ablations) with five schedules:
#
# | schedule | weights $a_n$ |
# |---|---|
# | all | 1 for every output |
# | single | only the last output (a plain deep network with 15 untrained heads) |
# | late | only the last quarter of the outputs |
# | thinned | output 1, then every 4th, and the last (the paper's choice for its final results) |
# | linear | $a_n = n$ |
#
# and ask: does training the early outputs cost the late ones accuracy, or help them?
#
# **Run again after the initialization fix (bc63915).** Before it, every per-iteration weight
# started with equal rows (the 16 heads, and every conv of an independent network, so that
# it started as a weight-shared one). The `all` run is study 4's independent network (run
# again after the fix too); the other four were trained again on 2026-11-28.
#
# Run it: `python -m itnet_keras.lab.notebooks notebooks/03_multi_output.py --mode full`
# (smoke mode, the default, runs the same code on the built-in data in a minute).

# %%
from IPython.display import Image, Markdown, display

from itnet_keras.plots import plot_miou_over_macs
from itnet_keras.lab import modes, studies

MODE = modes.mode_from_env()  # "smoke" or "full" (set by the command above)
study = studies.Study("03_multi_output", MODE, repo="..")
print(f"mode {MODE}: {study.settings.description}")

# %% [markdown]
# ## Train one network per schedule
# Finished runs are reused and interrupted ones resumed (run folders under `runs/studies/`).

# %%
results = {}
for kind in ("all", "single", "late", "thinned", "linear"):
    schedule = study.schedule(kind)
    results[f"{kind} ({schedule})"] = study.train("independent", output_weights=schedule)

rows = {label: studies.summary(r) for label, r in results.items()}
display(Markdown(studies.markdown_table(rows, studies.SUMMARY_COLUMNS)))

# %% [markdown]
# ## mIoU over MACs per schedule (Fig. 4)
# Outputs that carried no weight in training are drawn hollow.

# %%
plot_miou_over_macs(results, study.path("miou_over_macs.png"), title="Multi-output training schedules")
display(Image(filename=str(study.path("miou_over_macs.png"))))

# %% [markdown]
# ## Does training early outputs help the late ones?
# Compare the last output's mIoU of each multi-output schedule with `single` (only the last output trained).

# %%
single = rows[next(label for label in rows if label.startswith("single"))]["miou_last"]
effect = {label: row["miou_last"] - single for label, row in rows.items() if not label.startswith("single")}
for label, delta in effect.items():
    print(f"{label:>22}: last output {rows[label]['miou_last']:.3f}, {delta:+.3f} vs single")
study.save({"summary": rows, "last_output_vs_single": effect,
            "curves": {label: [(o["macs"], o["miou"]) for o in r["outputs"]] for label, r in results.items()}})

# %% [markdown]
# ## Conclusion (full mode), next to the paper
#
# Full-mode numbers (committed in `notebooks/results/03_multi_output/results.json`):

# %%
committed = study.committed_results()
if committed:
    print(f"budget: {committed['budget']}; wall time {committed['wall_s'] / 60:.0f} min of notebook, "
          "plus the training runs (column `train+eval min`)")
    display(Markdown(studies.markdown_table(committed["summary"], studies.SUMMARY_COLUMNS)))

# %% [markdown]
# **Conclusion** (full mode: CamVid at 90x120, 15 epochs per run, 5.5 to 9 minutes each on this
# 2-core CPU; the paper: 480x360, 2000 epochs on GPUs). Training the early outputs *helps*
# the late ones here: with every output weighted alike the last output reaches 0.353 mIoU
# against 0.269 when only the last output is trained (`single`, +0.083), and the linearly
# increasing weights give 0.332 (+0.063). Training only the last quarter (`late`) is barely
# better than `single` (0.286, +0.017): the supervision of outputs 13 to 16 does not reach
# back into the early iterations (the data block and the first iterations' weights) the
# way output 1's does. (Before the initialization fix: 0.338, 0.268, 0.330 and 0.269.)
#
# The thinned schedule (outputs 1, 5, 9, 13, 16) gives the best first output (0.282) and
# 0.343 at output 5, but its last output (0.330) is below `all`, whose best output (0.365 at
# output 9) is also the best single output of all runs (before the fix thinned's output 5
# was, 0.353). The outputs that carried no weight stay at chance level (their heads are
# untrained), which is why thinned's AUC' (0.101) is far below `all` (0.329): an app using
# thinned training must only stop at the trained outputs. `all` has the best anytime curve
# (AUC') and the best last output.
#
# The paper (Sec. 3.2, Fig. 4) compares the same schedules and uses thinned outputs for its
# final results; its figure values are not available to us (SPEC), so we compare
# conclusions, not numbers. Our short runs find that multi-output training does not hurt the
# last output but helps it; with 15 epochs the gain may partly be faster early training
# (deep supervision) rather than a better end point, which the paper's 2000 epochs would
# settle.
# One run per schedule: between two trainings of the same configuration we saw the last
# output move by up to 0.03 (study 4), so differences below that are not findings.
