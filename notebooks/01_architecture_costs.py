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
# # Study 1: architecture and costs (Fig. 1b-d, Fig. 2)
#
# Every cost here is computed by `itnet_keras.costs` from the model's own layers (SPEC s.6):
# MACs per output, the size of the computational graph (conv layers only: parameters + input
# + output feature maps, float32; the shared network's loop collapsed, the independent one
# unrolled), the depth (conv layers on the longest path, the latency proxy) and the state
# size. The latency per output is then measured with LiteRT on the exported `.tflite` files.
# No training: the weights do not change any of these numbers.
#
# **Measured again after the initialization fix (bc63915), on 2026-11-28,** with nothing else
# running on the machine. Before the fix the independent network's random weights had 16
# equal iteration rows, which the TFLite converter stores once; its unrolled file now holds
# 16 copies, and its latency barely moved (output 16: 31.2 ms, before 29.7 ms). The costs
# (MACs, graph size, depth, state) do not depend on the weights.
#
# Run it: `python -m itnet_keras.lab.notebooks notebooks/01_architecture_costs.py --mode full`.

# %%
import tempfile
from pathlib import Path

from IPython.display import Image, Markdown, display

from itnet_keras.costs import format_table
from itnet_keras.export.measure.latency import measure, preset_files
from itnet_keras.lab import figures, modes, search, studies

MODE = modes.mode_from_env()
REPEATS = 5 if MODE == "full" else 1  # LiteRT timings: median of REPEATS calls
THREADS = 2
study = studies.Study("01_architecture_costs", MODE, repo="..")
size = study.settings.input_size
print(f"mode {MODE}: costs and latency at {size[1]}x{size[0]}")

# %% [markdown]
# ## Costs per output (Fig. 1b-d)

# %%
VARIANTS = {"shared": f"shared, f={study.settings.widths['shared']}",
            "independent": f"independent, f={study.settings.widths['independent']}"}
costs = {label: study.costs(variant) for variant, label in VARIANTS.items()}
figures.plot_costs_per_output(costs, study.path("costs_per_output.png"))
display(Image(filename=str(study.path("costs_per_output.png"))))
for label, rows in costs.items():
    display(Markdown(f"**{label}**\n\n" + format_table(rows)))

# %% [markdown]
# ## The MAC calibration (Sec. 3.1, SPEC s.6)
# The architecture search gives each network the largest f whose last output costs less than
# 2.2 billion MACs on a 480x360 image. The paper found f=29 without sharing, and about 6.2e9
# MACs for the shared f=51 (3x).

# %%
budget = study.settings.mac_budget
network = {k: v for k, v in study.network("independent").items() if k != "width"}
width = search.largest_width(budget, size, **network)
calibration = {"budget_macs": budget, "largest_width": width,
               "macs_at_width": search.macs_of(size, width=width, **network),
               "macs_at_width_plus_1": search.macs_of(size, width=width + 1, **network),
               "macs_shared": costs[VARIANTS["shared"]][-1]["macs"],
               "macs_independent": costs[VARIANTS["independent"]][-1]["macs"]}
calibration["shared_over_independent"] = calibration["macs_shared"] / calibration["macs_independent"]
print(f"largest f under {budget:.3g} MACs: {width} ({calibration['macs_at_width']:.4g}; "
      f"f={width + 1}: {calibration['macs_at_width_plus_1']:.4g}); paper: 29")
print(f"shared / independent MACs: {calibration['shared_over_independent']:.2f} (paper: about 3)")

# %% [markdown]
# ## Latency per output on LiteRT (Fig. 2)
# Float32 files with random weights, batch 1, the default CPU delegate, `THREADS` threads.
# `anytime(n)` is one call that runs n iterations; `encode + n x step` is the path an app
# drives itself (cumulative time to output n; `finish_s` in the results: n - 1 steps and
# `finish`). The baseline is an unrolled graph that
# stops at output n (no loop); all N outputs are also compared in one call each.

# %%
latency = {}
with tempfile.TemporaryDirectory() as work:
    for variant, label in VARIANTS.items():
        folder = Path(work) / variant
        folder.mkdir()
        files = preset_files(studies.PRESET_OF[variant], size, folder, **study.network(variant))
        latency[label] = measure(*files[:2], [THREADS], REPEATS, unrolled_anytime=files[2])[0]
