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
# Run it: `python -m itnet_keras.notebooks notebooks/03_multi_output.py --mode full`
# (smoke mode, the default, runs the same code on the built-in data in a minute).

# %%
from IPython.display import Image, Markdown, display

from itnet_keras import studies
from itnet_keras.evaluate import plot_miou_over_macs

MODE = studies.mode_from_env()  # "smoke" or "full" (set by the command above)
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
# CONCLUSION
