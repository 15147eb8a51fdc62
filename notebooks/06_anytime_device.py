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
# # Study 6: anytime prediction on device
#
# The paper's two scenarios (Sec. 1): an app with a **deadline** takes whatever output is
# ready when time runs out, and a **budgeted batch** spends iterations where they are needed:
# each image stops when its prediction stops changing or is confident enough. Here the
# trained shared network (study 4's run) is exported to a float32 `.tflite` file and run with
# LiteRT exactly as an app would: `encode(image)`, then `step(state, n)` for n = 1, 2, ...,
# deciding after every step whether to go on (`itnet_keras.export.anytime_device`).
#
# Run it: `python -m itnet_keras.notebooks notebooks/06_anytime_device.py --mode full`.

# %%
import tempfile
from pathlib import Path

from IPython.display import Image, Markdown, display

from itnet_keras import studies
from itnet_keras.export import anytime_device as device
from itnet_keras.export.tflite import convert_tflite

MODE = studies.mode_from_env()
THREADS = 2
study = studies.Study("06_anytime_device", MODE, repo="..")
print(f"mode {MODE}: {study.settings.description}")

# %% [markdown]
# ## Export the trained shared network and open it as an app would

# %%
model = study.trained_model(study.train("shared"))
val = study.dataset("val", batch_size=1)
size = tuple(val[0][0].shape[1:3])
work = Path(tempfile.mkdtemp())
convert_tflite(model, work / "itnet.tflite", "float32", spec=val.spec, input_size=size)
runner = device.StepRunner(work / "itnet.tflite", threads=THREADS)
N = runner.num_iterations
print(f"{work / 'itnet.tflite'}: {N} iterations, input {size[1]}x{size[0]}, {len(val)} val images")

# %% [markdown]
# ## Fixed budgets: every image gets n iterations

# %%
fixed = {n: device.evaluate_policy(runner, val, device.fixed(n)) for n in range(1, N + 1)}
full_ms = fixed[N]["mean_ms"]
display(Markdown("| n | mIoU | mean ms per image |\n|---:|---:|---:|\n" + "\n".join(
    f"| {n} | {r['miou']:.3f} | {r['mean_ms']:.1f} |" for n, r in fixed.items())))

# %% [markdown]
# ## Scenario 1: a deadline
# The app goes on while one more step (as long as the last one) still fits. Deadlines are set as
# fractions of the mean time for all N iterations, so the cell means the same on any device.

# %%
deadlines = {fraction: device.evaluate_policy(runner, val, device.deadline(fraction * full_ms / 1e3))
             for fraction in (0.1, 0.2, 0.35, 0.5, 0.75, 1.0)}
display(Markdown("| deadline | mIoU | mean iterations | mean ms | max ms |\n|---:|---:|---:|---:|---:|\n" + "\n".join(
    f"| {f * full_ms:.1f} ms ({f:.0%}) | {r['miou']:.3f} | {r['mean_iterations']:.1f} | {r['mean_ms']:.1f} | "
    f"{r['max_ms']:.1f} |" for f, r in deadlines.items())))

# %% [markdown]
# ## Scenario 2: a budgeted batch
# Each image stops when at most a fraction of its pixels changed class in the last step
# (`stable`), or when the mean top-class probability reaches a level (`confident`), or at
# whichever comes first. Better than fixed budgets means more mIoU for the same average number
# of iterations.

# %%
adaptive = {}
for fraction in (0.05, 0.02, 0.01, 0.005, 0.002):
    adaptive[f"stable {fraction}"] = device.evaluate_policy(runner, val, device.until_stable(fraction))
for probability in (0.8, 0.85, 0.9, 0.95):
    adaptive[f"confident {probability}"] = device.evaluate_policy(runner, val, device.until_confident(probability))
for fraction, probability in ((0.01, 0.9), (0.005, 0.95)):
    policy = device.either(device.until_stable(fraction), device.until_confident(probability))
    adaptive[f"stable {fraction} or confident {probability}"] = device.evaluate_policy(runner, val, policy)


def fixed_at(iterations):
    """mIoU of fixed budgets, interpolated at a mean number of iterations."""
    import numpy as np

    return float(np.interp(iterations, list(fixed), [r["miou"] for r in fixed.values()]))


display(Markdown("| policy | mIoU | mean iterations | fixed budget at that mean | gain |\n|---|---:|---:|---:|---:|\n"
                 + "\n".join(f"| {name} | {r['miou']:.3f} | {r['mean_iterations']:.2f} | "
                             f"{fixed_at(r['mean_iterations']):.3f} | {r['miou'] - fixed_at(r['mean_iterations']):+.3f} |"
                             for name, r in adaptive.items())))

points = {"fixed n (every image)": [(n, r["miou"]) for n, r in fixed.items()],
          "deadline": [(r["mean_iterations"], r["miou"]) for r in deadlines.values()],
          "stable (changed pixels)": [(r["mean_iterations"], r["miou"]) for k, r in adaptive.items()
                                      if k.startswith("stable") and "or" not in k],
          "confident (top-class probability)": [(r["mean_iterations"], r["miou"]) for k, r in adaptive.items()
                                                if k.startswith("confident")]}
studies.plot_metric_over(points, study.path("miou_over_iterations.png"), "mean iterations per image",
                         f"mIoU ({val.spec.name} val)")
display(Image(filename=str(study.path("miou_over_iterations.png"))))
study.save({"input_size": size, "threads": THREADS, "fixed": fixed, "deadline_fraction_of_full": deadlines,
            "adaptive": adaptive, "full_ms": full_ms})

# %% [markdown]
# ## Conclusion (full mode)

# %%
committed = study.committed_results()
if committed:
    print(f"budget: {committed['budget']}; all N iterations: {committed['full_ms']:.1f} ms per image")
    for name, r in committed["adaptive"].items():
        print(f"{name:>32}: mIoU {r['miou']:.3f} at {r['mean_iterations']:.2f} iterations")

# %% [markdown]
# CONCLUSION