figures.plot_latency_per_output(latency, study.path("latency_per_output.png"))
display(Image(filename=str(study.path("latency_per_output.png"))))
for label, row in latency.items():
    print(f"{label}: output 1 {row['anytime_s'][0] * 1e3:.1f} ms, output N {row['anytime_s'][-1] * 1e3:.1f} ms; "
          f"all N outputs: loop {row['loop_outputs_s'] * 1e3:.1f} ms, unrolled {row['unrolled_outputs_s'] * 1e3:.1f} ms "
          f"(loop / unrolled {row['loop_outputs_s'] / row['unrolled_outputs_s']:.2f})")
study.save({"input_size": size, "costs": costs, "calibration": calibration, "latency": latency,
            "threads": THREADS, "repeats": REPEATS})

# %% [markdown]
# ## Conclusion (full mode), next to the paper

# %%
committed = study.committed_results()
if committed:
    c = committed["calibration"]
    print(f"largest f: {c['largest_width']} (paper 29); shared/independent MACs {c['shared_over_independent']:.2f} "
          "(paper about 3)")
    for label, rows in committed["costs"].items():
        last = rows[-1]
        print(f"{label}: {last['macs'] / 1e9:.2f}e9 MACs, graph {last['graph_bytes_collapsed'] / 1e6:.1f} MB collapsed "
              f"/ {last['graph_bytes_unrolled'] / 1e6:.1f} MB unrolled, depth {last['depth']}")

# %% [markdown]
# **Conclusion.** The cost model reproduces the paper's calibration: f=29 is the largest width
# under 2.2e9 MACs (2.09e9; f=30 costs 2.23e9), and the shared f=51 network costs 3.02x as
# many MACs (6.32e9; the paper: about 3x, 6.2e9). Output 1 costs 0.30e9 (shared) or 0.10e9
# (independent) MACs at depth 7, output 16 sits at depth 69 (Fig. 1b, 1d): the first answer
# needs a tenth of the depth.
#
# Graph size (Fig. 1c): 42.4 MB for the shared network with its loop collapsed (the paper:
# 83 MB) and 245.3 MB for the independent one unrolled (the paper: 384 MB), a ratio of 0.17
# against the paper's 0.22. Parameters: the shared network has 0.43 M, 24.6% of the
# independent network's 1.75 M (the paper: 44%). Our reading of the architecture gives
# smaller graphs than the paper's; `docs/architecture.md` lists where the reading may differ.
#
# Latency (Fig. 2; LiteRT, 2 threads on this 2-core CPU, median of 5 calls taken in turns
# with the unrolled baselines; the notebook took 6.0 minutes): the shared network's first
# output comes after 5.8 ms and its last after 89.7 ms, 15x later. Its loop file's `anytime`
# takes 0.95x to 1.11x the time of an unrolled graph that stops at the same output (output
# 16: 89.7 vs 88.5 ms; all 16 outputs in one call: 129 vs 123 ms); only outputs 5 and 6
# are above 1.06x, the noise of 5 calls per point (the benchmark in `export/README.md`,
# with 15, stays within 1.07x). `anytime` computes its last iteration at the finest scale only, as the
# pruned unrolled graph does. Against an unrolled graph that also returns the state a
# further step would read (its `state_n` signature), an app that drives the loop and ends
# with `finish` takes 0.78x to 1.16x; one that decides after each step (`encode` + n `step` + one `upsample`)
# 0.95x to 1.18x: each interpreter call costs about 0.3 ms, and `step` computes the coarser
# scales that a further step would read.
#
# The independent network is the exception: from output 2 on its loop file is 2.3x to 5.6x
# slower than unrolled (output 16: 143 vs 31 ms), although it has a third of the MACs. Its loop picks
# each iteration's kernels with a run-time `GATHER`; LiteRT's default CPU delegate (XNNPACK)
# wants constant weights, so those convolutions fall back to the slower builtin kernels.
# Without weight sharing nothing is gained by a loop on a CPU: export such a network
# unrolled (`build_itnet(..., unroll=True)`), where it runs 3x faster than the shared one,
# as its MACs say. The paper reports no on-device latency; its latency proxy, the depth,
# is the same for both networks.
